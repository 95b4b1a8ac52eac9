//! Packaging: the Helm chart, the kustomize install under deploy/, the Dockerfile and the Argo CD
//! health check. Linted and rendered with the real tools (hack/tools.sh), installed into the test
//! bed's API server, and proven by the controller sweeping under the ServiceAccount each install
//! path created, with the arguments and environment its Deployment gives it.

mod common;

use std::path::{Path, PathBuf};
use std::process::{Command, Output, Stdio};

use common::cluster::*;
use common::*;
use k8s_openapi::api::apps::v1::Deployment;
use kube::Api;
use serde::Deserialize;
use serde_json::{Value, json};

const ROOT: &str = env!("CARGO_MANIFEST_DIR");
const CHART: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/charts/mpu-sweeper");
const HEALTH_LUA: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/deploy/argocd/health.lua");

/// The kustomize install's controller watches every namespace: it must not run beside another
/// test's controller, or both would sweep that test's resources.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

struct Tools {
    helm: PathBuf,
    hadolint: PathBuf,
    lua: PathBuf,
    runtime_root: PathBuf,
}

fn tools() -> Option<Tools> {
    let var = |name: &str| {
        std::env::var_os(name)
            .filter(|v| !v.is_empty())
            .map(PathBuf::from)
    };
    match (
        var("MPU_TEST_HELM"),
        var("MPU_TEST_HADOLINT"),
        var("MPU_TEST_LUA"),
        var("MPU_TEST_RUNTIME_ROOT"),
    ) {
        (Some(helm), Some(hadolint), Some(lua), Some(runtime_root)) => Some(Tools {
            helm,
            hadolint,
            lua,
            runtime_root,
        }),
        _ => absent(
            "packaging tools (helm, hadolint, lua)",
            "run hack/tools.sh up and source its env file",
        ),
    }
}

