//! When a `MultipartCleanup` runs: 5-field cron (in an IANA time zone), `@hourly`, `@daily`,
//! `@weekly`, `@monthly`, `@yearly`, or `@every <duration>` in the max-age syntax.

use std::fmt;

use jiff::civil::{Date, DateTime, Time};
use jiff::tz::TimeZone;
use jiff::{SignedDuration, Timestamp, ToSpan};

use crate::max_age::MaxAge;

#[derive(Debug, Clone)]
pub enum Schedule {
    /// Every fixed interval after the previous run started.
    Every(MaxAge),
    Cron(Box<Cron>),
}

/// A parsed 5-field cron expression with its time zone.
#[derive(Debug, Clone)]
pub struct Cron {
    minutes: u64,
    hours: u64,
    days_of_month: u64,
    months: u64,
    days_of_week: u64,
    /// Cron's day rule: when both day fields are restricted, a day matching either one counts.
    dom_restricted: bool,
    dow_restricted: bool,
    zone: TimeZone,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid schedule {input:?}: {reason}; expected a 5-field cron expression (\"0 3 * * *\"), @hourly, @daily, @weekly, @monthly, @yearly or \"@every <duration>\" (\"@every 6h\")"
)]
pub struct ScheduleError {
    input: String,
    reason: String,
}

#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error(
    "invalid time zone {0:?}: expected an IANA name such as UTC, Europe/Berlin or America/New_York"
)]
pub struct TimeZoneError(String);

impl Schedule {
    /// Parses `expression`; `time_zone` (default UTC) applies to cron forms.
    pub fn parse(expression: &str, time_zone: Option<&str>) -> Result<Self, ScheduleParseError> {
        let zone = match time_zone.map(str::trim).filter(|z| !z.is_empty()) {
            None => TimeZone::UTC,
            Some(name) => TimeZone::get(name)
                .map_err(|_| ScheduleParseError::TimeZone(TimeZoneError(name.to_owned())))?,
        };
        let fail = |reason: &str| {
            ScheduleParseError::Schedule(ScheduleError {
                input: expression.to_owned(),
                reason: reason.to_owned(),
            })
        };
        let text = expression.trim();
        if let Some(interval) = text.strip_prefix("@every") {
            let interval = interval.trim();
            return interval
                .parse::<MaxAge>()
                .map(Schedule::Every)
                .map_err(|_| {
                    fail("the @every interval is not a positive duration like 30m or 6h")
                });
        }
        let fields = match text {
            "@hourly" => "0 * * * *",
            "@daily" | "@midnight" => "0 0 * * *",
            "@weekly" => "0 0 * * 0",
            "@monthly" => "0 0 1 * *",
            "@yearly" | "@annually" => "0 0 1 1 *",
            other if other.starts_with('@') => return Err(fail("unknown @ shorthand")),
            other => other,
        };
        let parts: Vec<&str> = fields.split_whitespace().collect();
        if parts.len() != 5 {
            return Err(fail(&format!(
                "a cron expression has 5 fields, this has {}",
                parts.len()
            )));
        }
        let field = |index: usize, name: &str, min: u32, max: u32, names: &[&str]| {
            parse_field(parts[index], min, max, names)
                .map_err(|reason| fail(&format!("{name} field {:?}: {reason}", parts[index])))
        };
        const MONTHS: &[&str] = &[
            "jan", "feb", "mar", "apr", "may", "jun", "jul", "aug", "sep", "oct", "nov", "dec",
        ];
        const DAYS: &[&str] = &["sun", "mon", "tue", "wed", "thu", "fri", "sat"];
        let mut days_of_week = field(4, "day-of-week", 0, 7, DAYS)?;
        // 7 is Sunday too.
        if days_of_week & (1 << 7) != 0 {
            days_of_week |= 1;
        }
        let cron = Cron {
            minutes: field(0, "minute", 0, 59, &[])?,
            hours: field(1, "hour", 0, 23, &[])?,
            days_of_month: field(2, "day-of-month", 1, 31, &[])?,
            months: field(3, "month", 1, 12, MONTHS)?,
            days_of_week,
            dom_restricted: parts[2] != "*",
            dow_restricted: parts[4] != "*",
            zone,
        };
        // "0 0 30 2 *" is well formed but never fires; accepting it would silently never sweep.
        if cron.next_after(Timestamp::UNIX_EPOCH) == Timestamp::MAX {
            return Err(fail(
                "no date ever matches its day-of-month and month fields",
            ));
        }
        Ok(Schedule::Cron(Box::new(cron)))
    }

