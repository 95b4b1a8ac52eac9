//! Prometheus metrics of the controller, exposed on `/metrics` in the text format.

use prometheus::core::Collector;
use prometheus::{IntCounter, IntGauge, TextEncoder};

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::sweep::SweepSummary;

mod resources;
mod text;

pub use resources::{ReconcileFailure, RunResult};

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which resource a series belongs to.
pub struct ResourceLabels<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub bucket: &'a str,
}

impl<'a> ResourceLabels<'a> {
    fn values(&self) -> (&'a str, &'a str, &'a str) {
        (self.namespace, self.name, self.bucket)
    }
}

pub struct Metrics {
    /// The series of each resource.
    resources: Mutex<resources::ResourceSeries>,
    /// The controller's own metrics, rendered after the resources' series.
    own: Vec<Box<dyn Collector>>,
    /// The last exposition's size: the next is about as large.
    last_render_bytes: AtomicUsize,
    leader: IntGauge,
    sweeps_running: IntGauge,
    sweeps_queued: IntGauge,
    status_patch_failures: IntCounter,
}

impl Metrics {
    pub fn new() -> Self {
        let gauge = |name: &str, help: &str| IntGauge::new(name, help).expect("valid metric");
        let leader = gauge(
            "mpu_sweeper_leader",
            "1 while this replica holds the leader lease.",
        );
        let sweeps_running = gauge("mpu_sweeper_sweeps_running", "Sweeps under way.");
        let sweeps_queued = gauge(
            "mpu_sweeper_sweeps_queued",
            "Due sweeps waiting for a slot (all taken, or their namespace's share).",
        );
        let status_patch_failures = IntCounter::new(
            "mpu_sweeper_status_patch_failures_total",
            "Status updates that failed.",
        )
        .expect("valid metric");
        Self {
            resources: Mutex::default(),
            own: vec![
                Box::new(leader.clone()),
                Box::new(sweeps_running.clone()),
                Box::new(sweeps_queued.clone()),
                Box::new(status_patch_failures.clone()),
            ],
            last_render_bytes: AtomicUsize::new(0),
            leader,
            sweeps_running,
            sweeps_queued,
            status_patch_failures,
        }
    }

    /// The resources that have series, as (namespace, name).
    pub fn tracked(&self) -> Vec<(String, String)> {
        lock(&self.resources).resources()
    }

    /// Removes every series of a deleted resource.
    pub fn forget(&self, namespace: &str, name: &str) {
        lock(&self.resources).forget(namespace, name);
    }

    /// Records one finished sweep.
    pub fn sweep_finished(
        &self,
        resource: &ResourceLabels<'_>,
        summary: &SweepSummary,
        result: RunResult,
        success: bool,
    ) {
        lock(&self.resources).sweep_finished(resource.values(), summary, result, success);
    }

    /// A run that could not start (Secret missing, bad spec...).
    pub fn run_not_started(&self, resource: &ResourceLabels<'_>) {
        lock(&self.resources).run_not_started(resource.values());
    }

    pub fn reconcile_error(&self, namespace: &str, name: &str, reason: ReconcileFailure) {
        lock(&self.resources).reconcile_failed(namespace, name, reason);
    }

    pub fn status_patch_failed(&self) {
        self.status_patch_failures.inc();
    }

    pub fn set_sweeps(&self, running: usize, queued: usize) {
        self.sweeps_running
            .set(i64::try_from(running).unwrap_or(i64::MAX));
        self.sweeps_queued
            .set(i64::try_from(queued).unwrap_or(i64::MAX));
    }

    pub fn set_leader(&self, leader: bool) {
        self.leader.set(i64::from(leader));
    }

    /// The text exposition of every metric, written into a buffer sized like the last one.
    pub fn render(&self) -> String {
        let mut out = String::with_capacity(self.last_render_bytes.load(Ordering::Relaxed));
        lock(&self.resources).render(&mut out);
        let encoder = TextEncoder::new();
        for collector in &self.own {
            encoder
                .encode_utf8(&collector.collect(), &mut out)
                .expect("text encoding cannot fail");
        }
        self.last_render_bytes.store(out.len(), Ordering::Relaxed);
        out
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::max_age::MaxAge;

    #[test]
    fn a_finished_sweep_shows_in_the_exposition() {
        let metrics = Metrics::new();
        let options = crate::sweep::SweepOptions::new("bkt", MaxAge::from_secs(60).unwrap());
        let mut summary = SweepSummary::empty(&options, jiff::Timestamp::now());
        summary.found = 7;
        summary.aborted = 5;
        let resource = ResourceLabels {
            namespace: "ns",
            name: "mpc",
            bucket: "bkt",
        };
        metrics.sweep_finished(&resource, &summary, RunResult::Succeeded, true);
        metrics.set_leader(true);
        let text = metrics.render();
        assert!(
            text.contains(
                r#"mpu_sweeper_uploads_aborted_total{bucket="bkt",name="mpc",namespace="ns"} 5"#
            ),
            "{text}"
        );
        assert!(text.contains(
            r#"mpu_sweeper_runs_total{bucket="bkt",name="mpc",namespace="ns",result="succeeded"} 1"#
        ));
        assert!(text.contains("mpu_sweeper_leader 1"));
        assert!(text.contains("mpu_sweeper_run_duration_seconds_bucket"));
    }

    #[test]
    fn a_resource_s_series_go_when_it_is_deleted_or_sweeps_another_bucket() {
        let metrics = Metrics::new();
        let options = crate::sweep::SweepOptions::new("b", MaxAge::from_secs(60).unwrap());
        let summary = SweepSummary::empty(&options, jiff::Timestamp::now());
        let on = |bucket| ResourceLabels {
            namespace: "ns",
            name: "mpc",
            bucket,
        };
        metrics.sweep_finished(&on("old"), &summary, RunResult::Succeeded, true);
        metrics.reconcile_error("ns", "mpc", ReconcileFailure::KubernetesApi);
        metrics.sweep_finished(&on("new"), &summary, RunResult::Failed, false);
        let text = metrics.render();
        assert!(!text.contains(r#"bucket="old""#), "{text}");
        assert!(text.contains(r#"bucket="new""#), "{text}");
        metrics.forget("ns", "mpc");
        let text = metrics.render();
        assert!(!text.contains(r#"name="mpc""#), "{text}");
    }
}
