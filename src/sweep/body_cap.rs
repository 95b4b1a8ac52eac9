//! A cap on the size of every answer body. The SDK reads a whole body into memory before parsing
//! it, so a server that ignores `MaxUploads` and sends a page of hundreds of MB would otherwise
//! take the process down. Bodies are refused past the cap while they stream in: at most the cap
//! is ever held.

use std::pin::Pin;
use std::task::{Context, Poll};

use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextMut;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::config_bag::ConfigBag;
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};

use super::error::AnswerTooLarge;

/// The cap on any answer, set on the client: a real 1,000-upload listing page with 1 KiB keys is
/// about 1.5 MB.
pub const MAX_ANSWER_BYTES: u64 = 4 * 1024 * 1024;
/// The cap on answers that are tiny when real (an abort's, an error's, a one-part ListParts),
/// set per request, so that the aborts in flight cannot hold megabytes each.
pub const MAX_SMALL_ANSWER_BYTES: u64 = 64 * 1024;
/// The cap on a ListParts page of 1,000 parts (about 250 KB when real).
pub const MAX_PARTS_PAGE_BYTES: u64 = 1024 * 1024;

/// Refuses answers larger than `limit`: at once when `Content-Length` says so, otherwise as soon
/// as the body streams past it.
#[derive(Debug, Clone, Copy)]
pub struct BodyCap {
    pub limit: u64,
}

impl Intercept for BodyCap {
    fn name(&self) -> &'static str {
        "AnswerBodyCap"
    }

    fn modify_before_deserialization(
        &self,
        context: &mut BeforeDeserializationInterceptorContextMut<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let response = context.response_mut();
        let declared = response
            .headers()
            .get("content-length")
            .and_then(|v| v.trim().parse::<u64>().ok());
        if declared.is_some_and(|length| length > self.limit) {
            return Err(Box::new(AnswerTooLarge { limit: self.limit }));
        }
        let body = response.take_body();
        *response.body_mut() = SdkBody::from_body_1_x(CappedBody {
            inner: body,
            read: 0,
            limit: self.limit,
        });
        Ok(())
    }
}

/// A body that fails once more than `limit` bytes have come through.
struct CappedBody {
    inner: SdkBody,
    read: u64,
    limit: u64,
}

impl Body for CappedBody {
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let this = &mut *self;
        let frame = match Pin::new(&mut this.inner).poll_frame(cx) {
            Poll::Ready(Some(Ok(frame))) => frame,
            other => return other,
        };
        if let Some(data) = frame.data_ref() {
            this.read = this.read.saturating_add(data.len() as u64);
            if this.read > this.limit {
                // Dropping the inner body closes the connection instead of draining it.
                this.inner = SdkBody::empty();
                return Poll::Ready(Some(Err(Box::new(AnswerTooLarge { limit: this.limit }))));
            }
        }
        Poll::Ready(Some(Ok(frame)))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::BodyExt;

    fn capped(chunks: Vec<&'static [u8]>, limit: u64) -> CappedBody {
        let stream = futures::stream::iter(
            chunks
                .into_iter()
                .map(|c| Ok::<_, std::io::Error>(Frame::data(Bytes::from_static(c)))),
        );
        CappedBody {
            inner: SdkBody::from_body_1_x(http_body_util::StreamBody::new(stream)),
            read: 0,
            limit,
        }
    }

    #[tokio::test]
    async fn bodies_up_to_the_cap_pass_whole() {
        let body = capped(vec![b"abc", b"def"], 6);
        assert_eq!(body.collect().await.unwrap().to_bytes(), "abcdef");
    }

    #[tokio::test]
    async fn a_body_past_the_cap_fails_with_the_limit_named() {
        let body = capped(vec![b"abc", b"def", b"g"], 6);
        let err = body.collect().await.unwrap_err();
        assert_eq!(
            err.downcast_ref::<AnswerTooLarge>(),
            Some(&AnswerTooLarge { limit: 6 })
        );
    }
}
