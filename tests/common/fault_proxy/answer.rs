//! Carrying out an action: forwarding, answering in the server's place, holding, breaking off and
//! rewriting answers.

use std::time::Duration;

use bytes::{Bytes, BytesMut};
use http::header::{self, HeaderMap, HeaderValue};
use http::{StatusCode, response};
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::{Request, Response};

use super::body::{self, HugeListingBody, Prefixed, ProxyBody, ResetAfter};
use super::connection::Connection;
use super::rewrite::{self, GeneratedListing};
use super::rules::{Action, DateRewrite, Firing};
use super::s3::S3Request;

/// Answers larger than this are forwarded unchanged instead of being rewritten.
pub const REWRITE_CAP: usize = 16 * 1024 * 1024;

pub(crate) enum Answer {
    Respond(Response<ProxyBody>),
    /// Reset the connection without answering.
    Reset,
}

/// Headers that describe one hop, not the message; hyper writes its own.
const HOP_BY_HOP: [&str; 6] = [
    "connection",
    "keep-alive",
    "proxy-connection",
    "te",
    "trailer",
    "upgrade",
];

fn strip_hop_by_hop(headers: &mut HeaderMap) {
    for name in HOP_BY_HOP {
        headers.remove(name);
    }
}

impl Connection {
    pub(crate) async fn answer(
        &self,
        request: Request<Incoming>,
        s3: &S3Request,
        seq: u64,
        firing: Option<Firing>,
    ) -> Answer {
        let Some(Firing { action, markers }) = firing else {
            return self.relay(request).await;
        };
        match action {
            Action::Error {
                status,
                code,
                message,
                message_bytes,
            } => {
                let id = request_id(seq);
                let body =
                    rewrite::error_body(code.as_deref(), message.as_deref(), message_bytes, &id);
                Answer::Respond(own_answer(status, seq, body, None))
            }
            Action::ResetMidAnswer { after_bytes } => {
                self.reset_mid_answer(request, s3, after_bytes).await
            }
            Action::Hold {
                ms,
                forward_first: false,
            } => {
                self.pause(ms).await;
                self.relay(request).await
            }
            Action::Hold {
                ms,
                forward_first: true,
            } => self.hold_answer(request, ms).await,
            Action::Delay { ms } => self.delay(request, ms).await,
            Action::HugeListing { bytes, chunked } => {
                Answer::Respond(huge_listing(&s3.bucket, bytes, chunked, seq))
            }
            Action::Date(date) => self.rewrite_date(request, &date).await,
            listing @ (Action::Markers { .. }
            | Action::Initiated { .. }
            | Action::Inject { .. }) => {
                self.rewrite(request, |xml| edit_listing(xml, &listing, markers.as_ref()))
                    .await
            }
        }
    }

    /// Sends the request to the real server; a server that cannot be reached gets the client a
    /// 502 with an S3 error body.
    async fn forward(&self, mut request: Request<Incoming>) -> Result<Response<Incoming>, Answer> {
        strip_hop_by_hop(request.headers_mut());
        let sent = self.upstream.lock().await.send(request).await;
        sent.map_err(|e| upstream_failure(format!("upstream failed: {e}")))
    }

    async fn relay(&self, request: Request<Incoming>) -> Answer {
        match self.forward(request).await {
            Ok(response) => Answer::Respond(relayed(response)),
            Err(failed) => failed,
        }
    }

    /// Waits `ms`, or less if the proxy shuts down. A client that disconnects drops the request
    /// future, and the wait with it.
    async fn pause(&self, ms: u64) {
        tokio::select! {
            () = tokio::time::sleep(Duration::from_millis(ms)) => {}
            () = self.shared.shutdown.cancelled() => {}
        }
    }

    async fn hold_answer(&self, request: Request<Incoming>, ms: u64) -> Answer {
        let response = match self.forward(request).await {
            Ok(response) => buffered(response).await,
            Err(failed) => return failed,
        };
        self.pause(ms).await;
        match response {
            Ok(Buffered::Whole(parts, bytes)) => Answer::Respond(whole(parts, bytes)),
            Ok(Buffered::TooLarge(response)) => Answer::Respond(response),
            Err(failed) => failed,
        }
    }

    /// Half the delay on the way there, half on the way back (before the answer's head).
    async fn delay(&self, request: Request<Incoming>, ms: u64) -> Answer {
        self.pause(ms / 2).await;
        let answer = self.relay(request).await;
        self.pause(ms - ms / 2).await;
        answer
    }

