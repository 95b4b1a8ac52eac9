//! The series each MultipartCleanup has, kept as plain numbers.
//!
//! The prometheus crate keeps a descriptor, label pairs and atomics per child: about 6 KB per
//! resource for these 25 series, 30 MB at 5,000 resources. Here a resource costs a few hundred
//! bytes, and the text is written as the crate's encoder writes it.

use std::collections::BTreeMap;

use super::text::{self, Kind};
use crate::sweep::SweepSummary;

/// How a run ended: the `result` label of `mpu_sweeper_runs_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum RunResult {
    Succeeded,
    Partial,
    Failed,
    Interrupted,
    DeadlineExceeded,
    SetupFailed,
}

impl RunResult {
    const ALL: [RunResult; 6] = [
        RunResult::Succeeded,
        RunResult::Partial,
        RunResult::Failed,
        RunResult::Interrupted,
        RunResult::DeadlineExceeded,
        RunResult::SetupFailed,
    ];

    pub fn label(self) -> &'static str {
        match self {
            RunResult::Succeeded => "succeeded",
            RunResult::Partial => "partial",
            RunResult::Failed => "failed",
            RunResult::Interrupted => "interrupted",
            RunResult::DeadlineExceeded => "deadline_exceeded",
            RunResult::SetupFailed => "setup_failed",
        }
    }
}

/// Why a reconcile failed: the `reason` label of `mpu_sweeper_reconcile_errors_total`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReconcileFailure {
    KubernetesApi,
    NotLeader,
}

impl ReconcileFailure {
    const ALL: [ReconcileFailure; 2] =
        [ReconcileFailure::KubernetesApi, ReconcileFailure::NotLeader];

    fn label(self) -> &'static str {
        match self {
            ReconcileFailure::KubernetesApi => "KubernetesApi",
            ReconcileFailure::NotLeader => "NotLeader",
        }
    }
}

/// A family of series per resource: its name, its help, and how a value is had from `T`.
struct Family<T, V> {
    name: &'static str,
    help: &'static str,
    of: fn(&T) -> V,
}

const fn family<T, V>(name: &'static str, help: &'static str, of: fn(&T) -> V) -> Family<T, V> {
    Family { name, help, of }
}

/// Counters that every finished sweep adds to.
const SWEEP_COUNTERS: [Family<SweepSummary, u64>; 7] = [
    family(
        "mpu_sweeper_uploads_found_total",
        "Incomplete uploads listed.",
        |s| s.found,
    ),
    family(
        "mpu_sweeper_uploads_stale_total",
        "Uploads older than maxAge.",
        |s| s.stale,
    ),
    family(
        "mpu_sweeper_uploads_aborted_total",
        "Uploads aborted.",
        |s| s.aborted,
    ),
    family(
        "mpu_sweeper_uploads_already_gone_total",
        "Stale uploads completed or aborted by someone else first.",
        |s| s.already_gone,
    ),
    family(
        "mpu_sweeper_uploads_failed_total",
        "Uploads whose abort failed.",
        |s| s.failed,
    ),
    family(
        "mpu_sweeper_throttled_total",
        "Answers asking for a slower pace (503, SlowDown); the requests were retried after a backoff.",
        |s| s.throttled,
    ),
    family(
        "mpu_sweeper_bytes_freed_total",
        "Bytes held by aborted uploads (when measureBytes is on).",
        |s| s.bytes_freed.unwrap_or(0),
    ),
];

const RUNS: &str = "mpu_sweeper_runs_total";
const RUN_DURATION: &str = "mpu_sweeper_run_duration_seconds";
const RUN_DURATION_BOUNDS: [f64; 9] = [0.1, 0.5, 1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0];
const RECONCILE_ERRORS: &str = "mpu_sweeper_reconcile_errors_total";

