//! The `max_age` harness: the duration syntax of `--max-age`, `spec.maxAge` and `@every`.
//! Shared by `fuzz/fuzz_targets/max_age.rs` and `tests/fuzz_regressions.rs`.
//!
//! Input: any bytes; only UTF-8 is parsed (the syntax is text). Checked: parsing never panics;
//! `MaxAge::from_str` and `parse_duration` agree; a parsed value is positive and at most ten
//! thousand years; its `Display` form is canonical and parses back to the same value; an error
//! names the accepted syntax and shows the input without control characters.

use std::time::Duration;

use mpu_sweeper::max_age::{MaxAge, parse_duration};

/// The largest age the syntax accepts.
const MAX_SECS: u64 = 10_000 * 365 * 86_400;

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = text.parse::<MaxAge>();
    let duration = parse_duration(text);
    assert_eq!(
        parsed.as_ref().ok().map(|age| age.as_duration()),
        duration.as_ref().ok().copied(),
        "MaxAge::from_str and parse_duration disagree on {text:?}"
    );
    match parsed {
        Ok(age) => {
            let secs = age.as_secs();
            assert!(
                (1..=MAX_SECS).contains(&secs),
                "{text:?} parsed to {secs} s"
            );
            assert_eq!(age.as_duration(), Duration::from_secs(secs));
            assert_eq!(MaxAge::from_secs(secs), Some(age));
            let shown = age.to_string();
            assert!(
                !shown.is_empty() && shown.bytes().all(|b| b.is_ascii_alphanumeric()),
                "{text:?} is shown as {shown:?}"
            );
            let back = shown.parse::<MaxAge>().unwrap_or_else(|e| {
                panic!("{text:?} is shown as {shown:?}, which does not parse: {e}")
            });
            assert_eq!(back, age, "{text:?} -> {shown:?} -> {back:?}");
            assert_eq!(back.to_string(), shown, "Display is not canonical");
        }
        Err(err) => {
            let message = err.to_string();
            assert_eq!(
                duration.map_err(|e| e.to_string()),
                Err(message.clone()),
                "the two parsers fail differently on {text:?}"
            );
            assert!(message.contains("for example 30s"), "{message}");
            assert!(
                !message.chars().any(char::is_control),
                "the error shows a control character: {message:?}"
            );
        }
    }
}
