//! S3 failures reduced to what a user can act on: a kind, the server's error code and one line
//! of explanation. Built from SDK errors here so that nothing outside the engine sees SDK types.

use std::error::Error as StdError;
use std::fmt;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

/// What went wrong, coarsely; callers decide retry and exit status from this.
#[derive(Debug, Clone, Copy, PartialEq, Eq, serde::Serialize)]
#[serde(rename_all = "camelCase")]
pub enum S3ErrorKind {
    /// The server rejected the credentials (unknown key, wrong secret, expired token) or none were found.
    InvalidCredentials,
    /// The credentials are valid but lack permission.
    AccessDenied,
    NoSuchBucket,
    /// The upload no longer exists: somebody completed or aborted it.
    UploadGone,
    /// No TCP/TLS connection could be made, or it broke.
    Unreachable,
    Timeout,
    /// Still throttled (503 SlowDown and friends) after the SDK's retries.
    Throttled,
    /// A 5xx answer after the SDK's retries.
    ServerError,
    /// Anything else, including answers the SDK could not parse.
    Other,
}

/// One S3 failure. The message never carries credentials: it is built from the server's error
/// code and message and from connection errors, none of which include the secret.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    pub kind: S3ErrorKind,
    /// The S3 error code (`NoSuchBucket`, `SignatureDoesNotMatch`...) when the server sent one.
    pub code: Option<String>,
    pub message: String,
}

