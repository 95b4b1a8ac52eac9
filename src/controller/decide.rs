//! What to do with a resource now, from its spec, its status and what this controller is doing
//! with it: pure, so that every branch is tested without a cluster.

use std::time::Duration;

use jiff::{SignedDuration, Timestamp};

use super::conditions::{self, Health};
use super::reason::Reason;
use super::verdict::counts_text;
use crate::api::MultipartCleanupStatus;
use crate::schedule::Schedule;

/// What this controller is doing with a resource.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Activity {
    Idle,
    /// A run is due and waits for a sweep slot.
    Queued,
    /// A sweep is under way; it writes the status itself.
    Running,
}

/// Everything a decision depends on.
#[derive(Debug, Clone)]
pub struct Situation<'a> {
    pub now: Timestamp,
    pub generation: Option<i64>,
    pub suspended: bool,
    pub schedule: &'a Schedule,
    pub status: &'a MultipartCleanupStatus,
    /// The value of the run-request annotation, if set.
    pub run_request: Option<&'a str>,
    pub activity: Activity,
    /// Run requests closer to the last run's start than this wait for it.
    pub min_interval: Duration,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Decision {
    /// A sweep of it is under way here; it writes the status when it ends.
    Busy,
    Suspended,
    /// Nothing to do until `until`; `health` replaces conditions that no longer describe the
    /// last run.
    Wait {
        until: Timestamp,
        health: Option<Health>,
    },
    /// Sweep now (once a slot is free).
    Run,
}

/// The decision, and whether the status says a run is under way that no controller runs: it
/// was lost with the process that ran it and counts as a failed run (see [`record_lost_run`]).
pub fn decide(situation: &Situation<'_>) -> (Decision, bool) {
    if situation.activity == Activity::Running {
        return (Decision::Busy, false);
    }
    if situation.suspended {
        return (Decision::Suspended, false);
    }
    let lost_run = conditions::ready_reason(&situation.status.conditions) == Some(Reason::Running);
    let mut status = situation.status.clone();
    if lost_run {
        record_lost_run(&mut status, situation.generation, situation.now);
        // Decided as before the run: a spec changed since still retries at once.
        status.observed_generation = situation.status.observed_generation;
    }
    let now = situation.now;
    let spec_changed = status.observed_generation != situation.generation;
    let due = next_due(situation.schedule, &status, spec_changed, now);
    let requested = situation.run_request.is_some()
        && situation.run_request != status.last_handled_run_request.as_deref();
    let until = if requested {
        // A request runs at once, but not sooner than the operator's minimum interval after
        // the last run started (unless the schedule calls for a run anyway).
        due.min(earliest_requested_run(&status, situation.min_interval).max(now))
    } else {
        due
    };
    if until <= now {
        return (Decision::Run, lost_run);
    }
    let health = if lost_run {
        None
    } else {
        health_while_waiting(&status)
    };
    (Decision::Wait { until, health }, lost_run)
}

/// Retry delay after `failures` failed runs in a row: 15 s doubling to 10 min.
pub fn backoff(failures: i32) -> SignedDuration {
    let exponent = failures.clamp(1, 16) - 1;
    SignedDuration::from_secs((15i64 << exponent).min(600))
}

/// Counts a run lost with its controller as a failed one, retried after the backoff; a sweep
/// that kills its controller (out of memory, say) then backs off instead of running again at
/// every restart.
pub fn record_lost_run(
    status: &mut MultipartCleanupStatus,
    generation: Option<i64>,
    now: Timestamp,
) {
    status.consecutive_failures = status.consecutive_failures.saturating_add(1);
    let retry_in = backoff(status.consecutive_failures);
    status.next_run_time = Some(k8s_openapi::apimachinery::pkg::apis::meta::v1::Time(
        now + retry_in,
    ));
    let health = Health::not_ready(
        Reason::Interrupted,
        format!(
            "the last run did not finish: the controller running it stopped in the middle (killed, out of memory or crashed); retrying in {}s",
            retry_in.as_secs()
        ),
    );
    conditions::apply(&mut status.conditions, &health, generation, now);
}

