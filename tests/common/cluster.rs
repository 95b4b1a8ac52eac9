//! The Kubernetes side of the test bed: a real API server (`hack/kubeenv.sh up`, or any cluster
//! whose kubeconfig is in `MPU_TEST_KUBECONFIG`), the CRD and RBAC applied with kubectl, and the
//! controller run as a separate process with a ServiceAccount token bound by `deploy/rbac`.

use std::io::Write;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Output, Stdio};
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use k8s_openapi::api::core::v1::{Namespace, Secret};
use k8s_openapi::api::events::v1::Event;
use kube::api::{ListParams, ObjectMeta, Patch, PatchParams, PostParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};
use mpu_sweeper::api::{MultipartCleanup, MultipartCleanupStatus, RUN_REQUESTED_ANNOTATION};

use super::Server;

pub const CONTROLLER_NAMESPACE: &str = "mpu-sweeper-system";
pub const SERVICE_ACCOUNT: &str = "mpu-sweeper";

pub struct KubeBed {
    pub kubeconfig: PathBuf,
    pub client: Client,
    /// A kubeconfig holding only the controller ServiceAccount's token.
    pub controller_kubeconfig: PathBuf,
}

/// The cluster, set up for the tests, or `None` (skip) when absent and not required.
pub async fn kube_bed() -> Option<KubeBed> {
    let Some(path) = std::env::var_os("MPU_TEST_KUBECONFIG").filter(|p| !p.is_empty()) else {
        return super::absent(
            "Kubernetes test bed",
            "set MPU_TEST_KUBECONFIG, e.g. by sourcing the env file of hack/kubeenv.sh up",
        );
    };
    let kubeconfig = PathBuf::from(path);
    let config = Kubeconfig::read_from(&kubeconfig).expect("readable kubeconfig");
    let client = Client::try_from(
        Config::from_custom_kubeconfig(config, &KubeConfigOptions::default())
            .await
            .expect("usable kubeconfig"),
    )
    .expect("client");
    prepare_cluster(&kubeconfig);
    let controller_kubeconfig =
        service_account_kubeconfig(&kubeconfig, CONTROLLER_NAMESPACE, SERVICE_ACCOUNT);
    Some(KubeBed {
        kubeconfig,
        client,
        controller_kubeconfig,
    })
}

/// Applies the CRD and the RBAC from the repository (idempotent; safe from parallel tests).
fn prepare_cluster(kubeconfig: &Path) {
    static ONCE: std::sync::Once = std::sync::Once::new();
    ONCE.call_once(|| {
        let root = env!("CARGO_MANIFEST_DIR");
        let namespace =
            format!("apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {CONTROLLER_NAMESPACE}\n");
        kubectl_stdin(kubeconfig, &["apply", "-f", "-"], &namespace);
        kubectl(
            kubeconfig,
            &["apply", "-f", &format!("{root}/crds/multipartcleanup.yaml")],
        );
        kubectl(kubeconfig, &["apply", "-k", &format!("{root}/deploy/rbac")]);
        kubectl(
            kubeconfig,
            &[
                "wait",
                "--for=condition=Established",
                "crd/multipartcleanups.mpusweeper.io",
                "--timeout=60s",
            ],
        );
    });
}

/// Runs kubectl against the bed and returns stdout; fails the test on a non-zero exit.
pub fn kubectl(kubeconfig: &Path, args: &[&str]) -> String {
    kubectl_stdin(kubeconfig, args, "")
}

pub fn kubectl_stdin(kubeconfig: &Path, args: &[&str], stdin: &str) -> String {
    let output = kubectl_output(kubeconfig, args, stdin);
    assert!(
        output.status.success(),
        "kubectl {args:?} failed: {}",
        String::from_utf8_lossy(&output.stderr)
    );
    String::from_utf8_lossy(&output.stdout).into_owned()
}

/// Runs kubectl with `stdin` and returns its output, whatever its exit status.
pub fn kubectl_output(kubeconfig: &Path, args: &[&str], stdin: &str) -> Output {
    let mut child = Command::new("kubectl")
        .arg("--kubeconfig")
        .arg(kubeconfig)
        .args(args)
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("kubectl on PATH");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(stdin.as_bytes())
        .unwrap();
    child.wait_with_output().unwrap()
}

