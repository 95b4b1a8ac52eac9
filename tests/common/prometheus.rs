//! A real Prometheus (Debian's 2.42, unpacked by `hack/tools.sh up`; `MPU_TEST_PROMETHEUS`) run by
//! a test on 127.0.0.1 with the alert rules loaded, and its HTTP API as the tests use it; the
//! pod discovery it lacks; and what the alert tests share: three resources that succeed, fail
//! and have their aborts refused, and what the shipped rules must make of their series.

use std::collections::{BTreeMap, BTreeSet};
use std::net::{IpAddr, SocketAddr};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use futures::StreamExt;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::MicroTime;
use kube::api::PostParams;
use kube::runtime::{WatchStreamExt, reflector, watcher};
use kube::{Api, Client};
use serde_json::{Value, json};

use super::cluster::{WAIT, create_cleanup, eventually, wait_for_reason};
use super::fault_proxy::{Action, FaultProxy, Op, Rule};
use super::{AGE_WAIT, Server, bucket_name, create_bucket, create_uploads, http_request, keys};

/// Writes `rules` as `mpu-sweeper-rules.yaml` (the name the unit tests load) into `dir`.
pub fn write_rules(dir: &Path, rules: &Value) -> PathBuf {
    let path = dir.join("mpu-sweeper-rules.yaml");
    std::fs::write(&path, serde_yaml::to_string(rules).unwrap()).unwrap();
    path
}

/// The alerting rules of a rules file by name.
pub fn alerts(rules: &Value) -> BTreeMap<String, Value> {
    rules["groups"]
        .as_array()
        .expect("groups")
        .iter()
        .flat_map(|group| group["rules"].as_array().expect("rules").iter())
        .map(|rule| {
            (
                rule["alert"].as_str().expect("alert").to_owned(),
                rule.clone(),
            )
        })
        .collect()
}

pub fn expr<'a>(alerts: &'a BTreeMap<String, Value>, name: &str) -> &'a str {
    alerts[name]["expr"].as_str().expect("expr")
}

/// A sample of an instant vector: its labels and value.
pub type Sample = (BTreeMap<String, String>, f64);

/// The `name` labels of the samples.
pub fn names(samples: &[Sample]) -> BTreeSet<String> {
    samples
        .iter()
        .map(|(labels, _)| labels.get("name").cloned().unwrap_or_default())
        .collect()
}