    /// The first run time strictly after `after`.
    pub fn next_after(&self, after: Timestamp) -> Timestamp {
        match self {
            Schedule::Every(interval) => {
                let step = SignedDuration::from_secs(interval.as_secs() as i64);
                after.checked_add(step).unwrap_or(Timestamp::MAX)
            }
            Schedule::Cron(cron) => cron.next_after(after),
        }
    }
}

/// Either half of a schedule can be wrong; callers report which.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum ScheduleParseError {
    #[error(transparent)]
    Schedule(#[from] ScheduleError),
    #[error(transparent)]
    TimeZone(#[from] TimeZoneError),
}

impl Cron {
    fn day_matches(&self, date: Date) -> bool {
        let dom = self.days_of_month & (1 << date.day()) != 0;
        let dow = self.days_of_week & (1 << date.weekday().to_sunday_zero_offset()) != 0;
        let month = self.months & (1 << date.month()) != 0;
        let day = match (self.dom_restricted, self.dow_restricted) {
            (true, true) => dom || dow,
            (true, false) => dom,
            (false, true) => dow,
            (false, false) => true,
        };
        month && day
    }

    fn next_after(&self, after: Timestamp) -> Timestamp {
        let start = after.to_zoned(self.zone.clone()).datetime();
        let mut date = start.date();
        // Eight years covers every valid expression, Feb 29 on a given weekday included.
        for _ in 0..(366 * 8) {
            if self.day_matches(date) {
                for hour in 0..24i8 {
                    if self.hours & (1 << hour) == 0 {
                        continue;
                    }
                    for minute in 0..60i8 {
                        if self.minutes & (1 << minute) == 0 {
                            continue;
                        }
                        let civil = DateTime::from_parts(date, Time::constant(hour, minute, 0, 0));
                        // A time skipped by a DST jump moves forward, as cron daemons do.
                        let Ok(zoned) = civil.to_zoned(self.zone.clone()) else {
                            continue;
                        };
                        if zoned.timestamp() > after {
                            return zoned.timestamp();
                        }
                    }
                }
            }
            date = match date.checked_add(1.day()) {
                Ok(next) => next,
                Err(_) => break,
            };
        }
        Timestamp::MAX
    }
}

/// One cron field as a bit set: `*`, `n`, `a-b`, `*/s`, `a-b/s`, `a/s`, names, comma lists.
fn parse_field(text: &str, min: u32, max: u32, names: &[&str]) -> Result<u64, String> {
    let value = |token: &str| -> Result<u32, String> {
        if let Some(index) = names.iter().position(|n| n.eq_ignore_ascii_case(token)) {
            // Names are listed from the field's minimum: jan = 1, sun = 0.
            return Ok(index as u32 + min);
        }
        let number: u32 = token
            .parse()
            .map_err(|_| format!("{token:?} is not a number"))?;
        if number < min || number > max {
            return Err(format!("{number} is outside {min}-{max}"));
        }
        Ok(number)
    };
    let mut bits = 0u64;
    for item in text.split(',') {
        let (range, step) = match item.split_once('/') {
            Some((range, step)) => {
                let step: u32 = step
                    .parse()
                    .map_err(|_| format!("step {step:?} is not a number"))?;
                if step == 0 {
                    return Err("a step of 0".into());
                }
                (range, step)
            }
            None => (item, 1),
        };
        let (low, high) = if range == "*" {
            (min, max)
        } else if let Some((a, b)) = range.split_once('-') {
            let (a, b) = (value(a)?, value(b)?);
            if a > b {
                return Err(format!("range {a}-{b} runs backwards"));
            }
            (a, b)
        } else {
            let start = value(range)?;
            // `a/s` means from a to the end in steps of s.
            (start, if step > 1 { max } else { start })
        };
        // Steps of any size are allowed (`30/4294967295` is just 30); the sum must not overflow.
        let mut v = Some(low);
        while let Some(value) = v.filter(|value| *value <= high) {
            bits |= 1 << value;
            v = value.checked_add(step);
        }
    }
    Ok(bits)
}

impl fmt::Display for Schedule {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Schedule::Every(interval) => write!(f, "@every {interval}"),
            Schedule::Cron(_) => f.write_str("cron"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn next(expression: &str, zone: Option<&str>, after: &str) -> String {
        Schedule::parse(expression, zone)
            .unwrap()
            .next_after(at(after))
            .to_string()
    }

    #[test]
    fn shorthands_and_intervals() {
        assert_eq!(
            next("@hourly", None, "2026-11-22T05:10:00Z"),
            "2026-11-22T06:00:00Z"
        );
        assert_eq!(
            next("@hourly", None, "2026-11-22T05:00:00Z"),
            "2026-11-22T06:00:00Z"
        );
        assert_eq!(
            next("@daily", None, "2026-11-22T05:10:00Z"),
            "2026-11-23T00:00:00Z"
        );
        // 2026-11-22 is a Sunday.
        assert_eq!(
            next("@weekly", None, "2026-11-22T05:10:00Z"),
            "2026-11-29T00:00:00Z"
        );
        assert_eq!(
            next("@every 90m", None, "2026-11-22T05:10:00Z"),
            "2026-11-22T06:40:00Z"
        );
        assert_eq!(
            next("@every 1d12h", None, "2026-11-22T05:10:00Z"),
            "2026-11-23T17:10:00Z"
        );
    }

    #[test]
    fn cron_fields() {
        assert_eq!(
            next("*/15 * * * *", None, "2026-11-22T05:10:00Z"),
            "2026-11-22T05:15:00Z"
        );
        assert_eq!(
            next("0 3 * * *", None, "2026-11-22T05:10:00Z"),
            "2026-11-23T03:00:00Z"
        );
        assert_eq!(
            next("30 2 1 * *", None, "2026-11-22T05:10:00Z"),
            "2026-12-01T02:30:00Z"
        );
        assert_eq!(
            next("0 0 * * mon-fri", None, "2026-11-21T12:00:00Z"),
            "2026-11-23T00:00:00Z"
        );
        assert_eq!(
            next("0 0 * * 7", None, "2026-11-21T12:00:00Z"),
            "2026-11-22T00:00:00Z"
        );
        assert_eq!(
            next("0 12 * jan *", None, "2026-11-22T05:10:00Z"),
            "2027-01-01T12:00:00Z"
        );
        assert_eq!(
            next("0 0 29 2 *", None, "2026-11-22T05:10:00Z"),
            "2028-02-29T00:00:00Z"
        );
        // Both day fields restricted: either matches (the 1st, or a Monday).
        assert_eq!(
            next("0 0 1 * 1", None, "2026-11-24T00:00:00Z"),
            "2026-11-30T00:00:00Z"
        );
        assert_eq!(
            next("5,35 */6 * * *", None, "2026-11-22T06:06:00Z"),
            "2026-11-22T06:35:00Z"
        );
    }

    #[test]
    fn cron_in_a_time_zone_and_across_dst() {
        // 03:00 in Berlin is 02:00 UTC in winter.
        assert_eq!(
            next("0 3 * * *", Some("Europe/Berlin"), "2026-11-22T05:10:00Z"),
            "2026-11-23T02:00:00Z"
        );
        // 02:30 does not exist on 2027-03-28 in Berlin; that day's run moves past the gap.
        let t = next("30 2 * * *", Some("Europe/Berlin"), "2027-03-27T12:00:00Z");
        assert_eq!(t, "2027-03-28T01:30:00Z");
    }

    #[test]
    fn huge_steps_mean_the_first_value_only() {
        let t = next("30/4294967295 * * * *", None, "2026-11-22T05:31:00Z");
        assert_eq!(t, "2026-11-22T06:30:00Z");
        let t = next("0 */4294967295 * * *", None, "2026-11-22T05:31:00Z");
        assert_eq!(t, "2026-11-23T00:00:00Z");
        assert!(Schedule::parse("*/4294967296 * * * *", None).is_err());
    }

    #[test]
    fn bad_schedules_and_zones_say_what_is_accepted() {
        for bad in [
            "",
            "@sometimes",
            "* * * *",
            "61 * * * *",
            "* 24 * * *",
            "*/0 * * * *",
            "5-1 * * * *",
            "@every 0s",
            "@every soon",
            "a b c d e",
            "0 0 30 2 *",
            "0 0 31 4,6,9,11 *",
        ] {
            let err = Schedule::parse(bad, None).unwrap_err();
            assert!(matches!(err, ScheduleParseError::Schedule(_)), "{bad:?}");
            assert!(err.to_string().contains("5-field cron"), "{err}");
        }
        let err = Schedule::parse("@hourly", Some("Mars/Olympus")).unwrap_err();
        assert!(matches!(err, ScheduleParseError::TimeZone(_)));
        assert!(err.to_string().contains("IANA"), "{err}");
    }
}
