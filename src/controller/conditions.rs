//! kstatus conditions: Ready, Reconciling and Stalled, each with a reason and a message.

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

use super::reason::Reason;
use crate::text;

/// The longest condition message written, under 1 KiB; the rest is cut.
pub const MESSAGE_MAX_BYTES: usize = 1000;

pub const READY: &str = "Ready";
pub const RECONCILING: &str = "Reconciling";
pub const STALLED: &str = "Stalled";

/// The state the three conditions should express.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Health {
    pub ready: bool,
    pub reconciling: bool,
    pub stalled: bool,
    pub reason: Reason,
    pub message: String,
}

impl Health {
    /// Ready, with the last run's result.
    pub fn ready(message: impl Into<String>) -> Self {
        Self {
            ready: true,
            reconciling: false,
            stalled: false,
            reason: Reason::Succeeded,
            message: message.into(),
        }
    }

    /// Not ready; Stalled when only a change by the user can help.
    pub fn not_ready(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            ready: false,
            reconciling: false,
            stalled: reason.stalled(),
            reason,
            message: message.into(),
        }
    }

    /// A sweep under way or waiting for a slot (kstatus Reconciling).
    pub fn working(reason: Reason, message: impl Into<String>) -> Self {
        Self {
            ready: false,
            reconciling: true,
            stalled: false,
            reason,
            message: message.into(),
        }
    }
}

/// Rewrites the three conditions for `health`, keeping each one's lastTransitionTime when its
/// status does not change. Other condition types are left alone.
pub fn apply(
    conditions: &mut Vec<Condition>,
    health: &Health,
    generation: Option<i64>,
    now: Timestamp,
) {
    let quiet = |active: bool| {
        if active {
            health.reason.as_str()
        } else {
            "AsExpected"
        }
    };
    let entries = [
        (READY, health.ready, health.reason.as_str()),
        (RECONCILING, health.reconciling, quiet(health.reconciling)),
        (STALLED, health.stalled, quiet(health.stalled)),
    ];
    for (kind, active, reason) in entries {
        let status = if active { "True" } else { "False" };
        // Every condition carries the message: it explains the inactive ones too, and an empty
        // string is stored as null by the v1.20 API server of the test bed, which then rejects it.
        // Bounded, so that three of them can never swell the object.
        let message = text::bounded(&health.message, MESSAGE_MAX_BYTES);
        match conditions.iter_mut().find(|c| c.type_ == kind) {
            Some(existing) => {
                if existing.status != status {
                    existing.last_transition_time = Time(now);
                }
                existing.status = status.to_owned();
                existing.reason = reason.to_owned();
                existing.message = message;
                existing.observed_generation = generation;
            }
            None => conditions.push(Condition {
                type_: kind.to_owned(),
                status: status.to_owned(),
                reason: reason.to_owned(),
                message,
                observed_generation: generation,
                last_transition_time: Time(now),
            }),
        }
    }
}

/// A condition of its own for the buckets' lifecycle rule: it does not change what Ready says of
/// the sweeps. `None` (no lifecycleRule in the spec) removes it.
pub const LIFECYCLE_RULE_READY: &str = "LifecycleRuleReady";

/// What the LifecycleRuleReady condition says.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LifecycleHealth {
    pub ready: bool,
    /// The state of the first bucket that is not ready (Missing, Denied...), else `Present`.
    pub reason: String,
    pub message: String,
}

pub fn apply_lifecycle(
    conditions: &mut Vec<Condition>,
    health: Option<&LifecycleHealth>,
    generation: Option<i64>,
    now: Timestamp,
) {
    let Some(health) = health else {
        conditions.retain(|c| c.type_ != LIFECYCLE_RULE_READY);
        return;
    };
    let status = if health.ready { "True" } else { "False" };
    let message = text::bounded(&health.message, MESSAGE_MAX_BYTES);
    match conditions
        .iter_mut()
        .find(|c| c.type_ == LIFECYCLE_RULE_READY)
    {
        Some(existing) => {
            if existing.status != status {
                existing.last_transition_time = Time(now);
            }
            existing.status = status.to_owned();
            existing.reason = health.reason.clone();
            existing.message = message;
            existing.observed_generation = generation;
        }
        None => conditions.push(Condition {
            type_: LIFECYCLE_RULE_READY.to_owned(),
            status: status.to_owned(),
            reason: health.reason.clone(),
            message,
            observed_generation: generation,
            last_transition_time: Time(now),
        }),
    }
}

/// The reason of the Ready condition, if any.
pub fn ready_reason(conditions: &[Condition]) -> Option<Reason> {
    conditions
        .iter()
        .find(|c| c.type_ == READY)
        .and_then(|c| Reason::parse(&c.reason))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let t0: Timestamp = "2026-01-01T00:00:00Z".parse().unwrap();
        let t1: Timestamp = "2026-01-01T01:00:00Z".parse().unwrap();
        let mut conditions = Vec::new();
        apply(
            &mut conditions,
            &Health::ready("aborted 1 of 1"),
            Some(1),
            t0,
        );
        apply(
            &mut conditions,
            &Health::ready("aborted 2 of 2"),
            Some(2),
            t1,
        );
        let ready = conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.last_transition_time.0),
            ("True", t0)
        );
        assert_eq!(ready.message, "aborted 2 of 2");
        assert_eq!(ready.observed_generation, Some(2));

        apply(
            &mut conditions,
            &Health::not_ready(Reason::SecretNotFound, "create it"),
            Some(2),
            t1,
        );
        let ready = conditions.iter().find(|c| c.type_ == READY).unwrap();
        assert_eq!(
            (ready.status.as_str(), ready.last_transition_time.0),
            ("False", t1)
        );
        let stalled = conditions.iter().find(|c| c.type_ == STALLED).unwrap();
        assert_eq!(
            (stalled.status.as_str(), stalled.reason.as_str()),
            ("True", "SecretNotFound")
        );
        assert_eq!(conditions.len(), 3);

        let huge = "x".repeat(400_000);
        apply(
            &mut conditions,
            &Health::not_ready(Reason::ListingFailed, huge),
            Some(2),
            t1,
        );
        assert!(
            conditions
                .iter()
                .all(|c| c.message.len() <= MESSAGE_MAX_BYTES)
        );
    }
}