/// When the next sweep is due.
fn next_due(
    schedule: &Schedule,
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

fn earliest_requested_run(status: &MultipartCleanupStatus, min_interval: Duration) -> Timestamp {
    let Some(run) = &status.last_run else {
        return Timestamp::MIN;
    };
    let gap = SignedDuration::try_from(min_interval).unwrap_or(SignedDuration::MAX);
    run.start_time.0.checked_add(gap).unwrap_or(Timestamp::MAX)
}

/// The health to show between runs when the conditions describe something other than the last
/// run (a suspension just lifted, an invalid spec just fixed, a queue position this controller
/// no longer holds), on a resource whose last run succeeded. After a failed run, the next run
/// itself says.
fn health_while_waiting(status: &MultipartCleanupStatus) -> Option<Health> {
    let reason = conditions::ready_reason(&status.conditions)?;
    if !matches!(
        reason,
        Reason::Suspended | Reason::InvalidSpec | Reason::Queued
    ) || status.consecutive_failures > 0
    {
        return None;
    }
    let run = status.last_run.as_ref()?;
    Some(Health::ready(counts_text(run)))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::api::RunSummary;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;

    fn at(text: &str) -> Timestamp {
        text.parse().unwrap()
    }

    fn finished_run(start: &str) -> RunSummary {
        RunSummary {
            start_time: Time(at(start)),
            completion_time: Time(at(start)),
            found: 7,
            stale: 7,
            aborted: 7,
            already_gone: 0,
            skipped: 0,
            failed: 0,
            throttled: 0,
            bytes_freed: None,
            dry_run: false,
            error: None,
            warnings: Vec::new(),
            bucket_count: 1,
            buckets: Vec::new(),
            more_buckets: 0,
            oldest_stale_age_seconds: None,
            stale_bytes: None,
            top_prefixes: Vec::new(),
        }
    }

    /// A resource last run at 05:00:10 on an hourly schedule, generation 2, seen at 05:30.
    struct Case {
        schedule: Schedule,
        status: MultipartCleanupStatus,
        generation: Option<i64>,
        suspended: bool,
        run_request: Option<&'static str>,
        activity: Activity,
    }

    impl Case {
        fn new() -> Self {
            let mut status = MultipartCleanupStatus {
                last_run: Some(finished_run("2026-11-22T05:00:10Z")),
                observed_generation: Some(2),
                ..Default::default()
            };
            conditions::apply(
                &mut status.conditions,
                &Health::ready("aborted 7 of 7 stale uploads"),
                Some(2),
                at("2026-11-22T05:00:11Z"),
            );
            Self {
                schedule: Schedule::parse("@hourly", None).unwrap(),
                status,
                generation: Some(2),
                suspended: false,
                run_request: None,
                activity: Activity::Idle,
            }
        }

        fn with_reason(mut self, reason: Reason) -> Self {
            let health = match reason {
                Reason::Running | Reason::Queued => Health::working(reason, "x"),
                _ => Health::not_ready(reason, "x"),
            };
            conditions::apply(
                &mut self.status.conditions,
                &health,
                Some(2),
                at("2026-11-22T05:00:12Z"),
            );
            self
        }

        fn decide(&self) -> (Decision, bool) {
            decide(&Situation {
                now: at("2026-11-22T05:30:00Z"),
                generation: self.generation,
                suspended: self.suspended,
                schedule: &self.schedule,
                status: &self.status,
                run_request: self.run_request,
                activity: self.activity,
                min_interval: Duration::from_secs(300),
            })
        }
    }

    fn wait_until(text: &str) -> Decision {
        Decision::Wait {
            until: at(text),
            health: None,
        }
    }

    #[test]
    fn a_sweep_under_way_here_is_left_alone_even_when_suspended() {
        let mut case = Case::new();
        case.activity = Activity::Running;
        case.suspended = true;
        assert_eq!(case.decide(), (Decision::Busy, false));
    }

    #[test]
    fn suspension_wins_over_everything_else() {
        let mut case = Case::new().with_reason(Reason::Running);
        case.suspended = true;
        case.run_request = Some("now");
        assert_eq!(case.decide(), (Decision::Suspended, false));
    }

    #[test]
    fn a_new_resource_runs_at_once() {
        let mut case = Case::new();
        case.status = MultipartCleanupStatus::default();
        assert_eq!(case.decide(), (Decision::Run, false));
    }

    #[test]
    fn between_scheduled_runs_it_waits_for_the_next_one() {
        let case = Case::new();
        assert_eq!(case.decide(), (wait_until("2026-11-22T06:00:00Z"), false));
        // Queued here already: still due, so still Run (the queue keeps one ticket).
        let mut queued = Case::new();
        queued.status.last_run = Some(finished_run("2026-11-22T04:00:10Z"));
        queued.activity = Activity::Queued;
        assert_eq!(queued.decide(), (Decision::Run, false));
    }

    #[test]
    fn a_spec_change_alone_does_not_run_but_retries_a_failure_at_once() {
        let mut case = Case::new();
        case.generation = Some(3);
        assert_eq!(case.decide(), (wait_until("2026-11-22T06:00:00Z"), false));
        case.status.consecutive_failures = 2;
        case.status.next_run_time = Some(Time(at("2026-11-22T05:31:00Z")));
        assert_eq!(case.decide(), (Decision::Run, false));
        case.generation = Some(2);
        assert_eq!(case.decide(), (wait_until("2026-11-22T05:31:00Z"), false));
    }

    #[test]
    fn a_run_request_runs_at_once_but_not_within_the_minimum_interval() {
        let mut case = Case::new();
        case.run_request = Some("please");
        assert_eq!(case.decide(), (Decision::Run, false));
        case.status.last_handled_run_request = Some("please".into());
        assert_eq!(
            case.decide(),
            (wait_until("2026-11-22T06:00:00Z"), false),
            "handled already"
        );
        case.status.last_run = Some(finished_run("2026-11-22T05:28:00Z"));
        case.run_request = Some("again");
        assert_eq!(
            case.decide(),
            (wait_until("2026-11-22T05:33:00Z"), false),
            "5 minutes after the last start"
        );
    }

    #[test]
    fn a_run_lost_with_its_controller_counts_as_a_failure_and_backs_off() {
        let case = Case::new().with_reason(Reason::Running);
        assert_eq!(case.decide(), (wait_until("2026-11-22T05:30:15Z"), true));
        let mut status = case.status.clone();
        record_lost_run(&mut status, Some(2), at("2026-11-22T05:30:00Z"));
        assert_eq!(status.consecutive_failures, 1);
        assert_eq!(
            conditions::ready_reason(&status.conditions),
            Some(Reason::Interrupted)
        );
        // The spec changed meanwhile: that may be the fix, so it runs now.
        let mut changed = Case::new().with_reason(Reason::Running);
        changed.generation = Some(3);
        assert_eq!(changed.decide(), (Decision::Run, true));
    }

    #[test]
    fn waiting_after_suspension_a_fixed_spec_or_a_lost_queue_shows_the_last_run_again() {
        for reason in [Reason::Suspended, Reason::InvalidSpec, Reason::Queued] {
            let case = Case::new().with_reason(reason);
            let (Decision::Wait { health, .. }, false) = case.decide() else {
                panic!("{reason}: waits");
            };
            let health = health.unwrap_or_else(|| panic!("{reason}: health restored"));
            assert!(health.ready, "{reason}");
            assert_eq!(health.reason, Reason::Succeeded);
            assert_eq!(health.message, "aborted 7 of 7 stale uploads");
        }
        // Conditions that describe the last run stay.
        for reason in [Reason::Succeeded, Reason::AbortsFailed] {
            let case = Case::new().with_reason(reason);
            assert_eq!(
                case.decide().0,
                wait_until("2026-11-22T06:00:00Z"),
                "{reason}"
            );
        }
        // After a failed run, the next run says.
        let mut failed = Case::new().with_reason(Reason::Suspended);
        failed.status.consecutive_failures = 1;
        failed.status.next_run_time = Some(Time(at("2026-11-22T05:45:00Z")));
        assert_eq!(failed.decide().0, wait_until("2026-11-22T05:45:00Z"));
    }

    #[test]
    fn backoff_doubles_from_15_seconds_to_10_minutes() {
        assert_eq!(backoff(1), SignedDuration::from_secs(15));
        assert_eq!(backoff(3), SignedDuration::from_secs(60));
        assert_eq!(backoff(40), SignedDuration::from_secs(600));
    }
}
