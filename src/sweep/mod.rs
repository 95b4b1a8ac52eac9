//! The sweep engine: list a bucket's incomplete multipart uploads page by page, abort the ones
//! older than the age limit, and count what happened. It knows S3 and nothing of Kubernetes; the
//! `sweep` command and the operator both drive it through [`sweep`].

mod abort;
mod client;
mod error;
mod listing;

use std::collections::VecDeque;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use futures::{FutureExt, StreamExt};
use serde::Serialize;
use tokio_util::sync::CancellationToken;

use crate::max_age::MaxAge;

pub use abort::{AbortOptions, MAX_ABORT_ATTEMPTS, UploadOutcome};
pub use client::{
    AddressingStyle, CredentialSource, DEFAULT_REGION, Limits, S3Settings, SettingsError,
};
pub use error::{S3Error, S3ErrorKind};
pub use listing::ListedUpload;

pub const DEFAULT_PAGE_SIZE: i32 = 1000;
pub const DEFAULT_CONCURRENCY: usize = 16;
pub const MAX_CONCURRENCY: usize = 256;
/// Fits, with the status write and the Lease release, in the chart's 150 s termination grace.
pub const DEFAULT_DRAIN_TIMEOUT: Duration = Duration::from_secs(90);
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
    /// After a cancel, how long the aborts in flight may take to finish before they are left
    /// undone (an abort with measurement and verification chains several S3 operations).
    pub drain_timeout: Duration,
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
            drain_timeout: DEFAULT_DRAIN_TIMEOUT,
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
        Ok(())
    }
}

/// One failed upload, kept as an example.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct FailureExample {
    pub key: String,
    pub upload_id: String,
    pub code: String,
    pub message: String,
}

