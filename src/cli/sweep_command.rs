//! `mpu-sweeper sweep`: one sweep of one bucket, summary on stdout.

use std::path::PathBuf;
use std::time::Duration;

use clap::{Args, ValueEnum};
use tokio_util::sync::CancellationToken;

use super::exit;
use super::progress::Progress;
use super::report;
use super::signals::wait_for_stop_signal;
use crate::max_age::MaxAge;
use crate::sweep::{
    self, AddressingStyle, BucketSelection, CredentialSource, LifecycleGoal, LifecycleMode, Limits,
    RetryPolicy, RunOutcome, S3Settings, SweepOptions, SweepStop,
};
use crate::telemetry::{self, LoggingArgs};

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum OutputFormat {
    Text,
    Json,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq, ValueEnum)]
pub enum LifecycleModeArg {
    Report,
    Ensure,
}

/// Credentials come from the standard AWS environment variables or profile files.
#[derive(Debug, Args)]
#[command(group(
    clap::ArgGroup::new("buckets").required(true).multiple(true).args(["bucket", "all_buckets", "include"])
))]
pub struct SweepArgs {
    /// Bucket to sweep (repeatable).
    #[arg(long, value_name = "BUCKET")]
    bucket: Vec<String>,

    /// Sweep every bucket the credentials can list (ListBuckets).
    #[arg(long)]
    all_buckets: bool,

    /// Sweep the listed buckets whose names match this pattern (`*`, `?`; repeatable).
    #[arg(long, value_name = "GLOB")]
    include: Vec<String>,

    /// Leave out buckets whose names match this pattern (repeatable).
    #[arg(long, value_name = "GLOB")]
    exclude: Vec<String>,

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

    /// Sum the part sizes of stale uploads before aborting them (or, in a dry run, instead) and
    /// report the bytes.
    #[arg(long)]
    measure_bytes: bool,

    /// How many `/`-separated levels of a key make the prefix the summary counts stale uploads by.
    #[arg(long, value_name = "N", default_value_t = 1, value_parser = clap::value_parser!(u16).range(1..=32))]
    prefix_depth: u16,

    /// Read (report) or also write (ensure) each bucket's AbortIncompleteMultipartUpload
    /// lifecycle rule, so that stale uploads stop piling up; the other rules are kept.
    #[arg(long, value_enum, value_name = "MODE")]
    lifecycle_rule: Option<LifecycleModeArg>,

    /// Days after initiation the ensured lifecycle rule aborts uploads.
    #[arg(long, value_name = "N", required_if_eq("lifecycle_rule", "ensure"), value_parser = clap::value_parser!(i32).range(1..=36500))]
    lifecycle_days: Option<i32>,

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
        prefix_depth: usize::from(args.prefix_depth),
        ..SweepOptions::new("(chosen per bucket)", args.max_age)
    };
    if let Err(err) = options.validate() {
        return usage_error(&err);
    }
    let selection = BucketSelection {
        names: args.bucket.clone(),
        include: if args.all_buckets {
            vec!["*".to_owned()]
        } else {
            args.include.clone()
        },
        exclude: args.exclude.clone(),
    };
    if let Err(err) = selection.validate() {
        return usage_error(&err);
    }
    let lifecycle = args.lifecycle_rule.map(|mode| LifecycleGoal {
        mode: match mode {
            LifecycleModeArg::Report => LifecycleMode::Report,
            LifecycleModeArg::Ensure => LifecycleMode::Ensure,
        },
        days_after_initiation: args.lifecycle_days.unwrap_or(0),
    });
    let client = match settings.client().await {
        Ok(client) => client,
        Err(err) => return usage_error(&err.to_string()),
    };

    let cancel = CancellationToken::new();
    let signals = tokio::spawn(cancel_on_signal(cancel.clone()));
    let progress = Progress::new(!args.quiet);
    let outcome = sweep::sweep_buckets(
        &client,
        &selection,
        &options,
        lifecycle.as_ref(),
        &progress,
        &cancel,
    )
    .await;
    progress.finish();
    signals.abort();

    let where_ = args.endpoint.as_deref().unwrap_or("AWS S3");
    report::print(&outcome, args.output == OutputFormat::Json, where_);
    exit_status(&outcome)
}

/// 3 when nothing could be listed (the one bucket, every bucket, or the bucket list), 1 when
/// some of the work failed, 4 and 130 for the deadline and an interruption.
fn exit_status(outcome: &RunOutcome) -> u8 {
    let failed_buckets = outcome.failed_buckets();
    match &outcome.stop {
        Some(SweepStop::ListingFailed(_) | SweepStop::ServerUnreachable(_)) => exit::LISTING_FAILED,
        Some(SweepStop::DeadlineExceeded(_)) => exit::DEADLINE_EXCEEDED,
        Some(SweepStop::Cancelled) => exit::INTERRUPTED,
        None if failed_buckets > 0 && failed_buckets == outcome.buckets.len() => {
            exit::LISTING_FAILED
        }
        None if failed_buckets > 0 || outcome.totals.failed > 0 => exit::SOME_FAILED,
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
