//! Paging through ListMultipartUploads, one page in memory at a time, each page stamped with the
//! server's clock.

use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use aws_sdk_s3::Client;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::date_time::{DateTime, Format};
use futures::Stream;

use super::error::{S3Error, S3ErrorKind};

/// One incomplete multipart upload as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedUpload {
    pub key: String,
    pub upload_id: String,
    /// `None` when the server did not say when the upload started.
    pub initiated: Option<SystemTime>,
}

/// One page of the listing.
#[derive(Debug)]
pub struct Page {
    pub uploads: Vec<ListedUpload>,
    /// The server's clock when it answered (its `Date` header); `None` when it sent none.
    pub server_time: Option<SystemTime>,
}

/// Where the next page starts: the server's own `NextKeyMarker`/`NextUploadIdMarker`, echoed back
/// as given. SeaweedFS pages by upload ID alone (it sends no `NextKeyMarker` and reads a key
/// marker as "only this key"), while AWS and Ceph need both, so neither is invented when absent.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Marker {
    key: Option<String>,
    upload_id: Option<String>,
}

enum Cursor {
    Start,
    After(Marker),
    Done,
}

/// The listing as a stream of pages. Pages are fetched only when the consumer asks for the next
/// one, so memory stays at one page whatever the bucket holds. After an error the stream ends.
pub fn pages<'a>(
    client: &'a Client,
    bucket: &'a str,
    prefix: Option<&'a str>,
    page_size: i32,
) -> impl Stream<Item = Result<Page, S3Error>> + Send + 'a {
    futures::stream::unfold(Cursor::Start, move |cursor| async move {
        let marker = match cursor {
            Cursor::Done => return None,
            Cursor::Start => None,
            Cursor::After(marker) => Some(marker),
        };
        match fetch_page(client, bucket, prefix, page_size, marker.as_ref()).await {
            Ok((page, Some(next))) if Some(&next) == marker.as_ref() => {
                let err = S3Error::new(
                    S3ErrorKind::Other,
                    None,
                    format!(
                        "the server returned the same page marker twice ({next:?}); stopping to avoid an endless listing"
                    ),
                );
                drop(page);
                Some((Err(err), Cursor::Done))
            }
            Ok((page, next)) => Some((Ok(page), next.map_or(Cursor::Done, Cursor::After))),
            Err(err) => Some((Err(err), Cursor::Done)),
        }
    })
}

async fn fetch_page(
    client: &Client,
    bucket: &str,
    prefix: Option<&str>,
    page_size: i32,
    marker: Option<&Marker>,
) -> Result<(Page, Option<Marker>), S3Error> {
    let server_date = DateHeader::default();
    let output = client
        .list_multipart_uploads()
        .bucket(bucket)
        .set_prefix(prefix.filter(|p| !p.is_empty()).map(str::to_owned))
        .max_uploads(page_size)
        .set_key_marker(marker.and_then(|m| m.key.clone()))
        .set_upload_id_marker(marker.and_then(|m| m.upload_id.clone()))
        .customize()
        .interceptor(server_date.clone())
        .send()
        .await
        .map_err(|e| S3Error::from_sdk(&e))?;

    let uploads: Vec<ListedUpload> = output
        .uploads()
        .iter()
        .filter_map(|upload| {
            Some(ListedUpload {
                key: upload.key()?.to_owned(),
                upload_id: upload.upload_id()?.to_owned(),
                initiated: upload
                    .initiated()
                    .and_then(|t| SystemTime::try_from(*t).ok()),
            })
        })
        .collect();

    let next = if output.is_truncated().unwrap_or(false) {
        let given = Marker {
            key: output
                .next_key_marker()
                .filter(|k| !k.is_empty())
                .map(str::to_owned),
            upload_id: output
                .next_upload_id_marker()
                .filter(|u| !u.is_empty())
                .map(str::to_owned),
        };
        // A server that sends no marker at all still pages correctly from the last upload listed.
        let next = match (&given.key, &given.upload_id, uploads.last()) {
            (None, None, Some(last)) => Marker {
                key: Some(last.key.clone()),
                upload_id: Some(last.upload_id.clone()),
            },
            (None, None, None) => {
                return Err(S3Error::new(
                    S3ErrorKind::Other,
                    None,
                    "the server said the listing is truncated but gave no marker to continue from",
                ));
            }
            _ => given,
        };
        Some(next)
    } else {
        None
    };

    Ok((
        Page {
            uploads,
            server_time: server_date.get(),
        },
        next,
    ))
}

/// Captures the `Date` header of one response.
#[derive(Debug, Clone, Default)]
struct DateHeader(Arc<Mutex<Option<SystemTime>>>);

impl DateHeader {
    fn get(&self) -> Option<SystemTime> {
        *self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

impl Intercept for DateHeader {
    fn name(&self) -> &'static str {
        "ServerDateHeader"
    }

    fn read_before_deserialization(
        &self,
        context: &BeforeDeserializationInterceptorContextRef<'_>,
        _runtime_components: &RuntimeComponents,
        _cfg: &mut ConfigBag,
    ) -> Result<(), BoxError> {
        let parsed = context
            .response()
            .headers()
            .get("date")
            .and_then(|value| DateTime::from_str(value, Format::HttpDate).ok())
            .and_then(|t| SystemTime::try_from(t).ok());
        // Every attempt overwrites, so a retried request keeps the clock of the answer it used.
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = parsed;
        Ok(())
    }
}