/// Gauges of when something last happened to a resource's bucket.
const TIMESTAMP_GAUGES: [Family<Series, Option<f64>>; 2] = [
    family(
        "mpu_sweeper_last_run_timestamp_seconds",
        "Unix time the last sweep completed.",
        |s| s.last_run,
    ),
    family(
        "mpu_sweeper_last_success_timestamp_seconds",
        "Unix time the last fully successful sweep completed.",
        |s| s.last_success,
    ),
];

#[derive(Default)]
struct DurationHistogram {
    /// Observations per bucket, not cumulative; the last counts those above every bound.
    in_bucket: [u64; RUN_DURATION_BOUNDS.len() + 1],
    sum: f64,
}

impl DurationHistogram {
    fn observe(&mut self, seconds: f64) {
        let bucket = RUN_DURATION_BOUNDS
            .iter()
            .position(|bound| seconds <= *bound)
            .unwrap_or(RUN_DURATION_BOUNDS.len());
        self.in_bucket[bucket] += 1;
        self.sum += seconds;
    }

    fn count(&self) -> u64 {
        self.in_bucket.iter().sum()
    }
}

/// One resource's series.
#[derive(Default)]
struct Series {
    /// The `bucket` label of the series that carry one; `None` before the first run.
    bucket: Option<String>,
    runs: [u64; RunResult::ALL.len()],
    swept: [u64; SWEEP_COUNTERS.len()],
    /// When the last sweep completed; `None` until one has (then no sweep series exist).
    last_run: Option<f64>,
    last_success: Option<f64>,
    run_duration: DurationHistogram,
    reconcile_errors: [u64; ReconcileFailure::ALL.len()],
}

impl Series {
    /// Moves the series labelled by bucket to `bucket`, starting them again when it is
    /// another: a staleness alert must not keep firing for a bucket no longer swept.
    fn sweeps(&mut self, bucket: &str) {
        if self.bucket.as_deref() == Some(bucket) {
            return;
        }
        *self = Series {
            bucket: Some(bucket.to_owned()),
            run_duration: std::mem::take(&mut self.run_duration),
            reconcile_errors: self.reconcile_errors,
            ..Series::default()
        };
    }
}

/// The series of every resource, by namespace and name (the exposition's order).
#[derive(Default)]
pub struct ResourceSeries {
    by_namespace: BTreeMap<String, BTreeMap<String, Series>>,
}

impl ResourceSeries {
    fn series(&mut self, namespace: &str, name: &str) -> &mut Series {
        // Keys are allocated only for a resource seen the first time.
        if !self.by_namespace.contains_key(namespace) {
            self.by_namespace
                .insert(namespace.to_owned(), BTreeMap::new());
        }
        let names = self
            .by_namespace
            .get_mut(namespace)
            .expect("inserted above");
        if !names.contains_key(name) {
            names.insert(name.to_owned(), Series::default());
        }
        names.get_mut(name).expect("inserted above")
    }

    fn each(&self) -> impl Iterator<Item = (&str, &str, &Series)> {
        self.by_namespace.iter().flat_map(|(namespace, names)| {
            names
                .iter()
                .map(move |(name, series)| (namespace.as_str(), name.as_str(), series))
        })
    }

    /// The resources that have series, as (namespace, name).
    pub fn resources(&self) -> Vec<(String, String)> {
        self.each()
            .map(|(namespace, name, _)| (namespace.to_owned(), name.to_owned()))
            .collect()
    }

    pub fn forget(&mut self, namespace: &str, name: &str) {
        if let Some(names) = self.by_namespace.get_mut(namespace) {
            names.remove(name);
            if names.is_empty() {
                self.by_namespace.remove(namespace);
            }
        }
    }

    pub fn sweep_finished(
        &mut self,
        (namespace, name, bucket): (&str, &str, &str),
        summary: &SweepSummary,
        result: RunResult,
        success: bool,
    ) {
        let series = self.series(namespace, name);
        series.sweeps(bucket);
        series.runs[result as usize] += 1;
        for (total, counter) in series.swept.iter_mut().zip(&SWEEP_COUNTERS) {
            *total += (counter.of)(summary);
        }
        let seconds = summary
            .completion_time
            .duration_since(summary.start_time)
            .as_secs_f64();
        series.run_duration.observe(seconds.max(0.0));
        let completed = summary.completion_time.as_millisecond() as f64 / 1000.0;
        series.last_run = Some(completed);
        if success {
            series.last_success = Some(completed);
        }
    }

