//! Turning a `MultipartCleanup` and its Secrets into engine settings, within the fences the
//! operator set, with problems phrased for the resource's status. Secret values go into the S3
//! settings and nowhere else.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::{SignedDuration, Timestamp};
use k8s_openapi::api::core::v1::Secret;
use kube::Api;
use kube::core::{Expression, Selector, SelectorExt};

use super::reason::Reason;
use crate::api::{LifecycleRuleMode, MultipartCleanupSpec};
use crate::max_age::{MaxAge, format_duration};
use crate::schedule::{Schedule, ScheduleParseError};
use crate::sweep::{
    BucketSelection, CredentialSource, EndpointPolicy, LifecycleGoal, LifecycleMode, Limits,
    S3Settings, SettingsError, SweepOptions,
};

pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

/// What the operator lets tenants do, whatever their resources say.
#[derive(Debug, Clone)]
pub struct Fences {
    pub endpoint_policy: EndpointPolicy,
    /// Secrets a resource may name must match it; `None` lets any Secret of the namespace.
    pub secret_selector: Option<SecretSelector>,
    /// The shortest time between two runs of one resource: schedules that fire more often are
    /// refused, and run requests made sooner wait.
    pub min_interval: Duration,
}

impl Default for Fences {
    fn default() -> Self {
        Self {
            endpoint_policy: EndpointPolicy::default(),
            secret_selector: None,
            min_interval: Duration::from_secs(300),
        }
    }
}

/// A label selector for Secrets, as written (`team=storage,mpusweeper.io/credentials`), and
/// parsed.
#[derive(Debug, Clone)]
pub struct SecretSelector {
    pub text: String,
    selector: Selector,
}

impl std::str::FromStr for SecretSelector {
    type Err = String;

    /// Equality-based selectors: `key=value` (or `==`), `key!=value`, `key`, `!key`, joined by
    /// commas.
    fn from_str(text: &str) -> Result<Self, String> {
        let mut selector = Selector::default();
        for term in text.split(',').map(str::trim).filter(|t| !t.is_empty()) {
            let expression = if let Some((key, value)) = term.split_once("!=") {
                Expression::NotEqual(key.trim().into(), value.trim().into())
            } else if let Some((key, value)) = term.split_once('=') {
                let value = value.strip_prefix('=').unwrap_or(value);
                Expression::Equal(key.trim().into(), value.trim().into())
            } else if let Some(key) = term.strip_prefix('!') {
                Expression::DoesNotExist(key.trim().into())
            } else {
                Expression::Exists(term.into())
            };
            selector.extend([expression]);
        }
        if selector.selects_all() {
            return Err(format!(
                "{text:?} selects nothing in particular; give at least one term like key=value"
            ));
        }
        Ok(Self {
            text: text.to_owned(),
            selector,
        })
    }
}

impl SecretSelector {
    fn matches(&self, labels: &BTreeMap<String, String>) -> bool {
        self.selector.matches(labels)
    }
}

/// Why a resource cannot run, with the condition reason it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: Reason,
    pub message: String,
}

impl Problem {
    fn new(reason: Reason, message: String) -> Self {
        Self { reason, message }
    }
}

/// The parts of the spec that need parsing, parsed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub schedule: Schedule,
    pub options: SweepOptions,
    pub buckets: BucketSelection,
    pub lifecycle: Option<LifecycleGoal>,
}

impl Plan {
    /// The `bucket` label of the resource's metric series: its bucket, or `*` when a selector
    /// chooses them (one series per resource, however many buckets it sweeps).
    pub fn bucket_label(&self) -> &str {
        match self.buckets.names.as_slice() {
            [one] if !self.buckets.lists_buckets() => one,
            _ => "*",
        }
    }

    /// What a run of it sweeps, in words.
    pub fn describe(&self) -> String {
        match self.bucket_label() {
            "*" => "the buckets its selector chooses".to_owned(),
            one => format!("bucket {one}"),
        }
    }
}

