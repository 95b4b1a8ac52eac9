//! S3 failures reduced to what a user can act on: a kind, the server's error code and one line
//! of explanation. Built from SDK errors here so that nothing outside the engine sees SDK types.

use std::error::Error as StdError;
use std::fmt;

use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};

use super::endpoint_policy::EndpointForbidden;
use crate::text;

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
    /// No TCP/TLS connection could be made, or it broke (before or in the middle of an answer).
    Unreachable,
    Timeout,
    /// 503 or a throttling code (SlowDown and friends).
    Throttled,
    /// Any other 5xx answer.
    ServerError,
    /// The answer was larger than any real answer to the request can be; it was not read.
    AnswerTooLarge,
    /// The endpoint policy forbids the address the endpoint resolved to; no connection was made.
    EndpointForbidden,
    /// The TLS handshake failed (an untrusted certificate, most often).
    Tls,
    /// The caller's send gate refused the request (see `S3Settings::send_gate`); nothing was sent.
    SendRefused,
    /// Anything else, including answers that could not be parsed.
    Other,
}

/// How a failed request may be retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryClass {
    /// The server asks for a slower pace: retry after a backoff, and send less at once.
    Throttled,
    /// A transient failure (5xx, broken connection): retry after a backoff, within the budget.
    Transient,
    /// A timeout: as transient, but costlier for the budget (it held a connection for long).
    TimedOut,
    /// The server refused the request's signing time. The SDK sets its signing clock by every
    /// answer's `Date`, so sending it again succeeds; no backoff, no budget, no slowing down.
    ClockSkew,
    /// Retrying cannot help.
    Final,
}

/// One S3 failure. The message never carries credentials, and whatever of it came from the
/// server (its error code and message) is escaped and cut (see [`crate::text`]), so it is safe to
/// show anywhere and small enough for a status field.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct S3Error {
    pub kind: S3ErrorKind,
    /// The S3 error code (`NoSuchBucket`, `SignatureDoesNotMatch`...) when the server sent one,
    /// escaped and cut.
    pub code: Option<String>,
    /// The HTTP status when the server answered.
    pub status: Option<u16>,
    pub message: String,
    /// Whether the request may have reached the server (false when no connection was made), so
    /// that a failed attempt may still have been carried out.
    pub may_have_arrived: bool,
}

/// The longest error code any S3 server uses is about 40 characters.
const CODE_MAX_BYTES: usize = 64;

impl S3Error {
    pub fn new(kind: S3ErrorKind, code: Option<String>, message: impl Into<String>) -> Self {
        Self {
            kind,
            code,
            status: None,
            message: message.into(),
            may_have_arrived: true,
        }
    }

    pub fn from_sdk<E>(err: &SdkError<E, aws_smithy_runtime_api::http::Response>) -> Self
    where
        E: ProvideErrorMetadata + StdError + 'static,
    {
        let status = err.raw_response().map(|r| r.status().as_u16());
        match err {
            SdkError::ServiceError(_) if status.is_some_and(|s| (200..300).contains(&s)) => {
                // A success status whose body did not parse as the operation's answer.
                Self::new(
                    S3ErrorKind::Other,
                    None,
                    format!(
                        "the server's answer could not be read as S3 XML: {}",
                        text::shown(&error_chain(err), text::SERVER_MESSAGE_MAX_BYTES)
                    ),
                )
                .with_status(status)
            }
            SdkError::ServiceError(_) => {
                let code = err.code().map(str::to_owned);
                let server_message = err.message().map(str::to_owned);
                Self::from_response(status, code, server_message)
            }
            SdkError::ResponseError(_) => match find_source::<AnswerTooLarge>(err) {
                Some(too_large) => Self::new(
                    S3ErrorKind::AnswerTooLarge,
                    None,
                    format!("{too_large}; no real answer to this request is that large, so it was refused"),
                )
                .with_status(status),
                None => Self::new(
                    S3ErrorKind::Unreachable,
                    None,
                    format!(
                        "the connection broke in the middle of the answer: {}",
                        text::shown(&error_chain(err), text::SERVER_MESSAGE_MAX_BYTES)
                    ),
                )
                .with_status(status),
            },
            SdkError::TimeoutError(_) => Self::new(
                S3ErrorKind::Timeout,
                None,
                "the request timed out (no complete answer within the attempt timeout)",
            ),
            SdkError::DispatchFailure(_) if find_source::<EndpointForbidden>(err).is_some() => {
                let why = find_source::<EndpointForbidden>(err).expect("checked");
                Self::new(S3ErrorKind::EndpointForbidden, None, why.to_string()).never_arrived()
            }
            SdkError::DispatchFailure(_) if find_source::<SendRefused>(err).is_some() => {
                let why = find_source::<SendRefused>(err).expect("checked");
                Self::new(S3ErrorKind::SendRefused, None, why.to_string()).never_arrived()
            }
            SdkError::DispatchFailure(failure) => {
                let chain = error_chain(err);
                let detail = text::safe(&chain, text::SERVER_MESSAGE_MAX_BYTES);
                if failure.is_timeout() {
                    Self::new(
                        S3ErrorKind::Timeout,
                        None,
                        format!("connection timed out: {detail}"),
                    )
                    .never_arrived()
                } else if failure.is_user() && detail.to_ascii_lowercase().contains("credentials") {
                    Self::new(
                        S3ErrorKind::InvalidCredentials,
                        None,
                        format!(
                            "no usable AWS credentials: {detail}; set AWS_ACCESS_KEY_ID and \
                             AWS_SECRET_ACCESS_KEY or configure a profile"
                        ),
                    )
                } else if is_tls_failure(&chain) {
                    Self::new(
                        S3ErrorKind::Tls,
                        None,
                        format!("the TLS handshake failed: {detail}"),
                    )
                    .never_arrived()
                } else if failure.is_io() {
                    let error = Self::new(
                        S3ErrorKind::Unreachable,
                        None,
                        format!("cannot reach the endpoint: {detail}"),
                    );
                    if is_connect_failure(&chain) {
                        error.never_arrived()
                    } else {
                        error
                    }
                } else {
                    Self::new(
                        S3ErrorKind::Other,
                        None,
                        format!("request could not be sent: {detail}"),
                    )
                }
            }
            _ => Self::new(
                S3ErrorKind::Other,
                None,
                text::safe(&error_chain(err), text::SERVER_MESSAGE_MAX_BYTES),
            ),
        }
    }

