//! The sweep engine: list a bucket's incomplete multipart uploads page by page, abort the ones
//! older than the age limit, and count what happened. It knows S3 and nothing of Kubernetes; the
//! `sweep` command and the operator both drive it through [`sweep`].

mod abort;
mod body_cap;
mod buckets;
mod client;
mod congestion;
mod endpoint_policy;
mod error;
mod lifecycle;
mod listing;
mod many;
mod pacing;
mod requests;
mod run;
mod tally;

use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::max_age::MaxAge;
use crate::text;

pub use abort::{AbortOptions, MAX_ABORT_ATTEMPTS, UploadOutcome};
pub use body_cap::MAX_ANSWER_BYTES;
pub use buckets::{BucketSelection, glob_matches};
pub use client::{
    AddressingStyle, CredentialSource, DEFAULT_REGION, Limits, S3Settings, SendGate, SettingsError,
};
pub use endpoint_policy::{DEFAULT_DENIED, EndpointForbidden, EndpointPolicy};
pub use error::{RetryClass, S3Error, S3ErrorKind};
pub use lifecycle::{LifecycleGoal, LifecycleMode, LifecycleReport, LifecycleState, RULE_ID};
pub use listing::{ListedUpload, MAX_PAGES, ServerDate, parse_server_date};
pub use many::{BucketResult, RunOutcome, sweep_buckets};
pub use requests::RetryPolicy;
pub use tally::{PrefixCount, PrefixTally, TOP_PREFIXES};

pub const DEFAULT_PAGE_SIZE: i32 = 1000;
pub const DEFAULT_CONCURRENCY: usize = 128;
pub const MAX_CONCURRENCY: usize = 256;
/// Fits, with the status write and the Lease release, in the chart's 150 s termination grace.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(90);
/// How long one run may take before it stops listing and winds down.
pub const DEFAULT_TIMEOUT: Duration = Duration::from_secs(3_600);
/// Failures kept as examples in the summary; the rest are only counted.
pub const MAX_FAILURE_EXAMPLES: usize = 20;

/// What to sweep and how.
#[derive(Debug, Clone)]
pub struct SweepOptions {
    pub bucket: String,
    pub prefix: Option<String>,
    pub max_age: MaxAge,
    /// `MaxUploads` per ListMultipartUploads page, 1..=1000.
    pub page_size: i32,
    /// Aborts in flight at once, 1..=256.
    pub concurrency: usize,
    pub dry_run: bool,
    pub verify: bool,
    pub measure_bytes: bool,
    /// The run's time limit: when it passes, listing stops and the aborts in flight drain.
    pub timeout: Duration,
    /// After a cancel or the time limit, how long the aborts in flight may take to finish before
    /// they are left undone (an abort with measurement and verification chains several S3
    /// operations).
    pub drain_timeout: Duration,
    pub retry: RetryPolicy,
    /// How many `/`-separated levels of a key make the prefix stale uploads are counted by.
    pub prefix_depth: usize,
}

impl SweepOptions {
    pub fn new(bucket: impl Into<String>, max_age: MaxAge) -> Self {
        Self {
            bucket: bucket.into(),
            prefix: None,
            max_age,
            page_size: DEFAULT_PAGE_SIZE,
            concurrency: DEFAULT_CONCURRENCY,
            dry_run: false,
            verify: true,
            measure_bytes: false,
            timeout: DEFAULT_TIMEOUT,
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
            retry: RetryPolicy::default(),
            prefix_depth: 1,
        }
    }

    pub fn validate(&self) -> Result<(), String> {
        if self.bucket.trim().is_empty() {
            return Err("the bucket name is empty".into());
        }
        if !(1..=1000).contains(&self.page_size) {
            return Err(format!(
                "page size {} is out of range 1..=1000",
                self.page_size
            ));
        }
        if !(1..=MAX_CONCURRENCY).contains(&self.concurrency) {
            return Err(format!(
                "concurrency {} is out of range 1..={MAX_CONCURRENCY}",
                self.concurrency
            ));
        }
        if self.timeout.is_zero() {
            return Err("the timeout must be longer than zero".into());
        }
        Ok(())
    }
}

/// One failed upload, kept as an example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureExample {
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
    pub code: String,
    pub message: String,
}