/// The result of one sweep, serialized as the command's JSON output.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct SweepSummary {
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
    /// Bytes held by the aborted uploads; `None` unless measuring.
    pub bytes_freed: Option<u64>,
    pub start_time: jiff::Timestamp,
    pub completion_time: jiff::Timestamp,
    pub failures: Vec<FailureExample>,
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
            bytes_freed: (options.measure_bytes && !options.dry_run).then_some(0),
            start_time,
            completion_time: start_time,
            failures: Vec::new(),
        }
    }

    fn record(&mut self, upload: &ListedUpload, outcome: &UploadOutcome) {
        match outcome {
            UploadOutcome::Aborted { bytes } => {
                self.aborted += 1;
                if let (Some(total), Some(bytes)) = (self.bytes_freed.as_mut(), bytes) {
                    *total += bytes;
                }
            }
            UploadOutcome::AlreadyGone => self.already_gone += 1,
            UploadOutcome::WouldAbort => {}
            UploadOutcome::Failed(err) => {
                self.failed += 1;
                if self.failures.len() < MAX_FAILURE_EXAMPLES {
                    self.failures.push(FailureExample {
                        key: upload.key.clone(),
                        upload_id: upload.upload_id.clone(),
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

async fn run_sweep(
    client: &Client,
    options: &SweepOptions,
    observer: &dyn SweepObserver,
    cancel: &CancellationToken,
) -> SweepOutcome {
    let mut summary = SweepSummary::empty(options, jiff::Timestamp::now());
    let local_clock = client.config().time_source();
    let now_local = || {
        local_clock
            .as_ref()
            .map_or_else(SystemTime::now, |t| t.now())
    };
    let abort_options = AbortOptions {
        verify: options.verify,
        measure_bytes: options.measure_bytes,
    };
    let max_age = options.max_age.as_duration();
    let bucket: Arc<str> = options.bucket.as_str().into();

    // The next page is fetched while the current one is still being aborted, so that aborts never
    // wait on a listing request (on Ceph RGW a 1,000-upload page takes long enough to matter);
    // fetching stops while a full page is pending. Memory therefore stays at two pages and
    // `concurrency` aborts, whatever the bucket holds.
    let pages = listing::pages(
        client,
        &options.bucket,
        options.prefix.as_deref(),
        options.page_size,
    );
    let mut pages = std::pin::pin!(pages);
    let page_capacity = usize::try_from(options.page_size).unwrap_or(1).max(1);
    let mut pending: VecDeque<ListedUpload> = VecDeque::new();
    let mut in_flight: FuturesUnordered<BoxFuture<'static, (ListedUpload, UploadOutcome)>> =
        FuturesUnordered::new();
    let mut listing_done = false;
    let mut stop = None;
    let mut drain_deadline: Option<tokio::time::Instant> = None;
    loop {
        while in_flight.len() < options.concurrency {
            let Some(upload) = pending.pop_front() else {
                break;
            };
            in_flight.push(dispose(
                client.clone(),
                bucket.clone(),
                upload,
                options.dry_run,
                abort_options,
            ));
        }
        let want_page = !listing_done && pending.len() < page_capacity;
        if !want_page && in_flight.is_empty() {
            break;
        }
        tokio::select! {
            page = pages.next(), if want_page => match page {
                None => listing_done = true,
                Some(Err(err)) => {
                    listing_done = true;
                    stop = Some(SweepStop::ListingFailed(err));
                }
                Some(Ok(page)) => {
                    let server_now = page.server_time.unwrap_or_else(now_local);
                    if page.server_time.is_none() {
                        tracing::debug!("listing response had no Date header; ages use the local clock");
                    }
                    summary.found += page.uploads.len() as u64;
                    for upload in &page.uploads {
                        if upload.initiated.is_none() {
                            summary.skipped += 1;
                        } else if is_stale(upload.initiated, server_now, max_age) {
                            summary.stale += 1;
                            pending.push_back(upload.clone());
                        }
                    }
                    observer.page_listed(&page.uploads, &summary);
                }
            },
            Some((upload, outcome)) = in_flight.next(), if !in_flight.is_empty() => {
                summary.record(&upload, &outcome);
                if let UploadOutcome::Failed(err) = &outcome {
                    tracing::warn!(key = %upload.key, upload_id = %upload.upload_id, error = %err, "abort failed");
                    if matches!(err.kind, S3ErrorKind::Unreachable | S3ErrorKind::Timeout) && stop.is_none() {
                        listing_done = true;
                        pending.clear();
                        stop = Some(SweepStop::ServerUnreachable(err.clone()));
                    }
                }
                observer.upload_handled(&upload, &outcome, &summary);
            }
            _ = cancel.cancelled(), if drain_deadline.is_none() => {
                // Stop listing and launching; the aborts already in flight may still finish. A
                // listing that failed before stays the reason the sweep stopped.
                drain_deadline = Some(tokio::time::Instant::now() + options.drain_timeout);
                if !listing_done || !pending.is_empty() {
                    stop.get_or_insert(SweepStop::Cancelled);
                }
                listing_done = true;
                pending.clear();
            }
            // An async block, so that no timer is made on the iterations before a cancel.
            _ = async {
                if let Some(deadline) = drain_deadline {
                    tokio::time::sleep_until(deadline).await;
                }
            }, if drain_deadline.is_some() => {
                // Their outcome is unknown: the next sweep lists them again if they survived.
                tracing::warn!(left = in_flight.len(), "aborts in flight did not finish in time after the cancel; leaving them");
                stop.get_or_insert(SweepStop::Cancelled);
                break;
            }
        }
    }
    summary.completion_time = jiff::Timestamp::now();
    SweepOutcome { summary, stop }
}

/// Handles one stale upload; owned arguments keep the future 'static for spawned callers.
fn dispose(
    client: Client,
    bucket: Arc<str>,
    upload: ListedUpload,
    dry_run: bool,
    options: AbortOptions,
) -> BoxFuture<'static, (ListedUpload, UploadOutcome)> {
    async move {
        let outcome = if dry_run {
            UploadOutcome::WouldAbort
        } else {
            abort::abort_upload(&client, &bucket, &upload, options).await
        };
        (upload, outcome)
    }
    .boxed()
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
                "prefix",
                "skipped",
                "stale",
                "startTime"
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
        options.bucket = " ".into();
        assert!(options.validate().is_err());
    }
}
