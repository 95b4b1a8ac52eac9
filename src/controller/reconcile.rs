//! One look at a resource: read it, check the spec, decide, write the status, queue a due sweep.
//! It never waits for a sweep, so a new resource gets its conditions and `suspend: true` takes
//! effect at once, however busy the sweeps are.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use kube::{Api, ResourceExt};

use super::conditions::{self, Health};
use super::decide::{self, Activity, Decision, Situation};
use super::looks::NextLook;
use super::queue::Ticket;
use super::reason::Reason;
use super::settings::{self, Plan, Problem};
use super::{BUSY_RECHECK, Cached, Context, Error};
use crate::api::{MultipartCleanup, MultipartCleanupStatus, RUN_REQUESTED_ANNOTATION};

pub async fn reconcile(cached: Arc<Cached>, ctx: Arc<Context>) -> Result<Action, Error> {
    // Most often the event of this controller's own status write, already looked at. A run's
    // final status left unwritten is written first, whatever the last look decided.
    let unwritten = (cached.uid()).is_some_and(|uid| ctx.writer.has_unwritten(&uid));
    if let Some(action) = ctx
        .last_looks
        .still_holds(cached.as_ref())
        .filter(|_| !unwritten)
    {
        return Ok(action);
    }
    let _slot = (ctx.reconcile_slots.acquire().await).expect("the semaphore is never closed");
    // The CRD is namespaced: every object the API server hands out has one.
    let namespace = cached.namespace().unwrap_or_default();
    let name = cached.name_any();
    let api: Api<MultipartCleanup> = Api::namespaced(ctx.client.clone(), &namespace);
    // The watch cache can lag behind this controller's own last status write; deciding from it
    // could sweep twice or write an older status over a newer one. One GET avoids both.
    let Some(mpc) = api.get_opt(&name).await? else {
        ctx.forget(&namespace, &name);
        return Ok(Action::await_change());
    };
    let mpc = write_unwritten(&ctx, &api, mpc).await?;
    look(&ctx, &api, &mpc).await
}

/// Decides on `mpc` as read, writes the status, and queues a due sweep. A sweep that just ended
/// looks again through here at once, so that what the user changed during it (a suspension, say)
/// shows without waiting for the next reconcile.
pub async fn look(
    ctx: &Context,
    api: &Api<MultipartCleanup>,
    mpc: &MultipartCleanup,
) -> Result<Action, Error> {
    let ticket = ticket_of(mpc);
    let activity = ctx.queue().activity(&ticket);
    match examine(ctx, api, mpc, activity).await? {
        Examined::Done(next) => Ok(next.action()),
        Examined::Due(due) => {
            let wait = {
                let mut queue = ctx.queue();
                queue.enqueue(ticket.clone());
                let wait = if queue.can_start(&ticket) {
                    SlotWait::None
                } else {
                    match QUEUED_SAID_AFTER.checked_sub(queue.waited(&ticket)) {
                        Some(left) if !left.is_zero() => SlotWait::Short(left),
                        _ => SlotWait::Long,
                    }
                };
                if wait == SlotWait::Long {
                    queue.hold(&ticket);
                }
                wait
            };
            // Said only when the sweep has waited a while: one that starts soon says nothing
            // until it has run (or has run for a while), so that a run costs one status write
            // even when many fall due at once. The sweep starts only once this is written.
            let written = match wait {
                SlotWait::None => Ok(None),
                SlotWait::Short(left) => {
                    ctx.queue_changed.notify_one();
                    return Ok(Action::requeue(left));
                }
                SlotWait::Long => {
                    let mut status = due.status;
                    let health = Health::working(
                        Reason::Queued,
                        "due; waiting for a sweep slot (the operator runs a few sweeps at a time, and a few per namespace)",
                    );
                    set_health(
                        &mut status,
                        &health,
                        mpc.metadata.generation,
                        Timestamp::now(),
                    );
                    let written = ctx.writer.write(api, &due.mpc, &status).await;
                    ctx.queue().release(&ticket);
                    written
                }
            };
            ctx.queue_changed.notify_one();
            written?;
            Ok(Action::await_change())
        }
    }
}

/// How long a due sweep waits for its slot before its status says `Queued`.
const QUEUED_SAID_AFTER: Duration = Duration::from_secs(10);

/// How long a due sweep is to wait for a sweep slot, as far as its status goes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum SlotWait {
    /// It starts at once.
    None,
    /// It waits, but not yet for [`QUEUED_SAID_AFTER`]; looked at again after what is left.
    Short(Duration),
    /// It has waited that long: its status says `Queued`.
    Long,
}

pub fn error_policy(mpc: Arc<Cached>, err: &Error, ctx: Arc<Context>) -> Action {
    let namespace = mpc.namespace().unwrap_or_default();
    tracing::warn!(namespace, name = %mpc.name_any(), error = %err, "reconcile failed; retrying");
    ctx.metrics
        .reconcile_error(&namespace, &mpc.name_any(), err.into());
    Action::requeue(Duration::from_secs(10))
}

pub fn ticket_of(mpc: &MultipartCleanup) -> Ticket {
    Ticket {
        namespace: mpc.namespace().unwrap_or_default(),
        name: mpc.name_any(),
        uid: mpc.metadata.uid.clone().unwrap_or_default(),
    }
}

