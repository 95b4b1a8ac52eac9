//! Monitoring: the chart's PrometheusRule and Grafana dashboard. The rules the chart renders are
//! checked and unit-tested with promtool (`deploy/prometheus/mpu-sweeper-rules.test.yaml`: made-up
//! series, each alert firing and not firing); the dashboard's queries are held against the metrics
//! a real controller exposes; and a real Prometheus (Debian's, from `hack/tools.sh`) scrapes real
//! controllers while the alert expressions are evaluated on its series through its HTTP API.

mod common;

use std::collections::BTreeSet;
use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::cluster::*;
use common::prometheus::{
    Prometheus, ThreeResources, alerts, expr, hand_lease_to_ghost, names, url_encode, write_rules,
};
use common::*;
use kube::Api;
use kube::api::DeleteParams;
use mpu_sweeper::api::MultipartCleanup;
use serde::Deserialize;
use serde_json::{Value, json};

const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/mpu-sweeper");
/// The rules for plain Prometheus: the chart's PrometheusRule rendered by hack/generate.sh.
const RULES_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/mpu-sweeper-rules.yaml"
);
/// promtool unit tests of the rules; they name the rules file `mpu-sweeper-rules.yaml`.
const RULE_TESTS: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/mpu-sweeper-rules.test.yaml"
);
const DASHBOARD: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/charts/mpu-sweeper/dashboards/mpu-sweeper.json"
);
const METRICS_SOURCE: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/src/metrics");

const ALERTS: [&str; 5] = [
    "MpuSweeperNoRecentSuccess",
    "MpuSweeperRunsFailing",
    "MpuSweeperAbortsFailing",
    "MpuSweeperControllerDown",
    "MpuSweeperNoLeader",
];

/// What the dashboard must show.
const DASHBOARD_METRICS: [&str; 11] = [
    "mpu_sweeper_uploads_aborted_total",
    "mpu_sweeper_uploads_stale_total",
    "mpu_sweeper_uploads_found_total",
    "mpu_sweeper_uploads_failed_total",
    "mpu_sweeper_runs_total",
    "mpu_sweeper_throttled_total",
    "mpu_sweeper_last_success_timestamp_seconds",
    "mpu_sweeper_run_duration_seconds_bucket",
    "mpu_sweeper_sweeps_running",
    "mpu_sweeper_sweeps_queued",
    "mpu_sweeper_leader",
];

/// Families a controller only exposes once something went wrong (a labelled counter has no
/// series before its first increment); the dashboard may name them if the source defines them.
const ONLY_AFTER_ERRORS: [&str; 1] = ["mpu_sweeper_reconcile_errors_total"];

struct Tools {
    helm: PathBuf,
    promtool: PathBuf,
    prometheus: PathBuf,
}

fn tools() -> Option<Tools> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    match (
        var("MPU_TEST_HELM"),
        var("MPU_TEST_PROMTOOL"),
        var("MPU_TEST_PROMETHEUS"),
    ) {
        (Some(helm), Some(promtool), Some(prometheus)) => Some(Tools {
            helm,
            promtool,
            prometheus,
        }),
        _ => absent(
            "monitoring tools (helm, promtool, prometheus)",
            "run hack/tools.sh up and source its env file",
        ),
    }
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn run(program: &Path, args: &[&str]) -> Output {
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

fn helm(tools: &Tools, args: &[&str]) -> String {
    helm_stdout(&tools.helm, None, args)
}

fn template_args<'a>(values: &[&'a str]) -> Vec<&'a str> {
    let mut args = vec!["template", "mpu-sweeper", CHART, "-n", "mpu-sweeper-system"];
    args.extend_from_slice(values);
    args
}

/// The chart rendered with the rule and the dashboard enabled, and `values`.
fn render(tools: &Tools, values: &[&str]) -> Vec<Value> {
    let mut all = vec![
        "--set",
        "prometheusRule.enabled=true",
        "--set",
        "grafanaDashboard.enabled=true",
    ];
    all.extend_from_slice(values);
    documents(&helm(tools, &template_args(&all)))
}

/// The YAML documents of a multi-document stream, as JSON values (empty documents dropped).
fn documents(yaml: &str) -> Vec<Value> {
    serde_yaml::Deserializer::from_str(yaml)
        .map(|doc| Value::deserialize(doc).expect("valid YAML"))
        .filter(|doc: &Value| !doc.is_null())
        .collect()
}