    pub fn run_not_started(&mut self, (namespace, name, bucket): (&str, &str, &str)) {
        let series = self.series(namespace, name);
        series.sweeps(bucket);
        series.runs[RunResult::SetupFailed as usize] += 1;
    }

    pub fn reconcile_failed(&mut self, namespace: &str, name: &str, reason: ReconcileFailure) {
        self.series(namespace, name).reconcile_errors[reason as usize] += 1;
    }

    /// Appends every family, in the order the registry of prometheus children rendered them.
    pub fn render(&self, out: &mut String) {
        text::family(out, RUNS, RUNS_HELP, Kind::Counter, |out| {
            for (namespace, name, series) in self.each() {
                let Some(bucket) = &series.bucket else {
                    continue;
                };
                for (result, &runs) in RunResult::ALL.iter().zip(&series.runs) {
                    if runs > 0 {
                        let result = result.label();
                        let labels = [
                            ("bucket", bucket.as_str()),
                            ("name", name),
                            ("namespace", namespace),
                            ("result", result),
                        ];
                        text::sample(out, RUNS, &labels, runs);
                    }
                }
            }
        });
        for (index, counter) in SWEEP_COUNTERS.iter().enumerate() {
            text::family(out, counter.name, counter.help, Kind::Counter, |out| {
                for (labels, series) in self.swept_buckets() {
                    text::sample(out, counter.name, &labels, series.swept[index]);
                }
            });
        }
        self.render_run_duration(out);
        for gauge in &TIMESTAMP_GAUGES {
            text::family(out, gauge.name, gauge.help, Kind::Gauge, |out| {
                for (labels, series) in self.swept_buckets() {
                    if let Some(value) = (gauge.of)(series) {
                        text::sample(out, gauge.name, &labels, value);
                    }
                }
            });
        }
        text::family(
            out,
            RECONCILE_ERRORS,
            "Reconciliations that failed, by reason.",
            Kind::Counter,
            |out| {
                for (namespace, name, series) in self.each() {
                    for (reason, &errors) in
                        ReconcileFailure::ALL.iter().zip(&series.reconcile_errors)
                    {
                        if errors > 0 {
                            let labels = [
                                ("name", name),
                                ("namespace", namespace),
                                ("reason", reason.label()),
                            ];
                            text::sample(out, RECONCILE_ERRORS, &labels, errors);
                        }
                    }
                }
            },
        );
    }

    /// The resources with a finished sweep, with the labels of their bucket's series.
    fn swept_buckets(&self) -> impl Iterator<Item = ([(&str, &str); 3], &Series)> {
        self.each().filter_map(|(namespace, name, series)| {
            let bucket = series
                .bucket
                .as_deref()
                .filter(|_| series.last_run.is_some())?;
            Some((
                [("bucket", bucket), ("name", name), ("namespace", namespace)],
                series,
            ))
        })
    }

    fn render_run_duration(&self, out: &mut String) {
        let bucket_name = format!("{RUN_DURATION}_bucket");
        let sum_name = format!("{RUN_DURATION}_sum");
        let count_name = format!("{RUN_DURATION}_count");
        // The `le` labels, written once per scrape rather than once per resource.
        let bounds: Vec<String> = RUN_DURATION_BOUNDS
            .iter()
            .map(f64::to_string)
            .chain(["+Inf".to_owned()])
            .collect();
        text::family(
            out,
            RUN_DURATION,
            "Duration of sweeps.",
            Kind::Histogram,
            |out| {
                for (namespace, name, series) in self.each() {
                    let histogram = &series.run_duration;
                    let count = histogram.count();
                    if count == 0 {
                        continue;
                    }
                    let mut cumulative = 0;
                    for (bound, in_bucket) in bounds.iter().zip(histogram.in_bucket) {
                        cumulative += in_bucket;
                        let labels = [
                            ("name", name),
                            ("namespace", namespace),
                            ("le", bound.as_str()),
                        ];
                        text::sample(out, &bucket_name, &labels, cumulative);
                    }
                    let labels = [("name", name), ("namespace", namespace)];
                    text::sample(out, &sum_name, &labels, histogram.sum);
                    text::sample(out, &count_name, &labels, count);
                }
            },
        );
    }
}

