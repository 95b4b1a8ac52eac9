//! Sweeps, beside the reconciles: the dispatcher starts queued sweeps as slots free up, and each
//! sweep looks at its resource once more, reads its Secrets, sweeps (marking the resource Running
//! if the run lasts), and writes what happened: one status write for a short run.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::events::EventType;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Api, ResourceExt};
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

use super::conditions::{self, Health};
use super::decide::{Activity, backoff};
use super::queue::Ticket;
use super::reason::Reason;
use super::reconcile::{Due, Examined, examine, set_health, warn_if_new};
use super::settings::{Plan, Problem};
use super::verdict::{judge, lifecycle_health, run_summary, saturating_i64};
use super::{Cached, Context, Error, reconcile, settings};
use crate::api::{MultipartCleanup, MultipartCleanupStatus};
use crate::metrics::ResourceLabels;
use crate::sweep::{self, NoProgress, RunOutcome, SendGate, SweepStop};

/// Starts queued sweeps as slots free up, until the controller stops; then waits for the sweeps
/// under way to wind down (they finish their aborts in flight and write their status).
pub async fn dispatch(ctx: Arc<Context>) {
    let mut sweeps = JoinSet::new();
    loop {
        while let Some(ticket) = ctx.queue().start_next() {
            sweeps.spawn(sweep_ticket(ctx.clone(), ticket));
        }
        {
            let queue = ctx.queue();
            ctx.metrics.set_sweeps(queue.running(), queue.waiting());
        }
        tokio::select! {
            () = ctx.queue_changed.notified() => {}
            Some(_) = sweeps.join_next(), if !sweeps.is_empty() => {}
            () = ctx.stop.cancelled() => break,
        }
    }
    while sweeps.join_next().await.is_some() {}
}

/// Frees the ticket's slot however the sweep ends (a panic included).
struct Slot {
    ctx: Arc<Context>,
    ticket: Ticket,
}

impl Drop for Slot {
    fn drop(&mut self) {
        self.ctx.queue().finished(&self.ticket);
        self.ctx.queue_changed.notify_one();
    }
}

async fn sweep_ticket(ctx: Arc<Context>, ticket: Ticket) {
    let slot = Slot {
        ctx: ctx.clone(),
        ticket: ticket.clone(),
    };
    let api: Api<MultipartCleanup> = Api::namespaced(ctx.client.clone(), &ticket.namespace);
    let result = sweep_resource(&ctx, &api, &ticket).await;
    drop(slot);
    // The sweep is over: what comes next (the next run, or what the user changed meanwhile)
    // is decided now, not at the next reconcile.
    let result = match result {
        Ok(Some(swept)) if !ctx.stop.is_cancelled() => {
            reconcile::look(&ctx, &api, &swept).await.map(|_| ())
        }
        other => other.map(|_| ()),
    };
    if let Err(err) = result {
        tracing::warn!(namespace = %ticket.namespace, name = %ticket.name, error = %err, "sweep could not finish; the resource is looked at again");
        ctx.metrics
            .reconcile_error(&ticket.namespace, &ticket.name, (&err).into());
        if !ctx.stop.is_cancelled() {
            ctx.look_again(&ticket.namespace, &ticket.name);
        }
    }
}

/// A sweep under way: the resource as last written, its status as this run goes on writing it.
struct Sweep<'a> {
    ctx: &'a Context,
    api: &'a Api<MultipartCleanup>,
    mpc: MultipartCleanup,
    status: MultipartCleanupStatus,
    plan: Plan,
    started: Timestamp,
    /// The Ready reason the last run left, to tell a run that changed it from one more of the
    /// same.
    previous: Option<Reason>,
}

/// Sweeps the resource if it is still due: start, prepare, run, record. The resource as last
/// written, when it was swept.
async fn sweep_resource(
    ctx: &Context,
    api: &Api<MultipartCleanup>,
    ticket: &Ticket,
) -> Result<Option<MultipartCleanup>, Error> {
    let Some(mut sweep) = start(ctx, api, ticket).await? else {
        return Ok(None);
    };
    let client = match sweep.prepare().await {
        Ok(client) => client,
        Err(problem) => return sweep.record_problem(problem).await,
    };
    let outcome = sweep.run_and_mark(&client).await;
    sweep.record(&outcome).await
}

/// A run still going after this long is marked Running in the status; a shorter one costs no
/// write beyond its result. (A controller that dies within it leaves no trace of the run, which
/// is then simply due again.)
const MARK_RUNNING_AFTER: Duration = Duration::from_secs(3);

