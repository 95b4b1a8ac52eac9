//! Leader election on a coordination.k8s.io/v1 Lease, so that two replicas never sweep at once.
//! Updates use the Lease's resourceVersion: of two replicas racing, one wins and the other gets a
//! conflict. As in client-go, a lease counts as expired when its record has not changed for its
//! duration on this replica's own monotonic clock, so clock skew between nodes cannot hand it
//! over early.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{MicroTime, ObjectMeta};
use kube::api::PostParams;
use kube::{Api, Client};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// Whether this replica may act as the leader now. A holder renews its lease every fifth of its
/// duration and holds it until two thirds of the duration after the last renewal it sent, on its
/// own monotonic clock; a standby takes over only after a whole duration without a change. So a
/// holder that was frozen (or cut off) stops in time by itself, before it learns anything.
#[derive(Debug, Clone)]
pub struct Leadership(Option<Arc<Mutex<Option<Instant>>>>);

impl Leadership {
    /// No election: this replica always leads.
    pub fn unelected() -> Self {
        Self(None)
    }

    fn elected() -> Self {
        Self(Some(Arc::new(Mutex::new(None))))
    }

    pub fn holds(&self) -> bool {
        match &self.0 {
            None => true,
            Some(until) => lock(until).is_some_and(|until| Instant::now() < until),
        }
    }

    fn hold_until(&self, until: Instant) {
        if let Some(held) = &self.0 {
            *lock(held) = Some(until);
        }
    }