/// Checks the spec against the syntax and the fences; nothing here touches the network.
pub fn plan(spec: &MultipartCleanupSpec, fences: &Fences) -> Result<Plan, Problem> {
    let invalid = |message: String| Problem::new(Reason::InvalidSpec, message);
    let max_age: MaxAge = spec
        .max_age
        .parse()
        .map_err(|e: crate::max_age::MaxAgeError| invalid(format!("spec.maxAge: {e}")))?;
    let schedule =
        Schedule::parse(&spec.schedule, spec.time_zone.as_deref()).map_err(|e| match e {
            ScheduleParseError::Schedule(e) => invalid(format!("spec.schedule: {e}")),
            ScheduleParseError::TimeZone(e) => invalid(format!("spec.timeZone: {e}")),
        })?;
    let shortest = shortest_gap(&schedule);
    if shortest < fences.min_interval {
        return Err(invalid(format!(
            "spec.schedule {:?} runs as often as every {}; the operator allows one run per {} at most (--min-interval)",
            spec.schedule,
            format_duration(shortest),
            format_duration(fences.min_interval)
        )));
    }
    let timeout = crate::max_age::parse_duration(&spec.timeout)
        .map_err(|e| invalid(format!("spec.timeout: {e}")))?;
    let buckets = bucket_selection(spec).map_err(invalid)?;
    let lifecycle = lifecycle_goal(spec).map_err(invalid)?;
    let options = SweepOptions {
        timeout,
        prefix: spec.prefix.clone().filter(|p| !p.is_empty()),
        concurrency: usize::try_from(spec.concurrency).unwrap_or(0),
        dry_run: spec.dry_run,
        measure_bytes: spec.measure_bytes,
        prefix_depth: usize::try_from(spec.prefix_depth.unwrap_or(1)).unwrap_or(1),
        ..SweepOptions::new(
            buckets.names.first().cloned().unwrap_or_else(|| "*".into()),
            max_age,
        )
    };
    options
        .validate()
        .map_err(|e| invalid(format!("spec: {e}")))?;
    Ok(Plan {
        schedule,
        options,
        buckets,
        lifecycle,
    })
}

/// Exactly one of `spec.bucket` and `spec.bucketSelector`.
fn bucket_selection(spec: &MultipartCleanupSpec) -> Result<BucketSelection, String> {
    let selection = match (&spec.bucket, &spec.bucket_selector) {
        (Some(bucket), None) => BucketSelection::one(bucket.clone()),
        (None, Some(selector)) => BucketSelection {
            names: selector.names.clone(),
            include: selector.include.clone(),
            exclude: selector.exclude.clone(),
        },
        (Some(_), Some(_)) => {
            return Err("spec.bucket and spec.bucketSelector are both set; use one".into());
        }
        (None, None) => {
            return Err("spec.bucket or spec.bucketSelector is required".into());
        }
    };
    selection
        .validate()
        .map_err(|e| format!("spec.bucketSelector: {e}"))?;
    Ok(selection)
}

fn lifecycle_goal(spec: &MultipartCleanupSpec) -> Result<Option<LifecycleGoal>, String> {
    let Some(rule) = &spec.lifecycle_rule else {
        return Ok(None);
    };
    let mode = match rule.mode {
        LifecycleRuleMode::Report => LifecycleMode::Report,
        LifecycleRuleMode::Ensure => LifecycleMode::Ensure,
    };
    let days = match (mode, rule.days_after_initiation) {
        (LifecycleMode::Ensure, None) => {
            return Err(
                "spec.lifecycleRule.daysAfterInitiation is required with mode Ensure".into(),
            );
        }
        (_, days) => days.unwrap_or(0),
    };
    Ok(Some(LifecycleGoal {
        mode,
        days_after_initiation: days,
    }))
}

/// The shortest time between two runs of `schedule`, from its first few hundred runs after a
/// fixed date (cron patterns repeat well within that).
fn shortest_gap(schedule: &Schedule) -> Duration {
    let mut at: Timestamp = "2026-01-01T00:00:00Z".parse().expect("static date");
    let mut shortest = SignedDuration::MAX;
    for _ in 0..500 {
        let next = schedule.next_after(at);
        if next == Timestamp::MAX {
            break;
        }
        shortest = shortest.min(next.duration_since(at));
        at = next;
    }
    Duration::try_from(shortest).unwrap_or(Duration::MAX)
}

