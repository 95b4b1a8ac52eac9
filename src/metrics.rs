//! Prometheus metrics of the controller, exposed on `/metrics` in the text format.

use prometheus::{
    Encoder, HistogramOpts, HistogramVec, IntCounterVec, IntGauge, Opts, Registry, TextEncoder,
    core::Collector,
};
use prometheus::{GaugeVec, IntCounter};

use std::cell::RefCell;
use std::collections::HashMap;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use crate::sweep::SweepSummary;

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

/// Which resource a series belongs to.
pub struct ResourceLabels<'a> {
    pub namespace: &'a str,
    pub name: &'a str,
    pub bucket: &'a str,
}

/// The values of `mpu_sweeper_runs_total`'s `result` label.
const RESULTS: [&str; 6] = [
    "succeeded",
    "partial",
    "failed",
    "interrupted",
    "deadline_exceeded",
    "setup_failed",
];
/// The values of `mpu_sweeper_reconcile_errors_total`'s `reason` label.
const RECONCILE_ERROR_REASONS: [&str; 2] = ["KubernetesApi", "NotLeader"];

pub struct Metrics {
    /// Every metric, rendered one after another.
    collectors: Vec<Box<dyn Collector>>,
    /// The last exposition's size: the next is about as large.
    last_render_bytes: AtomicUsize,
    /// The bucket each resource's series carry, so that they can be removed when it is
    /// deleted or sweeps another bucket.
    buckets: Mutex<HashMap<(String, String), String>>,
    runs: IntCounterVec,
    uploads_found: IntCounterVec,
    uploads_stale: IntCounterVec,
    uploads_aborted: IntCounterVec,
    uploads_already_gone: IntCounterVec,
    uploads_failed: IntCounterVec,
    throttled: IntCounterVec,
    bytes_freed: IntCounterVec,
    run_duration: HistogramVec,
    last_run: GaugeVec,
    last_success: GaugeVec,
    reconcile_errors: IntCounterVec,
    leader: IntGauge,
    sweeps_running: IntGauge,
    sweeps_queued: IntGauge,
    status_patch_failures: IntCounter,
}

const RESOURCE: [&str; 3] = ["namespace", "name", "bucket"];