fn run(program: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    Command::new(program)
        .args(args)
        .envs(env.iter().copied())
        .stdin(Stdio::null())
        .output()
        .unwrap_or_else(|e| panic!("run {}: {e}", program.display()))
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// Runs helm (against the bed's cluster when `kubeconfig` is given) and insists it succeeds.
fn helm(tools: &Tools, kubeconfig: Option<&Path>, args: &[&str]) -> String {
    let output = helm_output(tools, kubeconfig, args);
    assert!(
        output.status.success(),
        "helm {args:?} failed: {}",
        text(&output.stderr)
    );
    text(&output.stdout)
}

fn helm_output(tools: &Tools, kubeconfig: Option<&Path>, args: &[&str]) -> Output {
    common::helm_output(&tools.helm, kubeconfig, args)
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

/// What the controller container runs, for a local process: the Deployment's args without the
/// listen address (the test picks a free port), and its environment with the downward-API fields
/// resolved as the kubelet would for a pod in `namespace`.
fn container_command(deployment: &Value, namespace: &str) -> (Vec<String>, Vec<(String, String)>) {
    let container = &deployment["spec"]["template"]["spec"]["containers"][0];
    let args = container["args"]
        .as_array()
        .expect("container args")
        .iter()
        .map(|a| a.as_str().unwrap().to_owned())
        .filter(|a| !a.starts_with("--http-address"))
        .collect();
    let pod_name = format!(
        "{}-7d4b9c-x2x9q",
        deployment["metadata"]["name"].as_str().unwrap()
    );
    let env = container["env"]
        .as_array()
        .expect("container env")
        .iter()
        .map(|var| {
            let name = var["name"].as_str().unwrap().to_owned();
            let value = match var["valueFrom"]["fieldRef"]["fieldPath"].as_str() {
                Some("metadata.namespace") => namespace.to_owned(),
                Some("metadata.name") => pod_name.clone(),
                Some(other) => panic!("unexpected downward-API field {other}"),
                None => var["value"].as_str().expect("a literal value").to_owned(),
            };
            (name, value)
        })
        .collect();
    (args, env)
}

fn start_controller(
    kubeconfig: &Path,
    command: &(Vec<String>, Vec<(String, String)>),
) -> ControllerProcess {
    let args: Vec<&str> = command.0.iter().map(String::as_str).collect();
    let env: Vec<(&str, &str)> = command
        .1
        .iter()
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect();
    ControllerProcess::start_as(kubeconfig, &args, &env)
}

/// Runs the Argo CD health check on `object` with Lua 5.1, as Argo CD's gopher-lua does:
/// the object is the global `obj`, the script returns {status, message}.
fn argocd_health(tools: &Tools, object: &Value) -> (String, String) {
    let script = format!(
        "obj = {}\nlocal hs = dofile({:?})\nio.write(hs.status, \"\\t\", hs.message or \"\")\n",
        lua_literal(object),
        HEALTH_LUA
    );
    let path = std::env::temp_dir().join(format!(
        "mpu-sweeper-health-{}-{:x}.lua",
        std::process::id(),
        rand_suffix()
    ));
    std::fs::write(&path, script).unwrap();
    let output = run(&tools.lua, &[path.to_str().unwrap()], &[]);
    std::fs::remove_file(&path).ok();
    assert!(
        output.status.success(),
        "lua failed: {}",
        text(&output.stderr)
    );
    let out = text(&output.stdout);
    let (status, message) = out.split_once('\t').expect("status<TAB>message");
    (status.to_owned(), message.to_owned())
}

fn rand_suffix() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos()
}

/// A JSON value as a Lua 5.1 table constructor.
fn lua_literal(value: &Value) -> String {
    match value {
        Value::Null => "nil".into(),
        Value::Bool(b) => b.to_string(),
        Value::Number(n) => n.to_string(),
        Value::String(s) => {
            // Lua 5.1 strings: escape by byte, so any UTF-8 survives.
            let mut out = String::from("\"");
            for byte in s.bytes() {
                match byte {
                    b'"' | b'\\' => {
                        out.push('\\');
                        out.push(byte as char);
                    }
                    0x20..=0x7e => out.push(byte as char),
                    _ => out.push_str(&format!("\\{byte}")),
                }
            }
            out.push('"');
            out
        }
        Value::Array(items) => format!(
            "{{{}}}",
            items.iter().map(lua_literal).collect::<Vec<_>>().join(", ")
        ),
        Value::Object(fields) => format!(
            "{{{}}}",
            fields
                .iter()
                .map(|(k, v)| format!(
                    "[{}] = {}",
                    lua_literal(&Value::String(k.clone())),
                    lua_literal(v)
                ))
                .collect::<Vec<_>>()
                .join(", ")
        ),
    }
}

#[test]
fn the_chart_ships_the_generated_crd() {
    let generated = std::fs::read_to_string(format!("{ROOT}/crds/multipartcleanup.yaml")).unwrap();
    let shipped = std::fs::read_to_string(format!("{CHART}/crds/multipartcleanup.yaml")).unwrap();
    assert!(
        generated == shipped,
        "charts/mpu-sweeper/crds/multipartcleanup.yaml differs from crds/: run hack/generate.sh"
    );
}

#[test]
fn deploy_manifests_are_the_chart_rendered_with_its_defaults() {
    let Some(tools) = tools() else { return };
    let output = run(
        Path::new(&format!("{ROOT}/hack/generate.sh")),
        &["--check"],
        &[
            ("MPU_TEST_HELM", tools.helm.to_str().unwrap()),
            ("MPU_SWEEPER_BIN", env!("CARGO_BIN_EXE_mpu-sweeper")),
        ],
    );
    assert!(
        output.status.success(),
        "{}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
}

/// Value sets the chart must handle: defaults; one watched namespace with every option on.
const VALUE_SETS: [&[&str]; 2] = [
    &[],
    &[
        "--set",
        "watchNamespaces={default,mpu-sweeper-system}",
        "--set",
        "replicaCount=2",
        "--set",
        "podDisruptionBudget.enabled=true",
        "--set",
        "serviceMonitor.enabled=true",
        "--set",
        "priorityClassName=system-cluster-critical",
        "--set",
        "networkPolicy.enabled=true",
        "--set",
        "networkPolicy.metricsNamespaceSelector.team=monitoring",
        "--set",
        "secretLabelSelector=mpusweeper.io/tenant-credentials=true",
        "--set",
        "endpointPolicy.requireHttps=true",
        "--set",
        "endpointPolicy.allowHosts={*.example.com}",
        "--set",
        "controller.maxConcurrentSweepsPerNamespace=3",
    ],
];

#[test]
fn the_chart_passes_the_fences_to_the_controller_and_can_fence_metrics() {
    let Some(tools) = tools() else { return };
    let render = |values: &[&str]| {
        let mut args = vec!["template", "mpu-sweeper", CHART, "-n", "mpu-sweeper-system"];
        args.extend_from_slice(values);
        documents(&helm(&tools, None, &args))
    };
    let args_of = |docs: &[Value]| -> Vec<String> {
        container_command(only(docs, "Deployment"), "mpu-sweeper-system").0
    };
    let defaults = render(VALUE_SETS[0]);
    let args = args_of(&defaults);
    for expected in [
        "--max-concurrent-sweeps-per-namespace=2",
        "--min-interval=5m",
        "--deny-endpoint-cidr=169.254.0.0/16",
        "--deny-endpoint-cidr=fe80::/10",
    ] {
        assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
    }
    assert!(find(&defaults, "NetworkPolicy").is_empty());

    let fenced = render(VALUE_SETS[1]);
    let args = args_of(&fenced);
    for expected in [
        "--max-concurrent-sweeps-per-namespace=3",
        "--require-https",
        "--allow-endpoint-host=*.example.com",
        "--secret-label-selector=mpusweeper.io/tenant-credentials=true",
    ] {
        assert!(args.iter().any(|a| a == expected), "{expected} in {args:?}");
    }
    let policy = only(&fenced, "NetworkPolicy");
    assert_eq!(policy["spec"]["policyTypes"], json!(["Ingress"]));
    let rule = &policy["spec"]["ingress"][0];
    assert_eq!(
        rule["from"][0]["namespaceSelector"]["matchLabels"],
        json!({"team": "monitoring"})
    );
    assert_eq!(rule["ports"][0]["port"], "http");

    let nobody = render(&["--set", "networkPolicy.enabled=true"]);
    let policy = only(&nobody, "NetworkPolicy");
    assert_eq!(
        policy["spec"]["ingress"],
        Value::Null,
        "no one may scrape: {policy}"
    );
    let none_denied = render(&["--set-json", "endpointPolicy.denyCidrs=[]"]);
    assert!(
        args_of(&none_denied)
            .iter()
            .any(|a| a == "--deny-endpoint-cidr=none")
    );
}

#[test]
fn helm_lint_is_clean() {
    let Some(tools) = tools() else { return };
    for values in VALUE_SETS {
        let mut args = vec!["lint", "--strict", "--kube-version", "1.33.0", CHART];
        args.extend_from_slice(values);
        helm(&tools, None, &args);
    }
}

#[test]
fn rendered_chart_is_hardened_and_least_privilege() {
    let Some(tools) = tools() else { return };
    for values in VALUE_SETS {
        let mut args = vec!["template", "mpu-sweeper", CHART, "-n", "mpu-sweeper-system"];
        args.extend_from_slice(values);
        let docs = documents(&helm(&tools, None, &args));
        let deployment = only(&docs, "Deployment");
        let pod = &deployment["spec"]["template"]["spec"];
        let container = &pod["containers"][0];
        assert_eq!(pod["securityContext"]["runAsNonRoot"], true);
        assert_eq!(
            pod["securityContext"]["seccompProfile"]["type"],
            "RuntimeDefault"
        );
        let security = &container["securityContext"];
        assert_eq!(security["readOnlyRootFilesystem"], true);
        assert_eq!(security["allowPrivilegeEscalation"], false);
        assert_eq!(security["capabilities"]["drop"], json!(["ALL"]));
        for key in ["requests", "limits"] {
            assert!(container["resources"][key]["memory"].is_string(), "{key}");
            assert!(container["resources"][key]["cpu"].is_string(), "{key}");
        }
        assert_eq!(container["livenessProbe"]["httpGet"]["path"], "/healthz");
        assert_eq!(container["readinessProbe"]["httpGet"]["path"], "/readyz");
        // Longer than the controller lets the aborts in flight take on SIGTERM.
        let grace = pod["terminationGracePeriodSeconds"].as_u64().unwrap();
        let drain = mpu_sweeper::sweep::DEFAULT_DRAIN_TIMEOUT;
        assert!(grace > drain.as_secs(), "grace {grace}s vs {drain:?}");
        // Leader election is wired, so replicas and rolling updates never sweep twice.
        let args: Vec<&str> = container["args"]
            .as_array()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap())
            .collect();
        assert!(args.contains(&"--leader-election"), "{args:?}");

        // No wildcard verbs, resources or groups; Secrets only readable by name.
        let roles: Vec<&Value> = find(&docs, "ClusterRole")
            .into_iter()
            .chain(find(&docs, "Role"))
            .collect();
        assert!(!roles.is_empty());
        for role in &roles {
            for rule in role["rules"].as_array().unwrap() {
                for field in ["verbs", "resources", "apiGroups"] {
                    assert!(
                        !rule[field].as_array().unwrap().contains(&json!("*")),
                        "wildcard in {rule}"
                    );
                }
                if rule["resources"] == json!(["secrets"]) {
                    assert_eq!(rule["verbs"], json!(["get"]));
                }
            }
        }
        let namespaced = !values.is_empty();
        assert_eq!(find(&docs, "ClusterRole").is_empty(), namespaced);
        assert_eq!(find(&docs, "ServiceMonitor").len(), usize::from(namespaced));
        assert_eq!(
            find(&docs, "PodDisruptionBudget").len(),
            usize::from(namespaced)
        );
        if namespaced {
            assert!(args.contains(&"--namespace=default"), "{args:?}");
            assert_eq!(pod["priorityClassName"], "system-cluster-critical");
        }
    }
}

#[test]
fn values_schema_rejects_bad_values_at_install_time() {
    let Some(tools) = tools() else { return };
    let cases: [(&[&str], &str); 6] = [
        (&["--set", "replicaCount=two"], "/replicaCount"),
        (
            &["--set", "image.pullPolicy=Sometimes"],
            "/image/pullPolicy",
        ),
        (
            &["--set", "controller.logFormat=xml"],
            "/controller/logFormat",
        ),
        (
            &["--set", "watchNamespaces={Not_A_Namespace}"],
            "/watchNamespaces",
        ),
        (&["--set", "replicas=2"], "replicas"),
        (
            &[
                "--set",
                "replicaCount=2",
                "--set",
                "leaderElection.enabled=false",
            ],
            "/leaderElection/enabled",
        ),
    ];
    for (values, complaint) in cases {
        let mut args = vec!["template", "bad", CHART];
        args.extend_from_slice(values);
        let output = helm_output(&tools, None, &args);
        let stderr = text(&output.stderr);
        assert!(!output.status.success(), "{values:?} was accepted");
        assert!(
            stderr.contains("schema") && stderr.contains(complaint),
            "{values:?}: {stderr}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rendered_chart_passes_server_side_dry_run() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(tools) = tools() else { return };
    let Some(kube) = kube_bed().await else { return };
    for values in VALUE_SETS {
        // --dry-run=server renders with the cluster's own API versions (policy/v1beta1 PDBs on 1.20).
        // A release name of its own: Helm refuses to render over objects another install owns.
        let mut args = vec![
            "template",
            "preview",
            CHART,
            "-n",
            CONTROLLER_NAMESPACE,
            "--dry-run=server",
        ];
        args.extend_from_slice(values);
        // This cluster has no Prometheus Operator CRDs to accept a ServiceMonitor.
        args.extend(["--set", "serviceMonitor.enabled=false"]);
        let rendered = helm(&tools, Some(&kube.kubeconfig), &args);
        let applied = kubectl_stdin(
            &kube.kubeconfig,
            &["apply", "--dry-run=server", "-f", "-"],
            &rendered,
        );
        assert!(
            applied.contains("deployment.apps/preview-mpu-sweeper created (server dry run)"),
            "{applied}"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn examples_are_valid_resources_and_values() {
    let Some(tools) = tools() else { return };
    let Some(kube) = kube_bed().await else { return };
    let namespace = namespace(&kube.client, "examples").await;
    let applied = kubectl(
        &kube.kubeconfig,
        &[
            "apply",
            "--dry-run=server",
            "-n",
            &namespace,
            "-f",
            &format!("{ROOT}/deploy/examples"),
        ],
    );
    let accepted = applied
        .lines()
        .filter(|l| {
            l.starts_with("multipartcleanup.mpusweeper.io/") && l.ends_with("(server dry run)")
        })
        .count();
    assert_eq!(accepted, 6, "{applied}");

    // The GitOps examples point at this chart, with values its schema accepts.
    let gitops = |file: &str| {
        documents(
            &std::fs::read_to_string(format!("{ROOT}/deploy/examples/gitops/{file}")).unwrap(),
        )
    };
    let argocd = gitops("argocd-application.yaml");
    let source = &only(&argocd, "Application")["spec"]["source"];
    let flux = gitops("flux-helmrelease.yaml");
    let release = &only(&flux, "HelmRelease")["spec"];
    for (chart, values) in [
        (
            source["path"].as_str().unwrap(),
            &source["helm"]["valuesObject"],
        ),
        (
            release["chart"]["spec"]["chart"].as_str().unwrap(),
            &release["values"],
        ),
    ] {
        assert_eq!(
            Path::new(ROOT).join(chart).canonicalize().unwrap(),
            Path::new(CHART).canonicalize().unwrap()
        );
        let file = std::env::temp_dir().join(format!("mpu-sweeper-values-{}.yaml", rand_suffix()));
        std::fs::write(&file, serde_yaml::to_string(values).unwrap()).unwrap();
        helm(
            &tools,
            None,
            &["template", "gitops", CHART, "-f", file.to_str().unwrap()],
        );
        std::fs::remove_file(&file).ok();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helm_install_watching_one_namespace_sweeps_under_the_chart_service_account() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(tools) = tools() else { return };
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let release_namespace = namespace(&kube.client, "helm").await;
    let watched = namespace_with_credentials(&kube.client, "helm-watched", &ceph).await;
    let unwatched = namespace_with_credentials(&kube.client, "helm-unwatched", &ceph).await;
    let admin = Some(kube.kubeconfig.as_path());
    let install = helm(
        &tools,
        admin,
        &[
            "install",
            "sweeper",
            CHART,
            "-n",
            &release_namespace,
            "--set",
            &format!("watchNamespaces={{{watched}}}"),
            "--set",
            "podDisruptionBudget.enabled=true",
        ],
    );
    assert!(
        install.contains(&format!("watching namespaces: {watched}")),
        "NOTES: {install}"
    );
    assert!(
        install.contains("kind: MultipartCleanup"),
        "NOTES: {install}"
    );
    let fullname = "sweeper-mpu-sweeper";
    let manifest = documents(&helm(
        &tools,
        admin,
        &["get", "manifest", "sweeper", "-n", &release_namespace],
    ));
    let deployment = only(&manifest, "Deployment");

    // The chart's ServiceAccount with a real token; RBAC scoped to the watched namespace.
    let token = service_account_kubeconfig(&kube.kubeconfig, &release_namespace, fullname);
    let as_controller = |args: &[&str]| kubectl_output(&token, args, "");
    let allowed = as_controller(&["get", "secret", "s3-credentials", "-n", &watched]);
    assert!(allowed.status.success(), "{}", text(&allowed.stderr));
    for denied in [
        as_controller(&["get", "secret", "s3-credentials", "-n", &unwatched]),
        as_controller(&["get", "secrets", "-n", &watched]),
        as_controller(&["get", "mpc", "-n", &unwatched]),
        as_controller(&["get", "secrets", "-A"]),
    ] {
        assert!(!denied.status.success());
        assert!(
            text(&denied.stderr).contains("forbidden"),
            "{}",
            text(&denied.stderr)
        );
    }

    let s3 = ceph.client().await;
    let bucket = create_bucket(&s3, "helm").await;
    create_uploads(&s3, &bucket, &keys("old/", 4)).await;
    tokio::time::sleep(AGE_WAIT).await;
    let fresh = create_uploads(&s3, &bucket, &keys("new/", 1)).await;
    let controller = start_controller(&token, &container_command(deployment, &release_namespace));
    create_cleanup(&kube.client, &watched, "nightly", &ceph, &bucket, json!({})).await;
    create_cleanup(
        &kube.client,
        &unwatched,
        "ignored",
        &ceph,
        &bucket,
        json!({}),
    )
    .await;
    create_cleanup(
        &kube.client,
        &watched,
        "no-secret",
        &ceph,
        &bucket,
        json!({"credentialsSecretRef": {"name": "missing"}}),
    )
    .await;

    // kstatus: `kubectl wait --for=condition=Ready` is how users and pipelines wait for a sweep.
    kubectl(
        &kube.kubeconfig,
        &[
            "wait",
            "--for=condition=Ready",
            "mpc/nightly",
            "-n",
            &watched,
            "--timeout=120s",
        ],
    );
    let status = status_of(&kube.client, &watched, "nightly").await;
    let run = status.last_run.expect("lastRun");
    assert_eq!((run.found, run.stale, run.aborted), (5, 4, 4));
    assert_eq!(remaining_uploads(&s3, &bucket).await, fresh);
    wait_for_reason(&kube.client, &watched, "no-secret", "SecretNotFound").await;
    assert!(
        status_of(&kube.client, &unwatched, "ignored")
            .await
            .conditions
            .is_empty(),
        "a resource outside watchNamespaces was reconciled"
    );

    // The Argo CD health check reads the real objects right.
    for (name, health) in [("nightly", "Healthy"), ("no-secret", "Degraded")] {
        let object: Value = serde_json::from_str(&kubectl(
            &kube.kubeconfig,
            &["get", "mpc", name, "-n", &watched, "-o", "json"],
        ))
        .unwrap();
        assert_eq!(argocd_health(&tools, &object).0, health, "{name}");
    }
    assert!(
        controller.log().contains("acquired leadership"),
        "the chart's args enable leader election: {}",
        controller.log()
    );
    drop(controller);

    // Upgrade to two replicas; a value the schema rejects fails the upgrade and changes nothing.
    helm(
        &tools,
        admin,
        &[
            "upgrade",
            "sweeper",
            CHART,
            "-n",
            &release_namespace,
            "--reuse-values",
            "--set",
            "replicaCount=2",
        ],
    );
    let refused = helm_output(
        &tools,
        admin,
        &[
            "upgrade",
            "sweeper",
            CHART,
            "-n",
            &release_namespace,
            "--reuse-values",
            "--set",
            "leaderElection.enabled=false",
        ],
    );
    assert!(!refused.status.success());
    assert!(text(&refused.stderr).contains("leaderElection"));
    let deployments: Api<Deployment> = Api::namespaced(kube.client.clone(), &release_namespace);
    let deployed = deployments.get(fullname).await.unwrap();
    assert_eq!(deployed.spec.unwrap().replicas, Some(2));
    let release: Value = serde_json::from_str(&helm(
        &tools,
        admin,
        &["status", "sweeper", "-n", &release_namespace, "-o", "json"],
    ))
    .unwrap();
    assert_eq!(release["version"], 2);
    assert_eq!(release["info"]["status"], "deployed");

    // Uninstalling removes what the templates made and keeps the CRD and users' resources.
    helm(
        &tools,
        admin,
        &["uninstall", "sweeper", "-n", &release_namespace],
    );
    assert!(deployments.get_opt(fullname).await.unwrap().is_none());
    kubectl(
        &kube.kubeconfig,
        &["get", "crd", "multipartcleanups.mpusweeper.io"],
    );
    kubectl(&kube.kubeconfig, &["get", "mpc", "nightly", "-n", &watched]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kustomize_install_sweeps_every_namespace_under_its_service_account() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let applied = kubectl(
        &kube.kubeconfig,
        &["apply", "-k", &format!("{ROOT}/deploy")],
    );
    for object in [
        "namespace/mpu-sweeper-system",
        "customresourcedefinition.apiextensions.k8s.io/multipartcleanups.mpusweeper.io",
        "clusterrole.rbac.authorization.k8s.io/mpu-sweeper",
        "deployment.apps/mpu-sweeper",
        "service/mpu-sweeper-metrics",
    ] {
        assert!(applied.contains(object), "{object} missing from: {applied}");
    }
    let rendered = documents(&kubectl(
        &kube.kubeconfig,
        &["kustomize", &format!("{ROOT}/deploy")],
    ));
    let deployment = only(&rendered, "Deployment");

    let s3 = ceph.client().await;
    let bucket = create_bucket(&s3, "kustomize").await;
    create_uploads(&s3, &bucket, &keys("old/", 3)).await;
    tokio::time::sleep(AGE_WAIT).await;
    let namespace = namespace_with_credentials(&kube.client, "kustomize", &ceph).await;
    // The same ServiceAccount (mpu-sweeper-system/mpu-sweeper) the kustomization created.
    let mut controller = start_controller(
        &kube.controller_kubeconfig,
        &container_command(deployment, CONTROLLER_NAMESPACE),
    );
    create_cleanup(&kube.client, &namespace, "all", &ceph, &bucket, json!({})).await;
    kubectl(
        &kube.kubeconfig,
        &[
            "wait",
            "--for=condition=Ready",
            "mpc/all",
            "-n",
            &namespace,
            "--timeout=120s",
        ],
    );
    let status = status_of(&kube.client, &namespace, "all").await;
    assert_eq!(status.last_run.unwrap().aborted, 3);
    assert_eq!(remaining_uploads(&s3, &bucket).await, vec![]);
    assert_eq!(controller.terminate(), 0, "{}", controller.log());
}

#[test]
fn dockerfile_passes_hadolint_and_runs_the_controller() {
    let Some(tools) = tools() else { return };
    let output = run(&tools.hadolint, &[&format!("{ROOT}/Dockerfile")], &[]);
    assert!(
        output.status.success(),
        "hadolint: {}{}",
        text(&output.stdout),
        text(&output.stderr)
    );
    // The chart's args follow the image's entrypoint; the two must agree.
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    assert!(
        dockerfile.contains(r#"ENTRYPOINT ["/usr/local/bin/mpu-sweeper", "controller"]"#),
        "the chart and deploy/ pass controller flags only"
    );
    // `docker build .` builds from source: the last stage (the default target) is the runtime
    // stage around the Rust builder's binary. `--target prebuilt` (hack/image.sh, tests/image.rs)
    // is the same runtime stage around a binary from the build context.
    let stages: Vec<&str> = dockerfile.split("\nFROM ").skip(1).collect();
    let last = stages.last().expect("stages");
    assert!(last.starts_with("runtime\n"), "last stage: {last}");
    assert!(
        last.contains(
            "COPY --from=builder /src/target/release/mpu-sweeper /usr/local/bin/mpu-sweeper"
        ),
        "last stage: {last}"
    );
    assert!(
        stages.iter().any(|s| s.starts_with("runtime AS prebuilt\n")
            && s.contains("COPY ${BINARY} /usr/local/bin/mpu-sweeper")),
        "a prebuilt stage"
    );
    assert!(
        stages.iter().any(
            |s| s.starts_with("${RUNTIME_BASE} AS runtime\n") && s.contains("USER 65532:65532")
        ),
        "a runtime stage on RUNTIME_BASE, as the nonroot user"
    );
}

/// The Dockerfile builds on Debian bookworm and runs on distroless cc-debian12, which gives the
/// binary glibc and libgcc and nothing else. The runtime root from hack/tools.sh holds exactly
/// Debian 12's libc6 and libgcc-s1: the binary must find every library there and work, as the
/// image's non-root user. (The test binary is the debug build; release links the same libraries.
/// tests/image.rs runs it in the image built from the Dockerfile itself.)
#[test]
fn binary_runs_with_only_the_runtime_image_libraries() {
    let Some(tools) = tools() else { return };
    let Some(servers) = bed() else { return };
    let dockerfile = std::fs::read_to_string(format!("{ROOT}/Dockerfile")).unwrap();
    assert!(dockerfile.contains("-bookworm AS builder"));
    // The runtime stage's base, unless a build without a registry (hack/image.sh) replaces it
    // with the equivalent it assembles from Debian packages.
    assert!(dockerfile.contains("ARG RUNTIME_BASE=gcr.io/distroless/cc-debian12:nonroot\n"));

    let root = &tools.runtime_root;
    let inside = "/usr/local/bin/mpu-sweeper";
    std::fs::copy(
        env!("CARGO_BIN_EXE_mpu-sweeper"),
        root.join(inside.trim_start_matches('/')),
    )
    .unwrap();
    let chroot = |args: &[&str], env: &[(&str, &str)]| {
        let mut all = vec!["--userspec=65532:65532", root.to_str().unwrap()];
        all.extend_from_slice(args);
        run(Path::new("chroot"), &all, env)
    };
    let listed = chroot(&["/lib64/ld-linux-x86-64.so.2", "--list", inside], &[]);
    let libraries = text(&listed.stdout);
    assert!(listed.status.success(), "{}", text(&listed.stderr));
    assert!(!libraries.contains("not found"), "{libraries}");
    assert!(libraries.contains("libc.so.6"), "{libraries}");

    let crd = chroot(&[inside, "crd"], &[]);
    assert!(crd.status.success(), "{}", text(&crd.stderr));
    assert_eq!(text(&crd.stdout), mpu_sweeper::api::crd_yaml());

    // TLS, the AWS SDK and the CA bundle work with what the image has.
    let seaweed = servers
        .into_iter()
        .find(|s| s.kind == ServerKind::SeaweedFs)
        .unwrap();
    let https = std::env::var("MPU_TEST_SEAWEEDFS_HTTPS_ENDPOINT").unwrap();
    let ca = std::env::var("MPU_TEST_SEAWEEDFS_CA_BUNDLE").unwrap();
    std::fs::copy(&ca, root.join("tmp/ca.crt")).unwrap();
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let bucket = runtime.block_on(async { create_bucket(&seaweed.client().await, "image").await });
    let sweep = chroot(
        &[
            inside,
            "sweep",
            "--bucket",
            &bucket,
            "--max-age",
            "1d",
            "--endpoint",
            &https,
            "--addressing-style",
            "path",
            "--ca-bundle",
            "/tmp/ca.crt",
            "--output",
            "json",
            "--quiet",
        ],
        &[
            ("AWS_ACCESS_KEY_ID", &seaweed.access_key),
            ("AWS_SECRET_ACCESS_KEY", &seaweed.secret_key),
            ("AWS_EC2_METADATA_DISABLED", "true"),
        ],
    );
    assert!(sweep.status.success(), "{}", text(&sweep.stderr));
    let summary: Value = serde_json::from_slice(&sweep.stdout).unwrap();
    assert_eq!(summary["bucket"], bucket);
}

fn resource(status: Value) -> Value {
    json!({
        "apiVersion": "mpusweeper.io/v1alpha1",
        "kind": "MultipartCleanup",
        "metadata": {"name": "x", "namespace": "ns", "generation": 2},
        "spec": {"bucket": "b", "maxAge": "7d", "credentialsSecretRef": {"name": "s"}},
        "status": status,
    })
}

fn conditions(ready: (&str, &str), reconciling: &str, stalled: &str, message: &str) -> Value {
    let condition = |kind: &str, status: &str, reason: &str| {
        json!({"type": kind, "status": status, "reason": reason, "message": message,
               "observedGeneration": 2, "lastTransitionTime": "2026-11-20T10:00:00Z"})
    };
    let quiet = |status: &str| {
        if status == "True" {
            ready.1
        } else {
            "AsExpected"
        }
    };
    json!([
        condition("Ready", ready.0, ready.1),
        condition("Reconciling", reconciling, quiet(reconciling)),
        condition("Stalled", stalled, quiet(stalled)),
    ])
}

#[test]
fn argocd_health_check_maps_conditions_to_health() {
    let Some(tools) = tools() else { return };
    let last_run = json!({"startTime": "2026-11-20T10:00:00Z", "completionTime": "2026-11-20T10:00:02Z",
        "found": 3, "stale": 2, "aborted": 2, "alreadyGone": 0, "skipped": 0, "failed": 0, "dryRun": false});
    let cases = [
        ("no status yet", json!(null), "Progressing", "Waiting"),
        (
            "status of an older generation",
            json!({"observedGeneration": 1, "conditions": conditions(("True", "Succeeded"), "False", "False", "ok")}),
            "Progressing",
            "generation 2",
        ),
        (
            "swept",
            json!({"observedGeneration": 2, "conditions": conditions(("True", "Succeeded"), "False", "False", "aborted 2 of 2 stale uploads")}),
            "Healthy",
            "aborted 2 of 2",
        ),
        (
            "stalled on a missing Secret",
            json!({"observedGeneration": 2, "conditions": conditions(("False", "SecretNotFound"), "False", "True", "Secret ns/s not found")}),
            "Degraded",
            "not found",
        ),
        (
            "retrying an unreachable endpoint",
            json!({"observedGeneration": 2, "conditions": conditions(("False", "EndpointUnreachable"), "False", "False", "cannot reach")}),
            "Degraded",
            "cannot reach",
        ),
        (
            "suspended",
            json!({"observedGeneration": 2, "conditions": conditions(("False", "Suspended"), "False", "False", "suspended")}),
            "Suspended",
            "suspended",
        ),
        (
            "first sweep running",
            json!({"observedGeneration": 2, "conditions": conditions(("False", "Running"), "True", "False", "sweeping bucket b")}),
            "Progressing",
            "sweeping",
        ),
        (
            "scheduled sweep after a good one",
            json!({"observedGeneration": 2, "lastRun": last_run, "lastSuccessfulRunTime": "2026-11-20T10:00:02Z",
                   "conditions": conditions(("False", "Running"), "True", "False", "sweeping bucket b")}),
            "Healthy",
            "previous sweep succeeded",
        ),
    ];
    for (case, status, health, message) in cases {
        let (got, got_message) = argocd_health(&tools, &resource(status));
        assert_eq!(got, health, "{case}: {got_message}");
        assert!(got_message.contains(message), "{case}: {got_message}");
    }

    // What Argo CD receives from deploy/argocd is this same script.
    let rendered = run(
        Path::new("kubectl"),
        &["kustomize", &format!("{ROOT}/deploy/argocd")],
        &[],
    );
    assert!(rendered.status.success(), "{}", text(&rendered.stderr));
    let docs = documents(&text(&rendered.stdout));
    let config_map = only(&docs, "ConfigMap");
    assert_eq!(config_map["metadata"]["name"], "argocd-cm");
    assert_eq!(
        config_map["data"]["resource.customizations.health.mpusweeper.io_MultipartCleanup"],
        std::fs::read_to_string(HEALTH_LUA).unwrap()
    );
}
