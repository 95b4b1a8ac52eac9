//! The `MultipartCleanup` controller: decides when a resource is due, runs the sweep engine with
//! the resource's settings, and writes counts and conditions to its status. It knows nothing of
//! S3 wire details; those stay in [`crate::sweep`].

mod conditions;
pub mod leader;
mod settings;

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use futures::StreamExt;
use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Patch, PatchParams};
use kube::runtime::controller::{self, Action, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::watcher;
use kube::{Api, Client, Resource, ResourceExt};
use tokio_util::sync::CancellationToken;

use crate::api::{MultipartCleanup, MultipartCleanupStatus, RUN_REQUESTED_ANNOTATION, RunSummary};
use crate::metrics::{Metrics, ResourceLabels};
use crate::sweep::{self, Limits, NoProgress, S3ErrorKind, SweepOutcome, SweepStop};
use crate::text;
use conditions::Health;
use settings::Problem;

/// Where the controller looks for resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    AllNamespaces,
    Namespaces(Vec<String>),
}

impl Scope {
    /// No namespace means all of them. A namespace named twice is watched once: two watches of
    /// one namespace would sweep its resources twice.
    pub fn from_namespaces(namespaces: &[String]) -> Self {
        let mut unique: Vec<String> = namespaces.to_vec();
        unique.sort();
        unique.dedup();
        if unique.is_empty() {
            Self::AllNamespaces
        } else {
            Self::Namespaces(unique)
        }
    }
}

pub struct ControllerConfig {
    pub scope: Scope,
    /// Sweeps running at once across all resources.
    pub max_concurrent_sweeps: u16,
    /// Identifies this replica in Events.
    pub identity: String,
    pub limits: Limits,
}

struct Context {
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    /// Cancelled at shutdown or when leadership is lost: sweeps stop listing, finish aborts in
    /// flight and write status.
    stop: CancellationToken,
    /// Sweeps running at once, shared by the per-namespace watches.
    sweep_slots: tokio::sync::Semaphore,
    limits: Limits,
    /// The watches' caches (one per watched namespace, or one for all).
    stores: Vec<Store<MultipartCleanup>>,
    /// Final statuses of finished runs that could not be written, by resource UID.
    unwritten: std::sync::Mutex<std::collections::HashMap<String, MultipartCleanupStatus>>,
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
}

/// Runs until `stop` is cancelled, then lets running sweeps wind down and returns.
/// `ready` turns true once every watch has listed its resources.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    metrics: Arc<Metrics>,
    ready: Arc<AtomicBool>,
    stop: CancellationToken,
) {
    let apis: Vec<Api<MultipartCleanup>> = match &config.scope {
        Scope::AllNamespaces => vec![Api::all(client.clone())],
        Scope::Namespaces(namespaces) => namespaces
            .iter()
            .map(|ns| Api::namespaced(client.clone(), ns))
            .collect(),
    };
    let controllers: Vec<_> = apis
        .into_iter()
        .map(|api| {
            Controller::new(api, watcher::Config::default())
                .with_config(
                    controller::Config::default().concurrency(config.max_concurrent_sweeps),
                )
                .graceful_shutdown_on(stop.clone().cancelled_owned())
        })
        .collect();
    let stores: Vec<Store<MultipartCleanup>> = controllers.iter().map(|c| c.store()).collect();
    let context = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "mpu-sweeper".into(),
                instance: Some(config.identity.clone()),
            },
        ),
        client: client.clone(),
        metrics,
        stop: stop.clone(),
        sweep_slots: tokio::sync::Semaphore::new(usize::from(config.max_concurrent_sweeps.max(1))),
        limits: config.limits.clone(),
        stores: stores.clone(),
        unwritten: Default::default(),
    });
    let runs = controllers.into_iter().map(|controller| {
        controller
            .run(reconcile, error_policy, context.clone())
            .for_each(|result| async move {
                if let Err(err) = result {
                    tracing::debug!(error = %err, "reconcile loop");
                }
            })
    });
    let readiness = async move {
        for store in stores {
            if store.wait_until_ready().await.is_err() {
                return;
            }
        }
        ready.store(true, Ordering::Relaxed);
        tracing::info!("caches synced; controller ready");
    };
    tokio::join!(futures::future::join_all(runs), readiness);
    tracing::info!("controller stopped");
}

