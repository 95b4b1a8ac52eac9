//! The duration syntax shared by `sweep --max-age`/`--timeout` and the resource's `spec.maxAge`,
//! `spec.timeout` and `@every` schedules: one or more `<number><unit>` terms, units `s`, `m`, `h`,
//! `d`, `w` (`1d12h`, `90m`, `2w`).

use std::fmt;
use std::time::Duration;

/// What the syntax accepts, for error messages.
pub const ACCEPTED: &str = "a positive duration made of <number><unit> terms with units s, m, h, d, w \
     (for example 30s, 90m, 36h, 7d, 2w or 1d12h)";

/// A positive age limit, in whole seconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct MaxAge(Duration);

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("invalid duration {input:?}: {reason}; expected {ACCEPTED}")]
pub struct MaxAgeError {
    input: String,
    reason: &'static str,
}

impl MaxAge {
    pub fn from_secs(secs: u64) -> Option<Self> {
        (secs > 0).then(|| Self(Duration::from_secs(secs)))
    }

    pub fn as_duration(self) -> Duration {
        self.0
    }

    pub fn as_secs(self) -> u64 {
        self.0.as_secs()
    }
}

/// A duration in the same syntax, rounded down to whole seconds; `0s` when shorter than one.
pub fn format_duration(duration: Duration) -> String {
    MaxAge::from_secs(duration.as_secs()).map_or_else(|| "0s".to_owned(), |d| d.to_string())
}

/// A positive duration in the same syntax (`--timeout`, `spec.timeout`).
pub fn parse_duration(text: &str) -> Result<Duration, MaxAgeError> {
    text.parse::<MaxAge>().map(MaxAge::as_duration)
}

impl std::str::FromStr for MaxAge {
    type Err = MaxAgeError;

    fn from_str(input: &str) -> Result<Self, Self::Err> {
        let fail = |reason| MaxAgeError {
            input: input.to_owned(),
            reason,
        };
        let text = input.trim();
        if text.is_empty() {
            return Err(fail("it is empty"));
        }
        let mut total: u64 = 0;
        let mut rest = text;
        while !rest.is_empty() {
            let digits = rest.bytes().take_while(u8::is_ascii_digit).count();
            if digits == 0 {
                return Err(fail(if rest.starts_with('-') {
                    "negative durations are not allowed"
                } else {
                    "each term must start with a whole number"
                }));
            }
            let number: u64 = rest[..digits]
                .parse()
                .map_err(|_| fail("a number is too large"))?;
            let unit = rest[digits..]
                .chars()
                .next()
                .ok_or_else(|| fail("the last number has no unit"))?;
            let unit_secs = match unit {
                's' => 1,
                'm' => 60,
                'h' => 3_600,
                'd' => 86_400,
                'w' => 604_800,
                _ => return Err(fail("unknown unit")),
            };
            total = number
                .checked_mul(unit_secs)
                .and_then(|secs| total.checked_add(secs))
                .ok_or_else(|| fail("the duration is too large"))?;
            rest = &rest[digits + unit.len_utf8()..];
        }
        // Ten thousand years is no age limit at all; it only overflows timestamp arithmetic.
        if total > 10_000 * 365 * 86_400 {
            return Err(fail("the duration is too large"));
        }
        Self::from_secs(total).ok_or_else(|| fail("it must be greater than zero"))
    }
}

impl fmt::Display for MaxAge {
    /// The shortest form in the same syntax, so the value round-trips (`1d12h`, `90m`).
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let mut secs = self.as_secs();
        for (unit, size) in [
            ("w", 604_800),
            ("d", 86_400),
            ("h", 3_600),
            ("m", 60),
            ("s", 1),
        ] {
            if secs >= size {
                write!(f, "{}{unit}", secs / size)?;
                secs %= size;
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn secs(text: &str) -> u64 {
        text.parse::<MaxAge>().unwrap().as_secs()
    }

    #[test]
    fn accepts_every_unit_and_combinations() {
        assert_eq!(secs("30s"), 30);
        assert_eq!(secs("90m"), 5_400);
        assert_eq!(secs("36h"), 129_600);
        assert_eq!(secs("7d"), 604_800);
        assert_eq!(secs("2w"), 1_209_600);
        assert_eq!(secs("1d12h"), 129_600);
        assert_eq!(
            secs("1w2d3h4m5s"),
            604_800 + 2 * 86_400 + 3 * 3_600 + 4 * 60 + 5
        );
        assert_eq!(secs(" 7d "), 604_800);
    }

    #[test]
    fn rejects_zero_negative_and_garbage_with_the_accepted_syntax() {
        for bad in [
            "",
            "0s",
            "0d0h",
            "-1d",
            "7",
            "d",
            "7x",
            "1.5h",
            "7 d",
            "abc",
            "99999999999999999999w",
            "1000000w",
        ] {
            let err = bad.parse::<MaxAge>().unwrap_err().to_string();
            assert!(err.contains("for example 30s"), "{bad:?}: {err}");
        }
        assert!(
            "-1d"
                .parse::<MaxAge>()
                .unwrap_err()
                .to_string()
                .contains("negative")
        );
        assert!(
            "0s".parse::<MaxAge>()
                .unwrap_err()
                .to_string()
                .contains("greater than zero")
        );
    }

    #[test]
    fn displays_in_the_same_syntax() {
        for text in ["30s", "90m", "1d12h", "2w", "1w2d3h4m5s"] {
            let parsed: MaxAge = text.parse().unwrap();
            let shown = parsed.to_string();
            assert_eq!(
                shown.parse::<MaxAge>().unwrap(),
                parsed,
                "{text} -> {shown}"
            );
        }
        assert_eq!("90m".parse::<MaxAge>().unwrap().to_string(), "1h30m");
    }
}