const RUNS_HELP: &str = "Sweeps run, by result (succeeded, partial, failed, interrupted, deadline_exceeded, setup_failed).";

#[cfg(test)]
mod tests {
    use super::*;
    use crate::max_age::MaxAge;
    use prometheus::core::Collector;
    use prometheus::{GaugeVec, HistogramOpts, HistogramVec, IntCounterVec, Opts, TextEncoder};

    /// The same series kept as prometheus children, as the controller kept them before.
    struct Children {
        runs: IntCounterVec,
        swept: Vec<IntCounterVec>,
        run_duration: HistogramVec,
        gauges: Vec<GaugeVec>,
        reconcile_errors: IntCounterVec,
    }

    impl Children {
        fn new() -> Self {
            let resource = ["namespace", "name", "bucket"];
            let counter = |name: &str, help: &str, labels: &[&str]| {
                IntCounterVec::new(Opts::new(name, help), labels).unwrap()
            };
            Self {
                runs: counter(RUNS, RUNS_HELP, &["namespace", "name", "bucket", "result"]),
                swept: SWEEP_COUNTERS
                    .iter()
                    .map(|c| counter(c.name, c.help, &resource))
                    .collect(),
                run_duration: HistogramVec::new(
                    HistogramOpts::new(RUN_DURATION, "Duration of sweeps.")
                        .buckets(RUN_DURATION_BOUNDS.to_vec()),
                    &["namespace", "name"],
                )
                .unwrap(),
                gauges: TIMESTAMP_GAUGES
                    .iter()
                    .map(|g| GaugeVec::new(Opts::new(g.name, g.help), &resource).unwrap())
                    .collect(),
                reconcile_errors: counter(
                    RECONCILE_ERRORS,
                    "Reconciliations that failed, by reason.",
                    &["namespace", "name", "reason"],
                ),
            }
        }

        fn sweep_finished(&self, labels: [&str; 3], summary: &SweepSummary, result: RunResult) {
            let [namespace, name, bucket] = labels;
            self.runs
                .with_label_values(&[namespace, name, bucket, result.label()])
                .inc();
            for (vec, counter) in self.swept.iter().zip(&SWEEP_COUNTERS) {
                vec.with_label_values(&labels).inc_by((counter.of)(summary));
            }
            let seconds = summary
                .completion_time
                .duration_since(summary.start_time)
                .as_secs_f64();
            self.run_duration
                .with_label_values(&[namespace, name])
                .observe(seconds);
            let completed = summary.completion_time.as_millisecond() as f64 / 1000.0;
            self.gauges[0].with_label_values(&labels).set(completed);
            if result == RunResult::Succeeded {
                self.gauges[1].with_label_values(&labels).set(completed);
            }
        }

        fn render(&self) -> String {
            let mut families = self.runs.collect();
            for vec in &self.swept {
                families.extend(vec.collect());
            }
            families.extend(self.run_duration.collect());
            for vec in &self.gauges {
                families.extend(vec.collect());
            }
            families.extend(self.reconcile_errors.collect());
            families.retain(|family| !family.get_metric().is_empty());
            TextEncoder::new().encode_to_string(&families).unwrap()
        }
    }

