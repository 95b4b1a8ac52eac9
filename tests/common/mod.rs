//! The S3 test bed as the tests see it: real servers started by `hack/testenv.sh up`, described by
//! the environment it writes. Without that environment a test skips itself, unless
//! `MPU_TEST_REQUIRE_BED=1` (set by `.ci/run` and the README's test command) makes it fail.
#![allow(dead_code)]

use std::io::{Read, Write};
use std::path::Path;
use std::process::{Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, SystemTime};

use aws_sdk_s3::Client;
use aws_sdk_s3::primitives::ByteStream;
use aws_sdk_s3::types::{CompletedMultipartUpload, CompletedPart};
use aws_smithy_async::time::{SharedTimeSource, TimeSource};
use futures::StreamExt;
use mpu_sweeper::sweep::{AddressingStyle, CredentialSource, S3Settings};

pub mod cluster;
pub mod fault_proxy;
pub mod node;
pub mod prometheus;

/// Uploads created before waiting `AGE_WAIT` are older than `MAX_AGE`; uploads created just
/// before a sweep are younger (the margin covers servers that store whole seconds).
pub const MAX_AGE: &str = "3s";
pub const AGE_WAIT: Duration = Duration::from_millis(4_500);

pub const SERVERS: [ServerKind; 2] = [ServerKind::Ceph, ServerKind::SeaweedFs];

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum ServerKind {
    Ceph,
    SeaweedFs,
}

#[derive(Debug, Clone)]
pub struct Server {
    pub kind: ServerKind,
    pub endpoint: String,
    pub access_key: String,
    pub secret_key: String,
}

fn var(name: &str) -> Option<String> {
    std::env::var(name).ok().filter(|v| !v.is_empty())
}

/// Called when part of the test bed is absent: the test skips itself (returns `None`) when run
/// bare, and fails under `MPU_TEST_REQUIRE_BED=1`, as the README's test command sets it.
pub fn absent<T>(what: &str, how: &str) -> Option<T> {
    if var("MPU_TEST_REQUIRE_BED").as_deref() == Some("1") {
        panic!("MPU_TEST_REQUIRE_BED=1 but {what} is missing; {how}");
    }
    eprintln!("SKIPPED: no {what} ({how}, or run the README's test command)");
    None
}

/// The bed's servers, or `None` (skip) when the bed is absent and not required.
pub fn bed() -> Option<Vec<Server>> {
    let Some(access_key) = var("MPU_TEST_ACCESS_KEY_ID") else {
        return absent(
            "S3 test bed",
            "run hack/testenv.sh up and source its env file",
        );
    };
    let secret_key = var("MPU_TEST_SECRET_ACCESS_KEY").expect("MPU_TEST_SECRET_ACCESS_KEY");
    let server = |kind, endpoint_var: &str| Server {
        kind,
        endpoint: var(endpoint_var).unwrap_or_else(|| panic!("{endpoint_var} is not set")),
        access_key: access_key.clone(),
        secret_key: secret_key.clone(),
    };
    Some(vec![
        server(ServerKind::Ceph, "MPU_TEST_CEPH_ENDPOINT"),
        server(ServerKind::SeaweedFs, "MPU_TEST_SEAWEEDFS_ENDPOINT"),
    ])
}

/// The bed's server of `kind`, or `None` (skip) when the bed is absent and not required.
pub fn server(kind: ServerKind) -> Option<Server> {
    bed().map(|servers| {
        servers
            .into_iter()
            .find(|s| s.kind == kind)
            .expect("server in bed")
    })
}

/// One test per server for each scenario `async fn scenario(server: Server)`: `scenario::ceph`
/// and `scenario::seaweedfs`.
#[allow(
    unused_macros,
    reason = "not every test binary runs per-server scenarios"
)]
macro_rules! on_every_server {
    ($($scenario:ident),* $(,)?) => {$(
        mod $scenario {
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn ceph() {
                if let Some(server) = crate::common::server(crate::common::ServerKind::Ceph) {
                    super::$scenario(server).await;
                }
            }
            #[tokio::test(flavor = "multi_thread", worker_threads = 4)]
            async fn seaweedfs() {
                if let Some(server) = crate::common::server(crate::common::ServerKind::SeaweedFs) {
                    super::$scenario(server).await;
                }
            }
        }
    )*};
}
#[allow(
    unused_imports,
    reason = "not every test binary runs per-server scenarios"
)]
pub(crate) use on_every_server;

