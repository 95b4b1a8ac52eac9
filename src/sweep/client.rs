//! Building the S3 client: endpoint, region, addressing style, trust roots, credentials,
//! retries and timeouts.

use std::fmt;
use std::sync::Arc;
use std::time::Duration;

use aws_config::BehaviorVersion;
use aws_config::retry::RetryConfig;
use aws_config::timeout::TimeoutConfig;
use aws_credential_types::Credentials;
use aws_sdk_s3::config::{Region, RequestChecksumCalculation, ResponseChecksumValidation};
use aws_smithy_async::time::SharedTimeSource;
use aws_smithy_http_client::tls::{self, TlsContext, TrustStore, rustls_provider::CryptoMode};
use aws_smithy_runtime_api::client::http::SharedHttpClient;

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeTransmitInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;

use super::body_cap::{BodyCap, MAX_ANSWER_BYTES};
use super::endpoint_policy::{EndpointForbidden, EndpointPolicy};
use super::error::SendRefused;

pub const DEFAULT_REGION: &str = "us-east-1";

/// How requests name the bucket. The resource's `spec.addressingStyle` and the command's
/// `--addressing-style` are this type.
#[derive(
    Debug,
    Clone,
    Copy,
    PartialEq,
    Eq,
    Default,
    serde::Serialize,
    serde::Deserialize,
    schemars::JsonSchema,
    clap::ValueEnum,
)]
#[serde(rename_all = "camelCase")]
pub enum AddressingStyle {
    /// `https://bucket.endpoint/key` (AWS's default and the only one some providers accept).
    #[default]
    Virtual,
    /// `https://endpoint/bucket/key` (Ceph RGW, MinIO and most self-hosted servers).
    Path,
}

/// Where the credentials come from.
#[derive(Clone, Default)]
pub enum CredentialSource {
    /// The SDK's default chain: environment variables, shared profile files, web identity...
    #[default]
    DefaultChain,
    Static {
        access_key_id: String,
        secret_access_key: String,
        session_token: Option<String>,
    },
}

impl fmt::Debug for CredentialSource {
    // Hand-written so that no Debug print can ever show a secret.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Self::DefaultChain => f.write_str("DefaultChain"),
            // The key ID is not a secret to AWS, but it came from a Secret: it stays out too.
            Self::Static { .. } => f.write_str("Static(** redacted **)"),
        }
    }
}

/// Time limits of single requests; the defaults keep a dead server from hanging a sweep. Retries
/// are the engine's (see [`super::RetryPolicy`]), not the SDK's.
#[derive(Debug, Clone)]
pub struct Limits {
    pub connect_timeout: Duration,
    /// One HTTP attempt, from send to the end of the answer.
    pub attempt_timeout: Duration,
}

impl Default for Limits {
    fn default() -> Self {
        Self {
            connect_timeout: Duration::from_secs(5),
            attempt_timeout: Duration::from_secs(30),
        }
    }
}

/// Everything needed to talk to one S3-compatible service.
#[derive(Debug, Clone)]
pub struct S3Settings {
    /// `None` means AWS S3 (the endpoint follows from the region).
    pub endpoint: Option<String>,
    pub region: String,
    pub addressing_style: AddressingStyle,
    /// Extra PEM-encoded CA certificates to trust besides the system roots.
    pub ca_bundle_pem: Option<Vec<u8>>,
    pub credentials: CredentialSource,
    pub limits: Limits,
    /// Overrides the wall clock used for signing and for the local-clock fallback; tests use it to
    /// play a node whose clock is wrong.
    pub time_source: Option<SharedTimeSource>,
    /// Replaces the HTTPS client (and its trust roots); the fuzz targets answer from memory
    /// through it.
    pub http_client: Option<SharedHttpClient>,
    /// Which endpoints and addresses may be connected to.
    pub endpoint_policy: EndpointPolicy,
    /// Asked right before each request goes out; a request it refuses is not sent.
    pub send_gate: Option<SendGate>,
}

/// Whether requests may still be sent: `None` for yes, or why not. The operator closes it when
/// it stops being the leader, so that no abort goes out after a standby could have taken over.
#[derive(Clone)]
pub struct SendGate(Arc<dyn Fn() -> Option<String> + Send + Sync>);

impl SendGate {
    pub fn new(check: impl Fn() -> Option<String> + Send + Sync + 'static) -> Self {
        Self(Arc::new(check))
    }
}