/// A kubeconfig holding only a token of ServiceAccount `namespace/name`, from the TokenRequest
/// API, for the cluster of the admin kubeconfig `admin`.
pub fn service_account_kubeconfig(admin: &Path, namespace: &str, name: &str) -> PathBuf {
    let config = Kubeconfig::read_from(admin).expect("readable kubeconfig");
    let token = kubectl(
        admin,
        &["create", "token", name, "-n", namespace, "--duration", "2h"],
    );
    let cluster = config
        .clusters
        .first()
        .and_then(|c| c.cluster.clone())
        .expect("a cluster in the kubeconfig");
    let server = cluster.server.expect("cluster server");
    let ca_line = match (
        &cluster.certificate_authority,
        &cluster.certificate_authority_data,
    ) {
        (Some(path), _) => format!("certificate-authority: {path}"),
        (None, Some(data)) => format!("certificate-authority-data: {data}"),
        (None, None) => "insecure-skip-tls-verify: true".to_owned(),
    };
    let text = format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: bed\n  cluster:\n    server: {server}\n    {ca_line}\n\
         users:\n- name: {name}\n  user:\n    token: {}\ncontexts:\n- name: bed\n  context: {{cluster: bed, user: {name}}}\n\
         current-context: bed\n",
        token.trim()
    );
    let path = std::env::temp_dir().join(format!(
        "mpu-sweeper-{}-{namespace}-{name}.kubeconfig",
        std::process::id()
    ));
    // Tests running in parallel rewrite the same file while controllers read it: replace it
    // whole, never let a reader see it half written.
    static COUNTER: AtomicU32 = AtomicU32::new(0);
    let partial = path.with_extension(format!(
        "partial-{}",
        COUNTER.fetch_add(1, Ordering::Relaxed)
    ));
    std::fs::write(&partial, text).unwrap();
    std::fs::rename(&partial, &path).unwrap();
    path
}

/// A fresh namespace for one test. The bed never removes namespaces (it runs no namespace
/// controller), so the name must not depend on the PID alone.
pub async fn namespace(client: &Client, tag: &str) -> String {
    let name = super::unique_name("e2e", tag);
    let api: Api<Namespace> = Api::all(client.clone());
    let namespace = Namespace {
        metadata: ObjectMeta {
            name: Some(name.clone()),
            ..ObjectMeta::default()
        },
        ..Namespace::default()
    };
    api.create(&PostParams::default(), &namespace)
        .await
        .expect("create namespace");
    name
}

/// A fresh namespace holding Secret `s3-credentials` with `server`'s keys.
pub async fn namespace_with_credentials(client: &Client, tag: &str, server: &Server) -> String {
    let name = namespace(client, tag).await;
    credentials_secret(
        client,
        &name,
        "s3-credentials",
        &server.access_key,
        &server.secret_key,
    )
    .await;
    name
}

pub async fn credentials_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    access_key: &str,
    secret_key: &str,
) {
    labeled_credentials_secret(client, namespace, name, access_key, secret_key, &[]).await;
}

/// A credentials Secret carrying `labels`, created or replaced.
pub async fn labeled_credentials_secret(
    client: &Client,
    namespace: &str,
    name: &str,
    access_key: &str,
    secret_key: &str,
    labels: &[(&str, &str)],
) {
    let secrets: Api<Secret> = Api::namespaced(client.clone(), namespace);
    let labels: serde_json::Map<String, serde_json::Value> = labels
        .iter()
        .map(|(k, v)| (k.to_string(), serde_json::Value::from(*v)))
        .collect();
    let secret: Secret = serde_json::from_value(serde_json::json!({
        "metadata": {"name": name, "labels": labels},
        "stringData": {"AWS_ACCESS_KEY_ID": access_key, "AWS_SECRET_ACCESS_KEY": secret_key}
    }))
    .unwrap();
    match secrets.get_opt(name).await.unwrap() {
        None => {
            secrets
                .create(&PostParams::default(), &secret)
                .await
                .expect("create secret");
        }
        Some(existing) => {
            let mut secret = secret;
            secret.metadata.resource_version = existing.metadata.resource_version;
            secrets
                .replace(name, &PostParams::default(), &secret)
                .await
                .expect("replace secret");
        }
    }
}

