//! Answer bodies: relayed, generated, broken off, and the wrapper that records when an answer
//! ends and how much of it was sent.

use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use http_body_util::combinators::UnsyncBoxBody;
use http_body_util::{BodyExt, Empty, Full};
use hyper::body::Incoming;

use super::rewrite::GeneratedListing;
use super::stats::RecordHandle;

pub(crate) type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// Every answer body the proxy sends.
pub(crate) type ProxyBody = UnsyncBoxBody<Bytes, BoxError>;

pub(crate) fn full(bytes: impl Into<Bytes>) -> ProxyBody {
    Full::new(bytes.into())
        .map_err(|never| match never {})
        .boxed_unsync()
}

pub(crate) fn empty() -> ProxyBody {
    Empty::new().map_err(|never| match never {}).boxed_unsync()
}

pub(crate) fn relayed(body: Incoming) -> ProxyBody {
    body.map_err(BoxError::from).boxed_unsync()
}

/// Counts the bytes sent and finishes the request's record when the body ends, fails or is
/// dropped (the client went away).
pub(crate) struct Tracked {
    inner: ProxyBody,
    record: RecordHandle,
}

impl Tracked {
    pub fn new(inner: ProxyBody, record: RecordHandle) -> Self {
        Self { inner, record }
    }
}

impl Body for Tracked {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let polled = ready!(Pin::new(&mut self.inner).poll_frame(cx));
        match &polled {
            Some(Ok(frame)) => {
                let sent = frame.data_ref().map_or(0, Bytes::len);
                self.record.add_body_bytes(sent);
            }
            Some(Err(_)) | None => self.record.finish(),
        }
        Poll::Ready(polled)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// The bytes already read from an answer, then the rest of it: what is left of an answer too
/// large to rewrite.
pub(crate) struct Prefixed {
    prefix: Option<Bytes>,
    rest: Incoming,
}

impl Prefixed {
    pub fn new(prefix: Bytes, rest: Incoming) -> Self {
        Self {
            prefix: Some(prefix).filter(|p| !p.is_empty()),
            rest,
        }
    }
}

impl Body for Prefixed {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if let Some(prefix) = self.prefix.take() {
            return Poll::Ready(Some(Ok(Frame::data(prefix))));
        }
        let polled = ready!(Pin::new(&mut self.rest).poll_frame(cx));
        Poll::Ready(polled.map(|frame| frame.map_err(BoxError::from)))
    }
}

/// Relays the first `after_bytes` of the real body, then fails, never ending cleanly: the
/// connection is then reset (see `ResettableStream`).
pub(crate) struct ResetAfter {
    inner: Incoming,
    remaining: usize,
    reset: Arc<AtomicBool>,
    /// Set once the bytes to send are out: a short pause lets them reach the client before the
    /// reset, which discards whatever is still unsent.
    pause: Option<Pin<Box<tokio::time::Sleep>>>,
}

const PAUSE_BEFORE_RESET: Duration = Duration::from_millis(50);

impl ResetAfter {
    pub fn new(inner: Incoming, after_bytes: usize, reset: Arc<AtomicBool>) -> Self {
        Self {
            inner,
            remaining: after_bytes,
            reset,
            pause: None,
        }
    }

    fn start_pause(&mut self) {
        self.pause = Some(Box::pin(tokio::time::sleep(PAUSE_BEFORE_RESET)));
    }
}

impl Body for ResetAfter {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.remaining == 0 && self.pause.is_none() {
            self.start_pause();
        }
        if let Some(pause) = self.pause.as_mut() {
            ready!(pause.as_mut().poll(cx));
            self.reset.store(true, Ordering::SeqCst);
            return Poll::Ready(Some(Err("fault proxy: connection reset mid-answer".into())));
        }
        match ready!(Pin::new(&mut self.inner).poll_frame(cx)) {
            Some(Ok(frame)) => {
                let Ok(mut data) = frame.into_data() else {
                    // Trailers are dropped: the answer never gets that far.
                    return self.poll_frame(cx);
                };
                if data.len() >= self.remaining {
                    data.truncate(self.remaining);
                }
                self.remaining -= data.len();
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e.into()))),
            // The real body was shorter: break off anyway.
            None => {
                self.remaining = 0;
                self.poll_frame(cx)
            }
        }
    }
}

/// A ListMultipartUploadsResult generated while it is sent, 64 KiB at a time; dropping it (the
/// client went away) stops the generation.
pub(crate) struct HugeListingBody {
    listing: GeneratedListing,
    /// The next entry to write, from 1; 0 before the head.
    next: u64,
    sent: u64,
    done: bool,
    chunked: bool,
}

const CHUNK: usize = 64 * 1024;

impl HugeListingBody {
    pub fn new(listing: GeneratedListing, chunked: bool) -> Self {
        Self {
            listing,
            next: 0,
            sent: 0,
            done: false,
            chunked,
        }
    }

    fn next_chunk(&mut self) -> Bytes {
        let mut chunk = String::with_capacity(CHUNK + 1024);
        if self.next == 0 {
            chunk.push_str(self.listing.head());
            self.next = 1;
        }
        while chunk.len() < CHUNK && self.next <= self.listing.entries {
            chunk.push_str(&self.listing.entry(self.next));
            self.next += 1;
        }
        if self.next > self.listing.entries {
            chunk.push_str(self.listing.tail());
            self.done = true;
        }
        self.sent += chunk.len() as u64;
        Bytes::from(chunk)
    }
}

impl Body for HugeListingBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        if self.done {
            return Poll::Ready(None);
        }
        Poll::Ready(Some(Ok(Frame::data(self.next_chunk()))))
    }

    fn is_end_stream(&self) -> bool {
        self.done
    }

    fn size_hint(&self) -> SizeHint {
        // No exact size makes hyper use chunked transfer encoding.
        if self.chunked {
            SizeHint::default()
        } else {
            SizeHint::with_exact(self.listing.total_len().saturating_sub(self.sent))
        }
    }
}
