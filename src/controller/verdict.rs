//! How a finished sweep reads in status, metrics and Events.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;

use super::conditions::{self, Health, LifecycleHealth};
use super::reason::Reason;
use crate::api::{BucketRun, LifecycleRun, PrefixRun, RunSummary};
use crate::metrics::RunResult;
use crate::sweep::{
    BucketResult, LifecycleGoal, LifecycleReport, LifecycleState, RunOutcome, S3Error, S3ErrorKind,
    SweepStop,
};
use crate::text;

/// The verdict on one run.
#[derive(Debug)]
pub struct Verdict {
    pub health: Health,
    pub success: bool,
    /// The `result` label of `mpu_sweeper_runs_total`.
    pub result: RunResult,
    pub event_type: EventType,
    pub error: Option<String>,
}

/// What a run did, in the words of the Ready condition and the Event.
pub fn counts_text(run: &RunSummary) -> String {
    if run.dry_run {
        return format!(
            "dry run: {} of {} uploads are stale and would be aborted",
            run.stale, run.found
        );
    }
    let mut text = format!("aborted {} of {} stale uploads", run.aborted, run.stale);
    if run.already_gone > 0 {
        text.push_str(&format!(" ({} already gone)", run.already_gone));
    }
    if let Some(bytes) = run.bytes_freed {
        text.push_str(&format!(", {bytes} bytes freed"));
    }
    if run.skipped > 0 {
        text.push_str(&format!(
            "; {} skipped (listed without a usable initiation time)",
            run.skipped
        ));
    }
    if run.throttled > 0 {
        text.push_str(&format!(
            "; the server throttled {} requests, which were retried more slowly",
            run.throttled
        ));
    }
    text
}

/// The verdict on `outcome`; `interrupted_by` names what cancelled the sweep, if it was.
pub fn judge(outcome: &RunOutcome, interrupted_by: &str) -> Verdict {
    let s = &outcome.totals;
    let counts = counts_text(&run_summary(outcome, None));
    let failed = |reason: Reason, result: RunResult, message: String| Verdict {
        health: Health::not_ready(reason, message.clone()),
        success: false,
        result,
        event_type: EventType::Warning,
        error: Some(message),
    };
    let failed_buckets = outcome.failed_buckets();
    match &outcome.stop {
        None if failed_buckets > 0 => judge_failed_buckets(outcome, &counts),
        None if s.failed == 0 => Verdict {
            health: Health::ready(counts),
            success: true,
            result: RunResult::Succeeded,
            event_type: EventType::Normal,
            error: None,
        },
        None => {
            let example = s.failures.first().map_or_else(String::new, |f| {
                format!("; first failure: {} ({})", f.message, f.code)
            });
            let message = format!("{counts}; {} aborts failed{example}", s.failed);
            failed(Reason::AbortsFailed, RunResult::Partial, message)
        }
        Some(SweepStop::Cancelled) => failed(
            Reason::Interrupted,
            RunResult::Interrupted,
            format!(
                "interrupted by {interrupted_by} after {counts}; the next run lists the bucket again"
            ),
        ),
        Some(SweepStop::DeadlineExceeded(limit)) => {
            let limit = crate::max_age::format_duration(*limit);
            let message = format!(
                "the run's time limit (spec.timeout {limit}) passed after listing {} uploads ({counts}); the next run lists the bucket again from the start; raise spec.timeout if listing it takes longer",
                s.found
            );
            failed(
                Reason::DeadlineExceeded,
                RunResult::DeadlineExceeded,
                message,
            )
        }
        Some(stop @ (SweepStop::ListingFailed(err) | SweepStop::ServerUnreachable(err))) => {
            let (reason, advice) = reason_and_advice(err);
            let cause = shown_cause(err);
            let message = match stop {
                SweepStop::ListingFailed(_) if s.found == 0 => {
                    format!(
                        "cannot list uploads of bucket {}: {cause}; {advice}",
                        s.bucket
                    )
                }
                _ => format!(
                    "stopped after listing {} uploads ({counts}): {cause}; {advice}",
                    s.found
                ),
            };
            failed(reason, RunResult::Failed, message)
        }
    }
}