/// Creates a MultipartCleanup for `server`'s bucket; `extra` is merged into the spec.
pub async fn create_cleanup(
    client: &Client,
    namespace: &str,
    name: &str,
    server: &Server,
    bucket: &str,
    extra: serde_json::Value,
) -> MultipartCleanup {
    let mut spec = serde_json::json!({
        "bucket": bucket,
        "endpoint": server.endpoint,
        "addressingStyle": "path",
        "credentialsSecretRef": {"name": "s3-credentials"},
        "maxAge": "3s",
    });
    let fields = spec.as_object_mut().unwrap();
    fields.extend(extra.as_object().cloned().unwrap_or_default());
    // A selector replaces the one bucket.
    if fields.contains_key("bucketSelector") {
        fields.remove("bucket");
    }
    let resource: MultipartCleanup = serde_json::from_value(serde_json::json!({
        "apiVersion": "mpusweeper.io/v1alpha1",
        "kind": "MultipartCleanup",
        "metadata": {"name": name},
        "spec": spec,
    }))
    .unwrap();
    let api: Api<MultipartCleanup> = Api::namespaced(client.clone(), namespace);
    api.create(&PostParams::default(), &resource)
        .await
        .expect("create MultipartCleanup")
}

/// Polls `check` until it returns `Some`, failing the test after `limit` (a hang guard).
pub async fn eventually<T, F, Fut>(what: &str, limit: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + limit;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "gave up waiting for {what} after {limit:?}"
        );
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// The controller as a child process; killed on drop.
pub struct ControllerProcess {
    child: Option<Child>,
    pub http_port: u16,
    log_path: PathBuf,
}

impl ControllerProcess {
    /// Starts `mpu-sweeper controller` with the ServiceAccount kubeconfig and `args`.
    pub fn start(bed: &KubeBed, args: &[&str]) -> Self {
        Self::start_as(&bed.controller_kubeconfig, args, &[])
    }

    /// Starts `mpu-sweeper controller` with `kubeconfig`, `args` and extra environment `env`.
    pub fn start_as(kubeconfig: &Path, args: &[&str], env: &[(&str, &str)]) -> Self {
        let http_port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        static COUNTER: AtomicU32 = AtomicU32::new(0);
        let log_path = std::env::temp_dir().join(format!(
            "mpu-sweeper-controller-{}-{}.log",
            std::process::id(),
            COUNTER.fetch_add(1, Ordering::Relaxed)
        ));
        let log = std::fs::File::create(&log_path).unwrap();
        // Tests ask for runs seconds apart; the 5-minute default is tested where it matters.
        let min_interval: &[&str] = if args.iter().any(|a| a.starts_with("--min-interval")) {
            &[]
        } else {
            &["--min-interval", "1s"]
        };
        let child = Command::new(env!("CARGO_BIN_EXE_mpu-sweeper"))
            .arg("controller")
            .arg("--http-address")
            .arg(format!("127.0.0.1:{http_port}"))
            .args(min_interval)
            .args(args)
            .env("KUBECONFIG", kubeconfig)
            .envs(env.iter().copied())
            .env("AWS_EC2_METADATA_DISABLED", "true")
            .env_remove("AWS_ACCESS_KEY_ID")
            .env_remove("AWS_SECRET_ACCESS_KEY")
            .env("RUST_LOG", "warn,mpu_sweeper=debug")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log)
            .spawn()
            .expect("start controller");
        Self {
            child: Some(child),
            http_port,
            log_path,
        }
    }

    /// GET a path on the controller's HTTP port: (status code, body).
    pub fn get(&self, path: &str) -> Option<(u16, String)> {
        super::http_request(
            "127.0.0.1",
            self.http_port,
            "GET",
            path,
            "",
            Duration::from_secs(5),
        )
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(&self.log_path).unwrap_or_default()
    }

    pub fn pid(&self) -> u32 {
        self.child.as_ref().expect("running").id()
    }

    /// Sends SIGTERM and waits for the exit status.
    pub fn terminate(&mut self) -> i32 {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .arg("-TERM")
            .arg(child.id().to_string())
            .status();
        for _ in 0..300 {
            if let Some(status) = child.try_wait().unwrap() {
                return status.code().unwrap_or(-1);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
        let _ = child.kill();
        panic!(
            "controller did not exit within 30 s of SIGTERM; log:\n{}",
            self.log()
        );
    }

    /// The exit status, once the process has exited by itself.
    pub fn try_exit_code(&mut self) -> Option<i32> {
        let child = self.child.as_mut()?;
        let status = child.try_wait().ok()??;
        self.child = None;
        Some(status.code().unwrap_or(-1))
    }

    /// SIGKILL: the process gets no chance to clean up.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        self.kill();
    }
}

