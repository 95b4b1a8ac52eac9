//! The `schedule` harness: `spec.schedule` and `spec.timeZone`. Shared by
//! `fuzz/fuzz_targets/schedule.rs` and `tests/fuzz_regressions.rs`.
//!
//! Input: UTF-8 lines `EXPRESSION[\nTIME_ZONE[\nUNIX_SECONDS]]` (no second line: no time zone).
//! Checked: parsing never panics; errors carry no control characters; a parsed schedule's
//! `next_after` returns, for a few fixed instants (the epoch, a 2026 date, the ends of the
//! timestamp range) and the one the input names, a time strictly after it or `Timestamp::MAX`,
//! each call within a second; the next run after that one is later again; `@every` adds exactly
//! its interval and shows itself in a form that parses back; a cron schedule fires at all.

use std::time::{Duration, Instant};

use jiff::{SignedDuration, Timestamp};
use mpu_sweeper::schedule::Schedule;

/// How long one `next_after` may take; the cron search covers eight years of days and takes
/// milliseconds.
const CALL_LIMIT: Duration = Duration::from_secs(1);

pub fn run(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let mut lines = text.splitn(3, '\n');
    let expression = lines.next().unwrap_or_default();
    let zone = lines.next();
    let from_input = lines
        .next()
        .and_then(|line| line.trim().parse::<i64>().ok())
        .and_then(|secs| Timestamp::from_second(secs).ok());

    let schedule = match Schedule::parse(expression, zone) {
        Ok(schedule) => schedule,
        Err(err) => {
            let message = err.to_string();
            assert!(
                !message.chars().any(char::is_control),
                "the error shows a control character: {message:?}"
            );
            return;
        }
    };

    let day = SignedDuration::from_hours(24);
    let mut instants = vec![
        Timestamp::UNIX_EPOCH,
        Timestamp::from_second(1_795_324_200).unwrap(), // 2026-11-22T05:10:00Z
        Timestamp::MIN,
        Timestamp::MAX.checked_sub(day).unwrap(),
        Timestamp::MAX,
    ];
    instants.extend(from_input);
    for after in instants {
        let next = next_after(&schedule, after, expression, zone);
        if next != Timestamp::MAX {
            let again = next_after(&schedule, next, expression, zone);
            assert!(again > next || again == Timestamp::MAX);
        }
        if let Schedule::Every(interval) = &schedule {
            let step = SignedDuration::from_secs(i64::try_from(interval.as_secs()).unwrap());
            assert_eq!(
                next,
                after.checked_add(step).unwrap_or(Timestamp::MAX),
                "@every {interval} after {after}"
            );
        }
    }

    match &schedule {
        Schedule::Every(interval) => {
            let shown = schedule.to_string();
            match Schedule::parse(&shown, None) {
                Ok(Schedule::Every(back)) => assert_eq!(back, *interval, "{shown}"),
                other => panic!("{expression:?} is shown as {shown:?}, which parses to {other:?}"),
            }
        }
        Schedule::Cron(_) => assert_ne!(
            schedule.next_after(Timestamp::UNIX_EPOCH),
            Timestamp::MAX,
            "{expression:?} was accepted but never fires"
        ),
    }
}

fn next_after(
    schedule: &Schedule,
    after: Timestamp,
    expression: &str,
    zone: Option<&str>,
) -> Timestamp {
    let started = Instant::now();
    let next = schedule.next_after(after);
    let took = started.elapsed();
    assert!(
        next > after || next == Timestamp::MAX,
        "{expression:?} in {zone:?}: next run after {after} is {next}"
    );
    assert!(
        took < CALL_LIMIT,
        "{expression:?} in {zone:?}: next_after({after}) took {took:?}"
    );
    next
}