/// A Prometheus server on 127.0.0.1: its own config and storage in a temporary directory,
/// scraping and evaluating every second; killed on drop.
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl Prometheus {
    /// Starts Prometheus with `rules` loaded and `scrape_configs` (a JSON array of scrape configs).
    pub fn start(binary: &Path, rules: &Value, scrape_configs: Value) -> Self {
        let dir = tempfile::tempdir().unwrap();
        write_rules(dir.path(), rules);
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let log = std::fs::File::create(dir.path().join("prometheus.log")).unwrap();
        let mut command = Command::new(binary);
        command
            .arg(format!(
                "--config.file={}",
                dir.path().join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .arg("--web.enable-lifecycle")
            .stdin(Stdio::null())
            .stdout(log.try_clone().unwrap())
            .stderr(log);
        // Debian's package keeps the web UI's files beside the binary's tree.
        if let Some(usr) = binary.parent().and_then(Path::parent) {
            command.arg(format!(
                "--web.local-assets={}",
                usr.join("share/prometheus/web").display()
            ));
        }
        Self::write_config(dir.path(), scrape_configs);
        let child = command.spawn().expect("start prometheus");
        Self { child, port, dir }
    }

    fn write_config(dir: &Path, scrape_configs: Value) {
        let config = json!({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "rule_files": ["mpu-sweeper-rules.yaml"],
            "scrape_configs": scrape_configs,
        });
        std::fs::write(
            dir.join("prometheus.yml"),
            serde_yaml::to_string(&config).unwrap(),
        )
        .unwrap();
    }

    /// Scrapes with `scrape_configs` from now on (the configuration is reloaded).
    pub fn set_scrape_configs(&self, scrape_configs: Value) {
        Self::write_config(self.dir.path(), scrape_configs);
        let (code, body) = self.http("POST", "/-/reload", "").expect("reload");
        assert_eq!(code, 200, "reload: {body}\n{}", self.log());
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("prometheus.log")).unwrap_or_default()
    }

    /// Waits for `/-/ready`; after `limit` (a hang guard) fails the test with Prometheus's log.
    pub async fn wait_until_ready(&self, limit: Duration) {
        let deadline = tokio::time::Instant::now() + limit;
        while self.http("GET", "/-/ready", "").map(|r| r.0) != Some(200) {
            assert!(
                tokio::time::Instant::now() < deadline,
                "Prometheus not ready after {limit:?}:\n{}",
                self.log()
            );
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
    }

    /// One request to its HTTP API: (status code, body); `None` when it cannot connect.
    pub fn http(&self, method: &str, path: &str, form: &str) -> Option<(u16, String)> {
        http_request(
            "127.0.0.1",
            self.port,
            method,
            path,
            form,
            Duration::from_secs(30),
        )
    }

    /// GET an API path; its `data`.
    pub fn api(&self, path: &str) -> Value {
        let (code, body) = self.http("GET", path, "").expect("Prometheus answers");
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(
            code == 200 && answer["status"] == "success",
            "GET {path}: {code} {body}"
        );
        answer["data"].clone()
    }

    /// Evaluates `expr` now (the query endpoint): the samples.
    pub fn query(&self, expr: &str) -> Vec<Sample> {
        let (code, body) = self
            .http(
                "POST",
                "/api/v1/query",
                &format!("query={}", url_encode(expr)),
            )
            .expect("Prometheus answers");
        let answer: Value = serde_json::from_str(&body).unwrap_or(Value::Null);
        assert!(
            code == 200 && answer["status"] == "success",
            "query {expr}: {code} {body}"
        );
        answer["data"]["result"]
            .as_array()
            .expect("an instant vector")
            .iter()
            .map(|sample| {
                let labels = sample["metric"]
                    .as_object()
                    .unwrap()
                    .iter()
                    .map(|(k, v)| (k.clone(), v.as_str().unwrap().to_owned()))
                    .collect();
                let value = sample["value"][1].as_str().unwrap().parse().unwrap();
                (labels, value)
            })
            .collect()
    }

    /// Waits until `expr` gives at least one sample; those samples (hang guard `limit`).
    pub async fn until_some(&self, expr: &str, limit: Duration) -> Vec<Sample> {
        eventually(&format!("samples of {expr}"), limit, || async {
            let samples = self.query(expr);
            (!samples.is_empty()).then_some(samples)
        })
        .await
    }

    /// The alerting rules as Prometheus evaluates them (`/api/v1/rules`), all groups together.
    pub fn rules(&self) -> Vec<Value> {
        let groups = self.api("/api/v1/rules")["groups"].clone();
        groups
            .as_array()
            .unwrap()
            .iter()
            .flat_map(|g| g["rules"].as_array().unwrap().clone())
            .collect()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

pub fn url_encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// Kubernetes service discovery (`kubernetes_sd_configs`, role: pod) for a Prometheus built
/// without it, as Debian's is: a watch on the pods of a namespace in the API server, written as a
/// `file_sd_configs` target file whenever they change, with the `__meta_kubernetes_*` labels
/// Prometheus's own discovery gives. Stopped on drop.
pub struct PodDiscovery {
    dir: tempfile::TempDir,
    task: tokio::task::JoinHandle<()>,
}

impl PodDiscovery {
    pub fn start(client: Client, namespace: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("pods.json");
        write_pod_targets(&path, &[]);
        let (store, writer) = reflector::store::<Pod>();
        let pods: Api<Pod> = Api::namespaced(client, namespace);
        let events = reflector(
            writer,
            watcher(pods, watcher::Config::default()).default_backoff(),
        );
        let task = tokio::spawn(async move {
            let mut events = std::pin::pin!(events);
            let mut written = Vec::new();
            while let Some(event) = events.next().await {
                if event.is_err() {
                    continue;
                }
                let mut pods: Vec<Pod> = store.state().iter().map(|p| (**p).clone()).collect();
                pods.sort_by(|a, b| a.metadata.name.cmp(&b.metadata.name));
                let groups = pod_target_groups(&pods);
                if groups != written {
                    write_targets(&path, &groups);
                    written = groups;
                }
            }
        });
        Self { dir, task }
    }

    /// The file_sd config that reads the pods' targets.
    pub fn file_sd_config(&self) -> Value {
        json!({"files": [self.dir.path().join("pods.json")], "refresh_interval": "1s"})
    }
}

impl Drop for PodDiscovery {
    fn drop(&mut self) {
        self.task.abort();
    }
}

fn write_pod_targets(path: &Path, pods: &[Pod]) {
    write_targets(path, &pod_target_groups(pods));
}

/// Writes target groups whole or not at all: Prometheus reads the file when it changes.
fn write_targets(path: &Path, groups: &[Value]) {
    let partial = path.with_extension("partial");
    std::fs::write(&partial, Value::from(groups.to_vec()).to_string()).unwrap();
    std::fs::rename(&partial, path).unwrap();
}

/// What Kubernetes service discovery (role: pod) finds in `pods`: a target per declared container
/// port at the pod's IP (a pod without ports: the IP alone), with the pod's and the port's
/// `__meta_kubernetes_*` labels. Pods without an IP yet are left out.
fn pod_target_groups(pods: &[Pod]) -> Vec<Value> {
    let sanitize = |name: &str| -> String {
        name.chars()
            .map(|c| if c.is_ascii_alphanumeric() { c } else { '_' })
            .collect()
    };
    let mut groups = Vec::new();
    for pod in pods {
        let status = pod.status.clone().unwrap_or_default();
        let Some(ip) = status.pod_ip.clone() else {
            continue;
        };
        let ready = status
            .conditions
            .iter()
            .flatten()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let spec = pod.spec.clone().unwrap_or_default();
        let meta = &pod.metadata;
        let mut labels = BTreeMap::from([
            (
                "namespace".to_owned(),
                meta.namespace.clone().unwrap_or_default(),
            ),
            ("pod_name".to_owned(), meta.name.clone().unwrap_or_default()),
            ("pod_ip".to_owned(), ip.clone()),
            ("pod_uid".to_owned(), meta.uid.clone().unwrap_or_default()),
            ("pod_phase".to_owned(), status.phase.unwrap_or_default()),
            ("pod_ready".to_owned(), ready.to_string()),
            (
                "pod_node_name".to_owned(),
                spec.node_name.clone().unwrap_or_default(),
            ),
            ("pod_host_ip".to_owned(), status.host_ip.unwrap_or_default()),
        ]);
        for (kind, map) in [("label", &meta.labels), ("annotation", &meta.annotations)] {
            for (name, value) in map.iter().flatten() {
                labels.insert(format!("pod_{kind}_{}", sanitize(name)), value.clone());
                labels.insert(
                    format!("pod_{kind}present_{}", sanitize(name)),
                    "true".into(),
                );
            }
        }
        let mut targets = Vec::new();
        for container in &spec.containers {
            for port in container.ports.iter().flatten() {
                let mut labels = labels.clone();
                labels.insert("pod_container_name".into(), container.name.clone());
                labels.insert(
                    "pod_container_port_number".into(),
                    port.container_port.to_string(),
                );
                labels.insert(
                    "pod_container_port_name".into(),
                    port.name.clone().unwrap_or_default(),
                );
                labels.insert(
                    "pod_container_port_protocol".into(),
                    port.protocol.clone().unwrap_or_else(|| "TCP".into()),
                );
                targets.push((format!("{ip}:{}", port.container_port), labels));
            }
        }
        if targets.is_empty() {
            targets.push((ip, labels));
        }
        for (target, labels) in targets {
            let labels: BTreeMap<String, String> = labels
                .into_iter()
                .map(|(k, v)| (format!("__meta_kubernetes_{k}"), v))
                .collect();
            groups.push(json!({"targets": [target], "labels": labels}));
        }
    }
    groups
}

/// The scrape job of an annotation-driven Prometheus, as many installations have it: pods kept
/// when annotated `prometheus.io/scrape`, scraped at the annotated port and path; the target's
/// namespace and pod as labels, the metrics' own `namespace` kept (honor_labels, as the chart's
/// ServiceMonitor).
pub fn annotated_pods_job(job: &str, discovery: &PodDiscovery) -> Value {
    json!({
        "job_name": job,
        "honor_labels": true,
        "file_sd_configs": [discovery.file_sd_config()],
        "relabel_configs": [
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_scrape"],
             "action": "keep", "regex": "true"},
            {"source_labels": ["__meta_kubernetes_pod_annotation_prometheus_io_path"],
             "target_label": "__metrics_path__", "regex": "(.+)"},
            {"source_labels": ["__address__", "__meta_kubernetes_pod_annotation_prometheus_io_port"],
             "regex": "([^:]+)(?::\\d+)?;(\\d+)", "replacement": "$1:$2",
             "target_label": "__address__"},
            {"source_labels": ["__meta_kubernetes_namespace"], "target_label": "namespace"},
            {"source_labels": ["__meta_kubernetes_pod_name"], "target_label": "pod"},
        ],
    })
}

/// What the alert tests watch: three MultipartCleanups, `good` (its bucket is swept), `broken`
/// (its bucket does not exist: every run fails) and `denied` (a fault proxy in front of Ceph
/// refuses its aborts with AccessDenied).
pub struct ThreeResources {
    pub good_bucket: String,
    pub denied_bucket: String,
    pub missing_bucket: String,
    pub proxy: FaultProxy,
    created: Instant,
}

impl ThreeResources {
    /// The buckets and their uploads on `ceph`, and the fault proxy listening on `proxy_host`
    /// (an address the controller reaches).
    pub async fn prepare(ceph: &Server, tag: &str, proxy_host: IpAddr) -> Self {
        let s3 = ceph.client().await;
        let good_bucket = create_bucket(&s3, &format!("{tag}-good")).await;
        let denied_bucket = create_bucket(&s3, &format!("{tag}-denied")).await;
        create_uploads(&s3, &good_bucket, &keys("old/", 3)).await;
        create_uploads(&s3, &denied_bucket, &keys("old/", 2)).await;
        let created = Instant::now();
        let proxy = FaultProxy::start_on(SocketAddr::new(proxy_host, 0), &ceph.endpoint)
            .await
            .expect("fault proxy");
        proxy.add_rule(
            Rule::on(Op::AbortMultipartUpload)
                .bucket(denied_bucket.clone())
                .then(Action::error(403, "AccessDenied", "Access Denied")),
        );
        Self {
            good_bucket,
            denied_bucket,
            missing_bucket: bucket_name(&format!("{tag}-missing")),
            proxy,
            created,
        }
    }

    /// Once the uploads are stale, creates the three resources in `namespace`, naming Ceph as
    /// the controller reaches it (`ceph`, or the proxy), and waits for each one's first verdict.
    pub async fn create(&self, client: &Client, namespace: &str, ceph: &Server) {
        tokio::time::sleep_until((self.created + AGE_WAIT).into()).await;
        let through_proxy = Server {
            endpoint: self.proxy.endpoint(),
            ..ceph.clone()
        };
        for (name, server, bucket) in [
            ("good", ceph, &self.good_bucket),
            ("broken", ceph, &self.missing_bucket),
            ("denied", &through_proxy, &self.denied_bucket),
        ] {
            create_cleanup(client, namespace, name, server, bucket, json!({})).await;
        }
        for (name, reason) in [
            ("good", "Succeeded"),
            ("broken", "BucketNotFound"),
            ("denied", "AbortsFailed"),
        ] {
            wait_for_reason(client, namespace, name, reason).await;
        }
    }

    /// The shipped rules (`by_name`) on the series Prometheus scraped from the controller that
    /// runs the three resources in `namespace`: MpuSweeperRunsFailing picks out `broken` and
    /// MpuSweeperAbortsFailing `denied` (as soon as a retry failed too: the first failure starts
    /// the series, which increase() does not count); MpuSweeperNoRecentSuccess nobody, but at a
    /// threshold of 1s (`no_success_within_1s`) `good` (the others never succeeded); a controller
    /// is up and leads. Prometheus evaluates the rules itself without errors, the two failing
    /// resources' alerts pending (their `for` has not passed).
    pub async fn check_alerts(
        &self,
        prometheus: &Prometheus,
        by_name: &BTreeMap<String, Value>,
        no_success_within_1s: &str,
        namespace: &str,
    ) {
        let started = Instant::now();
        for (alert, name, bucket) in [
            ("MpuSweeperRunsFailing", "broken", &self.missing_bucket),
            ("MpuSweeperAbortsFailing", "denied", &self.denied_bucket),
        ] {
            let samples = prometheus.until_some(expr(by_name, alert), WAIT).await;
            assert_eq!(
                names(&samples),
                BTreeSet::from([name.to_owned()]),
                "{alert}"
            );
            assert_eq!(samples[0].0["namespace"], namespace, "{alert}");
            assert_eq!(&samples[0].0["bucket"], bucket, "{alert}");
        }
        println!(
            "MpuSweeperRunsFailing and MpuSweeperAbortsFailing picked out their resources {:?} \
             after the resources' first verdicts",
            started.elapsed()
        );

        assert_eq!(
            prometheus.query(expr(by_name, "MpuSweeperNoRecentSuccess")),
            vec![]
        );
        let late = prometheus.until_some(no_success_within_1s, WAIT).await;
        assert_eq!(names(&late), BTreeSet::from(["good".to_owned()]));
        assert_eq!(
            prometheus.query(expr(by_name, "MpuSweeperControllerDown")),
            vec![]
        );
        assert_eq!(
            prometheus.query(expr(by_name, "MpuSweeperNoLeader")),
            vec![]
        );

        let active = eventually("the rules to be evaluated", WAIT, || async {
            let rules = prometheus.rules();
            if rules.len() != by_name.len() || rules.iter().any(|r| r["health"] == "unknown") {
                return None;
            }
            for rule in &rules {
                assert_eq!(rule["health"], "ok", "{rule}");
            }
            let active: BTreeSet<[String; 3]> = rules
                .iter()
                .flat_map(|r| r["alerts"].as_array().cloned().unwrap_or_default())
                .map(|a| {
                    let field = |v: &Value| v.as_str().unwrap_or_default().to_owned();
                    [
                        field(&a["labels"]["alertname"]),
                        field(&a["labels"]["name"]),
                        field(&a["state"]),
                    ]
                })
                .collect();
            (active.len() >= 2).then_some(active)
        })
        .await;
        let pending =
            |alert: &str, name: &str| [alert.to_owned(), name.to_owned(), "pending".into()];
        assert_eq!(
            active,
            BTreeSet::from([
                pending("MpuSweeperAbortsFailing", "denied"),
                pending("MpuSweeperRunsFailing", "broken"),
            ])
        );
    }
}

/// Hands Lease `namespace/name` to a holder Prometheus does not see, for an hour (read and
/// replaced again when its holder renewed it in between: a conflict).
pub async fn hand_lease_to_ghost(client: &Client, namespace: &str, name: &str) {
    let leases: Api<Lease> = Api::namespaced(client.clone(), namespace);
    eventually("the Lease handed to the ghost", WAIT, || async {
        let mut lease = leases.get(name).await.expect("the Lease");
        let spec = lease.spec.get_or_insert_with(Default::default);
        spec.holder_identity = Some("ghost".into());
        spec.lease_duration_seconds = Some(3600);
        spec.renew_time = Some(MicroTime(jiff::Timestamp::now()));
        leases
            .replace(name, &PostParams::default(), &lease)
            .await
            .ok()
    })
    .await;
}
