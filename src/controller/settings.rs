//! Turning a `MultipartCleanup` and its Secrets into engine settings, with problems phrased for the
//! resource's status. Secret values go into the S3 settings and nowhere else.

use k8s_openapi::api::core::v1::Secret;
use kube::Api;

use crate::api::{self, MultipartCleanupSpec};
use crate::max_age::MaxAge;
use crate::schedule::{Schedule, ScheduleParseError};
use crate::sweep::{AddressingStyle, CredentialSource, Limits, S3Settings, SweepOptions};

pub const ACCESS_KEY_ID: &str = "AWS_ACCESS_KEY_ID";
pub const SECRET_ACCESS_KEY: &str = "AWS_SECRET_ACCESS_KEY";
pub const SESSION_TOKEN: &str = "AWS_SESSION_TOKEN";

/// The Ready reason of a spec that cannot work as written.
pub const INVALID_SPEC: &str = "InvalidSpec";

/// Why a resource cannot run, with the condition reason it maps to.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Problem {
    pub reason: &'static str,
    pub message: String,
    /// Only a change to the spec or a Secret can fix it (kstatus Stalled).
    pub stalled: bool,
}

impl Problem {
    fn stalled(reason: &'static str, message: String) -> Self {
        Self {
            reason,
            message,
            stalled: true,
        }
    }
}

/// The parts of the spec that need parsing, parsed.
#[derive(Debug, Clone)]
pub struct Plan {
    pub schedule: Schedule,
    pub options: SweepOptions,
}

/// Checks the spec; nothing here touches the network.
pub fn plan(spec: &MultipartCleanupSpec) -> Result<Plan, Problem> {
    let invalid = |message: String| Problem::stalled(INVALID_SPEC, message);
    let max_age: MaxAge = spec
        .max_age
        .parse()
        .map_err(|e: crate::max_age::MaxAgeError| invalid(format!("spec.maxAge: {e}")))?;
    let schedule =
        Schedule::parse(&spec.schedule, spec.time_zone.as_deref()).map_err(|e| match e {
            ScheduleParseError::Schedule(e) => invalid(format!("spec.schedule: {e}")),
            ScheduleParseError::TimeZone(e) => invalid(format!("spec.timeZone: {e}")),
        })?;
    let timeout = crate::max_age::parse_duration(&spec.timeout)
        .map_err(|e| invalid(format!("spec.timeout: {e}")))?;
    let options = SweepOptions {
        timeout,
        prefix: spec.prefix.clone().filter(|p| !p.is_empty()),
        concurrency: usize::try_from(spec.concurrency).unwrap_or(0),
        dry_run: spec.dry_run,
        measure_bytes: spec.measure_bytes,
        ..SweepOptions::new(spec.bucket.clone(), max_age)
    };
    options
        .validate()
        .map_err(|e| invalid(format!("spec: {e}")))?;
    Ok(Plan { schedule, options })
}

/// Reads the referenced Secrets and builds the S3 settings.
pub async fn s3_settings(
    secrets: &Api<Secret>,
    namespace: &str,
    spec: &MultipartCleanupSpec,
    limits: &Limits,
) -> Result<S3Settings, Problem> {
    let credentials = read_secret(secrets, namespace, &spec.credentials_secret_ref.name).await?;
    let text = |key: &str| -> Result<String, Problem> {
        let bytes = credentials.get(key).ok_or_else(|| {
            Problem::stalled(
                "SecretInvalid",
                format!(
                    "Secret {namespace}/{} has no key {key}; it needs {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY} (and optionally {SESSION_TOKEN})",
                    spec.credentials_secret_ref.name
                ),
            )
        })?;
        let value = String::from_utf8(bytes.clone()).map_err(|_| {
            Problem::stalled(
                "SecretInvalid",
                format!(
                    "Secret {namespace}/{} key {key} is not UTF-8 text",
                    spec.credentials_secret_ref.name
                ),
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
            let data = read_secret(secrets, namespace, &reference.name).await?;
            let pem = data.get(&reference.key).cloned().ok_or_else(|| {
                Problem::stalled(
                    "CABundleInvalid",
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
        addressing_style: match spec.addressing_style {
            api::AddressingStyle::Virtual => AddressingStyle::Virtual,
            api::AddressingStyle::Path => AddressingStyle::Path,
        },
        ca_bundle_pem,
        credentials: CredentialSource::Static {
            access_key_id,
            secret_access_key,
            session_token,
        },
        limits: limits.clone(),
        time_source: None,
        http_client: None,
    };
    settings.validate().map_err(|e| {
        let reason = match e {
            crate::sweep::SettingsError::CaBundle(_) => "CABundleInvalid",
            crate::sweep::SettingsError::Credentials(_) => "SecretInvalid",
            _ => INVALID_SPEC,
        };
        Problem::stalled(reason, e.to_string())
    })?;
    Ok(settings)
}

async fn read_secret(
    secrets: &Api<Secret>,
    namespace: &str,
    name: &str,
) -> Result<std::collections::BTreeMap<String, Vec<u8>>, Problem> {
    match secrets.get_opt(name).await {
        Ok(Some(secret)) => Ok(secret
            .data
            .unwrap_or_default()
            .into_iter()
            .map(|(k, v)| (k, v.0))
            .collect()),
        Ok(None) => Err(Problem::stalled(
            "SecretNotFound",
            format!(
                "Secret {namespace}/{name} not found; create it with keys {ACCESS_KEY_ID} and {SECRET_ACCESS_KEY}"
            ),
        )),
        Err(err) => Err(Problem {
            reason: "SecretUnreadable",
            message: format!(
                "cannot read Secret {namespace}/{name}: {}",
                api_error_summary(&err)
            ),
            stalled: false,
        }),
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
            let problem = plan(&spec(patch.clone())).unwrap_err();
            assert_eq!(problem.reason, "InvalidSpec", "{patch}");
            assert!(problem.stalled);
            assert!(
                problem.message.contains(field),
                "{patch}: {}",
                problem.message
            );
        }
        let ok = plan(&spec(
            serde_json::json!({"schedule": "@every 5m", "prefix": "logs/"}),
        ))
        .unwrap();
        assert_eq!(ok.options.prefix.as_deref(), Some("logs/"));
        assert_eq!(ok.options.timeout, std::time::Duration::from_secs(3_600));
    }
}
