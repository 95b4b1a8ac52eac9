//! The `MultipartCleanup` custom resource (`mpusweeper.io/v1alpha1`). Field names are the public
//! contract; `crds/multipartcleanup.yaml` is generated from these types (`mpu-sweeper crd`).

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

/// Annotation whose change asks for a sweep now; its value is echoed into
/// `status.lastHandledRunRequest` once handled.
pub const RUN_REQUESTED_ANNOTATION: &str = "mpusweeper.io/run-requested-at";

pub const DEFAULT_SCHEDULE: &str = "@hourly";

/// Aborts stale incomplete multipart uploads of one bucket, or of the buckets a selector
/// chooses, on a schedule.
#[derive(CustomResource, Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "mpusweeper.io",
    version = "v1alpha1",
    kind = "MultipartCleanup",
    plural = "multipartcleanups",
    shortname = "mpc",
    namespaced,
    status = "MultipartCleanupStatus",
    printcolumn = r#"{"name":"Bucket","type":"string","jsonPath":".spec.bucket"}"#,
    printcolumn = r#"{"name":"Buckets","type":"integer","jsonPath":".status.lastRun.bucketCount"}"#,
    printcolumn = r#"{"name":"Max-Age","type":"string","jsonPath":".spec.maxAge"}"#,
    printcolumn = r#"{"name":"Schedule","type":"string","jsonPath":".spec.schedule"}"#,
    printcolumn = r#"{"name":"Last-Run","type":"date","jsonPath":".status.lastRun.completionTime"}"#,
    printcolumn = r#"{"name":"Aborted","type":"integer","jsonPath":".status.lastRun.aborted"}"#,
    printcolumn = r#"{"name":"Ready","type":"string","jsonPath":".status.conditions[?(@.type==\"Ready\")].status"}"#,
    printcolumn = r#"{"name":"Age","type":"date","jsonPath":".metadata.creationTimestamp"}"#
)]
#[serde(rename_all = "camelCase")]
pub struct MultipartCleanupSpec {
    /// Bucket whose incomplete multipart uploads are swept. Exactly one of bucket and
    /// bucketSelector.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 255))]
    pub bucket: Option<String>,

    /// Several buckets: these by name, and those of the credentials' own (ListBuckets) whose
    /// names match an include pattern and no exclude pattern (`*`, `?`). Swept one after another;
    /// a failure on one does not stop the others.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket_selector: Option<BucketSelectorSpec>,

    /// S3 endpoint URL (https://...). Absent means AWS S3.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = r"^https?://[^\s/]+"))]
    pub endpoint: Option<String>,

    /// Region used for signing.
    #[serde(default = "default_region")]
    #[schemars(length(min = 1, max = 64))]
    pub region: String,

    /// `virtual` (bucket.host, AWS default) or `path` (host/bucket, Ceph RGW and MinIO).
    #[serde(default)]
    pub addressing_style: AddressingStyle,

    /// Secret in this namespace with keys AWS_ACCESS_KEY_ID, AWS_SECRET_ACCESS_KEY and
    /// optionally AWS_SESSION_TOKEN.
    pub credentials_secret_ref: SecretReference,

    /// Optional Secret key holding PEM CA certificates to trust for the endpoint.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ca_bundle_secret_ref: Option<SecretKeyReference>,

    /// Uploads older than this are aborted: 30s, 90m, 36h, 7d, 2w, 1d12h...
    #[schemars(regex(pattern = r"^([0-9]+[smhdw])+$"))]
    pub max_age: String,

    /// When to sweep: a 5-field cron expression, @hourly, @daily, @weekly or @every <duration>.
    #[serde(default = "default_schedule")]
    #[schemars(length(min = 1, max = 128))]
    pub schedule: String,

    /// IANA time zone for cron schedules (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub time_zone: Option<String>,

    /// Only uploads whose key starts with this prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub prefix: Option<String>,

    /// List and count, abort nothing.
    #[serde(default)]
    pub dry_run: bool,

    /// Stop scheduled and requested runs.
    #[serde(default)]
    pub suspend: bool,