/// A run's final status that could not be written when the run ended goes first, so that the
/// run does not read as lost.
async fn write_unwritten(
    ctx: &Context,
    api: &Api<MultipartCleanup>,
    mpc: MultipartCleanup,
) -> Result<MultipartCleanup, Error> {
    let Some(unwritten) = ctx.writer.take_unwritten(&mpc) else {
        return Ok(mpc);
    };
    match ctx.writer.write(api, &mpc, &unwritten).await {
        Ok(Some(written)) => Ok(written),
        Ok(None) => Ok(mpc),
        Err(err) => {
            ctx.writer.keep_unwritten(&mpc, unwritten);
            Err(err)
        }
    }
}

/// A sweep that is due, with what it starts from.
pub struct Due {
    /// The resource as last read or written.
    pub mpc: MultipartCleanup,
    /// Its status with this look's changes (generation, a lost run counted), not yet written.
    pub status: MultipartCleanupStatus,
    pub plan: Plan,
}

pub enum Examined {
    /// Status written; look again as it says.
    Done(NextLook),
    Due(Box<Due>),
}

/// Checks, decides and writes what the resource needs now; a due sweep is handed back, not run.
/// The reconcile and a sweep about to start (which may have waited long for its slot) both look
/// through here, so that a sweep never starts on a spec that no longer asks for it.
pub async fn examine(
    ctx: &Context,
    api: &Api<MultipartCleanup>,
    mpc: &MultipartCleanup,
    activity: Activity,
) -> Result<Examined, Error> {
    let now = Timestamp::now();
    let generation = mpc.metadata.generation;
    let old = mpc.status.clone().unwrap_or_default();
    let mut status = old.clone();
    status.observed_generation = generation;

    let plan = match settings::plan(&mpc.spec, &ctx.fences) {
        Ok(plan) => plan,
        Err(problem) => {
            ctx.queue()
                .withdraw(&mpc.namespace().unwrap_or_default(), &mpc.name_any());
            status.next_run_time = None;
            set_health(
                &mut status,
                &Health::not_ready(problem.reason, &problem.message),
                generation,
                now,
            );
            warn_if_new(ctx, mpc, &old, &problem).await;
            return written(ctx, api, mpc, &status, NextLook::OnChange).await;
        }
    };
    if plan.lifecycle.is_none() {
        conditions::apply_lifecycle(&mut status.conditions, None, generation, now);
    }
    let run_request = mpc.annotations().get(RUN_REQUESTED_ANNOTATION).cloned();
    let (decision, lost_run) = decide::decide(&Situation {
        now,
        generation,
        suspended: mpc.spec.suspend,
        schedule: &plan.schedule,
        status: &old,
        run_request: run_request.as_deref(),
        activity,
        min_interval: ctx.fences.min_interval,
    });
    if lost_run {
        decide::record_lost_run(&mut status, generation, now);
    }
    let next = match decision {
        Decision::Busy => {
            ctx.last_looks
                .record(mpc, mpc, NextLook::After(BUSY_RECHECK));
            return Ok(Examined::Done(NextLook::After(BUSY_RECHECK)));
        }
        Decision::Run => {
            return Ok(Examined::Due(Box::new(Due {
                mpc: mpc.clone(),
                status,
                plan,
            })));
        }
        Decision::Suspended => {
            status.next_run_time = None;
            let health = Health::not_ready(
                Reason::Suspended,
                "suspended: no sweeps run until spec.suspend is false",
            );
            set_health(&mut status, &health, generation, now);
            NextLook::OnChange
        }
        Decision::Wait { until, health } => {
            status.next_run_time = Some(Time(until));
            if let Some(health) = health {
                set_health(&mut status, &health, generation, now);
            }
            requeue_at(until, now)
        }
    };
    ctx.queue()
        .withdraw(&mpc.namespace().unwrap_or_default(), &mpc.name_any());
    written(ctx, api, mpc, &status, next).await
}

/// Writes the status a look decided on and notes the decision for the resource as written.
async fn written(
    ctx: &Context,
    api: &Api<MultipartCleanup>,
    mpc: &MultipartCleanup,
    status: &MultipartCleanupStatus,
    next: NextLook,
) -> Result<Examined, Error> {
    if let Some(written) = ctx.writer.write(api, mpc, status).await? {
        ctx.last_looks.record(mpc, &written, next);
    }
    Ok(Examined::Done(next))
}

pub fn requeue_at(at: Timestamp, now: Timestamp) -> NextLook {
    let wait = at
        .duration_since(now)
        .as_secs_f64()
        .clamp(1.0, 24.0 * 3600.0);
    NextLook::After(Duration::from_secs_f64(wait))
}

pub fn set_health(
    status: &mut MultipartCleanupStatus,
    health: &Health,
    generation: Option<i64>,
    now: Timestamp,
) {
    conditions::apply(&mut status.conditions, health, generation, now);
}

/// A Warning Event for a problem, unless the resource already reports the same one.
pub async fn warn_if_new(
    ctx: &Context,
    mpc: &MultipartCleanup,
    old: &MultipartCleanupStatus,
    problem: &Problem,
) {
    if conditions::ready_reason(&old.conditions) == Some(problem.reason) {
        return;
    }
    ctx.publish(mpc, EventType::Warning, problem.reason, &problem.message)
        .await;
}