    fn with_status(mut self, status: Option<u16>) -> Self {
        self.status = status;
        self
    }

    fn never_arrived(mut self) -> Self {
        self.may_have_arrived = false;
        self
    }

    /// Classifies an S3 error answer by its code first and its HTTP status second. The code and
    /// message come from the server: they are escaped and cut before they go anywhere.
    fn from_response(
        status: Option<u16>,
        code: Option<String>,
        server_message: Option<String>,
    ) -> Self {
        use S3ErrorKind::*;
        // The SDK makes up "NotFound" for a 404 with an empty body (HEAD answers have none):
        // that is no code the server sent.
        let code = code
            .filter(|c| !(c.is_empty() || (c == "NotFound" && status == Some(404))))
            .map(|c| text::safe(&c, CODE_MAX_BYTES));
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
                Some(
                    "SlowDown"
                    | "Throttling"
                    | "ThrottlingException"
                    | "ThrottledException"
                    | "RequestThrottled"
                    | "RequestLimitExceeded"
                    | "TooManyRequests"
                    | "TooManyRequestsException"
                    | "BandwidthLimitExceeded",
                ),
                _,
            )
            | (_, Some(429 | 503)) => Throttled,
            // The server gave up waiting for the request (a slow or broken upload path): the
            // request is fine and worth sending again, and the server is not unreachable.
            (Some("RequestTimeout"), _) => ServerError,
            (_, Some(500..=599)) => ServerError,
            // A 404 without an S3 error code says nothing about what is missing (a proxy's
            // page, a wrong endpoint): it is not taken to mean "upload gone".
            _ => Other,
        };
        let hint = match kind {
            InvalidCredentials if code.as_deref() == Some("RequestTimeTooSkewed") => {
                "the server says this machine's clock is too far from its own; check the clock"
            }
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
            Throttled => "the server is throttling requests (it asks for a slower pace)",
            ServerError => "the server answered with an internal error",
            Timeout => "the server timed out the request",
            _ if code.is_none() && status == Some(404) => {
                "the server answered 404 without an S3 error code (is the endpoint an S3 server?)"
            }
            _ => "the server refused the request",
        };
        let mut message = hint.to_owned();
        let detail: Vec<String> = [
            code.clone(),
            status.map(|s| format!("HTTP {s}")),
            server_message
                .filter(|m| !m.is_empty())
                .map(|m| text::safe(&m, text::SERVER_MESSAGE_MAX_BYTES)),
        ]
        .into_iter()
        .flatten()
        .collect();
        if !detail.is_empty() {
            message.push_str(&format!(" ({})", detail.join(", ")));
        }
        Self::new(kind, code, message).with_status(status)
    }

    /// How this failure may be retried.
    pub fn retry_class(&self) -> RetryClass {
        // The SDK measures the server's clock on every answer and signs the next request by it,
        // so a request refused for a skewed clock succeeds when sent again.
        if self.code.as_deref() == Some("RequestTimeTooSkewed") {
            return RetryClass::ClockSkew;
        }
        match self.kind {
            S3ErrorKind::Throttled => RetryClass::Throttled,
            S3ErrorKind::ServerError | S3ErrorKind::Unreachable => RetryClass::Transient,
            S3ErrorKind::Timeout => RetryClass::TimedOut,
            _ => RetryClass::Final,
        }
    }

    /// A 404 that carries no S3 error code: nothing can be concluded from it.
    pub fn is_uncoded_not_found(&self) -> bool {
        self.status == Some(404) && self.code.is_none()
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

/// An answer body that went past the size cap (see `body_cap`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, thiserror::Error)]
#[error("the server's answer is larger than {}", binary_size(*.limit))]
pub struct AnswerTooLarge {
    pub limit: u64,
}

/// `4 MiB`, `64 KiB`: the caps are whole binary units.
fn binary_size(bytes: u64) -> String {
    match bytes {
        b if b >= 1 << 20 && b % (1 << 20) == 0 => format!("{} MiB", b >> 20),
        b if b >= 1 << 10 && b % (1 << 10) == 0 => format!("{} KiB", b >> 10),
        b => format!("{b} bytes"),
    }
}

/// Whether a dispatch failure is a TLS handshake that failed (rustls names certificates and
/// handshakes in its errors).
fn is_tls_failure(chain: &str) -> bool {
    let chain = chain.to_ascii_lowercase();
    ["certificate", "handshake", "invalid peer", "tls"]
        .iter()
        .any(|sign| chain.contains(sign))
}

/// A request the caller's send gate held back.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("not sent: {0}")]
pub struct SendRefused(pub String);

/// Whether a dispatch failure happened while connecting (refused, no route, name not resolved),
/// so that the request never left. hyper-util names these "client error (Connect)".
fn is_connect_failure(chain: &str) -> bool {
    let chain = chain.to_ascii_lowercase();
    [
        "(connect)",
        "connection refused",
        "dns error",
        "failed to lookup address",
    ]
    .iter()
    .any(|sign| chain.contains(sign))
}

/// The first error of type `T` in the chain of `err`.
fn find_source<'a, T: StdError + 'static>(err: &'a (dyn StdError + 'static)) -> Option<&'a T> {
    let mut current: Option<&'a (dyn StdError + 'static)> = Some(err);
    while let Some(e) = current {
        if let Some(found) = e.downcast_ref::<T>() {
            return Some(found);
        }
        current = e.source();
    }
    None
}

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
        assert_eq!(kind(503, None), S3ErrorKind::Throttled);
        assert_eq!(
            kind(503, Some("ServiceUnavailable")),
            S3ErrorKind::Throttled
        );
        assert_eq!(kind(502, None), S3ErrorKind::ServerError);
    }

    #[test]
    fn a_404_without_a_code_is_not_taken_for_a_gone_upload() {
        let err = S3Error::from_response(Some(404), None, None);
        assert_eq!(err.kind, S3ErrorKind::Other);
        assert!(err.is_uncoded_not_found());
        let made_up = S3Error::from_response(Some(404), Some("NotFound".into()), None);
        assert!(made_up.is_uncoded_not_found(), "{made_up:?}");
        assert!(err.message.contains("without an S3 error code"), "{err}");
        let gone = S3Error::from_response(Some(404), Some("NoSuchUpload".into()), None);
        assert!(!gone.is_uncoded_not_found());
    }

    #[test]
    fn retry_classes_follow_the_kind() {
        let class = |status, code: Option<&str>| {
            S3Error::from_response(Some(status), code.map(str::to_owned), None).retry_class()
        };
        assert_eq!(class(503, Some("SlowDown")), RetryClass::Throttled);
        assert_eq!(class(500, Some("InternalError")), RetryClass::Transient);
        assert_eq!(class(400, Some("RequestTimeout")), RetryClass::Transient);
        assert_eq!(class(429, None), RetryClass::Throttled);
        assert_eq!(class(400, Some("TooManyRequests")), RetryClass::Throttled);
        assert_eq!(class(403, Some("AccessDenied")), RetryClass::Final);
        assert_eq!(class(404, Some("NoSuchUpload")), RetryClass::Final);
        assert_eq!(
            class(403, Some("RequestTimeTooSkewed")),
            RetryClass::ClockSkew
        );
    }

    #[test]
    fn server_text_is_escaped_and_cut() {
        let huge = format!("\u{1b}[2J{}", "x".repeat(1_000_000));
        let err = S3Error::from_response(Some(500), Some("Internal\u{7}Error".into()), Some(huge));
        assert!(err.message.len() < 600, "{}", err.message.len());
        assert!(
            !err.message.chars().any(char::is_control),
            "{:?}",
            err.message
        );
        assert!(err.message.contains("\\x1b[2J"), "{}", err.message);
        assert!(err.message.contains("more bytes)"), "{}", err.message);
        assert_eq!(err.code.as_deref(), Some("Internal\\x07Error"));
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