fn error_policy(mpc: Arc<MultipartCleanup>, err: &Error, ctx: Arc<Context>) -> Action {
    let namespace = mpc.namespace().unwrap_or_default();
    tracing::warn!(namespace, name = %mpc.name_any(), error = %err, "reconcile failed; retrying");
    ctx.metrics
        .reconcile_error(&namespace, &mpc.name_any(), "KubernetesApi");
    Action::requeue(Duration::from_secs(10))
}

/// Retry delay after `failures` failed runs in a row: 15 s doubling to 10 min.
fn backoff(failures: i32) -> SignedDuration {
    let exponent = failures.clamp(1, 16) - 1;
    SignedDuration::from_secs((15i64 << exponent).min(600))
}

async fn reconcile(cached: Arc<MultipartCleanup>, ctx: Arc<Context>) -> Result<Action, Error> {
    // The CRD is namespaced: every object the API server hands out has one.
    let namespace = cached.namespace().unwrap_or_default();
    let api: Api<MultipartCleanup> = Api::namespaced(ctx.client.clone(), &namespace);
    // The watch cache can lag behind this controller's own last status write; deciding from it
    // could sweep twice or write an older status over a newer one. One GET avoids both.
    let Some(mpc) = api.get_opt(&cached.name_any()).await? else {
        return Ok(Action::await_change());
    };
    let now = Timestamp::now();
    let old = recover_unwritten_status(&api, &mpc, &ctx).await?;
    let mut status = old.clone();
    status.observed_generation = mpc.metadata.generation;
    let generation = mpc.metadata.generation;

    let plan = match settings::plan(&mpc.spec) {
        Ok(plan) => plan,
        Err(problem) => {
            status.next_run_time = None;
            set_health(
                &mut status,
                &Health::not_ready(problem.reason, &problem.message, true),
                generation,
                now,
            );
            warn_if_new(&ctx, &mpc, &old, &problem).await;
            write_status(&api, &mpc, &old, &status, &ctx).await?;
            return Ok(Action::await_change());
        }
    };

    if mpc.spec.suspend {
        status.next_run_time = None;
        let health = Health::not_ready(
            conditions::SUSPENDED,
            "suspended: no sweeps run until spec.suspend is false",
            false,
        );
        set_health(&mut status, &health, generation, now);
        write_status(&api, &mpc, &old, &status, &ctx).await?;
        return Ok(Action::await_change());
    }

    // Still "Running" in a fresh read: no controller is sweeping it (a sweep holds its
    // resource's reconcile until it ends), so the run was lost with the process that ran it. It
    // counts as a failed run, so that a sweep that kills its controller (out of memory, say)
    // is retried with backoff instead of at every restart; the decision below starts from that.
    let mut before = old.clone();
    if conditions::ready_reason(&old.conditions) == Some(conditions::RUNNING) {
        record_lost_run(&mut status, generation, now);
        before = status.clone();
        before.observed_generation = old.observed_generation;
    }

    let run_request = mpc.annotations().get(RUN_REQUESTED_ANNOTATION).cloned();
    let requested = run_request.is_some() && run_request != before.last_handled_run_request;
    let due = next_due(
        &plan.schedule,
        &before,
        before.observed_generation != generation,
        now,
    );
    if !requested && due > now {
        status.next_run_time = Some(Time(due));
        if let Some(health) = health_while_waiting(&before) {
            set_health(&mut status, &health, generation, now);
        }
        write_status(&api, &mpc, &old, &status, &ctx).await?;
        return Ok(requeue_at(due, now));
    }

    // Run now, once a sweep slot is free. Say so first, so that a long sweep shows as
    // Reconciling.
    let _slot = ctx.sweep_slots.acquire().await;
    status.last_handled_run_request = run_request;
    let running = Health::running(format!("sweeping bucket {}", mpc.spec.bucket));
    set_health(&mut status, &running, generation, now);
    write_status(&api, &mpc, &old, &status, &ctx).await?;
    let before_run = status.clone();

    let labels = ResourceLabels {
        namespace: &namespace,
        name: &mpc.name_any(),
        bucket: &mpc.spec.bucket,
    };
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), &namespace);
    let settings = match settings::s3_settings(&secrets, &namespace, &mpc.spec, &ctx.limits).await {
        Ok(settings) => settings,
        Err(problem) => {
            ctx.metrics.run_not_started(&labels);
            status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            let retry = now + backoff(status.consecutive_failures);
            status.next_run_time = Some(Time(retry));
            set_health(
                &mut status,
                &Health::not_ready(problem.reason, &problem.message, problem.stalled),
                generation,
                now,
            );
            warn_if_new(&ctx, &mpc, &old, &problem).await;
            write_status(&api, &mpc, &before_run, &status, &ctx).await?;
            return Ok(requeue_at(retry, now));
        }
    };
    let client = match settings.client().await {
        Ok(client) => client,
        Err(err) => {
            // validate() already passed, so this is unexpected; treat it as a spec problem.
            let problem = Problem {
                reason: settings::INVALID_SPEC,
                message: err.to_string(),
                stalled: true,
            };
            set_health(
                &mut status,
                &Health::not_ready(problem.reason, &problem.message, true),
                generation,
                now,
            );
            warn_if_new(&ctx, &mpc, &old, &problem).await;
            write_status(&api, &mpc, &before_run, &status, &ctx).await?;
            return Ok(Action::await_change());
        }
    };

    tracing::info!(namespace, name = %mpc.name_any(), bucket = %mpc.spec.bucket, "sweep starting");
    // A sweep stops early at shutdown, and also when its resource is deleted or its spec changes
    // (suspend, dryRun, bucket...): the run a user is trying to stop must not go on to the end.
    let run_cancel = ctx.stop.child_token();
    let watch = tokio::spawn(cancel_on_change(
        ctx.stores.clone(),
        ObjectRef::from_obj(&mpc),
        generation,
        run_cancel.clone(),
    ));
    let outcome = sweep::sweep(&client, &plan.options, &NoProgress, &run_cancel).await;
    watch.abort();
    let interrupted_by = if ctx.stop.is_cancelled() {
        "controller shutdown"
    } else {
        "a change to the resource (deleted, or its spec edited)"
    };
    let verdict = judge(&outcome, interrupted_by);
    let summary = &outcome.summary;
    tracing::info!(
        namespace, name = %mpc.name_any(), found = summary.found, stale = summary.stale,
        aborted = summary.aborted, failed = summary.failed, result = verdict.result, "sweep finished"
    );
    ctx.metrics
        .sweep_finished(&labels, summary, verdict.result, verdict.success);

    let completed = Timestamp::now();
    status.last_run = Some(run_summary(&outcome, verdict.error.clone()));
    status.total_aborted = status
        .total_aborted
        .saturating_add(saturating_i64(summary.aborted));
    let next = if verdict.success {
        status.consecutive_failures = 0;
        status.last_successful_run_time = Some(Time(summary.completion_time));
        plan.schedule.next_after(summary.start_time)
    } else if matches!(outcome.stop, Some(SweepStop::Cancelled)) {
        // Interrupted by shutdown: due again as soon as a controller picks it up.
        status.consecutive_failures = status.consecutive_failures.saturating_add(1);
        completed
    } else {
        status.consecutive_failures = status.consecutive_failures.saturating_add(1);
        completed + backoff(status.consecutive_failures)
    };
    status.next_run_time = Some(Time(next));
    set_health(&mut status, &verdict.health, generation, completed);
    // Losing this write would lose the run's counts and sweep the bucket again: try harder,
    // and if the API server stays away, keep it for the next reconcile.
    if let Err(err) = retried(|| write_status(&api, &mpc, &before_run, &status, &ctx)).await {
        if let Some(uid) = mpc.metadata.uid.clone() {
            lock(&ctx.unwritten).insert(uid, status.clone());
        }
        return Err(err);
    }
    publish(
        &ctx,
        &mpc,
        verdict.event_type,
        &verdict.health.reason,
        &verdict.health.message,
    )
    .await;
    Ok(requeue_at(next, completed))
}