/// Some buckets of a run over several could not be swept: the rest were.
fn judge_failed_buckets(outcome: &RunOutcome, counts: &str) -> Verdict {
    let failed: Vec<&BucketResult> = outcome
        .buckets
        .iter()
        .filter(|b| b.error.is_some())
        .collect();
    let first = failed[0];
    let cause = match &first.stop {
        Some(SweepStop::ListingFailed(err) | SweepStop::ServerUnreachable(err)) => Some(err),
        _ => None,
    };
    let reason = match cause {
        // Every bucket failed: the first one's cause is the resource's (bad credentials...).
        Some(err) if failed.len() == outcome.buckets.len() => reason_and_advice(err).0,
        _ => Reason::BucketsFailed,
    };
    let shown = cause.map_or_else(String::new, shown_cause);
    let message = format!(
        "{} of {} buckets could not be swept (first: {}: {shown}); {counts}",
        failed.len(),
        outcome.buckets.len(),
        first.bucket
    );
    Verdict {
        health: Health::not_ready(reason, message.clone()),
        success: false,
        result: RunResult::Failed,
        event_type: EventType::Warning,
        error: Some(message),
    }
}

fn reason_and_advice(err: &S3Error) -> (Reason, &'static str) {
    match err.kind {
        S3ErrorKind::InvalidCredentials => (
            Reason::CredentialsRejected,
            "fix the credentials in the Secret",
        ),
        S3ErrorKind::AccessDenied => (
            Reason::AccessDenied,
            "grant the credentials access to the bucket",
        ),
        S3ErrorKind::NoSuchBucket => (
            Reason::BucketNotFound,
            "check spec.bucket, spec.endpoint and spec.region",
        ),
        S3ErrorKind::EndpointForbidden => (
            Reason::EndpointForbidden,
            "choose an endpoint the operator allows",
        ),
        S3ErrorKind::Unreachable | S3ErrorKind::Timeout | S3ErrorKind::Tls => (
            Reason::EndpointUnreachable,
            "check spec.endpoint and the network; retrying with backoff",
        ),
        _ => (Reason::ListingFailed, "retrying with backoff"),
    }
}

/// What the status says of a failure: for answers, the server's own words (escaped and cut);
/// for connections, only the class of the cause. Whether a connection was refused, reset or
/// timed out would tell a tenant about the network from the controller's position (a port
/// scanner with a status field); the controller's log keeps the details.
fn shown_cause(err: &S3Error) -> String {
    match err.kind {
        S3ErrorKind::Unreachable if !err.may_have_arrived => "could not connect to the endpoint".into(),
        S3ErrorKind::Unreachable => "the connection to the endpoint broke".into(),
        S3ErrorKind::Timeout => "the endpoint did not answer in time".into(),
        S3ErrorKind::Tls => {
            "the TLS handshake with the endpoint failed (is its certificate trusted? see spec.caBundleSecretRef)".into()
        }
        _ => err.message.clone(),
    }
}

/// The longest `lastRun.error` and warning written; like condition messages, bounded so that no
/// server text can swell the object past what the API server stores.
const RUN_TEXT_MAX_BYTES: usize = conditions::MESSAGE_MAX_BYTES;

/// What the LifecycleRuleReady condition says after a run: ready when every bucket's rule is
/// Present or Applied. `None` when the spec asks for nothing.
pub fn lifecycle_health(
    goal: Option<&LifecycleGoal>,
    outcome: &RunOutcome,
) -> Option<LifecycleHealth> {
    goal?;
    let reports: Vec<(&str, &LifecycleReport)> = outcome
        .buckets
        .iter()
        .filter_map(|b| Some((b.bucket.as_str(), b.lifecycle.as_ref()?)))
        .collect();
    let not_ready = reports
        .iter()
        .find(|(_, r)| !matches!(r.state, LifecycleState::Present | LifecycleState::Applied));
    Some(match not_ready {
        None if reports.is_empty() => LifecycleHealth {
            ready: false,
            reason: "NotChecked".into(),
            message: "no bucket was reached to check its lifecycle rule".into(),
        },
        None => LifecycleHealth {
            ready: true,
            reason: "Present".into(),
            message: format!(
                "an AbortIncompleteMultipartUpload rule covers the swept uploads in {} bucket(s)",
                reports.len()
            ),
        },
        Some((bucket, report)) => LifecycleHealth {
            ready: false,
            reason: format!("{:?}", report.state),
            message: format!("bucket {bucket}: {}", report.message),
        },
    })
}

/// Buckets listed one by one in status; the rest are counted.
pub const MAX_BUCKETS_IN_STATUS: usize = 50;