/// Looks at the resource once more; `None` when it is no longer due.
async fn start<'a>(
    ctx: &'a Context,
    api: &'a Api<MultipartCleanup>,
    ticket: &Ticket,
) -> Result<Option<Sweep<'a>>, Error> {
    if ctx.stop.is_cancelled() || !ctx.leadership.holds() {
        return Ok(None);
    }
    // The ticket may have waited long for its slot: look at the resource again, so that a spec
    // changed meanwhile (suspended, dry run, another bucket), or a resource deleted or created
    // anew, is not swept as it was.
    let Some(mpc) = api.get_opt(&ticket.name).await? else {
        return Ok(None);
    };
    if mpc.metadata.uid.as_deref() != Some(ticket.uid.as_str()) {
        return Ok(None);
    }
    let Examined::Due(due) = examine(ctx, api, &mpc, Activity::Idle).await? else {
        return Ok(None);
    };
    let Due {
        mpc,
        mut status,
        plan,
    } = *due;
    let started = Timestamp::now();
    status.last_handled_run_request = mpc
        .annotations()
        .get(crate::api::RUN_REQUESTED_ANNOTATION)
        .cloned();
    // `Queued` (or the `Running` of a lost run) hides the reason the last run left; a last run
    // without an error left `Succeeded`.
    let previous =
        mpc.status
            .as_ref()
            .and_then(|s| match conditions::ready_reason(&s.conditions) {
                Some(Reason::Queued | Reason::Running) => s
                    .last_run
                    .as_ref()
                    .filter(|run| run.error.is_none())
                    .map(|_| Reason::Succeeded),
                other => other,
            });
    let running = Health::working(Reason::Running, format!("sweeping {}", plan.describe()));
    set_health(&mut status, &running, mpc.metadata.generation, started);
    Ok(Some(Sweep {
        ctx,
        api,
        mpc,
        status,
        plan,
        started,
        previous,
    }))
}

