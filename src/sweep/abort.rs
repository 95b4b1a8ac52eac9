//! Aborting one stale upload by (key, uploadId), with optional size measurement and verification.

use std::sync::Arc;

use aws_sdk_s3::Client;
use aws_sdk_s3::operation::list_parts::ListPartsOutput;

use super::body_cap::{BodyCap, MAX_PARTS_PAGE_BYTES, MAX_SMALL_ANSWER_BYTES};
use super::error::{S3Error, S3ErrorKind};
use super::listing::ListedUpload;
use super::requests::{Lane, Requests};

/// How many times an upload is aborted when parts keep appearing after an abort (a part upload
/// that was in flight during the abort can land afterwards).
pub const MAX_ABORT_ATTEMPTS: u32 = 3;

/// ListParts pages read to measure one upload: 10,000 parts (S3's limit) at 1,000 a page, with
/// room to spare; a server whose part markers never end is not followed further.
const MAX_PART_PAGES: usize = 100;

/// What happened to one stale upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Aborted (and, when verifying, confirmed to hold no parts). `bytes` when measured.
    Aborted {
        bytes: Option<u64>,
    },
    /// Somebody else completed or aborted it between the listing and the abort.
    AlreadyGone,
    /// Dry run: it would have been aborted. `bytes` when measured.
    WouldAbort {
        bytes: Option<u64>,
    },
    Failed(S3Error),
}

#[derive(Debug, Clone, Copy)]
pub struct AbortOptions {
    pub dry_run: bool,
    pub verify: bool,
    pub measure_bytes: bool,
}

/// One stale upload and what is needed to abort it; owned, so that its future is 'static for
/// callers that spawn the sweep.
pub struct AbortTarget {
    pub client: Client,
    pub requests: Arc<Requests>,
    pub bucket: Arc<str>,
    pub upload: ListedUpload,
}

impl AbortTarget {
    /// Handles the upload as `options` say; gives the upload back with what happened to it.
    pub async fn handle(self, options: AbortOptions) -> (ListedUpload, UploadOutcome) {
        let outcome = if options.dry_run {
            self.measure_only(options).await
        } else {
            self.abort(options).await
        };
        (self.upload, outcome)
    }

    /// A dry run measures what it would free, when asked to, and touches nothing.
    async fn measure_only(&self, options: AbortOptions) -> UploadOutcome {
        if !options.measure_bytes {
            return UploadOutcome::WouldAbort { bytes: None };
        }
        match self.parts_size().await {
            Ok(bytes) => UploadOutcome::WouldAbort { bytes: Some(bytes) },
            Err(e) if e.kind == S3ErrorKind::UploadGone => UploadOutcome::AlreadyGone,
            Err(_) => UploadOutcome::WouldAbort { bytes: None },
        }
    }

    async fn abort(&self, options: AbortOptions) -> UploadOutcome {
        let bytes = if options.measure_bytes {
            match self.parts_size().await {
                Ok(bytes) => Some(bytes),
                Err(e) if e.kind == S3ErrorKind::UploadGone => return UploadOutcome::AlreadyGone,
                // A failed measurement must not keep a stale upload alive; it only leaves the
                // size unknown.
                Err(e) => {
                    tracing::debug!(upload = %self.upload, error = %e, "could not measure upload size");
                    None
                }
            }
        } else {
            None
        };

        for attempt in 1..=MAX_ABORT_ATTEMPTS {
            let sent = self
                .requests
                .send(Lane::Uploads, || self.send_abort())
                .await;
            // Gone on the first try: someone beat us. Gone after a retry or on a later try: our
            // earlier abort took (its answer was lost, or parts came back and were aborted again).
            let ours = attempt > 1 || sent.maybe_applied_before;
            let gone = if ours {
                UploadOutcome::Aborted { bytes }
            } else {
                UploadOutcome::AlreadyGone
            };
            match sent.result {
                Ok(()) => {}
                Err(e) if e.kind == S3ErrorKind::UploadGone => return gone,
                Err(e) if e.is_uncoded_not_found() => return self.confirm_gone(e, gone).await,
                Err(e) => return UploadOutcome::Failed(e),
            }
            if !options.verify {
                return UploadOutcome::Aborted { bytes };
            }
            match self.remaining_parts().await {
                Ok(0) => return UploadOutcome::Aborted { bytes },
                Err(e) if e.kind == S3ErrorKind::UploadGone => {
                    return UploadOutcome::Aborted { bytes };
                }
                Ok(parts) => {
                    tracing::debug!(upload = %self.upload, parts, attempt, "parts remain after abort; aborting again");
                }
                Err(e) => {
                    return UploadOutcome::Failed(S3Error {
                        message: format!(
                            "aborted, but could not verify that the parts are gone: {}",
                            e.message
                        ),
                        ..e
                    });
                }
            }
        }
        UploadOutcome::Failed(S3Error::new(
            S3ErrorKind::Other,
            Some("PartsRemain".to_owned()),
            format!("parts still present after {MAX_ABORT_ATTEMPTS} aborts"),
        ))
    }