    fn summary(seconds: i64, found: u64, bytes_freed: Option<u64>) -> SweepSummary {
        let options = crate::sweep::SweepOptions::new("b", MaxAge::from_secs(60).unwrap());
        let start = jiff::Timestamp::from_second(1_764_300_000).unwrap();
        let mut summary = SweepSummary::empty(&options, start);
        summary.completion_time = start + jiff::SignedDuration::from_millis(seconds * 250);
        summary.found = found;
        summary.stale = found / 2;
        summary.aborted = found / 3;
        summary.already_gone = 1;
        summary.failed = found % 2;
        summary.throttled = found % 5;
        summary.bytes_freed = bytes_freed;
        summary
    }

    fn sorted_lines(text: &str) -> Vec<&str> {
        let mut lines: Vec<&str> = text.lines().collect();
        lines.sort_unstable();
        lines
    }

    #[test]
    fn the_series_read_as_the_prometheus_crate_wrote_them() {
        let mut ours = ResourceSeries::default();
        let children = Children::new();
        let sweeps = [
            (
                ["ns-a", "one", "bkt"],
                summary(0, 7, Some(4096)),
                RunResult::Succeeded,
            ),
            (
                ["ns-a", "one", "bkt"],
                summary(2, 3, None),
                RunResult::Partial,
            ),
            (
                ["ns-a", "one", "bkt"],
                summary(20_000, 0, None),
                RunResult::DeadlineExceeded,
            ),
            (
                ["ns-b", "two", "x\"y\\z"],
                summary(1, 12, None),
                RunResult::Failed,
            ),
            (
                ["ns-a", "three", "bkt"],
                summary(240, 1, None),
                RunResult::Succeeded,
            ),
        ];
        for (labels, summary, result) in &sweeps {
            let [namespace, name, bucket] = *labels;
            let success = *result == RunResult::Succeeded;
            ours.sweep_finished((namespace, name, bucket), summary, *result, success);
            children.sweep_finished(*labels, summary, *result);
        }
        ours.run_not_started(("ns-c", "four", "b4"));
        children
            .runs
            .with_label_values(&["ns-c", "four", "b4", "setup_failed"])
            .inc();
        for reason in [
            ReconcileFailure::KubernetesApi,
            ReconcileFailure::KubernetesApi,
            ReconcileFailure::NotLeader,
        ] {
            ours.reconcile_failed("ns-d", "five", reason);
            children
                .reconcile_errors
                .with_label_values(&["ns-d", "five", reason.label()])
                .inc();
        }
        let mut text = String::new();
        ours.render(&mut text);
        assert_eq!(
            sorted_lines(&text),
            sorted_lines(&children.render()),
            "{text}"
        );
        assert!(
            text.contains(
                r#"mpu_sweeper_run_duration_seconds_bucket{name="one",namespace="ns-a",le="0.5"} 2"#
            ),
            "{text}"
        );
    }

    #[test]
    fn another_bucket_starts_the_bucket_series_again_and_keeps_the_others() {
        let mut series = ResourceSeries::default();
        series.sweep_finished(
            ("ns", "mpc", "old"),
            &summary(4, 5, None),
            RunResult::Succeeded,
            true,
        );
        series.reconcile_failed("ns", "mpc", ReconcileFailure::NotLeader);
        series.sweep_finished(
            ("ns", "mpc", "new"),
            &summary(4, 2, None),
            RunResult::Failed,
            false,
        );
        let mut text = String::new();
        series.render(&mut text);
        assert!(!text.contains(r#"bucket="old""#), "{text}");
        assert!(
            text.contains(
                r#"mpu_sweeper_uploads_found_total{bucket="new",name="mpc",namespace="ns"} 2"#
            ),
            "{text}"
        );
        assert!(
            !text.contains("mpu_sweeper_last_success_timestamp_seconds"),
            "{text}"
        );
        assert!(
            text.contains(r#"mpu_sweeper_run_duration_seconds_count{name="mpc",namespace="ns"} 2"#),
            "{text}"
        );
        assert!(text.contains(r#"reason="NotLeader"} 1"#), "{text}");
        series.forget("ns", "mpc");
        assert!(series.resources().is_empty());
        let mut text = String::new();
        series.render(&mut text);
        assert_eq!(text, "");
    }
}