    fn give_up(&self) {
        if let Some(held) = &self.0 {
            *lock(held) = None;
        }
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

pub struct LeaderElector {
    leases: Api<Lease>,
    leadership: Leadership,
    name: String,
    identity: String,
    lease_duration: Duration,
    /// The last lease record seen (holder, renew time, duration) and when it was first seen.
    observed: Mutex<Option<(ObservedRecord, Instant)>>,
}

type ObservedRecord = (Option<String>, Option<MicroTime>, Option<i32>);

impl LeaderElector {
    pub fn new(
        client: Client,
        namespace: &str,
        name: &str,
        identity: &str,
        lease_duration: Duration,
    ) -> Self {
        Self {
            leases: Api::namespaced(client, namespace),
            leadership: Leadership::elected(),
            name: name.to_owned(),
            identity: identity.to_owned(),
            lease_duration,
            observed: Mutex::new(None),
        }
    }

    fn retry_period(&self) -> Duration {
        self.lease_duration / 5
    }

    /// How long after sending a successful renewal this replica may still act.
    fn renew_deadline(&self) -> Duration {
        self.lease_duration * 2 / 3
    }

    /// This replica's leadership, for the checks before each abort and each status write.
    pub fn leadership(&self) -> Leadership {
        self.leadership.clone()
    }

    /// Waits until this replica holds the lease; `false` if `shutdown` came first.
    pub async fn acquire(&self, shutdown: &CancellationToken) -> bool {
        let mut announced = false;
        loop {
            let attempt_started = Instant::now();
            // Bounded, and given up on the signal: the kube client retries some answers (429,
            // 503) by itself for minutes, and a standby must still stop when told.
            let attempt = tokio::time::timeout(self.retry_period(), self.try_acquire_or_renew());
            let attempt = tokio::select! {
                _ = shutdown.cancelled() => return false,
                attempt = attempt => attempt,
            };
            match attempt {
                Ok(Ok(true)) => {
                    self.leadership
                        .hold_until(attempt_started + self.renew_deadline());
                    tracing::info!(lease = %self.name, identity = %self.identity, "acquired leadership");
                    return true;
                }
                Ok(Ok(false)) if !announced => {
                    tracing::info!(lease = %self.name, "another replica leads; standing by");
                    announced = true;
                }
                Ok(Ok(false)) => {}
                Ok(Err(err)) => {
                    tracing::warn!(error = %err, "leader election: cannot read or write the lease")
                }
                Err(_) => tracing::warn!("leader election: the API server did not answer in time"),
            }
            tokio::select! {
                _ = shutdown.cancelled() => return false,
                _ = tokio::time::sleep(self.retry_period()) => {}
            }
        }
    }

    /// Renews the lease until `stop` is cancelled (returns `true`) or the lease is lost (`false`):
    /// another holder took it, or renewals failed for longer than two thirds of its duration.
    /// The remaining third is the time the caller has to stop working before a standby, which
    /// waits a whole duration after the last renewal it saw, can take over.
    pub async fn hold(&self, stop: &CancellationToken) -> bool {
        let deadline = self.renew_deadline();
        // Counted from before each request: the server may have stamped the renewal at any
        // moment of a slow round trip.
        let mut last_renewal = Instant::now();
        loop {
            tokio::select! {
                _ = stop.cancelled() => return true,
                _ = tokio::time::sleep(self.retry_period()) => {}
            }
            let attempt_started = Instant::now();
            let attempt = tokio::time::timeout(self.retry_period(), self.try_acquire_or_renew());
            match attempt.await {
                Ok(Ok(true)) => {
                    last_renewal = attempt_started;
                    self.leadership.hold_until(attempt_started + deadline);
                }
                Ok(Ok(false)) => {
                    self.leadership.give_up();
                    tracing::error!(lease = %self.name, "leadership lost to another replica");
                    return false;
                }
                failed => {
                    let error = match failed {
                        Ok(Err(err)) => err.to_string(),
                        _ => "the API server did not answer in time".to_owned(),
                    };
                    tracing::warn!(%error, "leader election: renewal failed");
                    if last_renewal.elapsed() > deadline {
                        self.leadership.give_up();
                        tracing::error!(lease = %self.name, "leadership lost: could not renew in time");
                        return false;
                    }
                }
            }
        }
    }

    /// Gives the lease up, if this replica holds it, so that a standby takes over at once
    /// instead of after expiry. Bounded by the retry period: an API server that does not answer
    /// must not hold up the exit (the lease then expires on its own).
    pub async fn release(&self) {
        self.leadership.give_up();
        let release = async {
            let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
                return Ok(false);
            };
            let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
            if spec.holder_identity.as_deref() != Some(&self.identity) {
                return Ok(false);
            }
            spec.holder_identity = None;
            spec.lease_duration_seconds = Some(1);
            self.leases
                .replace(&self.name, &PostParams::default(), &lease)
                .await
                .map(|_| true)
        };
        match tokio::time::timeout(self.retry_period(), release).await {
            Ok(Ok(true)) => tracing::info!(lease = %self.name, "released leadership"),
            Ok(Ok(false)) => {}
            Ok(Err(err)) => {
                tracing::warn!(error = %err, "could not release the lease; it expires on its own")
            }
            Err(_) => tracing::warn!(
                "could not release the lease: the API server did not answer in time; it expires on its own"
            ),
        }
    }

    /// Whether the lease record has stayed the same for its whole duration, as seen from here.
    fn unchanged_for_its_duration(&self, spec: &LeaseSpec) -> bool {
        let record = (
            spec.holder_identity.clone(),
            spec.renew_time.clone(),
            spec.lease_duration_seconds,
        );
        let duration = Duration::from_secs(spec.lease_duration_seconds.unwrap_or(0).max(0) as u64);
        let mut observed = self.observed.lock().unwrap_or_else(|e| e.into_inner());
        match observed.as_ref() {
            Some((seen, since)) if *seen == record => since.elapsed() > duration,
            _ => {
                *observed = Some((record, Instant::now()));
                duration.is_zero()
            }
        }
    }

    /// One round: take the lease if it is free, expired or already ours.
    async fn try_acquire_or_renew(&self) -> Result<bool, kube::Error> {
        let now = Timestamp::now();
        let seconds = self.lease_duration.as_secs().max(1) as i32;
        let Some(mut lease) = self.leases.get_opt(&self.name).await? else {
            let lease = Lease {
                metadata: ObjectMeta {
                    name: Some(self.name.clone()),
                    ..ObjectMeta::default()
                },
                spec: Some(LeaseSpec {
                    holder_identity: Some(self.identity.clone()),
                    lease_duration_seconds: Some(seconds),
                    acquire_time: Some(MicroTime(now)),
                    renew_time: Some(MicroTime(now)),
                    lease_transitions: Some(0),
                    ..LeaseSpec::default()
                }),
            };
            return match self.leases.create(&PostParams::default(), &lease).await {
                Ok(_) => Ok(true),
                Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
                Err(err) => Err(err),
            };
        };
        let spec = lease.spec.get_or_insert_with(LeaseSpec::default);
        let holder = spec.holder_identity.clone().filter(|h| !h.is_empty());
        let ours = holder.as_deref() == Some(self.identity.as_str());
        let expired = self.unchanged_for_its_duration(spec);
        if !(ours || holder.is_none() || expired) {
            return Ok(false);
        }
        if !ours {
            spec.acquire_time = Some(MicroTime(now));
            spec.lease_transitions = Some(spec.lease_transitions.unwrap_or(0) + 1);
        }
        spec.holder_identity = Some(self.identity.clone());
        spec.lease_duration_seconds = Some(seconds);
        spec.renew_time = Some(MicroTime(now));
        match self
            .leases
            .replace(&self.name, &PostParams::default(), &lease)
            .await
        {
            Ok(_) => Ok(true),
            Err(kube::Error::Api(status)) if status.code == 409 => Ok(false),
            Err(err) => Err(err),
        }
    }
}