impl S3Error {
    pub fn new(kind: S3ErrorKind, code: Option<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            message: message.into(),
        }
    }

    pub fn from_sdk<E>(err: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Self
    where
        E: ProvideErrorMetadata + StdError + 'static,
    {
        match err {
            SdkError::ServiceError(_) | SdkError::ResponseError(_) => {
                let status = err.raw_response().map(|r| r.status().as_u16());
                let code = err.code().map(str::to_owned);
                let server_message = err.message().map(str::to_owned);
                Self::from_response(status, code, server_message)
            }
            SdkError::TimeoutError(_) => Self::new(
                S3ErrorKind::Timeout,
                None,
                "the request timed out (no complete answer within the operation timeout)",
            ),
            SdkError::DispatchFailure(failure) => {
                let detail = error_chain(err);
                if failure.is_timeout() {
                    Self::new(
                        S3ErrorKind::Timeout,
                        None,
                        format!("connection timed out: {detail}"),
                    )
                } else if failure.is_user() && detail.to_ascii_lowercase().contains("credentials") {
                    Self::new(
                        S3ErrorKind::InvalidCredentials,
                        None,
                        format!(
                            "no usable AWS credentials: {detail}; set AWS_ACCESS_KEY_ID and \
                             AWS_SECRET_ACCESS_KEY or configure a profile"
                        ),
                    )
                } else if failure.is_io() {
                    Self::new(
                        S3ErrorKind::Unreachable,
                        None,
                        format!("cannot reach the endpoint: {detail}"),
                    )
                } else {
                    Self::new(
                        S3ErrorKind::Other,
                        None,
                        format!("request could not be sent: {detail}"),
                    )
                }
            }
            _ => Self::new(S3ErrorKind::Other, None, error_chain(err)),
        }
    }

    /// Classifies an S3 error answer by its code first and its HTTP status second.
    fn from_response(
        status: Option<u16>,
        code: Option<String>,
        server_message: Option<String>,
    ) -> Self {
        use S3ErrorKind::*;
        let kind = match (code.as_deref(), status) {
            (Some("NoSuchUpload" | "NoSuchKey"), _) => UploadGone,
            (Some("NoSuchBucket"), _) => NoSuchBucket,
            (
                Some(
                    "InvalidAccessKeyId"
                    | "SignatureDoesNotMatch"
                    | "ExpiredToken"
                    | "InvalidToken"
                    | "TokenRefreshRequired"
                    | "RequestTimeTooSkewed",
                ),
                _,
            ) => InvalidCredentials,
            (Some("AccessDenied" | "AllAccessDisabled" | "AccountProblem"), _)
            | (None, Some(403)) => AccessDenied,
            (
                Some("SlowDown" | "Throttling" | "ThrottlingException" | "RequestLimitExceeded"),
                _,
            ) => Throttled,
            (Some("RequestTimeout"), _) => Timeout,
            (None, Some(404)) => UploadGone,
            (_, Some(500..=599)) => ServerError,
            _ => Other,
        };
        let hint = match kind {
            InvalidCredentials => {
                "the server rejected the credentials; check the access key ID and secret key"
            }
            AccessDenied => {
                "access denied; the credentials need s3:ListBucketMultipartUploads, s3:ListMultipartUploadParts and s3:AbortMultipartUpload on the bucket"
            }
            NoSuchBucket => {
                "the bucket does not exist at this endpoint (check the bucket name, endpoint and region)"
            }
            UploadGone => "the upload no longer exists",
            Throttled => "the server is throttling requests and kept doing so after retries",
            ServerError => "the server answered with an internal error after retries",
            Timeout => "the server timed out the request",
            _ => "the server refused the request",
        };
        let mut message = hint.to_owned();
        let detail: Vec<String> = [
            code.clone(),
            status.map(|s| format!("HTTP {s}")),
            server_message.filter(|m| !m.is_empty()),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !detail.is_empty() {
            message.push_str(&format!(" ({})", detail.join(", ")));
        }
        Self::new(kind, code, message)
    }

    /// A short label for metrics and failure lists: the S3 code, else the kind.
    pub fn code_or_kind(&self) -> String {
        self.code
            .clone()
            .unwrap_or_else(|| format!("{:?}", self.kind))
    }
}

impl fmt::Display for S3Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl StdError for S3Error {}

/// The distinct messages of an error and its sources, joined, so that "connection refused"
/// buried three levels deep reaches the one-line message.
fn error_chain(err: &(dyn StdError + 'static)) -> String {
    let mut parts: Vec<String> = Vec::new();
    let mut current: Option<&(dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        let text = e.to_string();
        if !text.is_empty() && !parts.iter().any(|p| p.contains(&text)) {
            parts.push(text);
        }
        current = e.source();
    }
    parts.join(": ")
}

#[cfg(test)]
mod tests {
    use super::*;

    fn kind(status: u16, code: Option<&str>) -> S3ErrorKind {
        S3Error::from_response(Some(status), code.map(str::to_owned), None).kind
    }

    #[test]
    fn classifies_answers_by_code_then_status() {
        assert_eq!(kind(404, Some("NoSuchUpload")), S3ErrorKind::UploadGone);
        assert_eq!(kind(404, Some("NoSuchKey")), S3ErrorKind::UploadGone);
        assert_eq!(kind(404, Some("NoSuchBucket")), S3ErrorKind::NoSuchBucket);
        assert_eq!(
            kind(403, Some("SignatureDoesNotMatch")),
            S3ErrorKind::InvalidCredentials
        );
        assert_eq!(
            kind(403, Some("InvalidAccessKeyId")),
            S3ErrorKind::InvalidCredentials
        );
        assert_eq!(kind(403, Some("AccessDenied")), S3ErrorKind::AccessDenied);
        assert_eq!(kind(403, None), S3ErrorKind::AccessDenied);
        assert_eq!(kind(503, Some("SlowDown")), S3ErrorKind::Throttled);
        assert_eq!(kind(500, Some("InternalError")), S3ErrorKind::ServerError);
        assert_eq!(kind(400, Some("InvalidArgument")), S3ErrorKind::Other);
    }

    #[test]
    fn message_names_the_cause_and_the_server_detail() {
        let err = S3Error::from_response(
            Some(403),
            Some("SignatureDoesNotMatch".into()),
            Some("The request signature we calculated does not match".into()),
        );
        assert!(err.message.contains("rejected the credentials"), "{err}");
        assert!(
            err.message.contains("SignatureDoesNotMatch, HTTP 403"),
            "{err}"
        );
        assert_eq!(err.code_or_kind(), "SignatureDoesNotMatch");
    }
}
