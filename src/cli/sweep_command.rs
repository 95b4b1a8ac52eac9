//! `mpu-sweeper sweep`: one sweep of one bucket, summary on stdout.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use super::exit;
use super::progress::{Progress, counts_line};
use super::signals::wait_for_stop_signal;
use crate::max_age::MaxAge;
use crate::sweep::{
    self, AddressingStyle, CredentialSource, Limits, RetryPolicy, S3Settings, SweepOptions,
    SweepOutcome, SweepStop, SweepSummary,
};
use crate::telemetry::{self, LoggingArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

/// Credentials come from the standard AWS environment variables or profile files.
#[derive(Debug, Args)]
pub struct SweepArgs {
    /// Bucket to sweep.
    #[arg(long)]
    bucket: String,

    /// Abort uploads older than this: 30s, 90m, 36h, 7d, 2w, 1d12h...
    #[arg(long, value_name = "AGE", value_parser = parse_max_age, allow_hyphen_values = true)]
    max_age: MaxAge,

    /// S3 endpoint URL; AWS S3 when absent.
    #[arg(long, value_name = "URL")]
    endpoint: Option<String>,

    /// Region used for signing.
    #[arg(long, env = "AWS_REGION", default_value = sweep::DEFAULT_REGION)]
    region: String,

    /// Only uploads whose key starts with this prefix.
    #[arg(long)]
    prefix: Option<String>,

    /// How requests name the bucket: virtual (bucket.host) or path (host/bucket).
    #[arg(long, value_enum, default_value_t = AddressingStyle::Virtual)]
    addressing_style: AddressingStyle,

    /// Aborts in flight at once.
    #[arg(long, default_value_t = sweep::DEFAULT_CONCURRENCY as u16, value_parser = clap::value_parser!(u16).range(1..=sweep::MAX_CONCURRENCY as i64))]
    concurrency: u16,

    /// Uploads per ListMultipartUploads page.
    #[arg(long, default_value_t = sweep::DEFAULT_PAGE_SIZE as u16, value_parser = clap::value_parser!(u16).range(1..=1000))]
    page_size: u16,

    /// List and count, abort nothing.
    #[arg(long)]
    dry_run: bool,

    /// Skip checking with ListParts that aborted uploads hold no parts.
    #[arg(long)]
    no_verify: bool,

    /// Sum the part sizes of stale uploads before aborting them and report the bytes freed.
    #[arg(long)]
    measure_bytes: bool,

    /// PEM file of extra CA certificates to trust (for endpoints with a private CA).
    #[arg(long, value_name = "FILE")]
    ca_bundle: Option<PathBuf>,

    /// Seconds to wait for a TCP/TLS connection.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    connect_timeout: u64,

    /// Seconds one HTTP attempt may take before it is retried.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    request_timeout: u64,

    /// Attempts per request that fails (5xx, broken connection, timeout), the first included;
    /// retries back off exponentially with jitter. Throttled requests get up to four times as many.
    #[arg(long, value_name = "N", default_value_t = 5, value_parser = clap::value_parser!(u32).range(1..=20))]
    max_attempts: u32,

    /// The run's time limit: when it passes, listing stops, the aborts in flight finish and the
    /// summary says what was done (exit 4). Same syntax as --max-age.
    #[arg(long, value_name = "DURATION", default_value = "1h", value_parser = parse_timeout)]
    timeout: Duration,

    /// Summary format on stdout.
    #[arg(long, value_enum, default_value_t = OutputFormat::Text)]
    output: OutputFormat,

    #[command(flatten)]
    logging: LoggingArgs,

    /// No progress on stderr.
    #[arg(long)]
    quiet: bool,
}

fn parse_max_age(text: &str) -> Result<MaxAge, String> {
    text.parse()
        .map_err(|e: crate::max_age::MaxAgeError| e.to_string())
}

fn parse_timeout(text: &str) -> Result<Duration, String> {
    crate::max_age::parse_duration(text).map_err(|e| e.to_string())
}

/// The JSON document printed with `--output json`: the summary plus why the sweep stopped early.
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
struct JsonReport<'a> {
    #[serde(flatten)]
    summary: &'a SweepSummary,
    #[serde(skip_serializing_if = "Option::is_none")]
    error: Option<String>,
}

