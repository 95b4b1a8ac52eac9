//! Aborting one stale upload by (key, uploadId), with optional size measurement and verification.

use aws_sdk_s3::Client;

use super::error::{S3Error, S3ErrorKind};
use super::listing::ListedUpload;
use super::requests::Requests;
use crate::text;

/// How many times an upload is aborted when parts keep appearing after an abort (a part upload
/// that was in flight during the abort can land afterwards).
pub const MAX_ABORT_ATTEMPTS: u32 = 3;

/// What happened to one stale upload.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum UploadOutcome {
    /// Aborted (and, when verifying, confirmed to hold no parts). `bytes` when measured.
    Aborted {
        bytes: Option<u64>,
    },
    /// Somebody else completed or aborted it between the listing and the abort.
    AlreadyGone,
    /// Dry run: it would have been aborted.
    WouldAbort,
    Failed(S3Error),
}

#[derive(Debug, Clone, Copy)]
pub struct AbortOptions {
    pub verify: bool,
    pub measure_bytes: bool,
}

/// One stale upload and what is needed to abort it.
pub struct AbortTarget<'a> {
    pub client: &'a Client,
    pub requests: &'a Requests,
    pub bucket: &'a str,
    pub upload: &'a ListedUpload,
}

pub async fn abort_upload(target: &AbortTarget<'_>, options: AbortOptions) -> UploadOutcome {
    let bytes = if options.measure_bytes {
        match parts_size(target).await {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind == S3ErrorKind::UploadGone => return UploadOutcome::AlreadyGone,
            // A failed measurement must not keep a stale upload alive; it only leaves the size unknown.
            Err(e) => {
                tracing::debug!(key = %text::name(&target.upload.key), upload_id = %text::name(&target.upload.upload_id), error = %e, "could not measure upload size");
                None
            }
        }
    } else {
        None
    };

    for attempt in 1..=MAX_ABORT_ATTEMPTS {
        let sent = target.requests.send(|| send_abort(target)).await;
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
            Err(e) if e.is_uncoded_not_found() => return confirm_gone(target, e, gone).await,
            Err(e) => return UploadOutcome::Failed(e),
        }
        if !options.verify {
            return UploadOutcome::Aborted { bytes };
        }
        match remaining_parts(target).await {
            Ok(0) => return UploadOutcome::Aborted { bytes },
            Err(e) if e.kind == S3ErrorKind::UploadGone => return UploadOutcome::Aborted { bytes },
            Ok(parts) => {
                tracing::debug!(key = %text::name(&target.upload.key), upload_id = %text::name(&target.upload.upload_id), parts, attempt, "parts remain after abort; aborting again");
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

async fn send_abort(target: &AbortTarget<'_>) -> Result<(), S3Error> {
    target
        .client
        .abort_multipart_upload()
        .bucket(target.bucket)
        .key(&target.upload.key)
        .upload_id(&target.upload.upload_id)
        .send()
        .await
        .map(|_| ())
        .map_err(|e| S3Error::from_sdk(&e))
}

/// An abort answered 404 without an S3 error code (a proxy's page, not the server's word): the
/// upload counts as gone only if ListParts says so in S3's own terms.
async fn confirm_gone(
    target: &AbortTarget<'_>,
    uncoded: S3Error,
    gone: UploadOutcome,
) -> UploadOutcome {
    match remaining_parts(target).await {
        Err(e) if e.kind == S3ErrorKind::UploadGone => gone,
        Ok(_) => UploadOutcome::Failed(S3Error {
            message: format!("{}; the upload still exists", uncoded.message),
            ..uncoded
        }),
        Err(_) => UploadOutcome::Failed(uncoded),
    }
}

/// Number of parts the upload still lists (first page is enough: any part means "not gone").
async fn remaining_parts(target: &AbortTarget<'_>) -> Result<usize, S3Error> {
    let output = target
        .requests
        .send(|| async {
            target
                .client
                .list_parts()
                .bucket(target.bucket)
                .key(&target.upload.key)
                .upload_id(&target.upload.upload_id)
                .max_parts(1)
                .send()
                .await
                .map_err(|e| S3Error::from_sdk(&e))
        })
        .await
        .result?;
    Ok(output.parts().len())
}

/// ListParts pages read to measure one upload: 10,000 parts (S3's limit) at 1,000 a page, with
/// room to spare; a server whose part markers never end is not followed further.
const MAX_PART_PAGES: usize = 100;

/// Sum of the part sizes, following ListParts pages; it saturates rather than overflows.
async fn parts_size(target: &AbortTarget<'_>) -> Result<u64, S3Error> {
    let mut total: u64 = 0;
    let mut marker: Option<String> = None;
    for _ in 0..MAX_PART_PAGES {
        let output = target
            .requests
            .send(|| async {
                target
                    .client
                    .list_parts()
                    .bucket(target.bucket)
                    .key(&target.upload.key)
                    .upload_id(&target.upload.upload_id)
                    .set_part_number_marker(marker.clone())
                    .send()
                    .await
                    .map_err(|e| S3Error::from_sdk(&e))
            })
            .await
            .result?;
        let page: u64 = output
            .parts()
            .iter()
            .map(|part| u64::try_from(part.size().unwrap_or(0)).unwrap_or(0))
            .fold(0, u64::saturating_add);
        total = total.saturating_add(page);
        let next = output
            .next_part_number_marker()
            .filter(|m| !m.is_empty())
            .map(str::to_owned);
        if !output.is_truncated().unwrap_or(false) || next.is_none() || next == marker {
            return Ok(total);
        }
        marker = next;
    }
    Ok(total)
}
