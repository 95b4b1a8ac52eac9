//! A run over several buckets: chosen by name or from the credential's ListBuckets, swept one
//! after another under one deadline, each with its lifecycle rule read (or ensured) first. A
//! bucket that fails is reported and the next one swept.

use aws_sdk_s3::Client;
use futures::FutureExt;
use futures::future::BoxFuture;
use serde::Serialize;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::buckets::{BucketSelection, list_buckets};
use super::lifecycle::{LifecycleGoal, LifecycleReport, lifecycle_rule};
use super::requests::Requests;
use super::run::MAX_WARNINGS;
use super::{
    MAX_FAILURE_EXAMPLES, S3Error, SweepObserver, SweepOptions, SweepOutcome, SweepStop,
    SweepSummary,
};
use crate::text;

/// What one bucket of a run came to.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct BucketResult {
    pub bucket: String,
    pub found: u64,
    pub stale: u64,
    pub aborted: u64,
    pub already_gone: u64,
    pub failed: u64,
    /// Why the bucket's sweep stopped early, when it did.
    pub error: Option<String>,
    /// The bucket's lifecycle rule, when the run looked at it.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub lifecycle: Option<LifecycleReport>,
    /// Why it stopped, for callers that act on the cause.
    #[serde(skip)]
    pub stop: Option<SweepStop>,
}

/// What a run over one or more buckets came to.
#[derive(Debug, Clone)]
pub struct RunOutcome {
    /// The run's totals. `bucket` is the bucket's name when there was one, empty otherwise.
    pub totals: SweepSummary,
    /// Every bucket chosen, in name order.
    pub buckets: Vec<BucketResult>,
    /// Why the run as a whole stopped early: the deadline, a cancel, or (with one bucket) that
    /// bucket's own stop; with include patterns, a failed ListBuckets.
    pub stop: Option<SweepStop>,
}

impl RunOutcome {
    /// Buckets whose sweep stopped on an error of their own.
    pub fn failed_buckets(&self) -> usize {
        self.buckets.iter().filter(|b| b.error.is_some()).count()
    }
}

/// Sweeps the selected buckets. The future is boxed for the same reason as [`super::sweep`]'s.
pub fn sweep_buckets<'a>(
    client: &'a Client,
    selection: &'a BucketSelection,
    options: &'a SweepOptions,
    lifecycle: Option<&'a LifecycleGoal>,
    observer: &'a dyn SweepObserver,
    cancel: &'a CancellationToken,
) -> BoxFuture<'a, RunOutcome> {
    run_buckets(client, selection, options, lifecycle, observer, cancel).boxed()
}

async fn run_buckets(
    client: &Client,
    selection: &BucketSelection,
    options: &SweepOptions,
    lifecycle: Option<&LifecycleGoal>,
    observer: &dyn SweepObserver,
    cancel: &CancellationToken,
) -> RunOutcome {
    let started = jiff::Timestamp::now();
    let deadline = Instant::now() + options.timeout;
    let requests = Requests::new(options.retry, options.concurrency);
    let (listed, listing_failed) = if selection.lists_buckets() {
        match list_buckets(client, &requests).await {
            Ok(listed) => (listed, None),
            Err(err) => (Vec::new(), Some(err)),
        }
    } else {
        (Vec::new(), None)
    };
    let chosen = selection.choose(&listed);
    let mut run = Combined::new(options, started, chosen.len() == 1);
    let mut stop = listing_failed.map(SweepStop::ListingFailed);
    for bucket in &chosen {
        let left = deadline.saturating_duration_since(Instant::now());
        if cancel.is_cancelled() || left.is_zero() {
            stop = Some(if cancel.is_cancelled() {
                SweepStop::Cancelled
            } else {
                SweepStop::DeadlineExceeded(options.timeout)
            });
            break;
        }
        let report = match lifecycle {
            Some(goal) => Some(
                lifecycle_rule(client, &requests, bucket, options.prefix.as_deref(), goal).await,
            ),
            None => None,
        };
        let bucket_options = SweepOptions {
            bucket: bucket.clone(),
            timeout: left,
            ..options.clone()
        };
        let outcome = super::sweep(client, &bucket_options, observer, cancel).await;
        let run_wide = matches!(
            outcome.stop,
            Some(SweepStop::Cancelled | SweepStop::DeadlineExceeded(_))
        );
        if run_wide {
            stop = outcome.stop.clone().map(|s| match s {
                SweepStop::DeadlineExceeded(_) => SweepStop::DeadlineExceeded(options.timeout),
                other => other,
            });
        }
        run.add(outcome, report);
        if run_wide {
            break;
        }
    }
    run.finish(stop)
}