    async fn reset_mid_answer(
        &self,
        request: Request<Incoming>,
        s3: &S3Request,
        after_bytes: usize,
    ) -> Answer {
        let head_only = s3.method == "HEAD";
        let mut response = match self.forward(request).await {
            Ok(response) => response,
            Err(failed) => return failed,
        };
        // An answer that would be complete after `after_bytes` (an abort's empty 204) is broken
        // off before its head instead, or the client would see it whole.
        let status = response.status();
        let no_body =
            head_only || status == StatusCode::NO_CONTENT || status == StatusCode::NOT_MODIFIED;
        let length = if no_body {
            Some(0)
        } else {
            content_length(response.headers())
        };
        if length.is_some_and(|length| length <= after_bytes as u64) {
            return Answer::Reset;
        }
        strip_hop_by_hop(response.headers_mut());
        let reset = self.reset.clone();
        Answer::Respond(
            response.map(|body| ResetAfter::new(body, after_bytes, reset).boxed_unsync()),
        )
    }

    async fn rewrite(
        &self,
        request: Request<Incoming>,
        edit: impl FnOnce(&str) -> Option<String>,
    ) -> Answer {
        let response = match self.forward(request).await {
            Ok(response) => response,
            Err(failed) => return failed,
        };
        match buffered(response).await {
            Ok(Buffered::Whole(parts, bytes)) => {
                let rewritten = rewritable(&parts)
                    .then(|| std::str::from_utf8(&bytes).ok().and_then(edit))
                    .flatten();
                let bytes = rewritten.map_or(bytes, Bytes::from);
                Answer::Respond(whole(parts, bytes))
            }
            Ok(Buffered::TooLarge(response)) => Answer::Respond(response),
            Err(failed) => failed,
        }
    }

    async fn rewrite_date(&self, request: Request<Incoming>, date: &DateRewrite) -> Answer {
        let mut response = match self.forward(request).await {
            Ok(response) => response,
            Err(failed) => return failed,
        };
        let headers = response.headers_mut();
        let new_date = match date {
            DateRewrite::Garbage(text) => Some(header_value_lossy(text)),
            DateRewrite::OffsetSeconds(seconds) => {
                shifted_date(headers.get(header::DATE), *seconds)
            }
            DateRewrite::Remove => None,
        };
        match new_date {
            Some(value) => headers.insert(header::DATE, value),
            None => headers.remove(header::DATE),
        };
        Answer::Respond(relayed(response))
    }
}

/// A listing page rewritten by a Markers, Initiated or Inject action; `None` leaves it as is.
fn edit_listing(xml: &str, action: &Action, markers: Option<&(String, String)>) -> Option<String> {
    match action {
        Action::Markers { .. } => {
            let (key_marker, upload_id_marker) = markers?;
            rewrite::set_markers(xml, key_marker, upload_id_marker)
        }
        Action::Initiated { key_prefix, value } => {
            rewrite::set_initiated(xml, key_prefix, value.as_deref())
        }
        Action::Inject {
            key_prefix,
            key_suffix,
            upload_id_suffix,
        } => rewrite::inject(
            xml,
            key_prefix,
            key_suffix.as_deref(),
            upload_id_suffix.as_deref(),
        ),
        _ => None,
    }
}

/// A 502 telling the client the proxy, not the server, failed.
fn upstream_failure(what: String) -> Answer {
    let message = format!("fault proxy: {what}");
    let body = rewrite::error_body(
        Some("FaultProxyUpstreamError"),
        Some(&message),
        None,
        "fault-proxy",
    );
    Answer::Respond(own_answer(502, 0, body, None))
}

fn request_id(seq: u64) -> String {
    format!("fault-proxy-{seq}")
}

fn relayed(mut response: Response<Incoming>) -> Response<ProxyBody> {
    strip_hop_by_hop(response.headers_mut());
    response.map(body::relayed)
}

/// An answer the proxy makes itself, dated now like a real server's.
fn own_answer(status: u16, seq: u64, body: String, length: Option<u64>) -> Response<ProxyBody> {
    let status = StatusCode::from_u16(status).unwrap_or(StatusCode::INTERNAL_SERVER_ERROR);
    let mut builder = Response::builder()
        .status(status)
        .header("x-amz-request-id", request_id(seq))
        .header(header::DATE, now_http_date());
    if !body.is_empty() || length.is_some() {
        builder = builder.header(header::CONTENT_TYPE, "application/xml");
    }
    let length = length.unwrap_or(body.len() as u64);
    let response = builder
        .header(header::CONTENT_LENGTH, length)
        .body(body::full(body));
    response.unwrap_or_else(|_| Response::new(body::empty()))
}