/// How often a running sweep looks at its resource in the watch cache.
const CHANGE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Cancels `cancel` once the watch cache no longer holds the resource or holds a newer
/// generation of it (a spec edit). The cache, not the API server, is asked: the watch already brings every
/// change, so the check costs no request.
async fn cancel_on_change(
    stores: Vec<Store<MultipartCleanup>>,
    resource: ObjectRef<MultipartCleanup>,
    generation: Option<i64>,
    cancel: CancellationToken,
) {
    loop {
        tokio::time::sleep(CHANGE_CHECK_INTERVAL).await;
        let current = stores.iter().find_map(|store| store.get(&resource));
        // Newer, not merely different: the cache may still hold the generation before the one
        // this run read from the API server.
        if current.is_none_or(|current| current.metadata.generation > generation) {
            tracing::info!(resource = %resource, "resource deleted or changed during its sweep; stopping it");
            cancel.cancel();
            return;
        }
    }
}

/// Counts a run lost with its controller as a failed one, retried after the backoff.
fn record_lost_run(status: &mut MultipartCleanupStatus, generation: Option<i64>, now: Timestamp) {
    status.consecutive_failures = status.consecutive_failures.saturating_add(1);
    let retry_in = backoff(status.consecutive_failures);
    status.next_run_time = Some(Time(now + retry_in));
    let health = Health::not_ready(
        "Interrupted",
        format!(
            "the last run did not finish: the controller running it stopped in the middle (killed, out of memory or crashed); retrying in {}s",
            retry_in.as_secs()
        ),
        false,
    );
    set_health(status, &health, generation, now);
}

