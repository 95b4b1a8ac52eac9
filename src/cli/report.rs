//! What `mpu-sweeper sweep` prints: a text summary or one JSON object, and the `error:` line.

use std::fmt::Write;

use serde::Serialize;

use super::progress::counts_line;
use crate::max_age::{MaxAge, format_duration};
use crate::sweep::{BucketResult, PrefixCount, RunOutcome, SweepStop, SweepSummary};

/// Buckets listed one by one in a report; the rest are counted.
pub const MAX_LISTED_BUCKETS: usize = 50;

/// The JSON document printed with `--output json`: the run's totals, the buckets (the first 50),
/// and why the run stopped early.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonReport<'a> {
    #[serde(flatten)]
    totals: &'a SweepSummary,
    buckets: &'a [BucketResult],
    /// Buckets swept but not listed in `buckets`.
    more_buckets: usize,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

/// Prints the report on stdout and the error line, if any, on stderr.
pub fn print(outcome: &RunOutcome, json: bool, where_: &str) {
    let error = stop_message(outcome, where_);
    if json {
        let listed = &outcome.buckets[..outcome.buckets.len().min(MAX_LISTED_BUCKETS)];
        let report = JsonReport {
            totals: &outcome.totals,
            buckets: listed,
            more_buckets: outcome.buckets.len() - listed.len(),
            error: error.clone(),
        };
        println!(
            "{}",
            serde_json::to_string(&report).expect("report serializes")
        );
    } else {
        print!("{}", text(outcome));
    }
    if let Some(error) = error {
        eprintln!("error: {error}");
    }
}

/// One line for what stopped the run early; with several buckets, also those that failed.
pub fn stop_message(outcome: &RunOutcome, where_: &str) -> Option<String> {
    let found = outcome.totals.found;
    let single = outcome.buckets.len() == 1;
    let bucket = outcome.buckets.first().map_or("", |b| b.bucket.as_str());
    let message = outcome.stop.as_ref().map(|stop| match stop {
        SweepStop::ListingFailed(err) if single && found == 0 => {
            format!("cannot list multipart uploads of bucket {bucket:?} at {where_}: {err}")
        }
        SweepStop::ListingFailed(err) if single => {
            format!("listing of bucket {bucket:?} at {where_} stopped after {found} uploads: {err}")
        }
        SweepStop::ListingFailed(err) => format!("cannot list the buckets at {where_}: {err}"),
        SweepStop::ServerUnreachable(err) => format!(
            "bucket {bucket:?} at {where_} stopped answering after {found} uploads were listed: {err}"
        ),
        SweepStop::DeadlineExceeded(limit) => format!(
            "the run's time limit (--timeout {}) passed after {found} uploads were listed; the counts say what was done (a new run lists again from the start)",
            format_duration(*limit)
        ),
        SweepStop::Cancelled => "interrupted before the listing was complete".to_owned(),
    });
    if message.is_some() || single {
        return message;
    }
    let failed = outcome.failed_buckets();
    (failed > 0).then(|| {
        let first = outcome.buckets.iter().find(|b| b.error.is_some());
        let example = first.map_or_else(String::new, |b| {
            format!(
                "; first: {:?}: {}",
                b.bucket,
                b.error.as_deref().unwrap_or("")
            )
        });
        format!(
            "{failed} of {} buckets at {where_} could not be swept{example}",
            outcome.buckets.len()
        )
    })
}