/// Hang guard for waits on the controller (not a timing assertion).
pub const WAIT: Duration = Duration::from_secs(120);

/// Both beds, and the Ceph server the operator tests sweep.
pub async fn kube_and_ceph() -> Option<(KubeBed, Server)> {
    let ceph = super::ceph()?;
    let kube = kube_bed().await?;
    Some((kube, ceph))
}

/// The resource's status; empty while it has none or cannot be read (an API server restarting).
pub async fn status_of(client: &Client, namespace: &str, name: &str) -> MultipartCleanupStatus {
    let api: Api<MultipartCleanup> = Api::namespaced(client.clone(), namespace);
    api.get(name)
        .await
        .ok()
        .and_then(|m| m.status)
        .unwrap_or_default()
}

/// Condition `kind` as (status, reason, message).
pub fn condition<'a>(
    status: &'a MultipartCleanupStatus,
    kind: &str,
) -> Option<(&'a str, &'a str, &'a str)> {
    status
        .conditions
        .iter()
        .find(|c| c.type_ == kind)
        .map(|c| (c.status.as_str(), c.reason.as_str(), c.message.as_str()))
}

/// Waits until the resource's Ready condition has `reason`, and returns the status.
pub async fn wait_for_reason(
    client: &Client,
    namespace: &str,
    name: &str,
    reason: &str,
) -> MultipartCleanupStatus {
    eventually(
        &format!("{namespace}/{name} Ready reason {reason}"),
        WAIT,
        || async {
            let status = status_of(client, namespace, name).await;
            (condition(&status, "Ready").map(|c| c.1) == Some(reason)).then_some(status)
        },
    )
    .await
}

/// The Events about resource `name`, as (type, reason, note).
pub async fn events_for(
    client: &Client,
    namespace: &str,
    name: &str,
) -> Vec<(String, String, String)> {
    let api: Api<Event> = Api::namespaced(client.clone(), namespace);
    api.list(&ListParams::default())
        .await
        .expect("list events")
        .items
        .into_iter()
        .filter(|e| e.regarding.as_ref().and_then(|r| r.name.as_deref()) == Some(name))
        .map(|e| {
            (
                e.type_.unwrap_or_default(),
                e.reason.unwrap_or_default(),
                e.note.unwrap_or_default(),
            )
        })
        .collect()
}

/// Merges `spec` into the resource's spec.
pub async fn patch_spec(client: &Client, namespace: &str, name: &str, spec: serde_json::Value) {
    let api: Api<MultipartCleanup> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({ "spec": spec });
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("patch spec");
}

/// Sets the run-now annotation to `token`.
pub async fn annotate(client: &Client, namespace: &str, name: &str, token: &str) {
    let api: Api<MultipartCleanup> = Api::namespaced(client.clone(), namespace);
    let patch = serde_json::json!({"metadata": {"annotations": {RUN_REQUESTED_ANNOTATION: token}}});
    api.patch(name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .expect("annotate");
}

/// A resource named `name` sweeping `total` stale uploads one abort at a time through
/// `through`, returned while its sweep is under way: some uploads aborted, most still there.
pub struct SweepUnderWay {
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    pub namespace: String,
    pub controller: ControllerProcess,
}

pub async fn sweep_under_way(
    kube: &KubeBed,
    ceph: &Server,
    through: &Server,
    name: &str,
    total: usize,
) -> SweepUnderWay {
    let s3 = ceph.client().await;
    let bucket = super::create_bucket(&s3, name).await;
    super::create_uploads(&s3, &bucket, &super::keys("many/", total)).await;
    tokio::time::sleep(super::AGE_WAIT).await;
    let namespace = namespace_with_credentials(&kube.client, name, ceph).await;
    let controller = ControllerProcess::start(kube, &["--namespace", &namespace]);
    create_cleanup(
        &kube.client,
        &namespace,
        name,
        through,
        &bucket,
        serde_json::json!({"concurrency": 1}),
    )
    .await;
    eventually("the sweep to be under way", WAIT, || async {
        let left = super::remaining_uploads(&s3, &bucket).await.len();
        (left < total - 100).then_some(())
    })
    .await;
    SweepUnderWay {
        s3,
        bucket,
        namespace,
        controller,
    }
}
