//! What the last look at each resource decided, so that the reconcile that this controller's
//! own status write sets off need not read the resource again.
//!
//! A look decides from the resource as read (or as it was just written) and from the time:
//! until the moment it named, a look at the same resourceVersion of the same resource decides
//! the same. The watch event of the controller's own status write is such a look; answering it
//! from here saves a GET per scheduled run (a third of the reads of the resource).

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use kube::Resource;
use kube::runtime::controller::Action;

use super::queue::{ResourceKey, resource_key};

/// When a resource is to be looked at again, as one look decided.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NextLook {
    After(Duration),
    /// Only when it changes.
    OnChange,
}

impl NextLook {
    pub fn action(self) -> Action {
        match self {
            NextLook::After(wait) => Action::requeue(wait),
            NextLook::OnChange => Action::await_change(),
        }
    }
}

struct LastLook {
    uid: String,
    resource_version: String,
    /// Until when the decision holds; `None`: until the resource changes.
    until: Option<Instant>,
}

/// A decision whose time is this close is taken again from a fresh read.
const TOO_CLOSE: Duration = Duration::from_secs(1);

#[derive(Default)]
pub struct LastLooks {
    by_resource: Mutex<HashMap<ResourceKey, LastLook>>,
}

impl LastLooks {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ResourceKey, LastLook>> {
        self.by_resource.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Notes what a look at `decided_from` decided, for `stored`: the resource as it is now
    /// stored (as written after the look, or as read). Nothing is noted when the two differ in
    /// what a decision reads besides the status (the spec, by its generation, and annotations
    /// such as a run request): the status writer may have written onto a newer version that a
    /// user changed meanwhile, and that version must be looked at afresh.
    pub fn record<K: Resource>(&self, decided_from: &K, stored: &K, next: NextLook) {
        let (from, meta) = (decided_from.meta(), stored.meta());
        if from.generation != meta.generation || from.annotations != meta.annotations {
            return;
        }
        let (Some(namespace), Some(name), Some(uid), Some(resource_version)) = (
            &meta.namespace,
            &meta.name,
            &meta.uid,
            &meta.resource_version,
        ) else {
            return;
        };
        let until = match next {
            NextLook::After(wait) => Some(Instant::now() + wait),
            NextLook::OnChange => None,
        };
        let look = LastLook {
            uid: uid.clone(),
            resource_version: resource_version.clone(),
            until,
        };
        self.lock().insert(resource_key(namespace, name), look);
    }

    /// What to do with `resource` without reading it: the last look's decision, when the
    /// resource has not changed since and the decision's time has not come.
    pub fn still_holds<K: Resource>(&self, resource: &K) -> Option<Action> {
        let meta = resource.meta();
        let key = resource_key(meta.namespace.as_deref()?, meta.name.as_deref()?);
        let looks = self.lock();
        let look = looks.get(&key)?;
        if meta.uid.as_ref() != Some(&look.uid)
            || meta.resource_version.as_ref() != Some(&look.resource_version)
        {
            return None;
        }
        match look.until {
            None => Some(Action::await_change()),
            Some(until) => {
                let left = until.checked_duration_since(Instant::now())?;
                (left > TOO_CLOSE).then(|| Action::requeue(left))
            }
        }
    }

    pub fn forget(&self, namespace: &str, name: &str) {
        self.lock().remove(&resource_key(namespace, name));
    }

    /// The resources looked at, as (namespace, name).
    pub fn resources(&self) -> Vec<ResourceKey> {
        self.lock().keys().cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::core::v1::ConfigMap;
    use kube::api::ObjectMeta;

    fn stored(uid: &str, resource_version: &str) -> ConfigMap {
        ConfigMap {
            metadata: ObjectMeta {
                namespace: Some("ns".into()),
                name: Some("mpc".into()),
                uid: Some(uid.into()),
                resource_version: Some(resource_version.into()),
                ..ObjectMeta::default()
            },
            ..ConfigMap::default()
        }
    }

    #[test]
    fn a_decision_holds_for_the_same_version_until_its_time() {
        let looks = LastLooks::default();
        assert_eq!(
            looks.still_holds(&stored("u1", "7")),
            None,
            "never looked at"
        );
        let at = |rv| stored("u1", rv);
        looks.record(&at("7"), &at("7"), NextLook::After(Duration::from_secs(60)));
        let action = looks.still_holds(&stored("u1", "7"));
        assert!(action.is_some_and(|a| a != Action::await_change()));
        assert_eq!(looks.still_holds(&stored("u1", "8")), None, "changed since");
        assert_eq!(
            looks.still_holds(&stored("u2", "7")),
            None,
            "another resource"
        );
        // A decision whose time has come (or nearly) is taken again.
        looks.record(
            &at("7"),
            &at("7"),
            NextLook::After(Duration::from_millis(500)),
        );
        assert_eq!(looks.still_holds(&stored("u1", "7")), None);
        looks.record(&at("7"), &at("7"), NextLook::OnChange);
        assert_eq!(
            looks.still_holds(&stored("u1", "7")),
            Some(Action::await_change())
        );
        looks.forget("ns", "mpc");
        assert_eq!(looks.still_holds(&stored("u1", "7")), None);
        assert!(looks.resources().is_empty());
    }

    #[test]
    fn a_decision_is_not_noted_for_a_version_changed_since_it_was_made() {
        let looks = LastLooks::default();
        // The status writer retried onto version 9, where a user had changed the spec...
        let mut changed = stored("u1", "9");
        changed.metadata.generation = Some(2);
        looks.record(&stored("u1", "7"), &changed, NextLook::OnChange);
        assert_eq!(looks.still_holds(&changed), None);
        // ...or asked for a run.
        let mut requested = stored("u1", "9");
        requested.metadata.annotations = Some(
            [(
                crate::api::RUN_REQUESTED_ANNOTATION.to_owned(),
                "now".to_owned(),
            )]
            .into(),
        );
        looks.record(&stored("u1", "7"), &requested, NextLook::OnChange);
        assert_eq!(looks.still_holds(&requested), None);
        // A status written onto the version decided from is noted.
        looks.record(&stored("u1", "7"), &stored("u1", "8"), NextLook::OnChange);
        assert_eq!(
            looks.still_holds(&stored("u1", "8")),
            Some(Action::await_change())
        );
    }
}