/// The result of one sweep, serialized as the command's JSON output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepSummary {
    /// The bucket swept; empty (and left out of JSON) in the totals of several buckets.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub bucket: String,
    pub prefix: Option<String>,
    pub max_age_seconds: u64,
    pub dry_run: bool,
    /// Uploads listed.
    pub found: u64,
    /// Uploads older than the age limit.
    pub stale: u64,
    pub aborted: u64,
    /// Stale uploads that somebody else completed or aborted before we got to them.
    pub already_gone: u64,
    /// Uploads the server listed without an initiation time; never aborted.
    pub skipped: u64,
    pub failed: u64,
    /// Answers that asked for a slower pace (503, SlowDown); each was retried after a backoff.
    pub throttled: u64,
    /// The most requests the run allowed in flight at once: its concurrency limit at its
    /// highest, which grows from 16 towards `concurrency` while the server keeps up.
    pub peak_concurrency: u64,
    /// Bytes held by the aborted uploads; `None` unless measuring.
    pub bytes_freed: Option<u64>,
    /// Bytes held by the stale uploads that were measured (aborted, or in a dry run would be);
    /// `None` unless measuring.
    pub stale_bytes: Option<u64>,
    /// How old the oldest stale upload was, by the clock ages were measured on.
    pub oldest_stale_age_seconds: Option<u64>,
    /// The prefixes with the most stale uploads (and bytes, when measured).
    pub top_prefixes: Vec<PrefixCount>,
    /// Stale uploads by prefix, from which `top_prefixes` is made.
    #[serde(skip)]
    pub prefixes: PrefixTally,
    pub start_time: jiff::Timestamp,
    pub completion_time: jiff::Timestamp,
    pub failures: Vec<FailureExample>,
    /// Things the run could not take at face value (a server's clock it did not trust...).
    pub warnings: Vec<String>,
}

impl SweepSummary {
    /// A summary with nothing counted yet.
    pub fn empty(options: &SweepOptions, start_time: jiff::Timestamp) -> Self {
        Self {
            bucket: options.bucket.clone(),
            prefix: options.prefix.clone().filter(|p| !p.is_empty()),
            max_age_seconds: options.max_age.as_secs(),
            dry_run: options.dry_run,
            found: 0,
            stale: 0,
            aborted: 0,
            already_gone: 0,
            skipped: 0,
            failed: 0,
            throttled: 0,
            peak_concurrency: 0,
            bytes_freed: (options.measure_bytes && !options.dry_run).then_some(0),
            stale_bytes: options.measure_bytes.then_some(0),
            oldest_stale_age_seconds: None,
            top_prefixes: Vec::new(),
            prefixes: PrefixTally::new(options.prefix_depth, options.measure_bytes),
            start_time,
            completion_time: start_time,
            failures: Vec::new(),
            warnings: Vec::new(),
        }
    }

    fn count_stale_bytes(&mut self, upload: &ListedUpload, bytes: Option<u64>) {
        if let (Some(total), Some(bytes)) = (self.stale_bytes.as_mut(), bytes) {
            *total = total.saturating_add(bytes);
            self.prefixes.add_bytes(&upload.key, bytes);
        }
    }

    fn record(&mut self, upload: &ListedUpload, outcome: &UploadOutcome) {
        match outcome {
            UploadOutcome::Aborted { bytes } => {
                self.aborted += 1;
                if let (Some(total), Some(bytes)) = (self.bytes_freed.as_mut(), bytes) {
                    *total = total.saturating_add(*bytes);
                }
                self.count_stale_bytes(upload, *bytes);
            }
            UploadOutcome::AlreadyGone => self.already_gone += 1,
            UploadOutcome::WouldAbort { bytes } => self.count_stale_bytes(upload, *bytes),
            UploadOutcome::Failed(err) => {
                self.failed += 1;
                if self.failures.len() < MAX_FAILURE_EXAMPLES {
                    // Keys and upload IDs come from the server: shown escaped and cut.
                    self.failures.push(FailureExample {
                        bucket: text::name(&self.bucket).to_string(),
                        key: text::name(&upload.key).to_string(),
                        upload_id: text::name(&upload.upload_id).to_string(),
                        code: err.code_or_kind(),
                        message: err.message.clone(),
                    });
                }
            }
        }
    }
}

/// Why a sweep ended before the listing was exhausted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SweepStop {
    /// A listing page failed after retries; what was listed before it was still handled.
    ListingFailed(S3Error),
    /// An abort found the server unreachable after retries: the sweep stopped instead of failing
    /// every remaining upload one by one. The next sweep picks up where this one stopped.
    ServerUnreachable(S3Error),
    /// The caller cancelled; aborts in flight were finished.
    Cancelled,
    /// The run's time limit (the duration) passed; aborts in flight were finished.
    DeadlineExceeded(Duration),
}

#[derive(Debug, Clone)]
pub struct SweepOutcome {
    pub summary: SweepSummary,
    /// `None` when every page was listed and every stale upload handled.
    pub stop: Option<SweepStop>,
}