pub fn run_summary(outcome: &RunOutcome, error: Option<String>) -> RunSummary {
    let s = &outcome.totals;
    let listed = &outcome.buckets[..outcome.buckets.len().min(MAX_BUCKETS_IN_STATUS)];
    RunSummary {
        start_time: Time(s.start_time),
        completion_time: Time(s.completion_time),
        found: saturating_i64(s.found),
        stale: saturating_i64(s.stale),
        aborted: saturating_i64(s.aborted),
        already_gone: saturating_i64(s.already_gone),
        skipped: saturating_i64(s.skipped),
        failed: saturating_i64(s.failed),
        throttled: saturating_i64(s.throttled),
        bytes_freed: s.bytes_freed.map(saturating_i64),
        dry_run: s.dry_run,
        error: error.map(|e| text::bounded(&e, RUN_TEXT_MAX_BYTES)),
        warnings: s
            .warnings
            .iter()
            .map(|w| text::bounded(w, RUN_TEXT_MAX_BYTES / 2))
            .collect(),
        bucket_count: saturating_i64(outcome.buckets.len() as u64),
        buckets: listed.iter().map(bucket_run).collect(),
        more_buckets: saturating_i64((outcome.buckets.len() - listed.len()) as u64),
        oldest_stale_age_seconds: s.oldest_stale_age_seconds.map(saturating_i64),
        stale_bytes: s.stale_bytes.map(saturating_i64),
        top_prefixes: s
            .top_prefixes
            .iter()
            .map(|p| PrefixRun {
                prefix: p.prefix.clone(),
                uploads: saturating_i64(p.uploads),
                bytes: p.bytes.map(saturating_i64),
            })
            .collect(),
    }
}

fn bucket_run(bucket: &BucketResult) -> BucketRun {
    BucketRun {
        bucket: bucket.bucket.clone(),
        found: saturating_i64(bucket.found),
        stale: saturating_i64(bucket.stale),
        aborted: saturating_i64(bucket.aborted),
        failed: saturating_i64(bucket.failed),
        error: bucket
            .error
            .as_ref()
            .map(|e| text::bounded(e, RUN_TEXT_MAX_BYTES / 4)),
        lifecycle: bucket.lifecycle.as_ref().map(|l| LifecycleRun {
            state: format!("{:?}", l.state),
            days_after_initiation: l.days_after_initiation,
            message: text::bounded(&l.message, RUN_TEXT_MAX_BYTES / 4),
        }),
    }
}