impl fmt::Debug for SendGate {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("SendGate")
    }
}

impl Intercept for SendGate {
    fn name(&self) -> &'static str {
        "SendGate"
    }

    /// The last moment before the request is handed to the connection.
    fn read_before_transmit(
        &self,
        _context: &BeforeTransmitInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        match (self.0)() {
            None => Ok(()),
            Some(why) => Err(Box::new(SendRefused(why))),
        }
    }
}

impl Default for S3Settings {
    fn default() -> Self {
        Self {
            endpoint: None,
            region: DEFAULT_REGION.to_owned(),
            addressing_style: AddressingStyle::default(),
            ca_bundle_pem: None,
            credentials: CredentialSource::default(),
            limits: Limits::default(),
            time_source: None,
            http_client: None,
            endpoint_policy: EndpointPolicy::unrestricted(),
            send_gate: None,
        }
    }
}

/// Settings that cannot work, found before any request is sent.
#[derive(Debug, thiserror::Error)]
pub enum SettingsError {
    #[error(
        "invalid endpoint {0:?}: expected an http:// or https:// URL with a host, like https://s3.example.com"
    )]
    Endpoint(String),
    #[error("invalid region {0:?}: expected a region name such as us-east-1")]
    Region(String),
    #[error("invalid CA bundle: {0}")]
    CaBundle(String),
    #[error("invalid credentials: {0}")]
    Credentials(&'static str),
    #[error("endpoint not allowed: {0}")]
    Forbidden(#[from] EndpointForbidden),
}

impl S3Settings {
    /// Checks what can be checked without the network.
    pub fn validate(&self) -> Result<(), SettingsError> {
        let (scheme, host) = match &self.endpoint {
            Some(endpoint) => validate_endpoint(endpoint)?,
            None => (
                "https".to_owned(),
                format!("s3.{}.amazonaws.com", self.region),
            ),
        };
        self.endpoint_policy.check_endpoint(&scheme, &host)?;
        let region_ok = !self.region.is_empty()
            && self
                .region
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_');
        if !region_ok {
            return Err(SettingsError::Region(self.region.clone()));
        }
        if let Some(pem) = &self.ca_bundle_pem {
            validate_ca_bundle(pem)?;
        }
        if let CredentialSource::Static {
            access_key_id,
            secret_access_key,
            ..
        } = &self.credentials
        {
            if access_key_id.trim().is_empty() {
                return Err(SettingsError::Credentials("the access key ID is empty"));
            }
            if secret_access_key.is_empty() {
                return Err(SettingsError::Credentials("the secret access key is empty"));
            }
        }
        Ok(())
    }

    /// Builds the client. Loading the default credential chain reads environment and profile files.
    pub async fn client(&self) -> Result<aws_sdk_s3::Client, SettingsError> {
        self.validate()?;
        let trust_store = match &self.ca_bundle_pem {
            Some(pem) => TrustStore::default().with_pem_certificate(pem.clone()),
            None => TrustStore::default(),
        };
        let tls_context = TlsContext::builder()
            .with_trust_store(trust_store)
            .build()
            .map_err(|e| SettingsError::CaBundle(e.to_string()))?;
        let https = aws_smithy_http_client::Builder::new()
            .tls_provider(tls::Provider::Rustls(CryptoMode::Ring))
            .tls_context(tls_context);
        let http_client = match &self.http_client {
            Some(client) => client.clone(),
            None if self.endpoint_policy == EndpointPolicy::unrestricted() => https.build_https(),
            // Every connection asks the policy about the addresses DNS gives.
            None => https.build_with_resolver(self.endpoint_policy.resolver()),
        };

        let limits = &self.limits;
        let mut loader = aws_config::defaults(BehaviorVersion::latest())
            .region(Region::new(self.region.clone()))
            .http_client(http_client)
            // The engine retries, with a budget and backoff of each run's own: the SDK's retry
            // budget is shared by every client of the process, so one tenant's failing endpoint
            // would use up the retries of all others.
            .retry_config(RetryConfig::disabled())
            .timeout_config(
                TimeoutConfig::builder()
                    .connect_timeout(limits.connect_timeout)
                    .operation_attempt_timeout(limits.attempt_timeout)
                    .operation_timeout(limits.attempt_timeout)
                    .build(),
            );
        if let CredentialSource::Static {
            access_key_id,
            secret_access_key,
            session_token,
        } = &self.credentials
        {
            loader = loader.credentials_provider(Credentials::new(
                access_key_id,
                secret_access_key,
                session_token.clone(),
                None,
                "mpu-sweeper",
            ));
        }
        if let Some(time_source) = &self.time_source {
            loader = loader.time_source(time_source.clone());
        }
        let sdk_config = loader.load().await;

        let mut s3_config = aws_sdk_s3::config::Builder::from(&sdk_config)
            .force_path_style(self.addressing_style == AddressingStyle::Path)
            // Checksums only where S3 requires them: many S3-compatible servers reject the
            // newer default trailing checksums, and this engine sends no payloads anyway.
            .request_checksum_calculation(RequestChecksumCalculation::WhenRequired)
            .response_checksum_validation(ResponseChecksumValidation::WhenRequired)
            // Every answer is read into memory before it is parsed: none may be larger than a
            // real one can be.
            .interceptor(BodyCap {
                limit: MAX_ANSWER_BYTES,
            });
        if let Some(endpoint) = &self.endpoint {
            s3_config = s3_config.endpoint_url(endpoint.trim_end_matches('/'));
        }
        if let Some(gate) = &self.send_gate {
            s3_config = s3_config.interceptor(gate.clone());
        }
        Ok(aws_sdk_s3::Client::from_conf(s3_config.build()))
    }
}

/// The endpoint's scheme and host, when it is an http(s) URL with a host.
fn validate_endpoint(endpoint: &str) -> Result<(String, String), SettingsError> {
    let bad = || SettingsError::Endpoint(endpoint.to_owned());
    let uri: http::Uri = endpoint.parse().map_err(|_| bad())?;
    match (uri.scheme_str(), uri.host()) {
        (Some(scheme @ ("http" | "https")), Some(host)) if !host.is_empty() => {
            Ok((scheme.to_owned(), host.to_owned()))
        }
        _ => Err(bad()),
    }
}

/// The SDK panics on a bad PEM deep inside the connector, so every certificate is parsed here first.
fn validate_ca_bundle(pem: &[u8]) -> Result<(), SettingsError> {
    use rustls_pki_types::CertificateDer;
    use rustls_pki_types::pem::PemObject;
    let certs = CertificateDer::pem_slice_iter(pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| SettingsError::CaBundle(format!("not valid PEM: {e}")))?;
    if certs.is_empty() {
        return Err(SettingsError::CaBundle(
            "no PEM certificate (-----BEGIN CERTIFICATE-----) found".into(),
        ));
    }
    let mut roots = rustls::RootCertStore::empty();
    for (index, cert) in certs.into_iter().enumerate() {
        roots.add(cert).map_err(|e| {
            SettingsError::CaBundle(format!("certificate #{} is not usable: {e}", index + 1))
        })?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn endpoints_need_scheme_and_host() {
        for good in [
            "http://127.0.0.1:7480",
            "https://cwobject.com",
            "https://s3.example.com/",
        ] {
            assert!(validate_endpoint(good).is_ok(), "{good}");
        }
        for bad in ["127.0.0.1:7480", "ftp://x", "https://", "not a url", ""] {
            assert!(validate_endpoint(bad).is_err(), "{bad}");
        }
    }

    #[test]
    fn ca_bundle_must_hold_certificates() {
        assert!(validate_ca_bundle(b"").is_err());
        assert!(validate_ca_bundle(b"hello").is_err());
        let garbage = b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n";
        assert!(validate_ca_bundle(garbage).is_err());
    }

    #[test]
    fn debug_never_shows_the_credentials() {
        let creds = CredentialSource::Static {
            access_key_id: "AKIDEXAMPLE".into(),
            secret_access_key: "wJalrXUtnFEMI/K7MDENG".into(),
            session_token: Some("token-value".into()),
        };
        let shown = format!(
            "{creds:?} {:?}",
            S3Settings {
                credentials: creds.clone(),
                ..Default::default()
            }
        );
        assert!(shown.contains("Static(** redacted **)"), "{shown}");
        assert!(!shown.contains("AKIDEXAMPLE"), "{shown}");
        assert!(!shown.contains("wJalrXUtnFEMI"), "{shown}");
        assert!(!shown.contains("token-value"), "{shown}");
    }
}