/// Reads the referenced Secrets and builds the S3 settings, within the fences.
pub async fn s3_settings(
    secrets: &Api<Secret>,
    namespace: &str,
    spec: &MultipartCleanupSpec,
    limits: &Limits,
    fences: &Fences,
) -> Result<S3Settings, Problem> {
    let reader = SecretReader {
        secrets,
        namespace,
        fences,
    };
    let credentials = reader.data(&spec.credentials_secret_ref.name).await?;
    let text = |key: &str| -> Result<String, Problem> {
        let name = &spec.credentials_secret_ref.name;
        let bytes = credentials.get(key).ok_or_else(|| {
            Problem::new(
                Reason::SecretInvalid,
                format!(
                    "Secret {namespace}/{name} has no key {key}; it needs {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY} (and optionally {SESSION_TOKEN})"
                ),
            )
        })?;
        let value = String::from_utf8(bytes.clone()).map_err(|_| {
            Problem::new(
                Reason::SecretInvalid,
                format!("Secret {namespace}/{name} key {key} is not UTF-8 text"),
            )
        })?;
        Ok(value.trim().to_owned())
    };
    let access_key_id = text(ACCESS_KEY_ID)?;
    let secret_access_key = text(SECRET_ACCESS_KEY)?;
    let session_token = credentials
        .contains_key(SESSION_TOKEN)
        .then(|| text(SESSION_TOKEN))
        .transpose()?;

    let ca_bundle_pem = match &spec.ca_bundle_secret_ref {
        None => None,
        Some(reference) => {
            let data = reader.data(&reference.name).await?;
            let pem = data.get(&reference.key).cloned().ok_or_else(|| {
                Problem::new(
                    Reason::CABundleInvalid,
                    format!(
                        "Secret {namespace}/{} has no key {}",
                        reference.name, reference.key
                    ),
                )
            })?;
            Some(pem)
        }
    };

    let settings = S3Settings {
        endpoint: spec.endpoint.clone(),
        region: spec.region.clone(),
        addressing_style: spec.addressing_style,
        ca_bundle_pem,
        credentials: CredentialSource::Static {
            access_key_id,
            secret_access_key,
            session_token,
        },
        limits: limits.clone(),
        endpoint_policy: fences.endpoint_policy.clone(),
        ..S3Settings::default()
    };
    settings.validate().map_err(|e| {
        let reason = match e {
            SettingsError::CaBundle(_) => Reason::CABundleInvalid,
            SettingsError::Credentials(_) => Reason::SecretInvalid,
            SettingsError::Forbidden(_) => Reason::EndpointForbidden,
            _ => Reason::InvalidSpec,
        };
        Problem::new(reason, e.to_string())
    })?;
    Ok(settings)
}

/// Reads the Secrets one resource names, if the operator lets it.
struct SecretReader<'a> {
    secrets: &'a Api<Secret>,
    namespace: &'a str,
    fences: &'a Fences,
}

impl SecretReader<'_> {
    async fn data(&self, name: &str) -> Result<BTreeMap<String, Vec<u8>>, Problem> {
        let namespace = self.namespace;
        let secret = match self.secrets.get_opt(name).await {
            Ok(Some(secret)) => secret,
            Ok(None) => {
                return Err(Problem::new(
                    Reason::SecretNotFound,
                    format!(
                        "Secret {namespace}/{name} not found; create it with keys {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY}"
                    ),
                ));
            }
            Err(err) => {
                return Err(Problem::new(
                    Reason::SecretUnreadable,
                    format!(
                        "cannot read Secret {namespace}/{name}: {}",
                        api_error_summary(&err)
                    ),
                ));
            }
        };
        if let Some(selector) = &self.fences.secret_selector {
            let labels = secret.metadata.labels.clone().unwrap_or_default();
            if !selector.matches(&labels) {
                // Nothing of the Secret is used, or told: only that it is not one tenants may use.
                return Err(Problem::new(
                    Reason::SecretNotAllowed,
                    format!(
                        "Secret {namespace}/{name} is not marked for use by mpu-sweeper: the operator requires the labels {:?}",
                        selector.text
                    ),
                ));
            }
        }
        Ok(secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect())
    }
}