/// Progress hooks; both run on the sweeping task, so they must be quick.
pub trait SweepObserver: Send + Sync {
    /// A page was listed; `summary` already counts it.
    fn page_listed(&self, _page: &[ListedUpload], _summary: &SweepSummary) {}
    /// A stale upload was handled; `summary` already counts it.
    fn upload_handled(
        &self,
        _upload: &ListedUpload,
        _outcome: &UploadOutcome,
        _summary: &SweepSummary,
    ) {
    }
}

/// An observer that ignores everything.
pub struct NoProgress;
impl SweepObserver for NoProgress {}

/// Runs one sweep. Errors listing a page end the sweep with [`SweepStop::ListingFailed`]; errors
/// on single uploads are counted and never stop it.
///
/// The future is boxed so that its `Send`-ness is proven here, once: left unboxed, the stream
/// closures inside trip the compiler's higher-ranked lifetime checks in callers that spawn it.
pub fn sweep<'a>(
    client: &'a Client,
    options: &'a SweepOptions,
    observer: &'a dyn SweepObserver,
    cancel: &'a CancellationToken,
) -> BoxFuture<'a, SweepOutcome> {
    run_sweep(client, options, observer, cancel).boxed()
}

/// What the driver waits for; each is handed to one method of [`run::RunState`].
enum Event {
    Page(Option<Result<listing::Page, S3Error>>),
    Handled(ListedUpload, UploadOutcome),
    Cancelled,
    DeadlinePassed,
    DrainExpired,
}