fn find<'a>(docs: &'a [Value], kind: &str) -> Vec<&'a Value> {
    docs.iter().filter(|d| d["kind"] == kind).collect()
}

fn only<'a>(docs: &'a [Value], kind: &str) -> &'a Value {
    let found = find(docs, kind);
    assert_eq!(found.len(), 1, "exactly one {kind} expected");
    found[0]
}

/// The rule groups of the rendered PrometheusRule: a plain Prometheus rules file.
fn rules_of(docs: &[Value]) -> Value {
    let rule = only(docs, "PrometheusRule");
    assert_eq!(rule["apiVersion"], "monitoring.coreos.com/v1");
    rule["spec"].clone()
}

fn promtool(tools: &Tools, args: &[&str]) -> String {
    let output = run(&tools.promtool, args);
    let all = format!("{}{}", text(&output.stdout), text(&output.stderr));
    assert!(output.status.success(), "promtool {args:?} failed:\n{all}");
    all
}

/// The `mpu_sweeper_*` metric names `expr` mentions.
fn metric_names(expr: &str) -> BTreeSet<String> {
    let ident = |c: char| c.is_ascii_alphanumeric() || c == '_';
    let mut names = BTreeSet::new();
    for (at, _) in expr.match_indices("mpu_sweeper_") {
        if expr[..at].chars().next_back().is_some_and(ident) {
            continue;
        }
        let name: String = expr[at..].chars().take_while(|&c| ident(c)).collect();
        names.insert(name);
    }
    names
}

/// The series names a `/metrics` exposition offers: each family, with a histogram's suffixes.
fn exposed_names(exposition: &str) -> BTreeSet<String> {
    let mut names = BTreeSet::new();
    for line in exposition.lines() {
        let Some(rest) = line.strip_prefix("# TYPE ") else {
            continue;
        };
        let mut fields = rest.split_whitespace();
        let (Some(name), Some(kind)) = (fields.next(), fields.next()) else {
            continue;
        };
        names.insert(name.to_owned());
        let suffixes: &[&str] = match kind {
            "histogram" => &["_bucket", "_sum", "_count"],
            "summary" => &["_sum", "_count"],
            _ => &[],
        };
        for suffix in suffixes {
            names.insert(format!("{name}{suffix}"));
        }
    }
    names
}

fn dashboard() -> Value {
    serde_json::from_str(&std::fs::read_to_string(DASHBOARD).unwrap()).expect("dashboard JSON")
}

/// Every panel, rows' nested panels included.
fn panels(dashboard: &Value) -> Vec<&Value> {
    fn collect<'a>(panels: &'a Value, out: &mut Vec<&'a Value>) {
        for panel in panels.as_array().into_iter().flatten() {
            out.push(panel);
            collect(&panel["panels"], out);
        }
    }
    let mut out = Vec::new();
    collect(&dashboard["panels"], &mut out);
    out
}

/// The PromQL of every panel target.
fn dashboard_queries(dashboard: &Value) -> Vec<String> {
    panels(dashboard)
        .into_iter()
        .flat_map(|panel| panel["targets"].as_array().into_iter().flatten())
        .map(|target| target["expr"].as_str().expect("target expr").to_owned())
        .collect()
}

/// The queries of the dashboard's query variables (Grafana's `label_values(...)`).
fn variable_queries(dashboard: &Value) -> Vec<String> {
    dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
        .iter()
        .filter(|v| v["type"] == "query")
        .map(|v| v["definition"].as_str().expect("definition").to_owned())
        .collect()
}

/// A dashboard query as Prometheus runs it once Grafana has put in its variables (all values).
fn as_grafana_sends_it(query: &str) -> String {
    // $namespace before $name, which is a prefix of it.
    query
        .replace("$namespace", ".*")
        .replace("$name", ".*")
        .replace("$__rate_interval", "1m")
        .replace("$window", "1h")
}

