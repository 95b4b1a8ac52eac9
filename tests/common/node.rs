//! The node of the test bed as the tests see it: `hack/nodeenv.sh up` joins a real kubelet
//! (containerd, runc, kube-proxy, a bridge CNI) to the API server of `hack/kubeenv.sh`, imports
//! the operator's image (`MPU_TEST_IMAGE`) and writes the environment read here. The operator
//! runs there as pods, installed with Helm or kustomize; pods reach this machine's servers only
//! at `MPU_TEST_POD_HOST`, and this machine reaches pods at their IPs (a route through the node).
//!
//! Every install here is undone on drop, the test passed or not, and the drop waits until its
//! controller pods are gone: a controller left running would sweep other tests' resources.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};
use std::time::Duration;

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::api::{EvictParams, ListParams};
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Api, Client, Config};

use super::cluster::{KubeBed, eventually, kube_bed, kubectl_output};
use super::fault_proxy::FaultProxy;
use super::{Server, helm_output, helm_stdout, http_request};

pub const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/mpu-sweeper");

/// Hang guard for pods to start, roll, come back or go (not a timing assertion).
pub const POD_WAIT: Duration = Duration::from_secs(240);

/// The controller's HTTP port (/metrics, /healthz, /readyz) in its pod: the chart's and deploy/'s.
pub const HTTP_PORT: u16 = 8080;

pub struct NodeBed {
    pub kube: KubeBed,
    /// The operator's image, as the node's containerd knows it.
    pub image: String,
    /// This machine's address as pods see it.
    pub pod_host: IpAddr,
    /// Ceph RGW as pods reach it.
    pub pod_ceph_endpoint: String,
    pub node_name: String,
    ctr: PathBuf,
    containerd_address: String,
    containerd_namespace: String,
    pub helm: PathBuf,
    /// Whether the API server is the local bed's (which tests may stop and start).
    pub local_apiserver: bool,
}

/// The node bed, or `None` (skip) when it is absent and not required.
pub async fn node_bed() -> Option<NodeBed> {
    let Some(image) = super::var("MPU_TEST_IMAGE") else {
        return super::absent(
            "node test bed",
            "run hack/nodeenv.sh up and source the env file it prints",
        );
    };
    let Some(helm) = super::var("MPU_TEST_HELM") else {
        return super::absent("helm", "run hack/tools.sh up and source its env file");
    };
    let need = |name: &str| super::var(name).unwrap_or_else(|| panic!("{name} is not set"));
    let kube = kube_bed().await?;
    Some(NodeBed {
        kube,
        image,
        pod_host: need("MPU_TEST_POD_HOST")
            .parse()
            .expect("MPU_TEST_POD_HOST is an address"),
        pod_ceph_endpoint: need("MPU_TEST_POD_S3_CEPH_ENDPOINT"),
        node_name: need("MPU_TEST_NODE_NAME"),
        ctr: PathBuf::from(need("MPU_TEST_NODE_CTR")),
        containerd_address: need("MPU_TEST_NODE_CONTAINERD_ADDRESS"),
        containerd_namespace: need("MPU_TEST_NODE_CONTAINERD_NAMESPACE"),
        helm: PathBuf::from(helm),
        local_apiserver: super::var("MPU_TEST_KUBE_LOCAL").as_deref() == Some("1"),
    })
}

/// The node bed and the S3 bed's Ceph gateway, or `None` (skip) when either is absent and not
/// required.
pub async fn node_and_ceph() -> Option<(NodeBed, Server)> {
    let node = node_bed().await?;
    Some((node, super::ceph()?))
}

/// The API-server restart takes the cluster away from everyone: it holds this for writing, every
/// other node test for reading.
static CLUSTER: tokio::sync::RwLock<()> = tokio::sync::RwLock::const_new(());

/// How a test uses the cluster: beside the others, or alone (it takes the API server away).
#[derive(Clone, Copy, PartialEq, Eq)]
pub enum ClusterUse {
    Shared,
    Alone,
}

