//! The sweep engine and the `sweep` command against real S3 servers (Ceph RGW and SeaweedFS).
//! Each scenario runs once per server.

mod common;

use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use common::*;
use mpu_sweeper::max_age::MaxAge;
use mpu_sweeper::sweep::{
    self, ListedUpload, NoProgress, SweepObserver, SweepOptions, SweepStop, SweepSummary,
};
use tokio_util::sync::CancellationToken;

common::on_every_server!(
    pages_past_a_thousand_uploads,
    tiny_pages_walk_every_upload_of_a_key,
    fresh_upload_on_a_stale_key_survives,
    awkward_keys_are_aborted_exactly,
    prefix_limits_the_sweep,
    dry_run_aborts_nothing,
    aborted_uploads_hold_no_parts_and_bytes_are_measured,
    wrong_secret_exits_3_and_aborts_nothing,
    missing_bucket_exits_3,
    uploads_finished_by_someone_else_count_as_already_gone,
    ages_use_the_server_clock_not_a_skewed_local_clock,
);

fn options(bucket: &str, max_age: &str) -> SweepOptions {
    SweepOptions::new(bucket, max_age.parse::<MaxAge>().unwrap())
}

async fn run_sweep(
    server: &Server,
    options: &SweepOptions,
    observer: &dyn SweepObserver,
) -> SweepSummary {
    let client = server.client().await;
    let outcome = sweep::sweep(&client, options, observer, &CancellationToken::new()).await;
    assert_eq!(
        outcome.stop, None,
        "sweep stopped early: {:?}",
        outcome.summary
    );
    outcome.summary
}

fn assert_counts(summary: &SweepSummary, found: u64, stale: u64, aborted: u64) {
    assert_eq!(
        (
            summary.found,
            summary.stale,
            summary.aborted,
            summary.already_gone,
            summary.failed,
            summary.skipped
        ),
        (found, stale, aborted, 0, 0, 0),
        "(found, stale, aborted, alreadyGone, failed, skipped); failures: {:?}",
        summary.failures
    );
}

/// Counts pages as the engine lists them.
#[derive(Default)]
struct PageCounter(AtomicUsize);
impl SweepObserver for PageCounter {
    fn page_listed(&self, _page: &[ListedUpload], _summary: &SweepSummary) {
        self.0.fetch_add(1, Ordering::Relaxed);
    }
}

async fn pages_past_a_thousand_uploads(server: Server) {
    let client = server.client().await;
    let bucket = create_bucket(&client, "paging").await;
    create_uploads(&client, &bucket, &keys("big/", 1_150)).await;
    tokio::time::sleep(AGE_WAIT).await;

    let pages = PageCounter::default();
    let summary = run_sweep(&server, &options(&bucket, MAX_AGE), &pages).await;
    assert_counts(&summary, 1_150, 1_150, 1_150);
    assert_eq!(
        pages.0.load(Ordering::Relaxed),
        2,
        "1,150 uploads at 1,000 a page"
    );
    assert_eq!(remaining_uploads(&client, &bucket).await, vec![]);
}

async fn tiny_pages_walk_every_upload_of_a_key(server: Server) {
    let client = server.client().await;
    let bucket = create_bucket(&client, "tiny").await;
    // Five uploads on each of four keys: page boundaries fall inside a key, so paging must
    // follow the upload-id marker as well as the key marker.
    let keys: Vec<String> = (0..4)
        .flat_map(|k| std::iter::repeat_n(format!("key-{k}"), 5))
        .collect();
    let created = create_uploads(&client, &bucket, &keys).await;
    tokio::time::sleep(AGE_WAIT).await;

    for page_size in [1, 2, 3, 7] {
        let pages = PageCounter::default();
        let mut dry = options(&bucket, MAX_AGE);
        dry.page_size = page_size;
        dry.dry_run = true;
        let summary = run_sweep(&server, &dry, &pages).await;
        assert_counts(&summary, 20, 20, 0);
        let listed_pages = pages.0.load(Ordering::Relaxed);
        assert!(
            listed_pages >= 20usize.div_ceil(page_size as usize),
            "page size {page_size}: {listed_pages} pages"
        );
    }

    let mut real = options(&bucket, MAX_AGE);
    real.page_size = 3;
    real.concurrency = 2;
    let summary = run_sweep(&server, &real, &NoProgress).await;
    assert_counts(&summary, 20, 20, 20);
    assert_eq!(remaining_uploads(&client, &bucket).await, vec![]);
    assert_eq!(created.len(), 20);
}