async fn run_sweep(
    client: &Client,
    options: &SweepOptions,
    observer: &dyn SweepObserver,
    cancel: &CancellationToken,
) -> SweepOutcome {
    let local_clock = client.config().time_source();
    let now_local = || {
        local_clock
            .as_ref()
            .map_or_else(SystemTime::now, |t| t.now())
    };
    let abort_options = AbortOptions {
        dry_run: options.dry_run,
        verify: options.verify,
        measure_bytes: options.measure_bytes,
    };
    let bucket: Arc<str> = options.bucket.as_str().into();
    let requests = Arc::new(requests::Requests::new(options.retry, options.concurrency));
    let mut state = run::RunState::new(options, jiff::Timestamp::now());
    let pages = listing::pages(
        client,
        &requests,
        &options.bucket,
        options.prefix.as_deref(),
        options.page_size,
    );
    let mut pages = std::pin::pin!(pages);
    let mut in_flight: FuturesUnordered<BoxFuture<'static, (ListedUpload, UploadOutcome)>> =
        FuturesUnordered::new();
    let deadline = tokio::time::sleep(options.timeout);
    let mut deadline = std::pin::pin!(deadline);
    loop {
        while let Some(upload) = state.next_upload(in_flight.len(), requests.concurrency_limit()) {
            let target = abort::AbortTarget {
                client: client.clone(),
                requests: requests.clone(),
                bucket: bucket.clone(),
                upload,
            };
            in_flight.push(target.handle(abort_options).boxed());
        }
        if state.is_finished(in_flight.len()) {
            break;
        }
        let event = tokio::select! {
            page = pages.next(), if state.wants_page() => Event::Page(page),
            Some((upload, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                Event::Handled(upload, outcome)
            }
            _ = cancel.cancelled(), if !state.is_winding_down() => Event::Cancelled,
            _ = &mut deadline, if !state.is_winding_down() => Event::DeadlinePassed,
            // An async block, so that no drain timer is made before winding down.
            _ = async {
                if let Some(until) = state.drain_deadline() {
                    tokio::time::sleep_until(until).await;
                }
            }, if state.is_winding_down() => Event::DrainExpired,
        };
        state.summary.throttled = requests.throttled();
        match event {
            Event::Page(None) => state.on_listing_end(),
            Event::Page(Some(Err(err))) => state.on_listing_failed(err),
            Event::Page(Some(Ok(page))) => {
                state.on_page(&page, now_local());
                observer.page_listed(&page.uploads, &state.summary);
            }
            Event::Handled(upload, outcome) => {
                state.on_handled(&upload, &outcome);
                observer.upload_handled(&upload, &outcome, &state.summary);
            }
            Event::Cancelled => {
                state.on_cancel(tokio::time::Instant::now());
                requests.wind_down();
            }
            Event::DeadlinePassed => {
                state.on_deadline(tokio::time::Instant::now());
                requests.wind_down();
            }
            Event::DrainExpired => {
                state.on_drain_expired(in_flight.len());
                break;
            }
        }
    }
    state.summary.peak_concurrency = requests.peak_concurrency() as u64;
    state.finish(requests.throttled(), jiff::Timestamp::now())
}

/// Stale means strictly older than the limit by the given clock; an upload dated in the future
/// (clock disagreement) is young, and one without a date is never stale.
pub fn is_stale(initiated: Option<SystemTime>, now: SystemTime, max_age: Duration) -> bool {
    match initiated {
        Some(initiated) => now.duration_since(initiated).is_ok_and(|age| age > max_age),
        None => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn staleness_is_strict_and_never_for_undated_or_future_uploads() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_000_000);
        let day = Duration::from_secs(86_400);
        assert!(is_stale(Some(now - 3 * day), now, 2 * day));
        assert!(!is_stale(Some(now - 3 * day), now, 4 * day));
        assert!(!is_stale(Some(now - 2 * day), now, 2 * day));
        assert!(!is_stale(Some(now + day), now, Duration::from_secs(1)));
        assert!(!is_stale(None, now, Duration::from_secs(1)));
    }

    #[test]
    fn summary_counts_outcomes_and_keeps_at_most_twenty_failures() {
        let mut options = SweepOptions::new("b", MaxAge::from_secs(60).unwrap());
        options.measure_bytes = true;
        let mut summary = SweepSummary::empty(&options, jiff::Timestamp::now());
        let upload = ListedUpload {
            key: "k".into(),
            upload_id: "u".into(),
            initiated: None,
        };
        summary.record(&upload, &UploadOutcome::Aborted { bytes: Some(10) });
        summary.record(&upload, &UploadOutcome::Aborted { bytes: None });
        summary.record(&upload, &UploadOutcome::AlreadyGone);
        for _ in 0..25 {
            let err = S3Error::new(
                S3ErrorKind::AccessDenied,
                Some("AccessDenied".into()),
                "denied",
            );
            summary.record(&upload, &UploadOutcome::Failed(err));
        }
        assert_eq!(
            (summary.aborted, summary.already_gone, summary.failed),
            (2, 1, 25)
        );
        assert_eq!(summary.bytes_freed, Some(10));
        assert_eq!(summary.failures.len(), MAX_FAILURE_EXAMPLES);
        assert_eq!(summary.failures[0].code, "AccessDenied");
        summary.record(
            &upload,
            &UploadOutcome::Aborted {
                bytes: Some(u64::MAX),
            },
        );
        assert_eq!(
            summary.bytes_freed,
            Some(u64::MAX),
            "saturates, never wraps"
        );
    }

    #[test]
    fn failure_examples_show_server_names_escaped_and_cut() {
        let options = SweepOptions::new("b", MaxAge::from_secs(60).unwrap());
        let mut summary = SweepSummary::empty(&options, jiff::Timestamp::now());
        let upload = ListedUpload {
            key: format!("k\u{1b}]0;pwned\u{7}{}", "x".repeat(2000)),
            upload_id: "id\u{9b}31m".into(),
            initiated: None,
        };
        let err = S3Error::new(S3ErrorKind::ServerError, None, "failed");
        summary.record(&upload, &UploadOutcome::Failed(err));
        let example = &summary.failures[0];
        assert!(
            example.key.starts_with("k\\x1b]0;pwned\\x07xxx"),
            "{}",
            example.key
        );
        assert!(example.key.len() < 300);
        assert_eq!(example.upload_id, "id\\x9b31m");
    }

    #[test]
    fn summary_serializes_with_the_documented_camel_case_fields() {
        let options = SweepOptions::new("b", MaxAge::from_secs(60).unwrap());
        let summary = SweepSummary::empty(&options, jiff::Timestamp::UNIX_EPOCH);
        let json = serde_json::to_value(&summary).unwrap();
        let mut keys: Vec<&str> = json
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        keys.sort_unstable();
        assert_eq!(
            keys,
            [
                "aborted",
                "alreadyGone",
                "bucket",
                "bytesFreed",
                "completionTime",
                "dryRun",
                "failed",
                "failures",
                "found",
                "maxAgeSeconds",
                "oldestStaleAgeSeconds",
                "peakConcurrency",
                "prefix",
                "skipped",
                "stale",
                "staleBytes",
                "startTime",
                "throttled",
                "topPrefixes",
                "warnings"
            ]
        );
        assert_eq!(json["bytesFreed"], serde_json::Value::Null);
    }

    #[test]
    fn options_reject_out_of_range_values() {
        let mut options = SweepOptions::new("b", MaxAge::from_secs(60).unwrap());
        assert!(options.validate().is_ok());
        options.concurrency = 0;
        assert!(options.validate().is_err());
        options.concurrency = 257;
        assert!(options.validate().is_err());
        options.concurrency = 16;
        options.page_size = 1001;
        assert!(options.validate().is_err());
        options.page_size = 1;
        options.timeout = Duration::ZERO;
        assert!(options.validate().is_err());
        options.timeout = DEFAULT_TIMEOUT;
        options.bucket = " ".into();
        assert!(options.validate().is_err());
    }
}