#[test]
fn promtool_checks_the_chart_s_rules_and_their_unit_tests_pass() {
    let Some(tools) = tools() else { return };
    let rules = rules_of(&render(&tools, &[]));
    let by_name = alerts(&rules);
    assert_eq!(
        by_name.keys().map(String::as_str).collect::<BTreeSet<_>>(),
        ALERTS.into_iter().collect::<BTreeSet<_>>()
    );
    for (name, alert) in &by_name {
        assert!(alert["labels"]["severity"].is_string(), "{name}: {alert}");
        assert!(alert["for"].is_string(), "{name}: {alert}");
        for annotation in ["summary", "description"] {
            assert!(
                alert["annotations"][annotation].is_string(),
                "{name}: {alert}"
            );
        }
    }

    // Plain Prometheus gets exactly these rules from deploy/prometheus (hack/generate.sh).
    let shipped: Value =
        serde_yaml::from_str(&std::fs::read_to_string(RULES_FILE).unwrap()).expect("rules YAML");
    assert!(
        shipped == rules,
        "deploy/prometheus/mpu-sweeper-rules.yaml differs from the chart's rules: run hack/generate.sh"
    );

    let dir = tempfile::tempdir().unwrap();
    let path = write_rules(dir.path(), &rules);
    let checked = promtool(&tools, &["check", "rules", path.to_str().unwrap()]);
    assert!(checked.contains("SUCCESS: 5 rules found"), "{checked}");
    let tests = dir.path().join("mpu-sweeper-rules.test.yaml");
    std::fs::copy(RULE_TESTS, &tests).unwrap();
    let tested = promtool(&tools, &["test", "rules", tests.to_str().unwrap()]);
    assert!(tested.contains("SUCCESS"), "{tested}");
}