/// The bed's main Ceph gateway.
pub fn ceph() -> Option<Server> {
    let servers = bed()?;
    servers.into_iter().find(|s| s.kind == ServerKind::Ceph)
}

/// The Ceph gateway whose clock tests can move (libfaketime), and its clock file.
pub fn aged_ceph() -> Option<(Server, String)> {
    let ceph = ceph()?;
    Some((
        Server {
            endpoint: var("MPU_TEST_CEPH_AGED_ENDPOINT").expect("MPU_TEST_CEPH_AGED_ENDPOINT"),
            ..ceph
        },
        var("MPU_TEST_CEPH_AGED_FAKETIME_FILE").expect("MPU_TEST_CEPH_AGED_FAKETIME_FILE"),
    ))
}

/// A wall clock shifted by a fixed offset, for clients that must sign in the server's fake time
/// or that play a node with a wrong clock.
#[derive(Debug)]
struct ShiftedClock {
    ahead: bool,
    by: Duration,
}

impl TimeSource for ShiftedClock {
    fn now(&self) -> SystemTime {
        if self.ahead {
            SystemTime::now() + self.by
        } else {
            SystemTime::now() - self.by
        }
    }
}

impl Server {
    pub fn settings(&self) -> S3Settings {
        S3Settings {
            endpoint: Some(self.endpoint.clone()),
            addressing_style: AddressingStyle::Path,
            credentials: CredentialSource::Static {
                access_key_id: self.access_key.clone(),
                secret_access_key: self.secret_key.clone(),
                session_token: None,
            },
            ..S3Settings::default()
        }
    }

    pub async fn client(&self) -> Client {
        self.settings().client().await.expect("client")
    }

    /// A client whose clock is `by` ahead of (or behind) the real one.
    pub async fn client_with_clock(&self, ahead: bool, by: Duration) -> Client {
        let settings = S3Settings {
            time_source: Some(SharedTimeSource::new(ShiftedClock { ahead, by })),
            ..self.settings()
        };
        settings.client().await.expect("client")
    }

    /// Environment for running the command against this server.
    pub fn cli_env(&self) -> Vec<(&'static str, String)> {
        vec![
            ("AWS_ACCESS_KEY_ID", self.access_key.clone()),
            ("AWS_SECRET_ACCESS_KEY", self.secret_key.clone()),
            ("AWS_REGION", "us-east-1".into()),
        ]
    }
}

/// A bucket name unique to this process and call.
pub fn bucket_name(tag: &str) -> String {
    unique_name("t", tag)
}

/// `{prefix}-{tag}-...`, unique to this process and call, and to this moment: names left on the
/// shared beds by earlier runs must not collide when a PID comes round again.
pub fn unique_name(prefix: &str, tag: &str) -> String {
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let nanos = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .unwrap()
        .subsec_nanos();
    format!(
        "{prefix}-{tag}-{}-{:x}-{}",
        std::process::id(),
        nanos,
        COUNTER.fetch_add(1, Ordering::Relaxed)
    )
}

pub async fn create_bucket(client: &Client, tag: &str) -> String {
    let bucket = bucket_name(tag);
    client
        .create_bucket()
        .bucket(&bucket)
        .send()
        .await
        .expect("create bucket");
    bucket
}

/// Starts one multipart upload per key, 32 at a time; returns (key, uploadId) in key order.
pub async fn create_uploads(
    client: &Client,
    bucket: &str,
    keys: &[String],
) -> Vec<(String, String)> {
    futures::stream::iter(keys.iter().cloned())
        .map(|key| async move {
            let out = client
                .create_multipart_upload()
                .bucket(bucket)
                .key(&key)
                .send()
                .await
                .unwrap_or_else(|e| panic!("create upload {key:?}: {e:?}"));
            (key, out.upload_id().expect("upload id").to_owned())
        })
        .buffered(32)
        .collect()
        .await
}