/// The totals of a run, built bucket by bucket.
struct Combined {
    totals: SweepSummary,
    buckets: Vec<BucketResult>,
    single: bool,
}

impl Combined {
    fn new(options: &SweepOptions, started: jiff::Timestamp, single: bool) -> Self {
        let mut totals = SweepSummary::empty(options, started);
        totals.bucket = String::new();
        Self {
            totals,
            buckets: Vec::new(),
            single,
        }
    }

    fn add(&mut self, outcome: SweepOutcome, lifecycle: Option<LifecycleReport>) {
        let s = outcome.summary;
        let error = outcome.stop.as_ref().and_then(bucket_error);
        // Listed bucket names come from the server: shown escaped and cut.
        let shown = text::name(&s.bucket).to_string();
        self.buckets.push(BucketResult {
            bucket: shown.clone(),
            found: s.found,
            stale: s.stale,
            aborted: s.aborted,
            already_gone: s.already_gone,
            failed: s.failed,
            error,
            lifecycle,
            stop: outcome.stop,
        });
        let t = &mut self.totals;
        t.found += s.found;
        t.stale += s.stale;
        t.aborted += s.aborted;
        t.already_gone += s.already_gone;
        t.skipped += s.skipped;
        t.failed += s.failed;
        t.throttled += s.throttled;
        t.peak_concurrency = t.peak_concurrency.max(s.peak_concurrency);
        t.bytes_freed = add_optional(t.bytes_freed, s.bytes_freed);
        t.stale_bytes = add_optional(t.stale_bytes, s.stale_bytes);
        t.oldest_stale_age_seconds = t.oldest_stale_age_seconds.max(s.oldest_stale_age_seconds);
        let room = MAX_FAILURE_EXAMPLES.saturating_sub(t.failures.len());
        t.failures.extend(s.failures.into_iter().take(room));
        for warning in s.warnings {
            if t.warnings.len() < MAX_WARNINGS {
                t.warnings.push(format!("bucket {shown}: {warning}"));
            }
        }
        if self.single {
            t.bucket = s.bucket;
            t.prefixes = s.prefixes;
        } else {
            t.prefixes.merge_labelled(&s.prefixes, &shown);
        }
    }

    fn finish(mut self, stop: Option<SweepStop>) -> RunOutcome {
        // With one bucket, that bucket's stop is the run's: a listing that failed is the run's
        // failure, as it always was.
        let stop = match (self.single, stop) {
            (true, None) => self.buckets[0].stop.clone(),
            (_, stop) => stop,
        };
        self.totals.completion_time = jiff::Timestamp::now();
        self.totals.top_prefixes = self.totals.prefixes.top();
        RunOutcome {
            totals: self.totals,
            buckets: self.buckets,
            stop,
        }
    }
}

fn add_optional(a: Option<u64>, b: Option<u64>) -> Option<u64> {
    match (a, b) {
        (Some(a), Some(b)) => Some(a.saturating_add(b)),
        (a, None) => a,
        (None, b) => b,
    }
}

/// What a bucket's own stop says, for its line in the report; the run-wide stops (cancel,
/// deadline) are the run's to tell.
fn bucket_error(stop: &SweepStop) -> Option<String> {
    let described = |what: &str, err: &S3Error| format!("{what}: {err}");
    match stop {
        SweepStop::ListingFailed(err) => Some(described("listing failed", err)),
        SweepStop::ServerUnreachable(err) => Some(described("the server stopped answering", err)),
        SweepStop::Cancelled | SweepStop::DeadlineExceeded(_) => None,
    }
}