/// A test's turn on the cluster, for as long as it is held.
pub enum ClusterTurn {
    Shared(tokio::sync::RwLockReadGuard<'static, ()>),
    Alone(tokio::sync::RwLockWriteGuard<'static, ()>),
}

pub async fn cluster_turn(how: ClusterUse) -> ClusterTurn {
    match how {
        ClusterUse::Shared => ClusterTurn::Shared(CLUSTER.read().await),
        ClusterUse::Alone => ClusterTurn::Alone(CLUSTER.write().await),
    }
}

/// What most node tests start from: their turn on the cluster, the beds, a client of each and a
/// fresh bucket on Ceph.
pub struct OnTheNode {
    pub node: NodeBed,
    pub client: kube::Client,
    pub ceph: Server,
    pub s3: aws_sdk_s3::Client,
    pub bucket: String,
    pub turn: ClusterTurn,
}

impl OnTheNode {
    /// The node, the API server's client, Ceph, its client and the bucket.
    pub fn parts(&self) -> (&NodeBed, &kube::Client, &Server, &aws_sdk_s3::Client, &str) {
        (&self.node, &self.client, &self.ceph, &self.s3, &self.bucket)
    }
}

/// The cluster's turn (`how`), [`node_and_ceph`] and a fresh bucket named after `tag`; `None`
/// (skip) as [`node_and_ceph`].
pub async fn on_the_node(tag: &str, how: ClusterUse) -> Option<OnTheNode> {
    let turn = cluster_turn(how).await;
    let (node, ceph) = node_and_ceph().await?;
    let s3 = ceph.client().await;
    let bucket = super::create_bucket(&s3, tag).await;
    Some(OnTheNode {
        client: node.kube.client.clone(),
        node,
        ceph,
        s3,
        bucket,
        turn,
    })
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

impl NodeBed {
    /// Ceph RGW as a pod reaches it (through the forwarder on MPU_TEST_POD_HOST).
    pub fn pod_ceph(&self, ceph: &Server) -> Server {
        Server {
            endpoint: self.pod_ceph_endpoint.clone(),
            ..ceph.clone()
        }
    }

    /// A fault proxy in front of Ceph, listening on MPU_TEST_POD_HOST, and Ceph as pods reach it
    /// through the proxy.
    pub async fn fault_proxy(&self, ceph: &Server) -> (FaultProxy, Server) {
        let proxy = FaultProxy::start_on(SocketAddr::new(self.pod_host, 0), &ceph.endpoint)
            .await
            .expect("fault proxy on MPU_TEST_POD_HOST");
        let through_proxy = Server {
            endpoint: proxy.endpoint(),
            ..ceph.clone()
        };
        (proxy, through_proxy)
    }

    /// The image as repository and tag, for the chart's `image.repository` and `image.tag`.
    pub fn image_parts(&self) -> (&str, &str) {
        let (repository, tag) = self
            .image
            .rsplit_once(':')
            .expect("MPU_TEST_IMAGE has a tag");
        assert!(
            !tag.contains('/'),
            "MPU_TEST_IMAGE has a tag: {}",
            self.image
        );
        (repository, tag)
    }

    pub fn kubectl(&self, args: &[&str]) -> String {
        super::cluster::kubectl(&self.kube.kubeconfig, args)
    }

    pub fn kubectl_output(&self, args: &[&str]) -> Output {
        kubectl_output(&self.kube.kubeconfig, args, "")
    }

    /// Runs helm against the bed; its stdout. Fails the test on a non-zero exit.
    pub fn helm(&self, args: &[&str]) -> String {
        helm_stdout(&self.helm, Some(&self.kube.kubeconfig), args)
    }

    /// Evicts `pod` (the Eviction API, which a drain uses and PodDisruptionBudgets guard), asked
    /// once: a refusal (429) is returned, not retried as the client otherwise does.
    pub async fn evict(&self, namespace: &str, pod: &str) -> Result<(), kube::Error> {
        let kubeconfig = Kubeconfig::read_from(&self.kube.kubeconfig).expect("readable kubeconfig");
        let mut config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
            .await
            .expect("usable kubeconfig");
        config.default_retry = false;
        let pods: Api<Pod> = Api::namespaced(Client::try_from(config)?, namespace);
        pods.evict(pod, &EvictParams::default()).await.map(|_| ())
    }

    /// The host PID of a running container (`containerd://ID` as the pod's status names it), from
    /// the node's containerd.
    pub fn container_pid(&self, container_id: &str) -> u32 {
        let id = container_id
            .strip_prefix("containerd://")
            .unwrap_or(container_id);
        let output = Command::new(&self.ctr)
            .args([
                "--address",
                &self.containerd_address,
                "--namespace",
                &self.containerd_namespace,
                "tasks",
                "ls",
            ])
            .stdin(Stdio::null())
            .output()
            .expect("run ctr");
        assert!(output.status.success(), "ctr: {}", text(&output.stderr));
        let listing = text(&output.stdout);
        listing
            .lines()
            .find_map(|line| {
                let mut fields = line.split_whitespace();
                (fields.next() == Some(id))
                    .then(|| fields.next().and_then(|pid| pid.parse().ok()))
                    .flatten()
            })
            .unwrap_or_else(|| panic!("no task {id} in the node's containerd:\n{listing}"))
    }
}

/// Deletes `namespace` and waits until it is gone, and with it every pod in it (a hang guard of
/// POD_WAIT; a cleanup that fails is reported, not a test failure of its own).
fn remove_namespace(kubeconfig: &Path, namespace: &str) {
    let timeout = format!("--timeout={}s", POD_WAIT.as_secs());
    let output = kubectl_output(
        kubeconfig,
        &["delete", "namespace", namespace, "--wait=true", &timeout],
        "",
    );
    if !output.status.success() {
        eprintln!(
            "cleanup: namespace {namespace} not deleted: {}",
            text(&output.stderr)
        );
    }
}

/// A Helm release of the chart in a namespace of its own, watching only that namespace: on drop,
/// uninstalled and its namespace deleted, its pods gone before the drop returns.
pub struct Release {
    helm: PathBuf,
    kubeconfig: PathBuf,
    pub name: String,
    pub namespace: String,
    /// The chart's full name for this release: the Deployment's, the Lease's.
    pub fullname: String,
}

impl Release {
    /// `helm install NAME` into `namespace` (which must exist) with the node's image (never
    /// pulled), watching `namespace`, runs requested seconds apart allowed, and `values`.
    pub fn install(node: &NodeBed, name: &str, namespace: &str, values: &[&str]) -> Self {
        let (repository, tag) = node.image_parts();
        let mut args = vec![
            "install".to_owned(),
            name.to_owned(),
            CHART.to_owned(),
            "-n".to_owned(),
            namespace.to_owned(),
            "--set".to_owned(),
            format!("image.repository={repository}"),
            "--set".to_owned(),
            format!("image.tag={tag}"),
            "--set".to_owned(),
            "image.pullPolicy=Never".to_owned(),
            "--set".to_owned(),
            format!("watchNamespaces={{{namespace}}}"),
            "--set".to_owned(),
            "controller.minInterval=1s".to_owned(),
        ];
        args.extend(values.iter().map(|v| (*v).to_owned()));
        let args: Vec<&str> = args.iter().map(String::as_str).collect();
        // Made before installing: a failed install is cleaned up too.
        let release = Self {
            helm: node.helm.clone(),
            kubeconfig: node.kube.kubeconfig.clone(),
            name: name.to_owned(),
            namespace: namespace.to_owned(),
            fullname: if name.contains("mpu-sweeper") {
                name.to_owned()
            } else {
                format!("{name}-mpu-sweeper")
            },
        };
        node.helm(&args);
        release
    }

    /// `helm install` as [`Release::install`], then waits for `replicas` Ready pods, one of them
    /// holding the Lease: the release, its pods and the leader's name.
    pub async fn install_ready(
        node: &NodeBed,
        namespace: &str,
        replicas: usize,
        values: &[&str],
    ) -> (Self, Vec<Pod>, String) {
        let replica_count = format!("replicaCount={replicas}");
        let mut all = vec!["--set", replica_count.as_str()];
        all.extend_from_slice(values);
        let release = Self::install(node, "sweeper", namespace, &all);
        let pods = wait_for_ready_pods(node, namespace, &release.selector(), replicas).await;
        let (leader, gauges) = one_leader(node, namespace, &release.fullname, &pods).await;
        println!(
            "{namespace}: {replicas} pod(s) Ready, Lease {} held by {leader}; leader gauges \
             {gauges:?}",
            release.fullname
        );
        (release, pods, leader)
    }

    /// `helm upgrade --reuse-values` with `values`.
    pub fn upgrade(&self, node: &NodeBed, values: &[&str]) {
        let mut args = vec![
            "upgrade",
            &self.name,
            CHART,
            "-n",
            &self.namespace,
            "--reuse-values",
        ];
        args.extend_from_slice(values);
        node.helm(&args);
    }

    /// The label selector of the release's controller pods.
    pub fn selector(&self) -> String {
        format!(
            "app.kubernetes.io/name=mpu-sweeper,app.kubernetes.io/instance={}",
            self.name
        )
    }

    /// `helm uninstall` now (also done on drop); the namespace stays until drop.
    pub fn uninstall(&self) {
        let args = ["uninstall", &self.name, "-n", &self.namespace];
        let output = helm_output(&self.helm, Some(&self.kubeconfig), &args);
        let stderr = text(&output.stderr);
        if !output.status.success() && !stderr.contains("not found") {
            eprintln!("cleanup: helm uninstall: {stderr}");
        }
    }
}

impl Drop for Release {
    fn drop(&mut self) {
        self.uninstall();
        remove_namespace(&self.kubeconfig, &self.namespace);
    }
}

/// What `kubectl apply -k` of an overlay of deploy/ installed: on drop, its Deployment is deleted
/// (its pods gone before the drop returns) and the test's namespace with it. The CRD, the RBAC
/// and mpu-sweeper-system stay: every other test uses them.
pub struct KustomizeInstall {
    pub kubeconfig: PathBuf,
    /// The namespace the controller watches.
    pub namespace: String,
}

impl Drop for KustomizeInstall {
    fn drop(&mut self) {
        let timeout = format!("--timeout={}s", POD_WAIT.as_secs());
        let output = kubectl_output(
            &self.kubeconfig,
            &[
                "delete",
                "deployment",
                "mpu-sweeper",
                "-n",
                super::cluster::CONTROLLER_NAMESPACE,
                "--cascade=foreground",
                "--ignore-not-found",
                &timeout,
            ],
            "",
        );
        if !output.status.success() {
            eprintln!("cleanup: kustomize's Deployment: {}", text(&output.stderr));
        }
        remove_namespace(&self.kubeconfig, &self.namespace);
    }
}

/// The node cordoned (`kubectl cordon`, as a drain starts): no new pod is scheduled on it until
/// it is uncordoned, on drop.
pub struct Cordoned {
    kubeconfig: PathBuf,
    node_name: String,
}

impl Cordoned {
    pub fn new(node: &NodeBed) -> Self {
        node.kubectl(&["cordon", &node.node_name]);
        Self {
            kubeconfig: node.kube.kubeconfig.clone(),
            node_name: node.node_name.clone(),
        }
    }
}

impl Drop for Cordoned {
    fn drop(&mut self) {
        let output = kubectl_output(&self.kubeconfig, &["uncordon", &self.node_name], "");
        if !output.status.success() {
            eprintln!("cleanup: uncordon: {}", text(&output.stderr));
        }
    }
}

/// The local bed's API server stopped by a test (`hack/kubeenv.sh stop-apiserver`): started again
/// by [`StoppedApiServer::start`], or on drop when the test failed before it did.
pub struct StoppedApiServer {
    script: &'static str,
    started: bool,
}

impl StoppedApiServer {
    pub fn stop() -> Self {
        let script = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/kubeenv.sh");
        run_script(script, "stop-apiserver");
        Self {
            script,
            started: false,
        }
    }

    /// Starts it again (the script returns once it answers).
    pub fn start(mut self) {
        self.started = true;
        run_script(self.script, "start-apiserver");
    }
}

impl Drop for StoppedApiServer {
    fn drop(&mut self) {
        if !self.started {
            run_script(self.script, "start-apiserver");
        }
    }
}

fn run_script(script: &str, command: &str) {
    let status = Command::new("bash")
        .args([script, command])
        .stdin(Stdio::null())
        .status()
        .unwrap_or_else(|e| panic!("run {script}: {e}"));
    assert!(status.success(), "{script} {command} failed");
}

/// Whether the pod is Running, Ready and not being deleted.
pub fn running_and_ready(pod: &Pod) -> bool {
    let Some(status) = &pod.status else {
        return false;
    };
    pod.metadata.deletion_timestamp.is_none()
        && status.phase.as_deref() == Some("Running")
        && status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True")
}

/// The pods matching `selector` in `namespace` (an empty list while the API server is away).
pub async fn pods(kube: &KubeBed, namespace: &str, selector: &str) -> Vec<Pod> {
    let api: Api<Pod> = Api::namespaced(kube.client.clone(), namespace);
    api.list(&ListParams::default().labels(selector))
        .await
        .map(|list| list.items)
        .unwrap_or_default()
}

/// The pods matching `selector`, once exactly `count` of them are Running and Ready and none
/// other is left (a rollout done); hang guard POD_WAIT. On timeout, shows what the pods are
/// doing.
pub async fn wait_for_ready_pods(
    node: &NodeBed,
    namespace: &str,
    selector: &str,
    count: usize,
) -> Vec<Pod> {
    wait_for_pods_replacing(node, namespace, selector, count, &[]).await
}

/// [`wait_for_ready_pods`], and none of them one of `old` (a rollout that replaces them done).
pub async fn wait_for_pods_replacing(
    node: &NodeBed,
    namespace: &str,
    selector: &str,
    count: usize,
    old: &[Pod],
) -> Vec<Pod> {
    let old = names_of(old);
    let deadline = tokio::time::Instant::now() + POD_WAIT;
    loop {
        let all = pods(&node.kube, namespace, selector).await;
        let ready: Vec<Pod> = all
            .iter()
            .filter(|p| running_and_ready(p) && !old.contains(&pod_name(p)))
            .cloned()
            .collect();
        if ready.len() == count && all.len() == count {
            return ready;
        }
        if tokio::time::Instant::now() > deadline {
            let shown = node.kubectl_output(&["get", "pods,events", "-n", namespace, "-o", "wide"]);
            panic!(
                "gave up waiting for {count} Ready pods ({selector}, replacing {old:?}) after \
                 {POD_WAIT:?}:\n{}{}",
                text(&shown.stdout),
                text(&shown.stderr)
            );
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
}

pub fn pod_name(pod: &Pod) -> String {
    pod.metadata.name.clone().expect("pod name")
}

pub fn pod_ip(pod: &Pod) -> String {
    pod.status
        .as_ref()
        .and_then(|s| s.pod_ip.clone())
        .expect("pod IP")
}

pub fn names_of(pods: &[Pod]) -> BTreeSet<String> {
    pods.iter().map(pod_name).collect()
}

/// The controller container's status: (containerID, restartCount, exit code of its last run).
pub fn container_state(pod: &Pod) -> (String, i32, Option<i32>) {
    let status = pod
        .status
        .as_ref()
        .and_then(|s| s.container_statuses.as_ref())
        .and_then(|c| c.first())
        .expect("a container status");
    let last_exit = status
        .last_state
        .as_ref()
        .and_then(|s| s.terminated.as_ref())
        .map(|t| t.exit_code);
    (
        status.container_id.clone().unwrap_or_default(),
        status.restart_count,
        last_exit,
    )
}

/// The holder of Lease `namespace/name`, if any.
pub async fn lease_holder(kube: &KubeBed, namespace: &str, name: &str) -> Option<String> {
    let leases: Api<Lease> = Api::namespaced(kube.client.clone(), namespace);
    leases
        .get_opt(name)
        .await
        .ok()
        .flatten()
        .and_then(|l| l.spec)
        .and_then(|s| s.holder_identity)
        .filter(|h| !h.is_empty())
}

/// GET a path on the controller's HTTP port of `pod` from this machine (pods are routed through
/// the node): the status code and body, or `None` when nothing answers.
pub fn pod_get(pod: &Pod, path: &str) -> Option<(u16, String)> {
    http_request(
        &pod_ip(pod),
        HTTP_PORT,
        "GET",
        path,
        "",
        Duration::from_secs(5),
    )
}

/// A pod's `mpu_sweeper_leader` gauge, read from its /metrics.
pub fn leader_gauge(pod: &Pod) -> Option<i64> {
    let (_, body) = pod_get(pod, "/metrics")?;
    body.lines()
        .find_map(|l| l.strip_prefix("mpu_sweeper_leader "))
        .and_then(|v| v.trim().parse().ok())
}

/// The pods' `mpu_sweeper_leader` gauges by pod name, once every pod answers, exactly one leads
/// and it is the holder of Lease `namespace/lease`: that holder and the gauges.
pub async fn one_leader(
    node: &NodeBed,
    namespace: &str,
    lease: &str,
    pods: &[Pod],
) -> (String, BTreeMap<String, i64>) {
    eventually(
        "one replica to hold the Lease and say so",
        POD_WAIT,
        || async {
            let holder = lease_holder(&node.kube, namespace, lease).await?;
            let gauges: BTreeMap<String, i64> = pods
                .iter()
                .map(|pod| Some((pod_name(pod), leader_gauge(pod)?)))
                .collect::<Option<_>>()?;
            let leaders: Vec<&String> = gauges
                .iter()
                .filter(|(_, v)| **v == 1)
                .map(|(k, _)| k)
                .collect();
            (leaders == [&holder]).then_some((holder, gauges))
        },
    )
    .await
}

/// What the node sees of a container's process: /proc/PID/status and the root mount.
#[derive(Debug)]
pub struct ProcessView {
    pub pid: u32,
    pub cmdline: Vec<String>,
    /// The `Uid:` and `Gid:` lines' four ids (real, effective, saved, file system).
    pub uids: Vec<u32>,
    pub gids: Vec<u32>,
    pub cap_eff: String,
    pub no_new_privs: String,
    pub seccomp: String,
    /// The options of the mount at `/` in the process's mount table.
    pub root_mount_options: Vec<String>,
    pub root_fs_type: String,
}

pub fn process_view(pid: u32) -> ProcessView {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status"))
        .unwrap_or_else(|e| panic!("/proc/{pid}/status: {e}"));
    let field = |name: &str| -> String {
        status
            .lines()
            .find_map(|l| l.strip_prefix(&format!("{name}:")))
            .unwrap_or_else(|| panic!("no {name} in /proc/{pid}/status:\n{status}"))
            .trim()
            .to_owned()
    };
    let ids = |name: &str| -> Vec<u32> {
        field(name)
            .split_whitespace()
            .map(|v| v.parse().unwrap())
            .collect()
    };
    let cmdline = std::fs::read(format!("/proc/{pid}/cmdline"))
        .unwrap()
        .split(|b| *b == 0)
        .filter(|a| !a.is_empty())
        .map(|a| String::from_utf8_lossy(a).into_owned())
        .collect();
    // mountinfo: ID PARENT MAJ:MIN ROOT MOUNTPOINT OPTIONS [OPTIONAL...] - FSTYPE SOURCE SUPER
    let mountinfo = std::fs::read_to_string(format!("/proc/{pid}/mountinfo")).unwrap();
    let root = mountinfo
        .lines()
        .rev()
        .find(|l| l.split_whitespace().nth(4) == Some("/"))
        .unwrap_or_else(|| panic!("no / in /proc/{pid}/mountinfo:\n{mountinfo}"));
    let fields: Vec<&str> = root.split_whitespace().collect();
    let after_dash = fields
        .iter()
        .position(|f| *f == "-")
        .expect("mountinfo separator");
    ProcessView {
        pid,
        cmdline,
        uids: ids("Uid"),
        gids: ids("Gid"),
        cap_eff: field("CapEff"),
        no_new_privs: field("NoNewPrivs"),
        seccomp: field("Seccomp"),
        root_mount_options: fields[5].split(',').map(str::to_owned).collect(),
        root_fs_type: fields[after_dash + 1].to_owned(),
    }
}

/// What the node sees of the controller container of `pod`: its process is the controller,
/// runs as 65532 with no capabilities, no way to gain privileges and a seccomp filter, and its
/// root file system is mounted read-only and refuses a write even from the host's root.
pub fn check_from_the_node(node: &NodeBed, pod: &Pod) {
    let (container_id, _, _) = container_state(pod);
    let pid = node.container_pid(&container_id);
    let view = process_view(pid);
    println!(
        "{}: host PID {pid}, uids {:?}, gids {:?}, CapEff {}, NoNewPrivs {}, Seccomp {}, / is {} \
         ({})",
        pod_name(pod),
        view.uids,
        view.gids,
        view.cap_eff,
        view.no_new_privs,
        view.seccomp,
        view.root_fs_type,
        view.root_mount_options.join(",")
    );
    assert_eq!(
        view.cmdline.get(..2),
        Some(
            &[
                "/usr/local/bin/mpu-sweeper".to_owned(),
                "controller".to_owned()
            ][..]
        ),
        "{view:?}"
    );
    assert_eq!(view.uids, [65532; 4], "{view:?}");
    assert_eq!(view.gids, [65532; 4], "{view:?}");
    assert_eq!(view.cap_eff, "0000000000000000", "{view:?}");
    assert_eq!(view.no_new_privs, "1", "{view:?}");
    assert_eq!(view.seccomp, "2", "a seccomp filter: {view:?}");
    assert!(
        view.root_mount_options.iter().any(|o| o == "ro"),
        "the root file system is mounted read-only: {view:?}"
    );
    let probe = format!("/proc/{pid}/root/written-by-the-node-test");
    let refused = std::fs::write(&probe, b"x").expect_err("the container's root took a write");
    assert_eq!(refused.raw_os_error(), Some(libc::EROFS), "{refused}");
}

/// `target` relative to `from` (kustomize takes bases by relative path).
pub fn relative_path(from: &Path, target: &Path) -> PathBuf {
    let (from, target) = (from.canonicalize().unwrap(), target.canonicalize().unwrap());
    let from: Vec<_> = from.components().collect();
    let target: Vec<_> = target.components().collect();
    let common = from.iter().zip(&target).take_while(|(a, b)| a == b).count();
    let mut path = PathBuf::new();
    for _ in common..from.len() {
        path.push("..");
    }
    for part in &target[common..] {
        path.push(part);
    }
    path
}