fn text(outcome: &RunOutcome) -> String {
    let s = &outcome.totals;
    let mut out = String::new();
    let age = MaxAge::from_secs(s.max_age_seconds).map_or_else(String::new, |a| a.to_string());
    let scope = match (outcome.buckets.as_slice(), &s.prefix) {
        ([one], Some(prefix)) => format!("s3://{}/{prefix}", one.bucket),
        ([one], None) => format!("s3://{}", one.bucket),
        (many, prefix) => format!(
            "{} buckets{}",
            many.len(),
            prefix
                .as_ref()
                .map_or_else(String::new, |p| format!(", prefix {p}"))
        ),
    };
    let _ = writeln!(
        out,
        "{scope}: {} incomplete uploads, {} older than {age}",
        s.found, s.stale
    );
    if s.dry_run {
        let _ = writeln!(
            out,
            "dry run: would abort {} uploads; nothing was aborted",
            s.stale
        );
    } else {
        let _ = writeln!(out, "{}", counts_line(s));
    }
    if outcome.buckets.len() > 1 {
        bucket_lines(&mut out, &outcome.buckets);
    } else if let Some(lifecycle) = outcome.buckets.first().and_then(|b| b.lifecycle.as_ref()) {
        let _ = writeln!(
            out,
            "lifecycle rule: {:?}: {}",
            lifecycle.state, lifecycle.message
        );
    }
    origin_lines(&mut out, s);
    if s.throttled > 0 {
        let _ = writeln!(
            out,
            "throttled: the server asked for a slower pace {} times; those requests were retried after a backoff",
            s.throttled
        );
    }
    for warning in &s.warnings {
        let _ = writeln!(out, "warning: {warning}");
    }
    if let Some(bytes) = s.bytes_freed {
        let _ = writeln!(out, "bytes freed: {} ({bytes} bytes)", human_bytes(bytes));
    }
    failure_lines(&mut out, s);
    let seconds = s.completion_time.duration_since(s.start_time).as_secs_f64();
    let _ = writeln!(out, "took {seconds:.1}s");
    out
}

fn bucket_lines(out: &mut String, buckets: &[BucketResult]) {
    for b in buckets.iter().take(MAX_LISTED_BUCKETS) {
        let _ = write!(
            out,
            "  {}: found {} · stale {} · aborted {} · failed {}",
            b.bucket, b.found, b.stale, b.aborted, b.failed
        );
        if let Some(lifecycle) = &b.lifecycle {
            let _ = write!(out, " · lifecycle rule {:?}", lifecycle.state);
        }
        if let Some(error) = &b.error {
            let _ = write!(out, " · error: {error}");
        }
        out.push('\n');
    }
    if buckets.len() > MAX_LISTED_BUCKETS {
        let _ = writeln!(
            out,
            "  ... and {} more buckets",
            buckets.len() - MAX_LISTED_BUCKETS
        );
    }
}

/// Where the stale uploads come from: the oldest, the bytes, the prefixes with the most.
fn origin_lines(out: &mut String, s: &SweepSummary) {
    if let Some(age) = s.oldest_stale_age_seconds {
        let _ = writeln!(
            out,
            "oldest stale upload: {}",
            format_duration(std::time::Duration::from_secs(age))
        );
    }
    if let Some(bytes) = s.stale_bytes {
        let _ = writeln!(out, "stale bytes: {} ({bytes} bytes)", human_bytes(bytes));
    }
    if s.top_prefixes.is_empty() {
        return;
    }
    let _ = writeln!(out, "stale uploads by prefix:");
    for PrefixCount {
        prefix,
        uploads,
        bytes,
    } in &s.top_prefixes
    {
        let bytes = bytes.map_or_else(String::new, |b| format!(", {}", human_bytes(b)));
        let _ = writeln!(out, "  {prefix}: {uploads}{bytes}");
    }
}

/// Keys, upload IDs and messages are already escaped and cut (they come from the server).
fn failure_lines(out: &mut String, s: &SweepSummary) {
    for failure in &s.failures {
        let _ = writeln!(
            out,
            "failed: bucket {} key \"{}\" upload {}: {} ({})",
            failure.bucket, failure.key, failure.upload_id, failure.message, failure.code
        );
    }
    if s.failed as usize > s.failures.len() {
        let _ = writeln!(
            out,
            "... and {} more failures",
            s.failed as usize - s.failures.len()
        );
    }
}

pub fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 6] = ["B", "KiB", "MiB", "GiB", "TiB", "PiB"];
    let mut value = bytes as f64;
    let mut unit = 0;
    while value >= 1024.0 && unit < UNITS.len() - 1 {
        value /= 1024.0;
        unit += 1;
    }
    if unit == 0 {
        format!("{bytes} B")
    } else {
        format!("{value:.1} {}", UNITS[unit])
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn human_bytes_picks_binary_units() {
        assert_eq!(human_bytes(0), "0 B");
        assert_eq!(human_bytes(1023), "1023 B");
        assert_eq!(human_bytes(1536), "1.5 KiB");
        assert_eq!(human_bytes(5 * 1024 * 1024 * 1024), "5.0 GiB");
    }
}
