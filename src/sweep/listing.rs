//! Paging through ListMultipartUploads, one page in memory at a time, each page stamped with the
//! server's clock.

use std::collections::HashSet;
use std::hash::{BuildHasher, RandomState};
use std::sync::{Arc, Mutex};
use std::time::SystemTime;

use aws_sdk_s3::Client;
use aws_sdk_s3::operation::list_multipart_uploads::ListMultipartUploadsOutput;
use aws_smithy_runtime_api::box_error::BoxError;
use aws_smithy_runtime_api::client::interceptors::Intercept;
use aws_smithy_runtime_api::client::interceptors::context::BeforeDeserializationInterceptorContextRef;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::config_bag::ConfigBag;
use aws_smithy_types::date_time::{DateTime, Format};
use futures::Stream;

use super::error::{S3Error, S3ErrorKind};
use super::requests::{Lane, Requests};
use crate::text;

/// One incomplete multipart upload as listed.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ListedUpload {
    pub key: String,
    pub upload_id: String,
    /// `None` when the server did not say when the upload started.
    pub initiated: Option<SystemTime>,
}

impl std::fmt::Display for ListedUpload {
    /// For logs: the key and upload ID as a server sent them, escaped and cut.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "key \"{}\" upload {}",
            text::name(&self.key),
            text::name(&self.upload_id)
        )
    }
}

/// One page of the listing.
#[derive(Debug)]
pub struct Page {
    pub uploads: Vec<ListedUpload>,
    /// Entries listed without a key or an upload ID: nothing can be done with them.
    pub unusable: u64,
    /// The server's clock when it answered, from its `Date` header.
    pub server_date: ServerDate,
}

/// What the `Date` header of an answer said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum ServerDate {
    Sent(SystemTime),
    Missing,
    /// A header that is not an HTTP date; the value as received, escaped and cut.
    Unparseable(String),
}

/// Where the next page starts: the server's own `NextKeyMarker`/`NextUploadIdMarker`, echoed back
/// as given. SeaweedFS pages by upload ID alone (it sends no `NextKeyMarker` and reads a key
/// marker as "only this key"), while AWS and Ceph need both, so neither is invented when absent.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
struct Marker {
    key: Option<String>,
    upload_id: Option<String>,
}

impl std::fmt::Display for Marker {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let part = |value: &Option<String>| {
            value.as_deref().map_or_else(
                || "none".to_owned(),
                |v| format!("\"{}\"", text::shown(v, 128)),
            )
        };
        write!(
            f,
            "key marker {}, upload ID marker {}",
            part(&self.key),
            part(&self.upload_id)
        )
    }
}

/// Pages a listing may have before it is taken for a server that never ends it: 100 million
/// uploads at 1,000 a page. It also bounds the memory of [`SeenMarkers`] (about 4 MB).
pub const MAX_PAGES: usize = 100_000;

/// The markers a listing has handed out so far, as 128-bit keyed hashes (a server's markers can
/// be long; their hashes are not), so that a marker seen before, on any earlier page, is caught.
struct SeenMarkers {
    hashers: (RandomState, RandomState),
    seen: HashSet<u128>,
}

impl SeenMarkers {
    fn new() -> Self {
        Self {
            hashers: (RandomState::new(), RandomState::new()),
            seen: HashSet::new(),
        }
    }

    /// Records `marker`; false when it was seen before.
    fn first_time(&mut self, marker: &Marker) -> bool {
        let high = u128::from(self.hashers.0.hash_one(marker));
        let low = u128::from(self.hashers.1.hash_one(marker));
        self.seen.insert(high << 64 | low)
    }

    fn len(&self) -> usize {
        self.seen.len()
    }
}

enum Cursor {
    Start(SeenMarkers),
    After(Marker, SeenMarkers),
    Done,
}

/// The listing as a stream of pages. Pages are fetched only when the consumer asks for the next
/// one, so memory stays at one page whatever the bucket holds. After an error the stream ends.
/// A server whose markers come round again (A, B, A...) is stopped at the first repeat.
pub fn pages<'a>(
    client: &'a Client,
    requests: &'a Requests,
    bucket: &'a str,
    prefix: Option<&'a str>,
    page_size: i32,
) -> impl Stream<Item = Result<Page, S3Error>> + Send + 'a {
    let query = PageQuery {
        client,
        requests,
        bucket,
        prefix,
        page_size,
    };
    futures::stream::unfold(
        Cursor::Start(SeenMarkers::new()),
        move |cursor| async move {
            let (marker, mut seen) = match cursor {
                Cursor::Done => return None,
                Cursor::Start(seen) => (None, seen),
                Cursor::After(marker, seen) => (Some(marker), seen),
            };
            let (page, next) = match query.fetch(marker.as_ref()).await {
                Ok(fetched) => fetched,
                Err(err) => return Some((Err(err), Cursor::Done)),
            };
            let Some(next) = next else {
                return Some((Ok(page), Cursor::Done));
            };
            if !seen.first_time(&next) {
                let err = listing_error(format!(
                    "the server handed out a page marker it had given before ({next}); stopping to avoid an endless listing"
                ));
                return Some((Err(err), Cursor::Done));
            }
            if seen.len() >= MAX_PAGES {
                let err = listing_error(format!(
                    "the listing went on past {MAX_PAGES} pages; stopping (the server may never end it)"
                ));
                return Some((Err(err), Cursor::Done));
            }
            Some((Ok(page), Cursor::After(next, seen)))
        },
    )
}

fn listing_error(message: String) -> S3Error {
    S3Error::new(S3ErrorKind::Other, None, message)
}