#[test]
fn rule_values_reach_the_rules() {
    let Some(tools) = tools() else { return };
    let rules = rules_of(&render(
        &tools,
        &[
            "--set",
            "prometheusRule.noRecentSuccess.threshold=1d12h",
            "--set",
            "prometheusRule.runsFailing.window=3h",
            "--set",
            "prometheusRule.abortsFailing.for=30m",
            "--set",
            "prometheusRule.controllerDown.severity=page",
            "--set",
            "prometheusRule.alertLabels.team=storage",
            "--set",
            "prometheusRule.runbookUrl=https://wiki.example.com/mpu-sweeper",
            "--set",
            r#"prometheusRule.seriesSelector=job="sweeper""#,
        ],
    ));
    let by_name = alerts(&rules);
    let no_success = expr(&by_name, "MpuSweeperNoRecentSuccess");
    assert!(no_success.ends_with("> 129600"), "{no_success}");
    assert!(
        no_success.contains(r#"_seconds{job="sweeper"})"#),
        "{no_success}"
    );
    let runs = expr(&by_name, "MpuSweeperRunsFailing");
    assert!(runs.contains("[3h]"), "{runs}");
    assert!(runs.contains("< 10800"), "{runs}");
    assert!(runs.contains(r#"{job="sweeper", result=~"#), "{runs}");
    assert_eq!(by_name["MpuSweeperAbortsFailing"]["for"], "30m");
    assert_eq!(
        expr(&by_name, "MpuSweeperControllerDown"),
        r#"absent(mpu_sweeper_leader{job="sweeper"})"#
    );
    assert_eq!(
        by_name["MpuSweeperControllerDown"]["labels"]["severity"],
        "page"
    );
    for (name, alert) in &by_name {
        assert_eq!(alert["labels"]["team"], "storage", "{name}");
        assert_eq!(
            alert["annotations"]["runbook_url"],
            format!(
                "https://wiki.example.com/mpu-sweeper#{}",
                name.to_lowercase()
            ),
            "{name}"
        );
    }
    let dir = tempfile::tempdir().unwrap();
    let path = write_rules(dir.path(), &rules);
    promtool(&tools, &["check", "rules", path.to_str().unwrap()]);

    // With the chart's ServiceMonitor, the rules keep to the job it makes Prometheus scrape, and
    // the metrics keep their own `namespace` label (the resource's).
    let docs = render(&tools, &["--set", "serviceMonitor.enabled=true"]);
    assert_eq!(
        only(&docs, "ServiceMonitor")["spec"]["endpoints"][0]["honorLabels"],
        true
    );
    let by_name = alerts(&rules_of(&docs));
    for (name, alert) in &by_name {
        let expr = alert["expr"].as_str().unwrap();
        assert!(
            expr.contains(r#"job="mpu-sweeper-metrics""#),
            "{name}: {expr}"
        );
    }
    assert!(
        find(&docs, "Service")
            .iter()
            .any(|s| s["metadata"]["name"] == "mpu-sweeper-metrics")
    );

    // Without leader election mpu_sweeper_leader stays 0: no MpuSweeperNoLeader. Each alert can
    // be turned off.
    let by_name = alerts(&rules_of(&render(
        &tools,
        &[
            "--set",
            "leaderElection.enabled=false",
            "--set",
            "prometheusRule.runsFailing.enabled=false",
        ],
    )));
    assert_eq!(
        by_name.keys().map(String::as_str).collect::<Vec<_>>(),
        [
            "MpuSweeperAbortsFailing",
            "MpuSweeperControllerDown",
            "MpuSweeperNoRecentSuccess"
        ]
    );

    // Off by default.
    let defaults = documents(&helm(&tools, &template_args(&[])));
    assert!(find(&defaults, "PrometheusRule").is_empty());
    assert!(find(&defaults, "ConfigMap").is_empty());
}

#[test]
fn the_schema_refuses_bad_monitoring_values() {
    let Some(tools) = tools() else { return };
    for (value, complaint) in [
        (
            r#"prometheusRule.noRecentSuccess.threshold="26""#,
            "at '/prometheusRule/noRecentSuccess/threshold'",
        ),
        (
            r#"prometheusRule.noRecentSuccess.threshold="0h""#,
            "at '/prometheusRule/noRecentSuccess/threshold'",
        ),
        (
            r#"prometheusRule.runsFailing.window="1y""#,
            "at '/prometheusRule/runsFailing/window'",
        ),
        (
            r#"prometheusRule.abortsFailing.for="soon""#,
            "at '/prometheusRule/abortsFailing/for'",
        ),
        (
            r#"prometheusRule.seriesSelector="{job=\"x\"}""#,
            "at '/prometheusRule/seriesSelector'",
        ),
        (
            r#"prometheusRule.runbookUrl="wiki""#,
            "at '/prometheusRule/runbookUrl'",
        ),
        (
            "prometheusRule.unknown=1",
            "additional properties 'unknown' not allowed",
        ),
        (
            r#"grafanaDashboard.labelValue="not ok""#,
            "at '/grafanaDashboard/labelValue'",
        ),
        (
            r#"grafanaDashboard.namespace="Not_A_Namespace""#,
            "at '/grafanaDashboard/namespace'",
        ),
    ] {
        let output = helm_output(
            &tools.helm,
            None,
            &template_args(&["--set", "prometheusRule.enabled=true", "--set-json", value]),
        );
        assert!(!output.status.success(), "{value} was accepted");
        let stderr = text(&output.stderr);
        assert!(stderr.contains(complaint), "{value}: {stderr}");
    }
}

#[test]
fn helm_lint_is_clean_with_monitoring_enabled() {
    let Some(tools) = tools() else { return };
    for values in [
        &[][..],
        &[
            "--set",
            "serviceMonitor.enabled=true",
            "--set",
            "replicaCount=2",
            "--set",
            "prometheusRule.labels.release=prometheus",
            "--set",
            "prometheusRule.alertLabels.team=storage",
            "--set",
            "grafanaDashboard.namespace=monitoring",
            "--set",
            "grafanaDashboard.annotations.grafana_folder=Storage",
        ][..],
    ] {
        let mut args = vec![
            "lint",
            "--strict",
            "--kube-version",
            "1.33.0",
            CHART,
            "--set",
            "prometheusRule.enabled=true",
            "--set",
            "grafanaDashboard.enabled=true",
        ];
        args.extend_from_slice(values);
        helm(&tools, &args);
    }
}

#[test]
fn the_dashboard_config_map_carries_the_dashboard() {
    let Some(tools) = tools() else { return };
    let dashboard = dashboard();
    let docs = render(&tools, &[]);
    let config_map = only(&docs, "ConfigMap");
    assert_eq!(config_map["metadata"]["name"], "mpu-sweeper-dashboard");
    assert_eq!(config_map["metadata"]["namespace"], "mpu-sweeper-system");
    assert_eq!(config_map["metadata"]["labels"]["grafana_dashboard"], "1");
    let shipped: Value = serde_json::from_str(
        config_map["data"]["mpu-sweeper.json"]
            .as_str()
            .expect("the dashboard in the ConfigMap"),
    )
    .expect("the ConfigMap's dashboard is JSON");
    assert_eq!(shipped, dashboard);

    let docs = render(
        &tools,
        &[
            "--set",
            "grafanaDashboard.label=dashboards.example.com/grafana",
            "--set",
            "grafanaDashboard.labelValue=mpu",
            "--set",
            "grafanaDashboard.namespace=monitoring",
            "--set",
            "grafanaDashboard.annotations.grafana_folder=Storage",
        ],
    );
    let config_map = only(&docs, "ConfigMap");
    assert_eq!(config_map["metadata"]["namespace"], "monitoring");
    assert_eq!(
        config_map["metadata"]["labels"]["dashboards.example.com/grafana"],
        "mpu"
    );
    assert!(config_map["metadata"]["labels"]["grafana_dashboard"].is_null());
    assert_eq!(
        config_map["metadata"]["annotations"]["grafana_folder"],
        "Storage"
    );

    // Every panel queries the dashboard's data source variable and has an id of its own.
    assert_eq!(dashboard["uid"], "mpu-sweeper");
    let all = panels(&dashboard);
    let ids: BTreeSet<u64> = all.iter().map(|p| p["id"].as_u64().unwrap()).collect();
    assert_eq!(ids.len(), all.len(), "panel ids are unique");
    for panel in all.iter().filter(|p| p["type"] != "row") {
        assert_eq!(panel["datasource"]["uid"], "${datasource}", "{panel}");
        assert!(panel["targets"].as_array().is_some_and(|t| !t.is_empty()));
    }
    let named: BTreeSet<String> = dashboard_queries(&dashboard)
        .iter()
        .chain(&variable_queries(&dashboard))
        .flat_map(|q| metric_names(q))
        .collect();
    for metric in DASHBOARD_METRICS {
        assert!(named.contains(metric), "the dashboard shows no {metric}");
    }
}

/// A scrape config for the controllers listening on `ports` of 127.0.0.1, with honor_labels as
/// the chart's ServiceMonitor: the metrics' `namespace` label is the resource's.
fn static_targets(ports: &[u16]) -> Value {
    let targets: Vec<String> = ports
        .iter()
        .map(|port| format!("127.0.0.1:{port}"))
        .collect();
    json!([{
        "job_name": "mpu-sweeper",
        "honor_labels": true,
        "static_configs": [{"targets": targets}],
    }])
}

/// Lets the controller's ServiceAccount hold a Lease in `namespace`: the shipped RBAC allows only
/// the Lease `mpu-sweeper` in mpu-sweeper-system, which other tests' controllers take.
fn allow_leases(kube: &KubeBed, namespace: &str) {
    let rbac = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: leases, namespace: {namespace}}}\n\
         rules:\n- apiGroups: [coordination.k8s.io]\n  resources: [leases]\n  verbs: [create, get, update]\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: leases, namespace: {namespace}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: leases}}\n\
         subjects:\n- {{kind: ServiceAccount, name: {SERVICE_ACCOUNT}, namespace: {CONTROLLER_NAMESPACE}}}\n"
    );
    kubectl_stdin(&kube.kubeconfig, &["apply", "-f", "-"], &rbac);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_prometheus_scrapes_the_controller_and_the_alerts_see_its_series() {
    let Some(tools) = tools() else { return };
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    // Three resources: one that succeeds, one whose bucket does not exist (its runs fail), one
    // whose aborts the server refuses (the fault proxy answers AccessDenied).
    let resources =
        ThreeResources::prepare(&ceph, "mon", std::net::Ipv4Addr::LOCALHOST.into()).await;
    let namespace = namespace_with_credentials(&kube.client, "monitoring", &ceph).await;
    allow_leases(&kube, &namespace);
    let replica = |identity: &str| {
        ControllerProcess::start(
            &kube,
            &[
                "--namespace",
                &namespace,
                "--leader-election",
                "--leader-election-namespace",
                &namespace,
                "--leader-election-lease",
                "monitoring",
                "--lease-duration-seconds",
                "6",
                "--identity",
                identity,
            ],
        )
    };
    let mut first = replica("monitoring-a");
    resources.create(&kube.client, &namespace, &ceph).await;

    // The rules and the dashboard name only metrics a real controller exposes.
    let exposition = first.get("/metrics").expect("/metrics").1;
    let exposed = exposed_names(&exposition);
    let source: String = std::fs::read_dir(METRICS_SOURCE)
        .unwrap()
        .map(|file| std::fs::read_to_string(file.unwrap().path()).unwrap())
        .collect();
    let rules = rules_of(&render(&tools, &[]));
    let by_name = alerts(&rules);
    let dashboard = dashboard();
    let queries: Vec<String> = dashboard_queries(&dashboard)
        .into_iter()
        .chain(variable_queries(&dashboard))
        .chain(by_name.keys().map(|name| expr(&by_name, name).to_owned()))
        .collect();
    for query in &queries {
        for metric in metric_names(query) {
            if ONLY_AFTER_ERRORS.contains(&metric.as_str()) {
                assert!(source.contains(&format!("\"{metric}\"")), "{metric}");
                continue;
            }
            assert!(
                exposed.contains(&metric),
                "{metric} (in {query}) is not in the controller's /metrics:\n{exposition}"
            );
        }
    }

    let prometheus = Prometheus::start(
        &tools.prometheus,
        &rules,
        static_targets(&[first.http_port]),
    );
    prometheus.wait_until_ready(WAIT).await;
    eventually("Prometheus to scrape the leader", WAIT, || async {
        let leader = prometheus.query("mpu_sweeper_leader");
        (leader.len() == 1 && leader[0].1 == 1.0).then_some(())
    })
    .await;

    // The rules pick the failing resources out of the series, and nothing else.
    let strict = alerts(&rules_of(&render(
        &tools,
        &["--set", "prometheusRule.noRecentSuccess.threshold=1s"],
    )));
    resources
        .check_alerts(
            &prometheus,
            &by_name,
            expr(&strict, "MpuSweeperNoRecentSuccess"),
            &namespace,
        )
        .await;
    let down = expr(&by_name, "MpuSweeperControllerDown");
    let no_leader = expr(&by_name, "MpuSweeperNoLeader");

    // Every dashboard query runs on the real series (as Grafana sends it, all values selected);
    // the panels show the controller and the resources.
    for query in dashboard_queries(&dashboard) {
        prometheus.query(&as_grafana_sends_it(&query));
    }
    let leader = prometheus.query("sum(mpu_sweeper_leader)");
    assert_eq!(leader[0].1, 1.0);
    let since_success = dashboard_queries(&dashboard)
        .into_iter()
        .find(|q| q.contains("mpu_sweeper_last_success_timestamp_seconds"))
        .unwrap();
    assert_eq!(
        names(&prometheus.query(&as_grafana_sends_it(&since_success))),
        BTreeSet::from(["good".to_owned()])
    );
    let namespaces = prometheus.api(&format!(
        "/api/v1/label/namespace/values?{}={}",
        url_encode("match[]"),
        url_encode("mpu_sweeper_runs_total")
    ));
    assert!(
        namespaces
            .as_array()
            .unwrap()
            .contains(&Value::from(namespace.clone())),
        "{namespaces}"
    );

    // The controller dies (SIGKILL: its Lease is not released): MpuSweeperControllerDown's
    // expression fires once Prometheus fails to scrape it.
    first.kill();
    eventually("MpuSweeperControllerDown to fire", WAIT, || async {
        let samples = prometheus.query(down);
        (samples.len() == 1 && samples[0].1 == 1.0).then_some(())
    })
    .await;
    assert_eq!(
        prometheus.query(no_leader),
        vec![],
        "nobody is up to say so"
    );
    let up = prometheus.query(r#"up{job="mpu-sweeper"}"#);
    assert_eq!(up.len(), 1);
    assert_eq!(up[0].1, 0.0);

    // A standby comes up while the Lease is held by a controller Prometheus does not see (a
    // "ghost" that will not let go for an hour): the standby is up, nobody leads.
    hand_lease_to_ghost(&kube.client, &namespace, "monitoring").await;
    let second = replica("monitoring-b");
    // Only the standby: the dead controller's port may be anyone's by now.
    prometheus.set_scrape_configs(static_targets(&[second.http_port]));
    let leaderless = prometheus.until_some(no_leader, WAIT).await;
    assert_eq!(leaderless.len(), 1, "{leaderless:?}");
    assert_eq!(
        leaderless[0].0.get("job").map(String::as_str),
        Some("mpu-sweeper")
    );
    assert_eq!(prometheus.query(down), vec![], "a controller is up");
    assert!(
        second
            .get("/metrics")
            .unwrap()
            .1
            .contains("mpu_sweeper_leader 0"),
        "{}",
        second.log()
    );
    drop(second);
    drop(prometheus);
    resources.proxy.shutdown().await;
    // Leave nothing failing behind for a later controller that watches every namespace.
    let cleanups: Api<MultipartCleanup> = Api::namespaced(kube.client.clone(), &namespace);
    for name in ["good", "broken", "denied"] {
        cleanups
            .delete(name, &DeleteParams::default())
            .await
            .expect("delete the MultipartCleanup");
    }
}
