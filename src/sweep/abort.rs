//! Aborting one stale upload by (key, uploadId), with optional size measurement and verification.

use aws_sdk_s3::Client;

use super::error::{S3Error, S3ErrorKind};
use super::listing::ListedUpload;

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

pub async fn abort_upload(
    client: &Client,
    bucket: &str,
    upload: &ListedUpload,
    options: AbortOptions,
) -> UploadOutcome {
    let bytes = if options.measure_bytes {
        match parts_size(client, bucket, upload).await {
            Ok(bytes) => Some(bytes),
            Err(e) if e.kind == S3ErrorKind::UploadGone => return UploadOutcome::AlreadyGone,
            // A failed measurement must not keep a stale upload alive; it only leaves the size unknown.
            Err(e) => {
                tracing::debug!(key = %upload.key, upload_id = %upload.upload_id, error = %e, "could not measure upload size");
                None
            }
        }
    } else {
        None
    };

    for attempt in 1..=MAX_ABORT_ATTEMPTS {
        let aborted = client
            .abort_multipart_upload()
            .bucket(bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .send()
            .await;
        match aborted.map_err(|e| S3Error::from_sdk(&e)) {
            Ok(_) => {}
            // Gone on the first try: someone beat us. Gone on a later try: our earlier abort took.
            Err(e) if e.kind == S3ErrorKind::UploadGone => {
                return if attempt == 1 {
                    UploadOutcome::AlreadyGone
                } else {
                    UploadOutcome::Aborted { bytes }
                };
            }
            Err(e) => return UploadOutcome::Failed(e),
        }
        if !options.verify {
            return UploadOutcome::Aborted { bytes };
        }
        match remaining_parts(client, bucket, upload).await {
            Ok(0) => return UploadOutcome::Aborted { bytes },
            Err(e) if e.kind == S3ErrorKind::UploadGone => return UploadOutcome::Aborted { bytes },
            Ok(parts) => {
                tracing::debug!(key = %upload.key, upload_id = %upload.upload_id, parts, attempt, "parts remain after abort; aborting again");
            }
            Err(e) => {
                return UploadOutcome::Failed(S3Error::new(
                    e.kind,
                    e.code,
                    format!(
                        "aborted, but could not verify that the parts are gone: {}",
                        e.message
                    ),
                ));
            }
        }
    }
    UploadOutcome::Failed(S3Error::new(
        S3ErrorKind::Other,
        Some("PartsRemain".to_owned()),
        format!("parts still present after {MAX_ABORT_ATTEMPTS} aborts"),
    ))
}

/// Number of parts the upload still lists (first page is enough: any part means "not gone").
async fn remaining_parts(
    client: &Client,
    bucket: &str,
    upload: &ListedUpload,
) -> Result<usize, S3Error> {
    let output = client
        .list_parts()
        .bucket(bucket)
        .key(&upload.key)
        .upload_id(&upload.upload_id)
        .max_parts(1)
        .send()
        .await
        .map_err(|e| S3Error::from_sdk(&e))?;
    Ok(output.parts().len())
}

/// Sum of the part sizes, following ListParts pages.
async fn parts_size(client: &Client, bucket: &str, upload: &ListedUpload) -> Result<u64, S3Error> {
    let mut total: u64 = 0;
    let mut marker: Option<String> = None;
    loop {
        let output = client
            .list_parts()
            .bucket(bucket)
            .key(&upload.key)
            .upload_id(&upload.upload_id)
            .set_part_number_marker(marker.clone())
            .send()
            .await
            .map_err(|e| S3Error::from_sdk(&e))?;
        total += output
            .parts()
            .iter()
            .map(|part| part.size().unwrap_or(0).max(0) as u64)
            .sum::<u64>();
        let next = output
            .next_part_number_marker()
            .filter(|m| !m.is_empty())
            .map(str::to_owned);
        if !output.is_truncated().unwrap_or(false) || next.is_none() || next == marker {
            return Ok(total);
        }
        marker = next;
    }
}