pub async fn upload_part(
    client: &Client,
    bucket: &str,
    key: &str,
    upload_id: &str,
    part: i32,
    size: usize,
) -> String {
    let out = client
        .upload_part()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .part_number(part)
        .body(ByteStream::from(vec![b'x'; size]))
        .send()
        .await
        .expect("upload part");
    out.e_tag().unwrap_or_default().to_owned()
}

pub async fn complete_with_one_part(client: &Client, bucket: &str, key: &str, upload_id: &str) {
    let etag = upload_part(client, bucket, key, upload_id, 1, 16).await;
    client
        .complete_multipart_upload()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .multipart_upload(
            CompletedMultipartUpload::builder()
                .parts(CompletedPart::builder().part_number(1).e_tag(etag).build())
                .build(),
        )
        .send()
        .await
        .expect("complete upload");
}

/// Every incomplete upload in the bucket as (key, uploadId), listed independently of the engine.
pub async fn remaining_uploads(client: &Client, bucket: &str) -> Vec<(String, String)> {
    let mut all = Vec::new();
    let mut key_marker: Option<String> = None;
    let mut id_marker: Option<String> = None;
    loop {
        let out = client
            .list_multipart_uploads()
            .bucket(bucket)
            .set_key_marker(key_marker.clone())
            .set_upload_id_marker(id_marker.clone())
            .send()
            .await
            .expect("list uploads");
        for u in out.uploads() {
            all.push((
                u.key().unwrap().to_owned(),
                u.upload_id().unwrap().to_owned(),
            ));
        }
        if !out.is_truncated().unwrap_or(false) {
            break;
        }
        let last = all.last().cloned().expect("truncated page has uploads");
        key_marker = Some(out.next_key_marker().map_or(last.0, str::to_owned));
        id_marker = Some(out.next_upload_id_marker().map_or(last.1, str::to_owned));
    }
    all.sort();
    all
}

/// Whether ListParts still finds the upload (false once it is aborted).
pub async fn upload_exists(client: &Client, bucket: &str, key: &str, upload_id: &str) -> bool {
    client
        .list_parts()
        .bucket(bucket)
        .key(key)
        .upload_id(upload_id)
        .into_paginator()
        .send()
        .try_collect()
        .await
        .is_ok()
}

pub struct CliRun {
    pub status: i32,
    pub stdout: String,
    pub stderr: String,
    /// The process's peak resident memory (getrusage's ru_maxrss), in KiB.
    pub max_rss_kib: u64,
}

impl CliRun {
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(self.stdout.trim()).unwrap_or_else(|e| {
            panic!(
                "stdout is not one JSON object ({e}): {:?}\nstderr: {}",
                self.stdout, self.stderr
            )
        })
    }
}

/// Runs the real binary with the server's credentials in the environment, killing it if it hangs.
pub fn run_cli(server: &Server, args: &[&str], extra_env: &[(&str, &str)]) -> CliRun {
    let mut command = Command::new(env!("CARGO_BIN_EXE_mpu-sweeper"));
    command
        .args(args)
        .env_remove("RUST_LOG")
        .env("AWS_EC2_METADATA_DISABLED", "true")
        .env("AWS_CONFIG_FILE", "/dev/null")
        .env("AWS_SHARED_CREDENTIALS_FILE", "/dev/null")
        .stdin(Stdio::null());
    for (name, value) in server.cli_env() {
        command.env(name, value);
    }
    for (name, value) in extra_env {
        command.env(name, value);
    }
    run_with_deadline(command, Duration::from_secs(180))
}