impl Sweep<'_> {
    fn labels(&self) -> ResourceLabels<'_> {
        ResourceLabels {
            namespace: self.mpc.metadata.namespace.as_deref().unwrap_or_default(),
            name: self.mpc.metadata.name.as_deref().unwrap_or_default(),
            bucket: self.plan.bucket_label(),
        }
    }

    /// The S3 client, from the Secrets the resource names, within the operator's fences.
    async fn prepare(&self) -> Result<aws_sdk_s3::Client, Problem> {
        let ctx = self.ctx;
        let namespace = self.mpc.metadata.namespace.as_deref().unwrap_or_default();
        let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), namespace);
        let mut settings = settings::s3_settings(
            &secrets,
            namespace,
            &self.mpc.spec,
            &ctx.limits,
            &ctx.fences,
        )
        .await?;
        // No request goes out once this replica may no longer lead: a standby may be sweeping.
        let leadership = ctx.leadership.clone();
        settings.send_gate = Some(SendGate::new(move || {
            (!leadership.holds())
                .then(|| "this controller no longer holds the leader lease".to_owned())
        }));
        // validate() passed in s3_settings, so a failure here is unexpected; a spec problem.
        settings.client().await.map_err(|err| Problem {
            reason: Reason::InvalidSpec,
            message: err.to_string(),
        })
    }

    /// A run that could not start (a Secret missing or refused...): a failed run, retried with
    /// backoff.
    async fn record_problem(mut self, problem: Problem) -> Result<Option<MultipartCleanup>, Error> {
        self.ctx.metrics.run_not_started(&self.labels());
        let status = &mut self.status;
        status.consecutive_failures = status.consecutive_failures.saturating_add(1);
        status.next_run_time = Some(Time(self.started + backoff(status.consecutive_failures)));
        let health = Health::not_ready(problem.reason, &problem.message);
        set_health(status, &health, self.mpc.metadata.generation, self.started);
        let before = self.mpc.status.clone().unwrap_or_default();
        warn_if_new(self.ctx, &self.mpc, &before, &problem).await;
        self.ctx
            .writer
            .write_final(self.api, &self.mpc, &self.status)
            .await
    }

    /// Runs the sweep and, if it lasts [`MARK_RUNNING_AFTER`], writes the Running status
    /// meanwhile. A status that changed under that write (another controller) stops the run.
    async fn run_and_mark(&mut self, client: &aws_sdk_s3::Client) -> RunOutcome {
        let run_cancel = self.ctx.stop.child_token();
        let ended = CancellationToken::new();
        let run = async {
            let outcome = self.run(client, &run_cancel).await;
            ended.cancel();
            outcome
        };
        let mark = async {
            tokio::select! {
                () = tokio::time::sleep(MARK_RUNNING_AFTER) => {}
                () = ended.cancelled() => return None,
            }
            let written = self
                .ctx
                .writer
                .write(self.api, &self.mpc, &self.status)
                .await;
            if !matches!(written, Ok(Some(_))) {
                run_cancel.cancel();
            }
            Some(written)
        };
        let (outcome, marked) = tokio::join!(run, mark);
        match marked {
            Some(Ok(Some(mpc))) => self.mpc = mpc,
            Some(Ok(None)) => {
                tracing::info!(namespace = %self.labels().namespace, name = %self.labels().name, "the resource changed under the run; stopped it");
            }
            Some(Err(err)) => {
                tracing::warn!(namespace = %self.labels().namespace, name = %self.labels().name, error = %err, "could not mark the run Running; stopped it");
            }
            None => {}
        }
        outcome
    }

    /// Sweeps, stopping early at shutdown and also when the resource is deleted, replaced or its
    /// spec changes (suspend, dryRun, bucket...): the run a user is trying to stop must not go on.
    async fn run(&self, client: &aws_sdk_s3::Client, run_cancel: &CancellationToken) -> RunOutcome {
        let labels = self.labels();
        tracing::info!(namespace = %labels.namespace, name = %labels.name, buckets = %self.plan.describe(), "sweep starting");
        let watch = tokio::spawn(cancel_on_change(
            self.ctx.stores.clone(),
            ObjectRef::<Cached>::new(labels.name).within(labels.namespace),
            self.mpc.metadata.uid.clone(),
            self.mpc.metadata.generation,
            run_cancel.clone(),
        ));
        let plan = &self.plan;
        let outcome = sweep::sweep_buckets(
            client,
            &plan.buckets,
            &plan.options,
            plan.lifecycle.as_ref(),
            &NoProgress,
            run_cancel,
        )
        .await;
        watch.abort();
        outcome
    }

    /// Writes what the run did: counts, conditions, the next run; an Event and metrics.
    async fn record(mut self, outcome: &RunOutcome) -> Result<Option<MultipartCleanup>, Error> {
        let ctx = self.ctx;
        let interrupted_by = if !ctx.leadership.holds() {
            "the loss of leadership"
        } else if ctx.stop.is_cancelled() {
            "controller shutdown"
        } else {
            "a change to the resource (deleted, replaced, or its spec edited)"
        };
        let verdict = judge(outcome, interrupted_by);
        let summary = &outcome.totals;
        let labels = self.labels();
        tracing::info!(
            namespace = %labels.namespace, name = %labels.name, found = summary.found, stale = summary.stale,
            aborted = summary.aborted, failed = summary.failed, result = verdict.result.label(), "sweep finished"
        );
        ctx.metrics
            .sweep_finished(&labels, summary, verdict.result, verdict.success);

        let completed = Timestamp::now();
        let generation = self.mpc.metadata.generation;
        let status = &mut self.status;
        status.last_run = Some(run_summary(outcome, verdict.error.clone()));
        status.total_aborted = status
            .total_aborted
            .saturating_add(saturating_i64(summary.aborted));
        let next = if verdict.success {
            status.consecutive_failures = 0;
            status.last_successful_run_time = Some(Time(summary.completion_time));
            self.plan.schedule.next_after(summary.start_time)
        } else if matches!(outcome.stop, Some(SweepStop::Cancelled)) {
            // Interrupted: due again as soon as a controller picks it up.
            status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            completed
        } else {
            status.consecutive_failures = status.consecutive_failures.saturating_add(1);
            completed + backoff(status.consecutive_failures)
        };
        status.next_run_time = Some(Time(next));
        set_health(status, &verdict.health, generation, completed);
        let lifecycle = lifecycle_health(self.plan.lifecycle.as_ref(), outcome);
        conditions::apply_lifecycle(
            &mut status.conditions,
            lifecycle.as_ref(),
            generation,
            completed,
        );
        // Losing this write would lose the run's counts and sweep the bucket again: it is
        // retried, and kept for the next reconcile if the API server stays away.
        let written = ctx
            .writer
            .write_final(self.api, &self.mpc, &self.status)
            .await?;
        // An Event for what is news: a warning, a new Ready reason, or uploads aborted; not one
        // more "nothing to do" an hour (thousands of resources would fill etcd with them).
        let news = verdict.event_type == EventType::Warning
            || self.previous != Some(verdict.health.reason)
            || summary.aborted > 0;
        if written.is_some() && news {
            ctx.publish(
                &self.mpc,
                verdict.event_type,
                verdict.health.reason,
                &verdict.health.message,
            )
            .await;
        }
        Ok(written)
    }
}

/// How often a running sweep looks at its resource in the watch cache.
const CHANGE_CHECK_INTERVAL: Duration = Duration::from_secs(1);

/// Cancels `cancel` once the watch cache no longer holds the resource, holds another resource
/// of the same name, or holds a newer generation of it (a spec edit). The cache, not the API
/// server, is asked: the watch already brings every change, so the check costs no request.
async fn cancel_on_change(
    stores: Vec<Store<Cached>>,
    resource: ObjectRef<Cached>,
    uid: Option<String>,
    generation: Option<i64>,
    cancel: CancellationToken,
) {
    loop {
        tokio::time::sleep(CHANGE_CHECK_INTERVAL).await;
        let current = stores.iter().find_map(|store| store.get(&resource));
        // Newer, not merely different: the cache may still hold the generation before the one
        // this run read from the API server.
        let changed = current.is_none_or(|current| {
            current.metadata.uid != uid || current.metadata.generation > generation
        });
        if changed {
            tracing::info!(resource = %resource, "resource deleted, replaced or changed during its sweep; stopping it");
            cancel.cancel();
            return;
        }
    }
}
