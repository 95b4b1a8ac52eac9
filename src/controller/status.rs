//! The one place that writes a resource's status. Every write is fenced: it carries the UID and
//! the resourceVersion it was computed from, so that it never lands on a resource deleted and
//! created again under the same name, nor over a status another controller wrote meanwhile (a
//! standby that took over). Nothing is written while this replica does not hold the leadership.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use kube::{Api, ResourceExt};

use super::Error;
use super::leader::Leadership;
use crate::api::{MultipartCleanup, MultipartCleanupStatus};
use crate::metrics::Metrics;

/// Attempts after a conflict caused by someone else's change to the resource (a spec edit, an
/// annotation) that left the status alone.
const CONFLICT_RETRIES: usize = 3;

pub struct StatusWriter {
    leadership: Leadership,
    metrics: Arc<Metrics>,
    /// Final statuses of runs that could not be written (the API server was away), by UID, to be
    /// written first at the resource's next reconcile: a run that ended must not read as lost.
    unwritten: Mutex<HashMap<String, MultipartCleanupStatus>>,
}

impl StatusWriter {
    pub fn new(leadership: Leadership, metrics: Arc<Metrics>) -> Self {
        Self {
            leadership,
            metrics,
            unwritten: Mutex::default(),
        }
    }

    /// Writes `status` onto `from` (the resource as last read or written) when it differs, and
    /// returns the resource as it now is, or `None` when the write was dropped: the resource is
    /// gone or another, or someone else wrote its status since `from`.
    pub async fn write(
        &self,
        api: &Api<MultipartCleanup>,
        from: &MultipartCleanup,
        status: &MultipartCleanupStatus,
    ) -> Result<Option<MultipartCleanup>, Error> {
        let mut base = from.clone();
        for _ in 0..=CONFLICT_RETRIES {
            if base.status.as_ref() == Some(status) {
                return Ok(Some(base));
            }
            if !self.leadership.holds() {
                return Err(Error::NotLeader);
            }
            match self.patch(api, &base, status).await {
                Ok(written) => return Ok(Some(written)),
                // A changed resourceVersion conflicts (409); a changed UID is refused as an
                // attempt to change an immutable field (422).
                Err(kube::Error::Api(answer)) if matches!(answer.code, 409 | 422) => {}
                Err(kube::Error::Api(answer)) if answer.code == 404 => return Ok(None),
                Err(err) => {
                    self.metrics.status_patch_failed();
                    return Err(err.into());
                }
            }
            // Conflict: the resource changed since `base`. Only a change that left the status
            // as we wrote it may be written over.
            let Some(current) = api.get_opt(&base.name_any()).await? else {
                return Ok(None);
            };
            if current.metadata.uid != base.metadata.uid || current.status != base.status {
                tracing::warn!(
                    namespace = %base.namespace().unwrap_or_default(),
                    name = %base.name_any(),
                    "status not written: the resource was replaced, or its status written by someone else"
                );
                return Ok(None);
            }
            base = current;
        }
        Ok(None)
    }

    async fn patch(
        &self,
        api: &Api<MultipartCleanup>,
        base: &MultipartCleanup,
        status: &MultipartCleanupStatus,
    ) -> Result<MultipartCleanup, kube::Error> {
        let patch = serde_json::json!({
            "metadata": {
                "uid": base.metadata.uid,
                "resourceVersion": base.metadata.resource_version,
            },
            "status": status,
        });
        api.patch_status(
            &base.name_any(),
            &PatchParams::default(),
            &Patch::Merge(&patch),
        )
        .await
    }

    /// As [`Self::write`], through a short API-server outage (about half a minute). A status that
    /// still could not be written is kept for [`Self::take_unwritten`].
    pub async fn write_final(
        &self,
        api: &Api<MultipartCleanup>,
        from: &MultipartCleanup,
        status: &MultipartCleanupStatus,
    ) -> Result<Option<MultipartCleanup>, Error> {
        let mut delay = Duration::from_secs(1);
        loop {
            match self.write(api, from, status).await {
                Err(Error::Kube(err)) if delay <= Duration::from_secs(16) => {
                    tracing::warn!(error = %err, retry_in = ?delay, "could not write status; retrying");
                    tokio::time::sleep(delay).await;
                    delay *= 2;
                }
                Err(Error::Kube(err)) => {
                    if let Some(uid) = from.metadata.uid.clone() {
                        lock(&self.unwritten).insert(uid, status.clone());
                    }
                    return Err(Error::Kube(err));
                }
                other => return other,
            }
        }
    }

    /// The final status of this resource's last run, if it could not be written then.
    pub fn take_unwritten(&self, resource: &MultipartCleanup) -> Option<MultipartCleanupStatus> {
        let uid = resource.metadata.uid.as_deref()?;
        lock(&self.unwritten).remove(uid)
    }

    /// Whether a final status of the resource with this UID waits to be written.
    pub fn has_unwritten(&self, uid: &str) -> bool {
        lock(&self.unwritten).contains_key(uid)
    }

    /// Puts back what [`Self::take_unwritten`] gave, when writing it failed again.
    pub fn keep_unwritten(&self, resource: &MultipartCleanup, status: MultipartCleanupStatus) {
        if let Some(uid) = resource.metadata.uid.clone() {
            lock(&self.unwritten).insert(uid, status);
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}