impl Metrics {
    pub fn new() -> Self {
        // The registry only checks that names and labels are consistent and unique.
        let registry = Registry::new();
        let collectors: RefCell<Vec<Box<dyn Collector>>> = RefCell::default();
        fn register<C: Collector + Clone + 'static>(
            (registry, collectors): (&Registry, &RefCell<Vec<Box<dyn Collector>>>),
            collector: C,
        ) -> C {
            registry
                .register(Box::new(collector.clone()))
                .expect("metric names are unique");
            collectors.borrow_mut().push(Box::new(collector.clone()));
            collector
        }
        let to = (&registry, &collectors);
        let counter = |name: &str, help: &str, labels: &[&str]| {
            register(
                to,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge = |name: &str, help: &str| {
            register(
                to,
                GaugeVec::new(Opts::new(name, help), &RESOURCE).expect("valid metric"),
            )
        };
        Self {
            runs: counter(
                "mpu_sweeper_runs_total",
                "Sweeps run, by result (succeeded, partial, failed, interrupted, deadline_exceeded, setup_failed).",
                &["namespace", "name", "bucket", "result"],
            ),
            uploads_found: counter(
                "mpu_sweeper_uploads_found_total",
                "Incomplete uploads listed.",
                &RESOURCE,
            ),
            uploads_stale: counter(
                "mpu_sweeper_uploads_stale_total",
                "Uploads older than maxAge.",
                &RESOURCE,
            ),
            uploads_aborted: counter(
                "mpu_sweeper_uploads_aborted_total",
                "Uploads aborted.",
                &RESOURCE,
            ),
            uploads_already_gone: counter(
                "mpu_sweeper_uploads_already_gone_total",
                "Stale uploads completed or aborted by someone else first.",
                &RESOURCE,
            ),
            uploads_failed: counter(
                "mpu_sweeper_uploads_failed_total",
                "Uploads whose abort failed.",
                &RESOURCE,
            ),
            throttled: counter(
                "mpu_sweeper_throttled_total",
                "Answers asking for a slower pace (503, SlowDown); the requests were retried after a backoff.",
                &RESOURCE,
            ),
            bytes_freed: counter(
                "mpu_sweeper_bytes_freed_total",
                "Bytes held by aborted uploads (when measureBytes is on).",
                &RESOURCE,
            ),
            run_duration: register(
                to,
                HistogramVec::new(
                    HistogramOpts::new("mpu_sweeper_run_duration_seconds", "Duration of sweeps.")
                        .buckets(vec![0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0]),
                    &["namespace", "name"],
                )
                .expect("valid metric"),
            ),
            last_run: gauge(
                "mpu_sweeper_last_run_timestamp_seconds",
                "Unix time the last sweep completed.",
            ),
            last_success: gauge(
                "mpu_sweeper_last_success_timestamp_seconds",
                "Unix time the last fully successful sweep completed.",
            ),
            reconcile_errors: counter(
                "mpu_sweeper_reconcile_errors_total",
                "Reconciliations that failed, by reason.",
                &["namespace", "name", "reason"],
            ),
            leader: register(
                to,
                IntGauge::new(
                    "mpu_sweeper_leader",
                    "1 while this replica holds the leader lease.",
                )
                .expect("valid metric"),
            ),
            sweeps_running: register(
                to,
                IntGauge::new("mpu_sweeper_sweeps_running", "Sweeps under way.")
                    .expect("valid metric"),
            ),
            sweeps_queued: register(
                to,
                IntGauge::new(
                    "mpu_sweeper_sweeps_queued",
                    "Due sweeps waiting for a slot (all taken, or their namespace's share).",
                )
                .expect("valid metric"),
            ),
            status_patch_failures: register(
                to,
                IntCounter::new(
                    "mpu_sweeper_status_patch_failures_total",
                    "Status updates that failed.",
                )
                .expect("valid metric"),
            ),
            collectors: collectors.into_inner(),
            last_render_bytes: AtomicUsize::new(0),
            buckets: Mutex::default(),
        }
    }

    /// Series by resource (and bucket) that the resource's sweeps write.
    fn per_resource(&self) -> [&IntCounterVec; 7] {
        [
            &self.uploads_found,
            &self.uploads_stale,
            &self.uploads_aborted,
            &self.uploads_already_gone,
            &self.uploads_failed,
            &self.throttled,
            &self.bytes_freed,
        ]
    }

    /// Notes which bucket a resource sweeps, dropping its series of the bucket it swept before:
    /// a staleness alert must not keep firing for a bucket it no longer sweeps.
    fn track(&self, resource: &ResourceLabels<'_>) {
        let key = (resource.namespace.to_owned(), resource.name.to_owned());
        let previous = lock(&self.buckets).insert(key, resource.bucket.to_owned());
        if let Some(previous) = previous.filter(|b| b != resource.bucket) {
            self.remove_bucket_series(resource.namespace, resource.name, &previous);
        }
    }

    fn remove_bucket_series(&self, namespace: &str, name: &str, bucket: &str) {
        let labels = [namespace, name, bucket];
        for vec in self.per_resource() {
            let _ = vec.remove_label_values(&labels);
        }
        for gauge in [&self.last_run, &self.last_success] {
            let _ = gauge.remove_label_values(&labels);
        }
        for result in RESULTS {
            let _ = self
                .runs
                .remove_label_values(&[namespace, name, bucket, result]);
        }
    }

    /// The resources that have series, as (namespace, name).
    pub fn tracked(&self) -> Vec<(String, String)> {
        lock(&self.buckets).keys().cloned().collect()
    }

    /// Removes every series of a deleted resource.
    pub fn forget(&self, namespace: &str, name: &str) {
        let bucket = lock(&self.buckets).remove(&(namespace.to_owned(), name.to_owned()));
        if let Some(bucket) = bucket {
            self.remove_bucket_series(namespace, name, &bucket);
        }
        let _ = self.run_duration.remove_label_values(&[namespace, name]);
        for reason in RECONCILE_ERROR_REASONS {
            let _ = self
                .reconcile_errors
                .remove_label_values(&[namespace, name, reason]);
        }
    }

    /// Records one finished sweep.
    pub fn sweep_finished(
        &self,
        resource: &ResourceLabels<'_>,
        summary: &SweepSummary,
        result: &str,
        success: bool,
    ) {
        self.track(resource);
        let labels = [resource.namespace, resource.name, resource.bucket];
        self.runs
            .with_label_values(&[resource.namespace, resource.name, resource.bucket, result])
            .inc();
        self.uploads_found
            .with_label_values(&labels)
            .inc_by(summary.found);
        self.uploads_stale
            .with_label_values(&labels)
            .inc_by(summary.stale);
        self.uploads_aborted
            .with_label_values(&labels)
            .inc_by(summary.aborted);
        self.uploads_already_gone
            .with_label_values(&labels)
            .inc_by(summary.already_gone);
        self.uploads_failed
            .with_label_values(&labels)
            .inc_by(summary.failed);
        self.throttled
            .with_label_values(&labels)
            .inc_by(summary.throttled);
        self.bytes_freed
            .with_label_values(&labels)
            .inc_by(summary.bytes_freed.unwrap_or(0));
        let seconds = summary
            .completion_time
            .duration_since(summary.start_time)
            .as_secs_f64();
        self.run_duration
            .with_label_values(&[resource.namespace, resource.name])
            .observe(seconds.max(0.0));
        let completed = summary.completion_time.as_millisecond() as f64 / 1000.0;
        self.last_run.with_label_values(&labels).set(completed);
        if success {
            self.last_success.with_label_values(&labels).set(completed);
        }
    }

    /// A run that could not start (Secret missing, bad spec...).
    pub fn run_not_started(&self, resource: &ResourceLabels<'_>) {
        self.track(resource);
        self.runs
            .with_label_values(&[
                resource.namespace,
                resource.name,
                resource.bucket,
                "setup_failed",
            ])
            .inc();
    }

    pub fn reconcile_error(&self, namespace: &str, name: &str, reason: &str) {
        self.reconcile_errors
            .with_label_values(&[namespace, name, reason])
            .inc();
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

    /// The text exposition of every metric.
    /// One metric at a time: gathering them all first held every series as a protobuf message
    /// at once on top of the text (at 5,000 resources, tens of MB per scrape).
    pub fn render(&self) -> String {
        let encoder = TextEncoder::new();
        let mut buffer = Vec::with_capacity(self.last_render_bytes.load(Ordering::Relaxed));
        for collector in &self.collectors {
            let mut families = collector.collect();
            // A metric without series yet is left out, as a registry's gather does.
            families.retain(|family| !family.get_metric().is_empty());
            encoder
                .encode(&families, &mut buffer)
                .expect("text encoding cannot fail");
        }
        self.last_render_bytes
            .store(buffer.len(), Ordering::Relaxed);
        String::from_utf8(buffer).expect("the text format is UTF-8")
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
        metrics.sweep_finished(&resource, &summary, "succeeded", true);
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
        metrics.sweep_finished(&on("old"), &summary, "succeeded", true);
        metrics.reconcile_error("ns", "mpc", "KubernetesApi");
        metrics.sweep_finished(&on("new"), &summary, "failed", false);
        let text = metrics.render();
        assert!(!text.contains(r#"bucket="old""#), "{text}");
        assert!(text.contains(r#"bucket="new""#), "{text}");
        metrics.forget("ns", "mpc");
        let text = metrics.render();
        assert!(!text.contains(r#"name="mpc""#), "{text}");
    }
}