/// The resource's status, with the last run's final status written first if this controller
/// could not write it before (the API server was away): a run that ended must not read as one
/// that was lost.
async fn recover_unwritten_status(
    api: &Api<MultipartCleanup>,
    mpc: &MultipartCleanup,
    ctx: &Context,
) -> Result<MultipartCleanupStatus, Error> {
    let stored = mpc.status.clone().unwrap_or_default();
    let Some(uid) = mpc.metadata.uid.as_deref() else {
        return Ok(stored);
    };
    let unwritten = lock(&ctx.unwritten).get(uid).cloned();
    let Some(unwritten) = unwritten else {
        return Ok(stored);
    };
    write_status(api, mpc, &stored, &unwritten, ctx).await?;
    lock(&ctx.unwritten).remove(uid);
    Ok(unwritten)
}

fn lock<T>(mutex: &std::sync::Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// When the next sweep is due, from the status as it was before this reconcile.
fn next_due(
    schedule: &crate::schedule::Schedule,
    status: &MultipartCleanupStatus,
    spec_changed: bool,
    now: Timestamp,
) -> Timestamp {
    if status.consecutive_failures > 0 {
        // Retrying with backoff; a spec change may be the fix, so it retries at once.
        if spec_changed {
            return now;
        }
        return status.next_run_time.as_ref().map_or(now, |t| t.0);
    }
    match &status.last_run {
        None => now,
        Some(run) => schedule.next_after(run.start_time.0),
    }
}

/// The health to show between runs when the conditions describe something other than the last
/// run: a suspension just lifted or an invalid spec just fixed, on a resource whose last run
/// succeeded. (After a failed run any spec change makes it due, so the run itself says.)
fn health_while_waiting(status: &MultipartCleanupStatus) -> Option<Health> {
    let reason = conditions::ready_reason(&status.conditions)?;
    if !matches!(reason, conditions::SUSPENDED | settings::INVALID_SPEC)
        || status.consecutive_failures > 0
    {
        return None;
    }
    let run = status.last_run.as_ref()?;
    Some(Health::ready(conditions::SUCCEEDED, counts_text(run)))
}

fn requeue_at(at: Timestamp, now: Timestamp) -> Action {
    let wait = at
        .duration_since(now)
        .as_secs_f64()
        .clamp(1.0, 24.0 * 3600.0);
    Action::requeue(Duration::from_secs_f64(wait))
}

/// How a finished sweep reads in status, metrics and events.
struct Verdict {
    health: Health,
    success: bool,
    result: &'static str,
    event_type: EventType,
    error: Option<String>,
}

/// What a run did, in the words of the Ready condition and the Event.
fn counts_text(run: &RunSummary) -> String {
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

/// `interrupted_by` names what cancelled the sweep, if it was cancelled.
fn judge(outcome: &SweepOutcome, interrupted_by: &str) -> Verdict {
    let s = &outcome.summary;
    let counts = counts_text(&run_summary(outcome, None));
    match &outcome.stop {
        None if s.failed == 0 => Verdict {
            health: Health::ready(conditions::SUCCEEDED, counts),
            success: true,
            result: "succeeded",
            event_type: EventType::Normal,
            error: None,
        },
        None => {
            let example = s.failures.first().map_or_else(String::new, |f| {
                format!("; first failure: {} ({})", f.message, f.code)
            });
            let message = format!("{counts}; {} aborts failed{example}", s.failed);
            Verdict {
                health: Health::not_ready("AbortsFailed", message.clone(), false),
                success: false,
                result: "partial",
                event_type: EventType::Warning,
                error: Some(message),
            }
        }
        Some(SweepStop::Cancelled) => {
            let message =
                format!("interrupted by {interrupted_by} after {counts}; the next run continues");
            Verdict {
                health: Health::not_ready("Interrupted", message.clone(), false),
                success: false,
                result: "interrupted",
                event_type: EventType::Warning,
                error: Some(message),
            }
        }
        Some(SweepStop::DeadlineExceeded(limit)) => {
            let limit = crate::max_age::format_duration(*limit);
            let message = format!(
                "the run's time limit (spec.timeout {limit}) passed after listing {} uploads ({counts}); the next run lists the bucket again from the start; raise spec.timeout if listing it takes longer",
                s.found
            );
            Verdict {
                health: Health::not_ready("DeadlineExceeded", message.clone(), false),
                success: false,
                result: "deadline_exceeded",
                event_type: EventType::Warning,
                error: Some(message),
            }
        }
        Some(stop @ (SweepStop::ListingFailed(err) | SweepStop::ServerUnreachable(err))) => {
            let (reason, stalled, advice) = match err.kind {
                S3ErrorKind::InvalidCredentials => (
                    "CredentialsRejected",
                    true,
                    "fix the credentials in the Secret",
                ),
                S3ErrorKind::AccessDenied => (
                    "AccessDenied",
                    true,
                    "grant the credentials access to the bucket",
                ),
                S3ErrorKind::NoSuchBucket => (
                    "BucketNotFound",
                    true,
                    "check spec.bucket, spec.endpoint and spec.region",
                ),
                S3ErrorKind::Unreachable | S3ErrorKind::Timeout => (
                    "EndpointUnreachable",
                    false,
                    "check spec.endpoint and the network; retrying with backoff",
                ),
                _ => ("ListingFailed", false, "retrying with backoff"),
            };
            let message = match stop {
                SweepStop::ListingFailed(_) if s.found == 0 => {
                    format!(
                        "cannot list uploads of bucket {}: {err}; {advice}",
                        s.bucket
                    )
                }
                _ => format!(
                    "stopped after listing {} uploads ({counts}): {err}; {advice}",
                    s.found
                ),
            };
            Verdict {
                health: Health::not_ready(reason, message.clone(), stalled),
                success: false,
                result: "failed",
                event_type: EventType::Warning,
                error: Some(message),
            }
        }
    }
}

/// The longest `lastRun.error` and warning written; like condition messages, bounded so that no
/// server text can swell the object past what the API server stores.
const RUN_TEXT_MAX_BYTES: usize = conditions::MESSAGE_MAX_BYTES;

fn run_summary(outcome: &SweepOutcome, error: Option<String>) -> RunSummary {
    let s = &outcome.summary;
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
    }
}

/// Counts are `u64` in the engine and `int64` in the API.
fn saturating_i64(count: u64) -> i64 {
    i64::try_from(count).unwrap_or(i64::MAX)
}

fn set_health(
    status: &mut MultipartCleanupStatus,
    health: &Health,
    generation: Option<i64>,
    now: Timestamp,
) {
    conditions::apply(&mut status.conditions, health, generation, now);
}

/// Writes the status when it differs from `previous`.
async fn write_status(
    api: &Api<MultipartCleanup>,
    mpc: &MultipartCleanup,
    previous: &MultipartCleanupStatus,
    status: &MultipartCleanupStatus,
    ctx: &Context,
) -> Result<(), Error> {
    if status == previous {
        return Ok(());
    }
    let patch = serde_json::json!({ "status": status });
    if let Err(err) = api
        .patch_status(
            &mpc.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    {
        ctx.metrics.status_patch_failed();
        return Err(err.into());
    }
    Ok(())
}

/// Runs a status write again through a short API-server outage (about half a minute); a
/// resource deleted meanwhile has nothing left to write to.
async fn retried<F, Fut>(mut write: F) -> Result<(), Error>
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Result<(), Error>>,
{
    let mut delay = Duration::from_secs(1);
    loop {
        match write().await {
            Err(Error::Kube(kube::Error::Api(response))) if response.code == 404 => return Ok(()),
            Err(err) if delay <= Duration::from_secs(16) => {
                tracing::warn!(error = %err, retry_in = ?delay, "could not write status; retrying");
                tokio::time::sleep(delay).await;
                delay *= 2;
            }
            result => return result,
        }
    }
}

/// A Warning Event for a problem, unless the resource already reports the same one.
async fn warn_if_new(
    ctx: &Context,
    mpc: &MultipartCleanup,
    old: &MultipartCleanupStatus,
    problem: &Problem,
) {
    if conditions::ready_reason(&old.conditions) == Some(problem.reason) {
        return;
    }
    publish(
        ctx,
        mpc,
        EventType::Warning,
        problem.reason,
        &problem.message,
    )
    .await;
}

/// The API server rejects an Event whose note is longer than 1 kB.
const EVENT_NOTE_MAX_BYTES: usize = 1024;

async fn publish(
    ctx: &Context,
    mpc: &MultipartCleanup,
    type_: EventType,
    reason: &str,
    message: &str,
) {
    let event = Event {
        type_,
        reason: reason.to_owned(),
        note: Some(text::bounded(message, EVENT_NOTE_MAX_BYTES)),
        action: "Sweep".to_owned(),
        secondary: None,
    };
    if let Err(err) = ctx.recorder.publish(&event, &mpc.object_ref(&())).await {
        tracing::warn!(error = %settings::api_error_summary(&err), "could not publish event");
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::max_age::MaxAge;
    use crate::schedule::Schedule;
    use crate::sweep::{S3Error, SweepOptions, SweepSummary};

    fn outcome(stop: Option<SweepStop>, failed: u64) -> SweepOutcome {
        let options = SweepOptions::new("b", MaxAge::from_secs(60).unwrap());
        let mut summary = SweepSummary::empty(&options, Timestamp::now());
        summary.found = 130;
        summary.stale = 120;
        summary.aborted = 120 - failed;
        summary.failed = failed;
        SweepOutcome { summary, stop }
    }

    #[test]
    fn verdicts_name_the_cause() {
        let ok = judge(&outcome(None, 0), "controller shutdown");
        assert!(ok.success && ok.health.ready);
        assert_eq!(ok.health.message, "aborted 120 of 120 stale uploads");

        let partial = judge(&outcome(None, 10), "controller shutdown");
        assert!(!partial.success && !partial.health.ready && !partial.health.stalled);
        assert_eq!(partial.health.reason, "AbortsFailed");

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
        assert_eq!(stalled.health.reason, "CredentialsRejected");

        let down = S3Error::new(S3ErrorKind::Unreachable, None, "connection refused");
        let retry = judge(
            &outcome(Some(SweepStop::ListingFailed(down)), 0),
            "controller shutdown",
        );
        assert!(!retry.health.stalled);
        assert_eq!(retry.health.reason, "EndpointUnreachable");
        assert!(
            retry
                .health
                .message
                .contains("stopped after listing 130 uploads"),
            "{}",
            retry.health.message
        );

        let stopped = judge(
            &outcome(Some(SweepStop::Cancelled), 0),
            "a change to the resource",
        );
        assert_eq!(stopped.health.reason, "Interrupted");
        assert!(
            stopped
                .health
                .message
                .starts_with("interrupted by a change to the resource after aborted 120 of"),
            "{}",
            stopped.health.message
        );
    }

    fn finished_run(aborted: i64) -> RunSummary {
        let start: Timestamp = "2026-11-22T05:00:10Z".parse().unwrap();
        RunSummary {
            start_time: Time(start),
            completion_time: Time(start),
            found: aborted,
            stale: aborted,
            aborted,
            already_gone: 0,
            skipped: 0,
            failed: 0,
            bytes_freed: None,
            dry_run: false,
            error: None,
            throttled: 0,
            warnings: Vec::new(),
        }
    }

    #[test]
    fn waiting_after_suspension_or_a_fixed_spec_shows_the_last_run_again() {
        let now = Timestamp::now();
        let mut status = MultipartCleanupStatus {
            last_run: Some(finished_run(7)),
            ..Default::default()
        };
        let mut show = |health: Health| {
            set_health(&mut status, &health, Some(2), now);
            health_while_waiting(&status)
        };
        let suspended = Health::not_ready(conditions::SUSPENDED, "suspended", false);
        let restored = show(suspended).expect("health after resuming");
        assert!(restored.ready && !restored.stalled);
        assert_eq!(
            (restored.reason.as_str(), restored.message.as_str()),
            (conditions::SUCCEEDED, "aborted 7 of 7 stale uploads")
        );
        let invalid = Health::not_ready(settings::INVALID_SPEC, "bad maxAge", true);
        assert!(show(invalid).is_some_and(|h| h.ready));
        // Conditions that describe the last run stay as they are.
        assert_eq!(show(Health::ready(conditions::SUCCEEDED, "x")), None);
        assert_eq!(show(Health::not_ready("AbortsFailed", "x", false)), None);

        // After a failed run the next run itself decides the health.
        status.consecutive_failures = 1;
        set_health(
            &mut status,
            &Health::not_ready(conditions::SUSPENDED, "suspended", false),
            Some(2),
            now,
        );
        assert_eq!(health_while_waiting(&status), None);
    }

    #[test]
    fn run_summaries_are_bounded_and_saturate() {
        let mut run = outcome(None, 0);
        run.summary.aborted = u64::MAX;
        run.summary.bytes_freed = Some(u64::MAX);
        run.summary.warnings = vec!["w".repeat(100_000)];
        let summary = run_summary(&run, Some("e".repeat(400_000)));
        assert_eq!(summary.aborted, i64::MAX);
        assert_eq!(summary.bytes_freed, Some(i64::MAX));
        assert!(summary.error.unwrap().len() <= RUN_TEXT_MAX_BYTES);
        assert!(summary.warnings[0].len() <= RUN_TEXT_MAX_BYTES);
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
        assert_eq!(verdict.health.reason, "DeadlineExceeded");
        assert!(!verdict.success && !verdict.health.stalled);
        assert!(
            verdict.health.message.contains("spec.timeout 1h")
                && verdict.health.message.contains("aborted 120 of 120"),
            "{}",
            verdict.health.message
        );
    }

    #[test]
    fn a_namespace_named_twice_is_watched_once() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(Scope::from_namespaces(&[]), Scope::AllNamespaces);
        assert_eq!(
            Scope::from_namespaces(&names(&["b", "a", "b"])),
            Scope::Namespaces(names(&["a", "b"]))
        );
    }

    #[test]
    fn due_times_follow_schedule_then_backoff() {
        let schedule = Schedule::parse("@hourly", None).unwrap();
        let now: Timestamp = "2026-11-22T05:30:00Z".parse().unwrap();
        let mut status = MultipartCleanupStatus::default();
        assert_eq!(
            next_due(&schedule, &status, false, now),
            now,
            "never ran: due now"
        );

        status.last_run = Some(finished_run(0));
        let next: Timestamp = "2026-11-22T06:00:00Z".parse().unwrap();
        assert_eq!(
            next_due(&schedule, &status, true, now),
            next,
            "a spec change alone does not re-run"
        );

        status.consecutive_failures = 2;
        let retry: Timestamp = "2026-11-22T05:31:00Z".parse().unwrap();
        status.next_run_time = Some(Time(retry));
        assert_eq!(next_due(&schedule, &status, false, now), retry);
        assert_eq!(
            next_due(&schedule, &status, true, now),
            now,
            "a spec change retries a failure at once"
        );
        assert_eq!(backoff(1), SignedDuration::from_secs(15));
        assert_eq!(backoff(3), SignedDuration::from_secs(60));
        assert_eq!(backoff(40), SignedDuration::from_secs(600));
    }
}