/// Counts are `u64` in the engine and `int64` in the API.
pub fn saturating_i64(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::max_age::MaxAge;
    use crate::sweep::{SweepOptions, SweepSummary};
    use std::time::Duration;

    fn outcome(stop: Option<SweepStop>, failed: u64) -> RunOutcome {
        let options = SweepOptions::new("b", MaxAge::from_secs(60).unwrap());
        let mut summary = SweepSummary::empty(&options, jiff::Timestamp::now());
        summary.found = 130;
        summary.stale = 120;
        summary.aborted = 120 - failed;
        summary.failed = failed;
        RunOutcome {
            totals: summary,
            buckets: vec![bucket("b", None)],
            stop,
        }
    }

    fn bucket(name: &str, stop: Option<SweepStop>) -> BucketResult {
        BucketResult {
            bucket: name.into(),
            found: 1,
            stale: 1,
            aborted: 1,
            already_gone: 0,
            failed: 0,
            error: stop
                .as_ref()
                .map(|_| "listing failed: no such bucket".into()),
            lifecycle: None,
            stop,
        }
    }

    #[test]
    fn failed_buckets_among_several_are_reported_and_all_failing_takes_their_cause() {
        let missing = S3Error::new(
            S3ErrorKind::NoSuchBucket,
            Some("NoSuchBucket".into()),
            "gone",
        );
        let mut run = outcome(None, 0);
        run.buckets = vec![
            bucket("a", None),
            bucket("b", Some(SweepStop::ListingFailed(missing.clone()))),
        ];
        let verdict = judge(&run, "x");
        assert_eq!(verdict.health.reason, Reason::BucketsFailed);
        assert!(
            verdict
                .health
                .message
                .starts_with("1 of 2 buckets could not be swept (first: b:")
        );
        run.buckets.remove(0);
        run.buckets
            .push(bucket("c", Some(SweepStop::ListingFailed(missing))));
        let verdict = judge(&run, "x");
        assert_eq!(verdict.health.reason, Reason::BucketNotFound);
        assert!(verdict.health.stalled);
    }

    #[test]
    fn status_lists_fifty_buckets_and_counts_the_rest() {
        let mut run = outcome(None, 0);
        run.buckets = (0..55).map(|i| bucket(&format!("b{i:02}"), None)).collect();
        let summary = run_summary(&run, None);
        assert_eq!(
            (
                summary.bucket_count,
                summary.buckets.len(),
                summary.more_buckets
            ),
            (55, 50, 5)
        );
    }

    #[test]
    fn verdicts_name_the_cause() {
        let ok = judge(&outcome(None, 0), "controller shutdown");
        assert!(ok.success && ok.health.ready);
        assert_eq!(ok.health.message, "aborted 120 of 120 stale uploads");

        let partial = judge(&outcome(None, 10), "controller shutdown");
        assert!(!partial.success && !partial.health.ready && !partial.health.stalled);
        assert_eq!(partial.health.reason, Reason::AbortsFailed);

        let denied = S3Error::new(
            S3ErrorKind::InvalidCredentials,
            Some("SignatureDoesNotMatch".into()),
            "rejected",
        );
        let stalled = judge(
            &outcome(Some(SweepStop::ListingFailed(denied)), 0),
            "controller shutdown",
        );
        assert!(stalled.health.stalled);
        assert_eq!(stalled.health.reason, Reason::CredentialsRejected);

        let stopped = judge(
            &outcome(Some(SweepStop::Cancelled), 0),
            "a change to the resource",
        );
        assert_eq!(stopped.health.reason, Reason::Interrupted);
        assert!(
            stopped
                .health
                .message
                .starts_with("interrupted by a change to the resource after aborted 120 of"),
            "{}",
            stopped.health.message
        );
    }

    #[test]
    fn connection_failures_show_only_their_class() {
        let refused = S3Error::new(
            S3ErrorKind::Unreachable,
            None,
            "cannot reach the endpoint: tcp connect error: Connection refused (os error 111)",
        );
        let mut refused_before_sending = refused.clone();
        refused_before_sending.may_have_arrived = false;
        for (err, shown) in [
            (refused_before_sending, "could not connect to the endpoint"),
            (refused, "the connection to the endpoint broke"),
            (
                S3Error::new(
                    S3ErrorKind::Timeout,
                    None,
                    "connection timed out: deadline has elapsed",
                ),
                "the endpoint did not answer in time",
            ),
        ] {
            let verdict = judge(
                &outcome(Some(SweepStop::ListingFailed(err)), 0),
                "controller shutdown",
            );
            assert_eq!(verdict.health.reason, Reason::EndpointUnreachable);
            assert!(
                verdict.health.message.contains(shown),
                "{}",
                verdict.health.message
            );
            assert!(
                !verdict.health.message.contains("os error"),
                "{}",
                verdict.health.message
            );
            assert!(
                !verdict.health.message.contains("deadline"),
                "{}",
                verdict.health.message
            );
        }
        let forbidden = S3Error::new(S3ErrorKind::EndpointForbidden, None, "denied range");
        let verdict = judge(
            &outcome(Some(SweepStop::ListingFailed(forbidden)), 0),
            "controller shutdown",
        );
        assert_eq!(verdict.health.reason, Reason::EndpointForbidden);
        assert!(verdict.health.stalled);
    }

    #[test]
    fn a_deadline_is_reported_with_what_was_done() {
        let verdict = judge(
            &outcome(
                Some(SweepStop::DeadlineExceeded(Duration::from_secs(3_600))),
                0,
            ),
            "controller shutdown",
        );
        assert_eq!(verdict.health.reason, Reason::DeadlineExceeded);
        assert!(!verdict.success && !verdict.health.stalled);
        assert!(
            verdict.health.message.contains("spec.timeout 1h")
                && verdict.health.message.contains("aborted 120 of 120"),
            "{}",
            verdict.health.message
        );
    }

    #[test]
    fn run_summaries_are_bounded_and_saturate() {
        let mut run = outcome(None, 0);
        run.totals.aborted = u64::MAX;
        run.totals.bytes_freed = Some(u64::MAX);
        run.totals.warnings = vec!["w".repeat(100_000)];
        let summary = run_summary(&run, Some("e".repeat(400_000)));
        assert_eq!(summary.aborted, i64::MAX);
        assert_eq!(summary.bytes_freed, Some(i64::MAX));
        assert!(summary.error.unwrap().len() <= RUN_TEXT_MAX_BYTES);
        assert!(summary.warnings[0].len() <= RUN_TEXT_MAX_BYTES);
    }
}