fn huge_listing(bucket: &str, bytes: u64, chunked: bool, seq: u64) -> Response<ProxyBody> {
    let listing = GeneratedListing::new(bucket, bytes);
    let length = listing.total_len();
    let mut response = own_answer(200, seq, String::new(), Some(length));
    if chunked {
        response.headers_mut().remove(header::CONTENT_LENGTH);
    }
    response.map(|_| HugeListingBody::new(listing, chunked).boxed_unsync())
}

enum Buffered {
    Whole(response::Parts, Bytes),
    /// Over the cap: what was read and the rest, to forward unchanged.
    TooLarge(Response<ProxyBody>),
}

/// Reads a whole answer into memory, up to [`REWRITE_CAP`].
async fn buffered(response: Response<Incoming>) -> Result<Buffered, Answer> {
    let (parts, mut body) = response.into_parts();
    let announced = content_length(&parts.headers).unwrap_or(0);
    if announced > REWRITE_CAP as u64 {
        return Ok(Buffered::TooLarge(relayed(Response::from_parts(
            parts, body,
        ))));
    }
    let mut bytes = BytesMut::new();
    while let Some(frame) = body.frame().await {
        let frame =
            frame.map_err(|e| upstream_failure(format!("reading the answer failed: {e}")))?;
        if let Ok(data) = frame.into_data() {
            bytes.extend_from_slice(&data);
        }
        if bytes.len() > REWRITE_CAP {
            let rest = Prefixed::new(bytes.freeze(), body).boxed_unsync();
            let mut response = Response::from_parts(parts, rest);
            strip_hop_by_hop(response.headers_mut());
            return Ok(Buffered::TooLarge(response));
        }
    }
    Ok(Buffered::Whole(parts, bytes.freeze()))
}

/// Only successful, uncompressed answers are rewritten.
fn rewritable(parts: &response::Parts) -> bool {
    let encoded = parts
        .headers
        .get(header::CONTENT_ENCODING)
        .is_some_and(|e| e.as_bytes() != b"identity");
    parts.status.is_success() && !encoded
}

/// A buffered answer, its framing fixed for its (maybe new) length.
fn whole(mut parts: response::Parts, bytes: Bytes) -> Response<ProxyBody> {
    strip_hop_by_hop(&mut parts.headers);
    parts.headers.remove(header::TRANSFER_ENCODING);
    parts
        .headers
        .insert(header::CONTENT_LENGTH, HeaderValue::from(bytes.len()));
    Response::from_parts(parts, body::full(bytes))
}

fn content_length(headers: &HeaderMap) -> Option<u64> {
    headers
        .get(header::CONTENT_LENGTH)?
        .to_str()
        .ok()?
        .trim()
        .parse()
        .ok()
}

fn now_http_date() -> HeaderValue {
    http_date(jiff::Timestamp::now()).unwrap_or(HeaderValue::from_static("not a date"))
}

fn http_date(timestamp: jiff::Timestamp) -> Option<HeaderValue> {
    let printer = jiff::fmt::rfc2822::DateTimePrinter::new();
    let text = printer.timestamp_to_rfc9110_string(&timestamp).ok()?;
    HeaderValue::from_str(&text).ok()
}

/// The real `Date` (or now, if it has none) moved by `seconds`.
fn shifted_date(real: Option<&HeaderValue>, seconds: i64) -> Option<HeaderValue> {
    let parser = jiff::fmt::rfc2822::DateTimeParser::new();
    let real = real
        .and_then(|value| value.to_str().ok())
        .and_then(|text| parser.parse_timestamp(text).ok())
        .unwrap_or_else(jiff::Timestamp::now);
    let shifted = real
        .checked_add(jiff::SignedDuration::from_secs(seconds))
        .ok()?;
    http_date(shifted)
}

/// Any text as a header value: bytes a header cannot carry become `?`.
fn header_value_lossy(text: &str) -> HeaderValue {
    let bytes: Vec<u8> = text
        .bytes()
        .map(|b| {
            if b == b'\t' || (b >= 0x20 && b != 0x7f) {
                b
            } else {
                b'?'
            }
        })
        .collect();
    HeaderValue::from_bytes(&bytes).unwrap_or(HeaderValue::from_static("?"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn dates_are_shifted_in_http_format() {
        let real = HeaderValue::from_static("Sun, 06 Nov 1994 08:49:37 GMT");
        let shifted = shifted_date(Some(&real), 2 * 86_400).unwrap();
        assert_eq!(shifted, "Tue, 08 Nov 1994 08:49:37 GMT");
        assert_eq!(header_value_lossy("not\na date"), "not?a date");
    }
}
