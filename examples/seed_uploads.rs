//! Starts incomplete multipart uploads in a bucket (creating the bucket when missing), for the demo
//! and for trying mpu-sweeper against a test server:
//!
//! ```sh
//! seed_uploads --endpoint http://127.0.0.1:17480 --bucket demo --count 100 --prefix old/
//! ```
//!
//! Credentials come from AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY. To make uploads look days old,
//! run it under `faketime -f -3d` against a gateway whose clock is moved back by as much (the
//! server rejects a request signed more than 15 minutes away from its own clock).

use std::time::Instant;

use aws_sdk_s3::Client;
use clap::Parser;
use futures::StreamExt;
use mpu_sweeper::sweep::{AddressingStyle, CredentialSource, S3Settings};

#[derive(Debug, Parser)]
struct Args {
    #[arg(long)]
    endpoint: String,
    #[arg(long)]
    bucket: String,
    #[arg(long, default_value_t = 10)]
    count: usize,
    /// Keys are `<prefix><number>`.
    #[arg(long, default_value = "")]
    prefix: String,
    /// Uploads created at once.
    #[arg(long, default_value_t = 32)]
    concurrency: usize,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let settings = S3Settings {
        endpoint: Some(args.endpoint.clone()),
        addressing_style: AddressingStyle::Path,
        credentials: CredentialSource::DefaultChain,
        ..S3Settings::default()
    };
    let client = settings.client().await?;
    create_bucket_if_missing(&client, &args.bucket).await?;
    let started = Instant::now();
    let mut results = futures::stream::iter(0..args.count)
        .map(|i| {
            let client = &client;
            let key = format!("{}{i:06}", args.prefix);
            let bucket = &args.bucket;
            async move {
                client
                    .create_multipart_upload()
                    .bucket(bucket)
                    .key(&key)
                    .send()
                    .await
                    .map_err(|e| anyhow::anyhow!("starting an upload of {key:?}: {e:?}"))
            }
        })
        .buffer_unordered(args.concurrency.max(1));
    let mut created = 0;
    while let Some(result) = results.next().await {
        result?;
        created += 1;
    }
    eprintln!(
        "started {created} uploads in bucket {} in {:.1} s",
        args.bucket,
        started.elapsed().as_secs_f64()
    );
    Ok(())
}

async fn create_bucket_if_missing(client: &Client, bucket: &str) -> anyhow::Result<()> {
    if client.head_bucket().bucket(bucket).send().await.is_ok() {
        return Ok(());
    }
    client
        .create_bucket()
        .bucket(bucket)
        .send()
        .await
        .map_err(|e| anyhow::anyhow!("creating bucket {bucket:?}: {e:?}"))?;
    Ok(())
}