pub async fn run(args: SweepArgs) -> u8 {
    telemetry::init(&args.logging);

    let ca_bundle_pem = match &args.ca_bundle {
        Some(path) => match std::fs::read(path) {
            Ok(pem) => Some(pem),
            Err(err) => {
                return usage_error(&format!("cannot read CA bundle {}: {err}", path.display()));
            }
        },
        None => None,
    };
    let settings = S3Settings {
        endpoint: args.endpoint.clone(),
        region: args.region.clone(),
        addressing_style: args.addressing_style,
        ca_bundle_pem,
        credentials: CredentialSource::DefaultChain,
        limits: Limits {
            connect_timeout: Duration::from_secs(args.connect_timeout),
            attempt_timeout: Duration::from_secs(args.request_timeout),
        },
        ..S3Settings::default()
    };
    let options = SweepOptions {
        prefix: args.prefix.clone(),
        page_size: i32::from(args.page_size),
        concurrency: usize::from(args.concurrency),
        dry_run: args.dry_run,
        verify: !args.no_verify,
        measure_bytes: args.measure_bytes,
        timeout: args.timeout,
        retry: RetryPolicy {
            max_attempts: args.max_attempts,
            max_throttled_attempts: 4 * args.max_attempts,
            ..RetryPolicy::default()
        },
        ..SweepOptions::new(args.bucket.clone(), args.max_age)
    };
    if let Err(err) = options.validate() {
        return usage_error(&err);
    }
    let client = match settings.client().await {
        Ok(client) => client,
        Err(err) => return usage_error(&err.to_string()),
    };

    let cancel = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(cancel.clone()));
    let progress = Progress::new(!args.quiet);
    let outcome = sweep::sweep(&client, &options, &progress, &cancel).await;
    progress.finish();
    signals.abort();

    let where_ = args.endpoint.as_deref().unwrap_or("AWS S3");
    print_report(&outcome, args.output, where_);
    match &outcome.stop {
        Some(SweepStop::ListingFailed(_) | SweepStop::ServerUnreachable(_)) => exit::LISTING_FAILED,
        Some(SweepStop::DeadlineExceeded(_)) => exit::DEADLINE_EXCEEDED,
        Some(SweepStop::Cancelled) => exit::INTERRUPTED,
        None if outcome.summary.failed > 0 => exit::SOME_FAILED,
        None => exit::OK,
    }
}

fn usage_error(message: &str) -> u8 {
    eprintln!("error: {message}");
    exit::USAGE
}

async fn cancel_on_signal(cancel: CancellationToken) {
    wait_for_stop_signal().await;
    eprintln!("interrupted: finishing the aborts in flight, then stopping (again to quit now)");
    cancel.cancel();
    // Aborts in flight against a hung server can take minutes; a second signal does not wait.
    wait_for_stop_signal().await;
    eprintln!("interrupted again: quitting without waiting for the aborts in flight");
    std::process::exit(i32::from(exit::INTERRUPTED));
}

fn stop_message(outcome: &SweepOutcome, bucket: &str, where_: &str) -> Option<String> {
    outcome.stop.as_ref().map(|stop| match stop {
        SweepStop::ListingFailed(err) if outcome.summary.found == 0 => {
            format!("cannot list multipart uploads of bucket {bucket:?} at {where_}: {err}")
        }
        SweepStop::ListingFailed(err) => format!(
            "listing of bucket {bucket:?} at {where_} stopped after {} uploads: {err}",
            outcome.summary.found
        ),
        SweepStop::ServerUnreachable(err) => format!(
            "bucket {bucket:?} at {where_} stopped answering after {} uploads were listed: {err}",
            outcome.summary.found
        ),
        SweepStop::DeadlineExceeded(limit) => format!(
            "the run's time limit (--timeout {}) passed after {} uploads were listed; the counts say what was done (a new run lists the bucket again from the start)",
            crate::max_age::format_duration(*limit),
            outcome.summary.found
        ),
        SweepStop::Cancelled => "interrupted before the listing was complete".to_owned(),
    })
}

fn print_report(outcome: &SweepOutcome, format: OutputFormat, where_: &str) {
    let summary = &outcome.summary;
    let error = stop_message(outcome, &summary.bucket, where_);
    match format {
        OutputFormat::Json => {
            let report = JsonReport {
                summary,
                error: error.clone(),
            };
            println!(
                "{}",
                serde_json::to_string(&report).expect("summary serializes")
            );
        }
        OutputFormat::Text => print!("{}", text_report(summary)),
    }
    if let Some(error) = error {
        eprintln!("error: {error}");
    }
}

fn text_report(s: &SweepSummary) -> String {
    use std::fmt::Write;
    let mut out = String::new();
    let scope = match &s.prefix {
        Some(prefix) => format!("s3://{}/{}", s.bucket, prefix),
        None => format!("s3://{}", s.bucket),
    };
    let age = MaxAge::from_secs(s.max_age_seconds).map_or_else(String::new, |a| a.to_string());
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
    // Keys, upload IDs and messages are already escaped and cut (they come from the server).
    for failure in &s.failures {
        let _ = writeln!(
            out,
            "failed: key \"{}\" upload {}: {} ({})",
            failure.key, failure.upload_id, failure.message, failure.code
        );
    }
    if s.failed as usize > s.failures.len() {
        let _ = writeln!(
            out,
            "... and {} more failures",
            s.failed as usize - s.failures.len()
        );
    }
    let seconds = s.completion_time.duration_since(s.start_time).as_secs_f64();
    let _ = writeln!(out, "took {seconds:.1}s");
    out
}

fn human_bytes(bytes: u64) -> String {
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