/// A hang guard, not a timing assertion: a command still running after `deadline` is killed and the
/// test fails. The child is reaped with wait4, which also reports its peak memory.
fn run_with_deadline(mut command: Command, deadline: Duration) -> CliRun {
    use std::os::unix::process::ExitStatusExt;
    #[expect(
        clippy::zombie_processes,
        reason = "reaped below with wait4, which also reports its rusage"
    )]
    let mut child = command
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("spawn mpu-sweeper");
    let pid = child.id();
    let drain = |mut pipe: Box<dyn Read + Send>| {
        std::thread::spawn(move || {
            let mut bytes = Vec::new();
            let _ = pipe.read_to_end(&mut bytes);
            String::from_utf8_lossy(&bytes).into_owned()
        })
    };
    let stdout = drain(Box::new(child.stdout.take().unwrap()));
    let stderr = drain(Box::new(child.stderr.take().unwrap()));
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        let mut status = 0;
        // SAFETY: rusage is plain data; wait4 fills it for the child it reaps.
        let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
        let reaped = unsafe { libc::wait4(pid as libc::pid_t, &mut status, 0, &mut usage) };
        let _ = tx.send((reaped, status, usage.ru_maxrss));
    });
    let (reaped, status, max_rss) = match rx.recv_timeout(deadline) {
        Ok(result) => result,
        Err(_) => {
            let _ = Command::new("kill").arg("-9").arg(pid.to_string()).status();
            panic!("mpu-sweeper did not exit within {deadline:?}");
        }
    };
    assert_eq!(reaped, pid as libc::pid_t, "wait4 failed");
    CliRun {
        status: std::process::ExitStatus::from_raw(status)
            .code()
            .unwrap_or(-1),
        stdout: stdout.join().unwrap(),
        stderr: stderr.join().unwrap(),
        max_rss_kib: u64::try_from(max_rss).unwrap_or(0),
    }
}

/// Sweep arguments common to the tests: path style against the given server, JSON output.
pub fn sweep_args<'a>(server: &'a Server, bucket: &'a str, max_age: &'a str) -> Vec<&'a str> {
    vec![
        "sweep",
        "--endpoint",
        &server.endpoint,
        "--addressing-style",
        "path",
        "--bucket",
        bucket,
        "--max-age",
        max_age,
        "--output",
        "json",
        "--quiet",
    ]
}

pub fn keys(prefix: &str, n: usize) -> Vec<String> {
    (0..n).map(|i| format!("{prefix}{i:05}")).collect()
}

/// One HTTP/1.0 request to `host:port` (`form`, if any, as its url-encoded body): the status code
/// and body, or `None` when nothing answers in time.
pub fn http_request(
    host: &str,
    port: u16,
    method: &str,
    path: &str,
    form: &str,
    timeout: Duration,
) -> Option<(u16, String)> {
    let socket = format!("{host}:{port}").parse().ok()?;
    let mut stream = std::net::TcpStream::connect_timeout(&socket, Duration::from_secs(3)).ok()?;
    stream.set_read_timeout(Some(timeout)).ok()?;
    write!(
        stream,
        "{method} {path} HTTP/1.0\r\nHost: {host}\r\n\
         Content-Type: application/x-www-form-urlencoded\r\nContent-Length: {}\r\n\r\n{form}",
        form.len()
    )
    .ok()?;
    let mut response = String::new();
    stream.read_to_string(&mut response).ok()?;
    let code = response.split_whitespace().nth(1)?.parse().ok()?;
    let body = response
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Some((code, body))
}

/// Runs `helm` (`MPU_TEST_HELM`) with `args`, against the cluster of `kubeconfig` when given, with
/// caches and configuration of its own (the tests need none of the user's repositories or
/// plugins): its output, whatever its exit status.
pub fn helm_output(helm: &Path, kubeconfig: Option<&Path>, args: &[&str]) -> Output {
    let home = std::env::temp_dir().join("mpu-sweeper-helm-home");
    let mut command = Command::new(helm);
    command
        .args(args)
        .stdin(Stdio::null())
        .env("HELM_CACHE_HOME", home.join("cache"))
        .env("HELM_CONFIG_HOME", home.join("config"))
        .env("HELM_DATA_HOME", home.join("data"));
    if let Some(kubeconfig) = kubeconfig {
        command.env("KUBECONFIG", kubeconfig);
    }
    command.output().expect("run helm")
}

/// [`helm_output`], insisting on success: helm's stdout.
pub fn helm_stdout(helm: &Path, kubeconfig: Option<&Path>, args: &[&str]) -> String {
    let output = helm_output(helm, kubeconfig, args);
    assert!(
        output.status.success(),
        "helm {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}