/// What every page request of one listing shares.
#[derive(Clone, Copy)]
struct PageQuery<'a> {
    client: &'a Client,
    requests: &'a Requests,
    bucket: &'a str,
    prefix: Option<&'a str>,
    page_size: i32,
}

impl PageQuery<'_> {
    /// One page and the marker of the next, if the listing goes on.
    async fn fetch(&self, marker: Option<&Marker>) -> Result<(Page, Option<Marker>), S3Error> {
        let (output, server_date) = self
            .requests
            .send(Lane::Listing, || self.request(marker))
            .await
            .result?;
        let listed = output.uploads();
        let uploads: Vec<ListedUpload> = listed
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
        let next = next_marker(&output, uploads.last())?;
        Ok((
            Page {
                unusable: (listed.len() - uploads.len()) as u64,
                uploads,
                server_date,
            },
            next,
        ))
    }

    async fn request(
        &self,
        marker: Option<&Marker>,
    ) -> Result<(ListMultipartUploadsOutput, ServerDate), S3Error> {
        let date = DateHeader::default();
        let output = self
            .client
            .list_multipart_uploads()
            .bucket(self.bucket)
            .set_prefix(self.prefix.filter(|p| !p.is_empty()).map(str::to_owned))
            .max_uploads(self.page_size)
            .set_key_marker(marker.and_then(|m| m.key.clone()))
            .set_upload_id_marker(marker.and_then(|m| m.upload_id.clone()))
            .customize()
            .interceptor(date.clone())
            .send()
            .await
            .map_err(|e| S3Error::from_sdk(&e))?;
        Ok((output, date.get()))
    }
}

/// Where the listing goes on, or `None` when this was the last page.
fn next_marker(
    output: &ListMultipartUploadsOutput,
    last: Option<&ListedUpload>,
) -> Result<Option<Marker>, S3Error> {
    if !output.is_truncated().unwrap_or(false) {
        return Ok(None);
    }
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
    match (&given.key, &given.upload_id, last) {
        (None, None, Some(last)) => Ok(Some(Marker {
            key: Some(last.key.clone()),
            upload_id: Some(last.upload_id.clone()),
        })),
        (None, None, None) => Err(listing_error(
            "the server said the listing is truncated but gave no marker to continue from".into(),
        )),
        _ => Ok(Some(given)),
    }
}

/// The longest `Date` value kept for a warning; real ones are 29 bytes.
const DATE_MAX_BYTES: usize = 64;

/// Captures the `Date` header of one response.
#[derive(Debug, Clone)]
struct DateHeader(Arc<Mutex<ServerDate>>);

impl Default for DateHeader {
    fn default() -> Self {
        Self(Arc::new(Mutex::new(ServerDate::Missing)))
    }
}

impl DateHeader {
    fn get(&self) -> ServerDate {
        self.0.lock().unwrap_or_else(|e| e.into_inner()).clone()
    }
}

/// Reads an HTTP `Date` header value.
pub fn parse_server_date(value: Option<&[u8]>) -> ServerDate {
    let Some(value) = value else {
        return ServerDate::Missing;
    };
    let text = String::from_utf8_lossy(value);
    DateTime::from_str(text.trim(), Format::HttpDate)
        .ok()
        .and_then(|t| SystemTime::try_from(t).ok())
        .map_or_else(
            || ServerDate::Unparseable(text::safe(&text, DATE_MAX_BYTES)),
            ServerDate::Sent,
        )
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
        let value = context
            .response()
            .headers()
            .get_all_bytes("date")
            .next()
            .map(<[u8]>::to_vec);
        *self.0.lock().unwrap_or_else(|e| e.into_inner()) = parse_server_date(value.as_deref());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn marker(key: &str, id: &str) -> Marker {
        Marker {
            key: Some(key.into()),
            upload_id: Some(id.into()),
        }
    }

    #[test]
    fn a_marker_seen_on_any_earlier_page_is_caught() {
        let mut seen = SeenMarkers::new();
        assert!(seen.first_time(&marker("a", "1")));
        assert!(seen.first_time(&marker("b", "2")));
        assert!(seen.first_time(&marker("a", "2")));
        assert!(!seen.first_time(&marker("a", "1")), "A, B, A is a cycle");
        let id_only = Marker {
            key: None,
            upload_id: Some("1".into()),
        };
        assert!(seen.first_time(&id_only));
        assert!(!seen.first_time(&id_only));
    }

    #[test]
    fn markers_are_shown_escaped_and_cut() {
        let shown = marker("\u{1b}[2J", &"x".repeat(500)).to_string();
        assert!(
            shown.starts_with("key marker \"\\x1b[2J\", upload ID marker \"xxx"),
            "{shown}"
        );
        assert!(shown.len() < 250, "{shown}");
        assert!(!shown.chars().any(char::is_control));
    }

    #[test]
    fn dates_are_parsed_or_reported_with_their_value() {
        let sent = parse_server_date(Some(b"Sun, 06 Nov 1994 08:49:37 GMT"));
        assert_eq!(
            sent,
            ServerDate::Sent(SystemTime::UNIX_EPOCH + std::time::Duration::from_secs(784111777))
        );
        assert_eq!(parse_server_date(None), ServerDate::Missing);
        assert_eq!(
            parse_server_date(Some(b"not a date\x1b")),
            ServerDate::Unparseable("not a date\\x1b".into())
        );
        let ServerDate::Unparseable(long) = parse_server_date(Some(&[b'9'; 10_000])) else {
            panic!("unparseable");
        };
        assert!(long.len() < 100, "{long}");
    }
}