    async fn send_abort(&self) -> Result<(), S3Error> {
        self.client
            .abort_multipart_upload()
            .bucket(&*self.bucket)
            .key(&self.upload.key)
            .upload_id(&self.upload.upload_id)
            .customize()
            .interceptor(BodyCap {
                limit: MAX_SMALL_ANSWER_BYTES,
            })
            .send()
            .await
            .map(|_| ())
            .map_err(|e| S3Error::from_sdk(&e))
    }

    /// An abort answered 404 without an S3 error code (a proxy's page, not the server's word):
    /// the upload counts as gone only if ListParts says so in S3's own terms.
    async fn confirm_gone(&self, uncoded: S3Error, gone: UploadOutcome) -> UploadOutcome {
        match self.remaining_parts().await {
            Err(e) if e.kind == S3ErrorKind::UploadGone => gone,
            Ok(_) => UploadOutcome::Failed(S3Error {
                message: format!("{}; the upload still exists", uncoded.message),
                ..uncoded
            }),
            Err(_) => UploadOutcome::Failed(uncoded),
        }
    }

    /// Number of parts the upload still lists (first page is enough: any part means "not gone").
    async fn remaining_parts(&self) -> Result<usize, S3Error> {
        let first = self
            .list_parts(Some(1), None, MAX_SMALL_ANSWER_BYTES)
            .await?;
        Ok(first.parts().len())
    }

    /// Sum of the part sizes, following ListParts pages; it saturates rather than overflows.
    async fn parts_size(&self) -> Result<u64, S3Error> {
        let mut total: u64 = 0;
        let mut marker: Option<String> = None;
        for _ in 0..MAX_PART_PAGES {
            let page = self
                .list_parts(None, marker.clone(), MAX_PARTS_PAGE_BYTES)
                .await?;
            let sizes = page
                .parts()
                .iter()
                .map(|part| u64::try_from(part.size().unwrap_or(0)).unwrap_or(0))
                .fold(0, u64::saturating_add);
            total = total.saturating_add(sizes);
            let next = page
                .next_part_number_marker()
                .filter(|m| !m.is_empty())
                .map(str::to_owned);
            if !page.is_truncated().unwrap_or(false) || next.is_none() || next == marker {
                return Ok(total);
            }
            marker = next;
        }
        Ok(total)
    }

    async fn list_parts(
        &self,
        max_parts: Option<i32>,
        marker: Option<String>,
        answer_limit: u64,
    ) -> Result<ListPartsOutput, S3Error> {
        let request = || async {
            self.client
                .list_parts()
                .bucket(&*self.bucket)
                .key(&self.upload.key)
                .upload_id(&self.upload.upload_id)
                .set_max_parts(max_parts)
                .set_part_number_marker(marker.clone())
                .customize()
                .interceptor(BodyCap {
                    limit: answer_limit,
                })
                .send()
                .await
                .map_err(|e| S3Error::from_sdk(&e))
        };
        self.requests.send(Lane::Uploads, request).await.result
    }
}