/// A Kubernetes API error in one line, without response bodies.
pub fn api_error_summary(err: &kube::Error) -> String {
    match err {
        kube::Error::Api(status) => format!("{} ({})", status.message, status.code),
        other => other.to_string(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde::Deserialize;

    fn spec(json: serde_json::Value) -> MultipartCleanupSpec {
        let mut base = serde_json::json!({"bucket": "b", "credentialsSecretRef": {"name": "s"}, "maxAge": "7d"});
        base.as_object_mut()
            .unwrap()
            .extend(json.as_object().unwrap().clone());
        serde_json::from_value(base).unwrap()
    }

    #[test]
    fn bad_spec_values_are_stalled_with_the_field_named() {
        for (patch, field) in [
            (serde_json::json!({"maxAge": "0s"}), "spec.maxAge"),
            (
                serde_json::json!({"schedule": "every tuesday"}),
                "spec.schedule",
            ),
            (
                serde_json::json!({"timeZone": "Nowhere/Special"}),
                "spec.timeZone",
            ),
            (serde_json::json!({"concurrency": 0}), "concurrency"),
            (serde_json::json!({"timeout": "0s"}), "spec.timeout"),
        ] {
            let problem = plan(&spec(patch.clone()), &Fences::default()).unwrap_err();
            assert_eq!(problem.reason, Reason::InvalidSpec, "{patch}");
            assert!(problem.reason.stalled());
            assert!(
                problem.message.contains(field),
                "{patch}: {}",
                problem.message
            );
        }
        let ok = plan(
            &spec(serde_json::json!({"schedule": "@every 5m", "prefix": "logs/"})),
            &Fences::default(),
        )
        .unwrap();
        assert_eq!(ok.options.prefix.as_deref(), Some("logs/"));
        assert_eq!(ok.bucket_label(), "b");
        assert_eq!(ok.lifecycle, None);
        assert_eq!(ok.options.timeout, Duration::from_secs(3_600));
    }

    #[test]
    fn one_bucket_or_a_selector_and_a_lifecycle_rule_with_its_days() {
        let both = spec(serde_json::json!({"bucketSelector": {"names": ["x"]}}));
        let problem = plan(&both, &Fences::default()).unwrap_err();
        assert!(problem.message.contains("both set"), "{}", problem.message);
        let mut neither = spec(serde_json::json!({}));
        neither.bucket = None;
        assert!(
            plan(&neither, &Fences::default())
                .unwrap_err()
                .message
                .contains("required")
        );
        let mut empty = spec(serde_json::json!({"bucketSelector": {}}));
        empty.bucket = None;
        assert!(plan(&empty, &Fences::default()).is_err());
        let mut selector = spec(serde_json::json!({
            "bucketSelector": {"include": ["logs-*"], "exclude": ["*-tmp"]},
            "lifecycleRule": {"mode": "Ensure", "daysAfterInitiation": 3},
            "prefixDepth": 2
        }));
        selector.bucket = None;
        let ok = plan(&selector, &Fences::default()).unwrap();
        assert_eq!(ok.bucket_label(), "*");
        assert!(ok.buckets.lists_buckets());
        assert_eq!(ok.options.prefix_depth, 2);
        assert_eq!(
            ok.lifecycle,
            Some(LifecycleGoal {
                mode: LifecycleMode::Ensure,
                days_after_initiation: 3
            })
        );
        let no_days = spec(serde_json::json!({"lifecycleRule": {"mode": "Ensure"}}));
        let problem = plan(&no_days, &Fences::default()).unwrap_err();
        assert!(
            problem.message.contains("daysAfterInitiation"),
            "{}",
            problem.message
        );
    }

    #[test]
    fn every_example_resource_plans() {
        let folder = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/examples");
        let mut planned = 0;
        for entry in std::fs::read_dir(folder).unwrap() {
            let path = entry.unwrap().path();
            if path.extension().and_then(|e| e.to_str()) != Some("yaml") {
                continue;
            }
            let text = std::fs::read_to_string(&path).unwrap();
            for document in serde_yaml::Deserializer::from_str(&text) {
                let value = serde_yaml::Value::deserialize(document).unwrap();
                if value["kind"] != "MultipartCleanup" {
                    continue;
                }
                let spec: MultipartCleanupSpec =
                    serde_yaml::from_value(value["spec"].clone()).unwrap();
                plan(&spec, &Fences::default())
                    .unwrap_or_else(|e| panic!("{}: {}", path.display(), e.message));
                planned += 1;
            }
        }
        assert_eq!(planned, 6);
    }

    #[test]
    fn schedules_more_frequent_than_the_minimum_interval_are_refused() {
        let fences = Fences::default();
        for too_often in ["@every 1s", "@every 4m59s", "* * * * *", "0,1 * * * *"] {
            let problem =
                plan(&spec(serde_json::json!({"schedule": too_often})), &fences).unwrap_err();
            assert_eq!(problem.reason, Reason::InvalidSpec);
            assert!(
                problem
                    .message
                    .contains("one run per 5m at most (--min-interval)"),
                "{too_often}: {}",
                problem.message
            );
        }
        for fine in ["@every 5m", "*/5 * * * *", "@hourly", "0 3 * * *"] {
            assert!(
                plan(&spec(serde_json::json!({"schedule": fine})), &fences).is_ok(),
                "{fine}"
            );
        }
    }

    #[test]
    fn secret_selectors_parse_the_equality_forms() {
        let selector: SecretSelector = "team=storage, tier==gold,!legacy,usable,env!=dev"
            .parse()
            .unwrap();
        let labels = |pairs: &[(&str, &str)]| {
            pairs
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect::<BTreeMap<_, _>>()
        };
        let good = labels(&[("team", "storage"), ("tier", "gold"), ("usable", "")]);
        assert!(selector.matches(&good));
        let mut legacy = good.clone();
        legacy.insert("legacy".into(), "yes".into());
        assert!(!selector.matches(&legacy));
        let mut dev = good.clone();
        dev.insert("env".into(), "dev".into());
        assert!(!selector.matches(&dev));
        assert!(!selector.matches(&labels(&[("team", "storage")])));
        assert!("".parse::<SecretSelector>().is_err());
    }
}