async fn fresh_upload_on_a_stale_key_survives(server: Server) {
    let client = server.client().await;
    let bucket = create_bucket(&client, "samekey").await;
    let shared = "shared/key.bin".to_owned();
    create_uploads(
        &client,
        &bucket,
        &[shared.clone(), shared.clone(), shared.clone()],
    )
    .await;
    tokio::time::sleep(AGE_WAIT).await;
    let fresh = create_uploads(&client, &bucket, std::slice::from_ref(&shared)).await;

    let run = run_cli(&server, &sweep_args(&server, &bucket, MAX_AGE), &[]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(
        (
            json["found"].as_u64(),
            json["stale"].as_u64(),
            json["aborted"].as_u64()
        ),
        (Some(4), Some(3), Some(3))
    );
    assert_eq!(
        remaining_uploads(&client, &bucket).await,
        fresh,
        "only the fresh upload on the key is left"
    );
}

async fn awkward_keys_are_aborted_exactly(server: Server) {
    let client = server.client().await;
    let bucket = create_bucket(&client, "keys").await;
    let mut awkward: Vec<String> = [
        "with space/file name.bin",
        "unicode/ünïcødé-日本語-🚀.bin",
        "plus/a+b+c.bin",
        "percent/100%25%.bin",
        "question/what?.bin",
        "hash/#1#.bin",
        "mixed/ + % ? # &=;,.bin",
    ]
    .map(str::to_owned)
    .to_vec();
    awkward.push(format!("long/{}", "k".repeat(895)));
    assert_eq!(awkward.last().unwrap().len(), 900);
    create_uploads(&client, &bucket, &awkward).await;
    tokio::time::sleep(AGE_WAIT).await;
    // A fresh twin on every key must survive.
    let fresh = create_uploads(&client, &bucket, &awkward).await;

    let run = run_cli(&server, &sweep_args(&server, &bucket, MAX_AGE), &[]);
    assert_eq!(
        run.status, 0,
        "stdout: {} stderr: {}",
        run.stdout, run.stderr
    );
    let json = run.json();
    assert_eq!(
        json["aborted"].as_u64(),
        Some(awkward.len() as u64),
        "{json}"
    );
    assert_eq!(json["failed"].as_u64(), Some(0), "{json}");
    let mut expected = fresh.clone();
    expected.sort();
    assert_eq!(remaining_uploads(&client, &bucket).await, expected);
}

async fn prefix_limits_the_sweep(server: Server) {
    let client = server.client().await;
    let bucket = create_bucket(&client, "prefix").await;
    create_uploads(&client, &bucket, &keys("logs/", 6)).await;
    let mut outside = create_uploads(&client, &bucket, &keys("data/", 4)).await;
    outside.extend(create_uploads(&client, &bucket, &keys("logsx", 2)).await);
    tokio::time::sleep(AGE_WAIT).await;

    let mut args = sweep_args(&server, &bucket, MAX_AGE);
    args.extend(["--prefix", "logs/"]);
    let run = run_cli(&server, &args, &[]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(
        (json["found"].as_u64(), json["aborted"].as_u64()),
        (Some(6), Some(6)),
        "{json}"
    );
    assert_eq!(json["prefix"].as_str(), Some("logs/"));
    outside.sort();
    assert_eq!(remaining_uploads(&client, &bucket).await, outside);
}

async fn dry_run_aborts_nothing(server: Server) {
    let client = server.client().await;
    let bucket = create_bucket(&client, "dryrun").await;
    let mut stale = create_uploads(&client, &bucket, &keys("old/", 5)).await;
    tokio::time::sleep(AGE_WAIT).await;
    stale.extend(create_uploads(&client, &bucket, &keys("new/", 2)).await);

    let mut args = sweep_args(&server, &bucket, MAX_AGE);
    args.push("--dry-run");
    let run = run_cli(&server, &args, &[]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(json["dryRun"], serde_json::Value::Bool(true));
    assert_eq!(
        (
            json["found"].as_u64(),
            json["stale"].as_u64(),
            json["aborted"].as_u64()
        ),
        (Some(7), Some(5), Some(0))
    );
    stale.sort();
    assert_eq!(
        remaining_uploads(&client, &bucket).await,
        stale,
        "dry run left every upload"
    );

    // The text form says the same in words.
    let text_args: Vec<&str> = args
        .iter()
        .copied()
        .filter(|a| *a != "--output" && *a != "json")
        .collect();
    let run = run_cli(&server, &text_args, &[]);
    assert!(
        run.stdout.contains("dry run: would abort 5 uploads"),
        "{}",
        run.stdout
    );
}

async fn aborted_uploads_hold_no_parts_and_bytes_are_measured(server: Server) {
    let client = server.client().await;
    let bucket = create_bucket(&client, "parts").await;
    let uploads = create_uploads(&client, &bucket, &keys("parts/", 3)).await;
    let mut expected_bytes = 0;
    for (i, (key, id)) in uploads.iter().enumerate() {
        for part in 1..=2 {
            let size = 1_000 * (i + 1) + part as usize;
            upload_part(&client, &bucket, key, id, part, size).await;
            expected_bytes += size as u64;
        }
    }
    tokio::time::sleep(AGE_WAIT).await;

    let mut args = sweep_args(&server, &bucket, MAX_AGE);
    args.push("--measure-bytes");
    let run = run_cli(&server, &args, &[]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(json["aborted"].as_u64(), Some(3), "{json}");
    assert_eq!(json["bytesFreed"].as_u64(), Some(expected_bytes), "{json}");
    for (key, id) in &uploads {
        assert!(
            !upload_exists(&client, &bucket, key, id).await,
            "ListParts still finds {key}"
        );
    }

    // Without --measure-bytes the field is null, not zero.
    let empty = create_bucket(&client, "parts-null").await;
    let run = run_cli(&server, &sweep_args(&server, &empty, MAX_AGE), &[]);
    assert_eq!(run.json()["bytesFreed"], serde_json::Value::Null);
}

async fn wrong_secret_exits_3_and_aborts_nothing(server: Server) {
    let client = server.client().await;
    let bucket = create_bucket(&client, "badkey").await;
    let mut uploads = create_uploads(&client, &bucket, &keys("x/", 3)).await;
    tokio::time::sleep(AGE_WAIT).await;

    let wrong_secret = "this-is-not-the-secret-key-0000000000000";
    let run = run_cli(
        &server,
        &sweep_args(&server, &bucket, MAX_AGE),
        &[
            ("AWS_SECRET_ACCESS_KEY", wrong_secret),
            ("RUST_LOG", "trace"),
        ],
    );
    assert_eq!(
        run.status,
        3,
        "stdout: {} stderr tail: {}",
        run.stdout,
        tail(&run.stderr)
    );
    let error_line = run
        .stderr
        .lines()
        .rfind(|l| l.starts_with("error:"))
        .expect("an error line");
    assert!(
        error_line.contains("rejected the credentials"),
        "{error_line}"
    );
    assert!(error_line.contains(&bucket), "{error_line}");
    // Not even trace logging prints a secret.
    for secret in [wrong_secret, server.secret_key.as_str()] {
        assert!(
            !run.stderr.contains(secret) && !run.stdout.contains(secret),
            "a secret was printed"
        );
    }
    uploads.sort();
    assert_eq!(
        remaining_uploads(&client, &bucket).await,
        uploads,
        "nothing aborted"
    );
}

async fn missing_bucket_exits_3(server: Server) {
    let missing = bucket_name("missing");
    let run = run_cli(&server, &sweep_args(&server, &missing, MAX_AGE), &[]);
    assert_eq!(
        run.status, 3,
        "stdout: {} stderr: {}",
        run.stdout, run.stderr
    );
    assert!(
        run.stderr.contains("the bucket does not exist"),
        "{}",
        run.stderr
    );
    assert_eq!(
        run.json()["found"].as_u64(),
        Some(0),
        "the JSON summary is still printed"
    );
}

/// Completes or aborts uploads with another client while the engine is between listing a page
/// and aborting its uploads.
struct Interloper {
    server: Server,
    bucket: String,
    done: Mutex<bool>,
}

impl SweepObserver for Interloper {
    fn page_listed(&self, page: &[ListedUpload], _summary: &SweepSummary) {
        let mut done = self.done.lock().unwrap();
        if *done {
            return;
        }
        *done = true;
        let page = page.to_vec();
        std::thread::scope(|scope| {
            scope.spawn(|| {
                let runtime = tokio::runtime::Builder::new_current_thread()
                    .enable_all()
                    .build()
                    .unwrap();
                runtime.block_on(async {
                    let client = self.server.client().await;
                    for (i, upload) in page.iter().enumerate() {
                        match i % 3 {
                            0 => {
                                complete_with_one_part(
                                    &client,
                                    &self.bucket,
                                    &upload.key,
                                    &upload.upload_id,
                                )
                                .await
                            }
                            1 => {
                                client
                                    .abort_multipart_upload()
                                    .bucket(&self.bucket)
                                    .key(&upload.key)
                                    .upload_id(&upload.upload_id)
                                    .send()
                                    .await
                                    .expect("abort by the interloper");
                            }
                            _ => {}
                        }
                    }
                });
            });
        });
    }
}

async fn uploads_finished_by_someone_else_count_as_already_gone(server: Server) {
    let client = server.client().await;
    let bucket = create_bucket(&client, "gone").await;
    create_uploads(&client, &bucket, &keys("race/", 9)).await;
    tokio::time::sleep(AGE_WAIT).await;

    let interloper = Interloper {
        server: server.clone(),
        bucket: bucket.clone(),
        done: Mutex::new(false),
    };
    let mut opts = options(&bucket, MAX_AGE);
    opts.measure_bytes = true;
    let summary = run_sweep(&server, &opts, &interloper).await;
    assert_eq!(
        (
            summary.found,
            summary.stale,
            summary.aborted,
            summary.already_gone,
            summary.failed
        ),
        (9, 9, 3, 6, 0),
        "failures: {:?}",
        summary.failures
    );
    assert_eq!(remaining_uploads(&client, &bucket).await, vec![]);
}

async fn ages_use_the_server_clock_not_a_skewed_local_clock(server: Server) {
    let client = server.client().await;
    let bucket = create_bucket(&client, "skew").await;
    let mut fresh = create_uploads(&client, &bucket, &keys("young/", 4)).await;

    // This node's clock runs three days fast. By it the uploads are three days old; by the
    // server's Date header they are seconds old, and that is the clock that counts.
    let skewed = server
        .client_with_clock(true, Duration::from_secs(3 * 86_400))
        .await;
    let outcome = sweep::sweep(
        &skewed,
        &options(&bucket, "2d"),
        &NoProgress,
        &CancellationToken::new(),
    )
    .await;
    assert_eq!(outcome.stop, None, "{:?}", outcome.stop);
    assert_counts(&outcome.summary, 4, 0, 0);
    fresh.sort();
    assert_eq!(remaining_uploads(&client, &bucket).await, fresh);
}

fn tail(text: &str) -> String {
    let lines: Vec<&str> = text.lines().collect();
    lines[lines.len().saturating_sub(15)..].join("\n")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn ceph_three_day_old_uploads_against_two_and_four_day_limits() {
    static CLOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    let Some((aged, clock_file)) = aged_ceph() else {
        return;
    };
    let _clock = CLOCK.lock().await;

    // Create the uploads with the gateway's clock (and the creating client's) three days back.
    let client = aged.client().await;
    let bucket = create_bucket(&client, "days").await;
    std::fs::write(&clock_file, "-3d\n").unwrap();
    let past = aged
        .client_with_clock(false, Duration::from_secs(3 * 86_400))
        .await;
    let old_keys = keys("old/", 5);
    let created = std::panic::AssertUnwindSafe(create_uploads(&past, &bucket, &old_keys));
    let created = futures::FutureExt::catch_unwind(created).await;
    std::fs::write(&clock_file, "+0\n").unwrap();
    let mut old = created.expect("uploads created in the past");
    let fresh = create_uploads(&client, &bucket, &keys("new/", 2)).await;

    let run = run_cli(&aged, &sweep_args(&aged, &bucket, "4d"), &[]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(
        (
            json["found"].as_u64(),
            json["stale"].as_u64(),
            json["aborted"].as_u64()
        ),
        (Some(7), Some(0), Some(0))
    );

    let run = run_cli(&aged, &sweep_args(&aged, &bucket, "2d"), &[]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(
        (
            json["found"].as_u64(),
            json["stale"].as_u64(),
            json["aborted"].as_u64()
        ),
        (Some(7), Some(5), Some(5))
    );
    let mut fresh = fresh;
    fresh.sort();
    assert_eq!(remaining_uploads(&client, &bucket).await, fresh);
    old.sort();
    assert_ne!(old, fresh);
}

#[test]
fn endpoint_down_exits_3_with_the_cause() {
    let Some(servers) = bed() else { return };
    // A port nobody listens on: bind, note it, close.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let endpoint = format!("http://127.0.0.1:{port}");
    let dead = Server {
        endpoint: endpoint.clone(),
        ..servers[0].clone()
    };
    let run = run_cli(&dead, &sweep_args(&dead, "some-bucket", "1d"), &[]);
    assert_eq!(run.status, 3, "stderr: {}", run.stderr);
    let error_line = run
        .stderr
        .lines()
        .rfind(|l| l.starts_with("error:"))
        .expect("an error line");
    assert!(
        error_line.contains("cannot reach the endpoint"),
        "{error_line}"
    );
    assert!(error_line.contains(&endpoint), "{error_line}");
}

#[test]
fn silent_endpoint_times_out_with_exit_3() {
    let Some(servers) = bed() else { return };
    // Accepts connections and never answers: only the request timeout ends this.
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let endpoint = format!("http://{}", listener.local_addr().unwrap());
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let silent = Server {
        endpoint,
        ..servers[0].clone()
    };
    let mut args = sweep_args(&silent, "some-bucket", "1d");
    args.extend(["--request-timeout", "1", "--max-attempts", "2"]);
    let run = run_cli(&silent, &args, &[]);
    assert_eq!(run.status, 3, "stderr: {}", run.stderr);
    assert!(run.stderr.contains("timed out"), "{}", run.stderr);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn private_ca_bundle_is_trusted_only_when_given() {
    let Some(servers) = bed() else { return };
    let https_endpoint =
        std::env::var("MPU_TEST_SEAWEEDFS_HTTPS_ENDPOINT").expect("https endpoint");
    let ca_bundle = std::env::var("MPU_TEST_SEAWEEDFS_CA_BUNDLE").expect("CA bundle");
    let plain = servers
        .into_iter()
        .find(|s| s.kind == ServerKind::SeaweedFs)
        .unwrap();
    let client = plain.client().await;
    let bucket = create_bucket(&client, "tls").await;
    create_uploads(&client, &bucket, &keys("tls/", 2)).await;
    tokio::time::sleep(AGE_WAIT).await;
    let tls = Server {
        endpoint: https_endpoint,
        ..plain
    };

    let run = run_cli(&tls, &sweep_args(&tls, &bucket, MAX_AGE), &[]);
    assert_eq!(
        run.status, 3,
        "an unknown CA must be refused; stderr: {}",
        run.stderr
    );
    assert!(
        run.stderr.to_lowercase().contains("certificate"),
        "{}",
        run.stderr
    );

    let mut args = sweep_args(&tls, &bucket, MAX_AGE);
    args.extend(["--ca-bundle", &ca_bundle]);
    let run = run_cli(&tls, &args, &[]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    assert_eq!(run.json()["aborted"].as_u64(), Some(2));

    let not_pem = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(not_pem.path(), "not a certificate").unwrap();
    let mut args = sweep_args(&tls, &bucket, MAX_AGE);
    let path = not_pem.path().to_str().unwrap().to_owned();
    args.extend(["--ca-bundle", &path]);
    let run = run_cli(&tls, &args, &[]);
    assert_eq!(
        run.status, 2,
        "a bad CA file is a usage error; stderr: {}",
        run.stderr
    );
    assert!(run.stderr.contains("invalid CA bundle"), "{}", run.stderr);
}

#[test]
fn cancelled_sweep_reports_partial_counts() {
    // Cancellation before the first page: nothing listed, stop reason says so.
    let Some(servers) = bed() else { return };
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let client = servers[0].client().await;
        let bucket = create_bucket(&client, "cancel").await;
        let cancel = CancellationToken::new();
        cancel.cancel();
        let outcome = sweep::sweep(&client, &options(&bucket, "1d"), &NoProgress, &cancel).await;
        assert_eq!(outcome.stop, Some(SweepStop::Cancelled));
        assert_eq!(outcome.summary.found, 0);
    });
}