    /// The most requests in flight at once. A run starts at 16 and grows towards this while more
    /// requests in flight raise the rate (across a network), and comes down when the server
    /// throttles, fails or slows.
    #[serde(default = "default_concurrency")]
    #[schemars(range(min = 1, max = 256))]
    pub concurrency: i32,

    /// Sum part sizes before aborting and report bytesFreed.
    #[serde(default)]
    pub measure_bytes: bool,

    /// A run's time limit, in the maxAge syntax: when it passes, listing stops, the aborts in
    /// flight finish and the run is reported as DeadlineExceeded.
    #[serde(default = "default_timeout")]
    #[schemars(regex(pattern = r"^([0-9]+[smhdw])+$"))]
    pub timeout: String,

    /// Read (Report) or also write (Ensure) each bucket's AbortIncompleteMultipartUpload
    /// lifecycle rule, so that stale uploads stop piling up. Absent: nothing is read or written.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub lifecycle_rule: Option<LifecycleRuleSpec>,

    /// How many `/`-separated levels of a key make the prefix stale uploads are counted by in
    /// status.lastRun.topPrefixes (default 1: up to the first `/`).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 32))]
    pub prefix_depth: Option<i32>,
}

/// Which buckets a resource sweeps, besides or instead of one named bucket.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BucketSelectorSpec {
    /// Buckets by name.
    #[serde(default)]
    pub names: Vec<String>,
    /// Patterns of the credentials' buckets (from ListBuckets) to sweep.
    #[serde(default)]
    pub include: Vec<String>,
    /// Patterns of buckets to leave out.
    #[serde(default)]
    pub exclude: Vec<String>,
}

#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, JsonSchema)]
pub enum LifecycleRuleMode {
    /// Read the bucket's lifecycle configuration and say whether a rule covers the uploads.
    Report,
    /// Also add (or update) the rule `mpu-sweeper-abort-incomplete`, keeping every other rule.
    Ensure,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleRuleSpec {
    pub mode: LifecycleRuleMode,
    /// Days after initiation the ensured rule aborts uploads (required with Ensure).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 36500))]
    pub days_after_initiation: Option<i32>,
}

fn default_region() -> String {
    crate::sweep::DEFAULT_REGION.to_owned()
}

fn default_schedule() -> String {
    DEFAULT_SCHEDULE.to_owned()
}

pub const DEFAULT_TIMEOUT: &str = "1h";

fn default_timeout() -> String {
    DEFAULT_TIMEOUT.to_owned()
}

fn default_concurrency() -> i32 {
    crate::sweep::DEFAULT_CONCURRENCY as i32
}

/// One type for the resource, the engine and the command line.
pub use crate::sweep::AddressingStyle;

/// A Secret in the resource's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretReference {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
}

/// One key of a Secret in the resource's namespace.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, JsonSchema)]
pub struct SecretKeyReference {
    #[schemars(length(min = 1, max = 253))]
    pub name: String,
    #[serde(default = "default_ca_key")]
    #[schemars(length(min = 1, max = 253))]
    pub key: String,
}

fn default_ca_key() -> String {
    "ca.crt".to_owned()
}

/// Optional fields serialize as null (not absent) so that a merge patch of the whole status clears
/// what no longer applies.
#[derive(Deserialize, Serialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct MultipartCleanupStatus {
    /// The spec generation the status describes.
    #[serde(default)]
    pub observed_generation: Option<i64>,
    /// Ready, Reconciling and Stalled (kstatus).
    #[serde(default)]
    pub conditions: Vec<Condition>,
    #[serde(default)]
    pub last_run: Option<RunSummary>,
    #[serde(default)]
    pub last_successful_run_time: Option<Time>,
    #[serde(default)]
    pub next_run_time: Option<Time>,
    /// Uploads aborted by this resource over its lifetime.
    #[serde(default)]
    pub total_aborted: i64,
    /// The last value of the mpusweeper.io/run-requested-at annotation that was acted on.
    #[serde(default)]
    pub last_handled_run_request: Option<String>,
    /// Failed runs in a row; drives the retry backoff.
    #[serde(default)]
    pub consecutive_failures: i32,
}

/// What the last sweep did.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct RunSummary {
    pub start_time: Time,
    pub completion_time: Time,
    pub found: i64,
    pub stale: i64,
    pub aborted: i64,
    pub already_gone: i64,
    pub skipped: i64,
    pub failed: i64,
    /// Answers asking for a slower pace (503, SlowDown); those requests were retried.
    #[serde(default)]
    pub throttled: i64,
    #[serde(default)]
    pub bytes_freed: Option<i64>,
    pub dry_run: bool,
    /// Why the run stopped before finishing, when it did.
    #[serde(default)]
    pub error: Option<String>,
    /// What the run could not take at face value (a server clock it did not trust...).
    #[serde(default)]
    pub warnings: Vec<String>,
    /// Buckets swept.
    #[serde(default)]
    pub bucket_count: i64,
    /// The buckets, the first 50 in name order.
    #[serde(default)]
    pub buckets: Vec<BucketRun>,
    /// Buckets swept but not in `buckets`.
    #[serde(default)]
    pub more_buckets: i64,
    /// Age of the oldest stale upload, in seconds.
    #[serde(default)]
    pub oldest_stale_age_seconds: Option<i64>,
    /// Bytes of the stale uploads that were measured (measureBytes).
    #[serde(default)]
    pub stale_bytes: Option<i64>,
    /// The key prefixes with the most stale uploads.
    #[serde(default)]
    pub top_prefixes: Vec<PrefixRun>,
}

/// What one bucket of a run came to.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct BucketRun {
    pub bucket: String,
    pub found: i64,
    pub stale: i64,
    pub aborted: i64,
    pub failed: i64,
    #[serde(default)]
    pub error: Option<String>,
    /// The bucket's lifecycle rule, when spec.lifecycleRule asks.
    #[serde(default)]
    pub lifecycle: Option<LifecycleRun>,
}

#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct LifecycleRun {
    /// Present, Applied, Missing, Unsupported, Denied or Failed.
    pub state: String,
    #[serde(default)]
    pub days_after_initiation: Option<i32>,
    pub message: String,
}

/// Stale uploads under one key prefix.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct PrefixRun {
    pub prefix: String,
    pub uploads: i64,
    #[serde(default)]
    pub bytes: Option<i64>,
}

/// The CRD as YAML, exactly as `crds/multipartcleanup.yaml` holds it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = MultipartCleanup::crd();
    format!(
        "# Generated by `mpu-sweeper crd` from src/api.rs; do not edit.\n{}",
        serde_yaml::to_string(&crd).expect("CRD serializes")
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn checked_in_crd_matches_the_types() {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/multipartcleanup.yaml");
        let on_disk = std::fs::read_to_string(path).expect("crds/multipartcleanup.yaml exists");
        assert!(
            on_disk == crd_yaml(),
            "crds/multipartcleanup.yaml is stale: regenerate with `cargo run -- crd > crds/multipartcleanup.yaml`"
        );
    }

    #[test]
    fn spec_defaults_apply_to_a_minimal_resource() {
        let spec: MultipartCleanupSpec = serde_json::from_value(serde_json::json!({
            "bucket": "datasets",
            "credentialsSecretRef": {"name": "s3"},
            "maxAge": "7d"
        }))
        .unwrap();
        assert_eq!(spec.region, "us-east-1");
        assert_eq!(spec.schedule, "@hourly");
        assert_eq!(spec.concurrency, 128);
        assert_eq!(spec.timeout, "1h");
        assert_eq!(spec.addressing_style, AddressingStyle::Virtual);
        assert!(!spec.dry_run && !spec.suspend && !spec.measure_bytes);
    }

    #[test]
    fn crd_has_the_contracted_names_and_columns() {
        use kube::CustomResourceExt;
        let crd = MultipartCleanup::crd();
        assert_eq!(crd.spec.group, "mpusweeper.io");
        assert_eq!(crd.spec.names.short_names, Some(vec!["mpc".to_owned()]));
        let columns: Vec<String> = crd.spec.versions[0]
            .additional_printer_columns
            .iter()
            .flatten()
            .map(|c| c.name.clone())
            .collect();
        assert_eq!(
            columns,
            [
                "Bucket", "Buckets", "Max-Age", "Schedule", "Last-Run", "Aborted", "Ready", "Age"
            ]
        );
    }
}
