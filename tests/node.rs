//! The operator installed for real on the test bed's node (`hack/nodeenv.sh up`): a real kubelet
//! runs the image built from the Dockerfile (`MPU_TEST_IMAGE`) as pods, installed with `helm
//! install` and with `kubectl apply -k` of an overlay of deploy/. The pods reach the API server
//! through the `kubernetes` Service and the S3 bed through the forwarders on `MPU_TEST_POD_HOST`;
//! every sweep here is done from inside a pod, and checked on the S3 server itself.
//!
//! What is proven: probes pass (Running and Ready); one Lease holder among two replicas, and the
//! standby takes over when the leader pod is evicted as a drain does (the PodDisruptionBudget
//! letting one pod go, not two); a `helm upgrade` that rolls the pods in the middle of a long
//! sweep aborts no upload twice; the process runs as 65532 with a read-only root and no
//! capabilities, seen from the node (/proc of the container's host PID); the pod survives an
//! API-server restart; and a real Prometheus finds the pods by their annotations, scrapes them
//! and evaluates the shipped alert rules on their series.
//!
//! Each test installs into a namespace of its own, watching only that namespace, and removes the
//! install and the namespace afterwards, passed or failed. They share the cluster, except the
//! API-server restart, which runs alone.

mod common;

use std::collections::BTreeSet;
use std::path::Path;
use std::time::{Duration, Instant};

use common::cluster::*;
use common::fault_proxy::{Action, Op, Rule};
use common::node::*;
use common::prometheus::{
    PodDiscovery, Prometheus, ThreeResources, alerts, annotated_pods_job, expr, hand_lease_to_ghost,
};
use common::*;
use k8s_openapi::api::core::v1::Pod;
use mpu_sweeper::api::MultipartCleanupStatus;
use serde_json::{Value, json};

/// The rules for plain Prometheus: the chart's PrometheusRule rendered by hack/generate.sh.
const RULES_FILE: &str = concat!(
    env!("CARGO_MANIFEST_DIR"),
    "/deploy/prometheus/mpu-sweeper-rules.yaml"
);

/// Max age of the tests that also keep young uploads: a young upload must still be younger when
/// the pod lists it, which a busy 2-core machine may take a few seconds to do.
const MAX_AGE_KEEPING_YOUNG: &str = "12s";
const AGE_KEEPING_YOUNG: Duration = Duration::from_secs(13);
/// The chart's default `leaderElection.leaseDurationSeconds`.
const LEASE_DURATION: Duration = Duration::from_secs(15);

/// Waits until `since + age` has passed.
async fn aged(since: Instant, age: Duration) {
    tokio::time::sleep_until((since + age).into()).await;
}

fn ready_reason(status: &MultipartCleanupStatus) -> Option<&str> {
    condition(status, "Ready").map(|c| c.1)
}

/// Waits (POD_WAIT) for a Succeeded verdict on `name` that answers run request `token` (any
/// Succeeded verdict for `None`).
async fn succeeded(
    client: &kube::Client,
    namespace: &str,
    name: &str,
    token: Option<&str>,
) -> MultipartCleanupStatus {
    eventually(
        &format!("{namespace}/{name} to succeed (run request {token:?})"),
        POD_WAIT,
        || async {
            let status = status_of(client, namespace, name).await;
            (token.is_none_or(|t| status.last_handled_run_request.as_deref() == Some(t))
                && ready_reason(&status) == Some("Succeeded"))
            .then_some(status)
        },
    )
    .await
}

/// (a) `helm install` with two replicas: both Ready, one leads; it sweeps from inside its pod;
/// the containers checked from the node; the leader evicted from the cordoned node, the standby
/// takes the Lease within the lease duration and the next run is its.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helm_install_of_two_replicas_sweeps_from_the_pod_and_hands_over_the_lease() {
    let Some(bed) = on_the_node("node-helm", ClusterUse::Shared).await else {
        return;
    };
    let (node, client, ceph, s3, bucket) = bed.parts();
    create_uploads(s3, bucket, &keys("first/old-", 6)).await;
    create_uploads(s3, bucket, &keys("second/old-", 4)).await;
    let created = Instant::now();
    let namespace = namespace_with_credentials(client, "node-helm", ceph).await;
    let (release, pods, holder) = Release::install_ready(
        node,
        &namespace,
        2,
        &["--set", "podDisruptionBudget.enabled=true"],
    )
    .await;
    for pod in &pods {
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(
            spec.containers[0].image.as_deref(),
            Some(node.image.as_str())
        );
        assert_eq!(spec.node_name.as_deref(), Some(node.node_name.as_str()));
        check_from_the_node(node, pod);
    }
    // The PodDisruptionBudget (policy/v1beta1 on this 1.20 cluster) counts both pods and would
    // let a drain take one.
    eventually(
        "the PodDisruptionBudget to count both pods",
        WAIT,
        || async {
            let output = node.kubectl_output(&[
                "get",
                "pdb",
                &release.fullname,
                "-n",
                &namespace,
                "-o",
                "json",
            ]);
            let pdb: Value = serde_json::from_slice(&output.stdout).ok()?;
            let status = &pdb["status"];
            (status["expectedPods"] == 2
                && status["currentHealthy"] == 2
                && status["disruptionsAllowed"] == 1)
                .then_some(())
        },
    )
    .await;

    // A sweep from inside the leader's pod, through the forwarder: the stale uploads under
    // first/ go, the young ones and everything under second/ stay.
    aged(created, AGE_KEEPING_YOUNG).await;
    let young = create_uploads(s3, bucket, &keys("first/new-", 2)).await;
    create_cleanup(
        client,
        &namespace,
        "nightly",
        &node.pod_ceph(ceph),
        bucket,
        json!({"maxAge": MAX_AGE_KEEPING_YOUNG, "prefix": "first/"}),
    )
    .await;
    let status = succeeded(client, &namespace, "nightly", None).await;
    let run = status.last_run.clone().expect("lastRun");
    assert_eq!(
        (run.found, run.stale, run.aborted, run.failed),
        (8, 6, 6, 0),
        "{run:?}"
    );
    let left = remaining_uploads(s3, bucket).await;
    let kept: Vec<_> = left
        .iter()
        .filter(|(k, _)| k.starts_with("first/"))
        .cloned()
        .collect();
    assert_eq!(kept, young, "exactly the young uploads stay");
    assert_eq!(left.len(), 2 + 4);

    // The node is drained of the leader, as `kubectl drain` does: cordoned (the leader's
    // replacement cannot start: the standby must take over), the leader evicted, which the
    // PodDisruptionBudget allows, and then the standby too, which it refuses.
    let standby = names_of(&pods)
        .into_iter()
        .find(|name| *name != holder)
        .unwrap();
    let cordoned = Cordoned::new(node);
    let evicted_at = Instant::now();
    node.evict(&namespace, &holder)
        .await
        .expect("evict the leader pod");
    let refused = node
        .evict(&namespace, &standby)
        .await
        .expect_err("the PodDisruptionBudget lets only one pod go");
    assert!(
        matches!(&refused, kube::Error::Api(status) if status.code == 429),
        "{refused:?}"
    );
    let new_holder = eventually("the standby to take the Lease", POD_WAIT, || async {
        lease_holder(&node.kube, &namespace, &release.fullname)
            .await
            .filter(|h| *h != holder)
    })
    .await;
    let takeover = evicted_at.elapsed();
    println!("takeover: {new_holder} holds the Lease {takeover:?} after {holder} was evicted");
    assert_eq!(new_holder, standby);
    // The evicted leader releases the Lease on SIGTERM; even had it not, the standby takes over
    // once the Lease is a whole duration old, seen at its next try (a fifth of it later). The
    // margin is for a busy machine.
    assert!(
        takeover < LEASE_DURATION + LEASE_DURATION / 5 + Duration::from_secs(5),
        "took {takeover:?}"
    );
    // Uncordoned, the Deployment's replacement for the evicted pod starts and stands by.
    drop(cordoned);
    let evicted: Vec<Pod> = pods.into_iter().filter(|p| pod_name(p) == holder).collect();
    let pods = wait_for_pods_replacing(node, &namespace, &release.selector(), 2, &evicted).await;
    assert!(names_of(&pods).contains(&standby));
    let (leader, gauges) = one_leader(node, &namespace, &release.fullname, &pods).await;
    assert_eq!(leader, new_holder, "{gauges:?}");

    // The next run is the new leader's: second/ is swept on request.
    patch_spec(client, &namespace, "nightly", json!({"prefix": "second/"})).await;
    annotate(client, &namespace, "nightly", "after-takeover").await;
    let status = succeeded(client, &namespace, "nightly", Some("after-takeover")).await;
    let run = status.last_run.clone().expect("lastRun");
    assert_eq!((run.found, run.aborted, run.failed), (4, 4, 0), "{run:?}");
    assert_eq!(status.total_aborted, 10);
    assert_eq!(remaining_uploads(s3, bucket).await, young);
    let new_leader = pods.iter().find(|p| pod_name(p) == leader).unwrap();
    let (_, metrics) = pod_get(new_leader, "/metrics").expect("/metrics");
    let counted = format!(
        r#"mpu_sweeper_runs_total{{bucket="{bucket}",name="nightly",namespace="{namespace}",result="succeeded"}} 1"#
    );
    assert!(
        metrics.contains(&counted),
        "the new leader ran it: {counted}\n{metrics}"
    );
    for pod in &pods {
        let (_, restarts, _) = container_state(pod);
        assert_eq!(restarts, 0, "liveness held: {}", pod_name(pod));
    }
    let log = node.kubectl(&["logs", &leader, "-n", &namespace]);
    assert!(log.contains("acquired leadership"), "{log}");
}

/// (b) `helm upgrade` rolls both pods while the leader is in the middle of a long sweep (each
/// abort slowed down by the fault proxy, which the pods reach on MPU_TEST_POD_HOST): every
/// stale upload is aborted exactly once, and the status adds up afterwards.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn helm_upgrade_in_the_middle_of_a_long_sweep_aborts_no_upload_twice() {
    const TOTAL: usize = 300;
    let Some(bed) = on_the_node("node-roll", ClusterUse::Shared).await else {
        return;
    };
    let (node, client, ceph, s3, bucket) = bed.parts();
    let stale = create_uploads(s3, bucket, &keys("roll/", TOTAL)).await;
    let created = Instant::now();
    // Slow enough (300 aborts one at a time: 90 s at least) for the rollout to reach the leader
    // before it is done; the brake comes off once the rollout is.
    let (proxy, through_proxy) = node.fault_proxy(ceph).await;
    proxy.add_rule(
        Rule::on(Op::AbortMultipartUpload).then(Action::delay(Duration::from_millis(300))),
    );
    let namespace = namespace_with_credentials(client, "node-roll", ceph).await;
    let (release, before, first_leader) = Release::install_ready(node, &namespace, 2, &[]).await;

    aged(created, AGE_WAIT).await;
    create_cleanup(
        client,
        &namespace,
        "rolling",
        &through_proxy,
        bucket,
        json!({"concurrency": 1}),
    )
    .await;
    eventually("the sweep to be under way", WAIT, || async {
        (proxy.count(Op::AbortMultipartUpload) >= 20).then_some(())
    })
    .await;
    let upgraded_at = Instant::now();
    let aborted_before = proxy.count(Op::AbortMultipartUpload);
    release.upgrade(node, &["--set", "controller.logLevel=debug"]);
    let after = wait_for_pods_replacing(node, &namespace, &release.selector(), 2, &before).await;
    let rolled = upgraded_at.elapsed();
    let aborted_by_rollout = proxy.count(Op::AbortMultipartUpload);
    proxy.clear_rules();
    let status = succeeded(client, &namespace, "rolling", None).await;
    let run = status.last_run.clone().expect("lastRun");
    let (new_leader, _) = one_leader(node, &namespace, &release.fullname, &after).await;
    println!(
        "rolled in {rolled:?}: aborts at the upgrade {aborted_before}, when the new pods were Ready \
         {aborted_by_rollout}; leader {first_leader} -> {new_leader}; last run found {} aborted {}, \
         totalAborted {}",
        run.found, run.aborted, status.total_aborted
    );
    assert!(
        (run.found as usize) < TOTAL,
        "the last run found all {TOTAL} uploads: the rollout did not land in the middle of the sweep"
    );
    let events = events_for(client, &namespace, "rolling").await;
    println!("events of the resource: {events:?}");
    assert!(
        events
            .iter()
            .any(|(kind, reason, _)| kind == "Warning" && reason == "Interrupted"),
        "the leader stopped mid-sweep on SIGTERM and said so: {events:?}"
    );

    // No upload got two aborts, every one was answered, and none is left.
    let per_upload = proxy.counts_by_upload(Op::AbortMultipartUpload);
    let twice: Vec<_> = per_upload.iter().filter(|(_, n)| **n > 1).collect();
    assert!(twice.is_empty(), "aborted more than once: {twice:?}");
    let expected: BTreeSet<(String, String)> = stale.iter().cloned().collect();
    assert_eq!(
        per_upload.keys().cloned().collect::<BTreeSet<_>>(),
        expected,
        "one abort per stale upload"
    );
    let unanswered = proxy.count_where(|r| r.op == Op::AbortMultipartUpload && r.status != 204);
    assert_eq!(unanswered, 0, "aborts cut off by the rollout");
    assert_eq!(remaining_uploads(s3, bucket).await, vec![]);

    // The status adds up: the interrupted run's aborts and the rest.
    assert_eq!(status.total_aborted as usize, TOTAL, "{status:?}");
    assert_eq!((run.failed, run.already_gone), (0, 0), "{run:?}");
    assert_eq!(status.conditions.len(), 3);
    assert_eq!(
        condition(&status, "Stalled").map(|c| c.0),
        Some("False"),
        "{status:?}"
    );
    proxy.shutdown().await;
}

/// (c) `kubectl apply -k` of an overlay of deploy/ that sets the image: the pod runs, is Ready,
/// leads and sweeps.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn kustomize_overlay_of_deploy_runs_the_pod_and_it_sweeps() {
    let Some(bed) = on_the_node("node-kustomize", ClusterUse::Shared).await else {
        return;
    };
    let (node, client, ceph, s3, bucket) = bed.parts();
    create_uploads(s3, bucket, &keys("old/", 3)).await;
    let created = Instant::now();
    let namespace = namespace_with_credentials(client, "node-kustomize", ceph).await;
    let _installed = KustomizeInstall {
        kubeconfig: node.kube.kubeconfig.clone(),
        namespace: namespace.clone(),
    };
    // The overlay sets the image, as the README says. It also limits the controller to this
    // test's namespace (WATCH_NAMESPACES): this cluster holds the resources every other test
    // left behind, which an all-namespaces controller would sweep first. The ClusterRole and
    // everything else are deploy/'s.
    let (repository, tag) = node.image_parts();
    let dir = tempfile::tempdir().unwrap();
    let base = relative_path(
        dir.path(),
        &Path::new(env!("CARGO_MANIFEST_DIR")).join("deploy"),
    );
    let kustomization = format!(
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\nresources:\n  - {}\n\
         images:\n  - name: ghcr.io/mpu-sweeper/mpu-sweeper\n    newName: {repository}\n    newTag: \"{tag}\"\n\
         patches:\n  - target: {{kind: Deployment, name: mpu-sweeper}}\n    patch: |-\n      \
         - op: add\n        path: /spec/template/spec/containers/0/env/-\n        \
         value: {{name: WATCH_NAMESPACES, value: \"{namespace}\"}}\n",
        base.display()
    );
    std::fs::write(dir.path().join("kustomization.yaml"), &kustomization).unwrap();
    let applied = node.kubectl(&["apply", "-k", dir.path().to_str().unwrap()]);
    assert!(applied.contains("deployment.apps/mpu-sweeper"), "{applied}");
    let selector = "app.kubernetes.io/name=mpu-sweeper,app.kubernetes.io/instance=mpu-sweeper";
    let pods = wait_for_ready_pods(node, CONTROLLER_NAMESPACE, selector, 1).await;
    let pod = &pods[0];
    assert_eq!(
        pod.spec.as_ref().unwrap().containers[0].image.as_deref(),
        Some(node.image.as_str())
    );
    let (holder, _) = one_leader(node, CONTROLLER_NAMESPACE, "mpu-sweeper", &pods).await;
    println!("kustomize install: pod {holder} Ready and holding the Lease");
    check_from_the_node(node, pod);

    aged(created, AGE_KEEPING_YOUNG).await;
    let young = create_uploads(s3, bucket, &keys("new/", 1)).await;
    create_cleanup(
        client,
        &namespace,
        "kustomized",
        &node.pod_ceph(ceph),
        bucket,
        json!({"maxAge": MAX_AGE_KEEPING_YOUNG}),
    )
    .await;
    let status = succeeded(client, &namespace, "kustomized", None).await;
    let run = status.last_run.expect("lastRun");
    assert_eq!((run.found, run.aborted, run.failed), (4, 3, 0), "{run:?}");
    assert_eq!(remaining_uploads(s3, bucket).await, young);
}

/// (d) The controller pod lives through a kube-apiserver restart: it answers /healthz while the
/// API server is away, stays the same pod (its container restarted at most by the documented
/// exit on lost leadership) and sweeps a resource created afterwards. Needs the local bed,
/// whose API server the test can stop and start.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn the_controller_pod_survives_an_api_server_restart() {
    let Some(bed) = on_the_node("node-api", ClusterUse::Alone).await else {
        return;
    };
    let (node, client, ceph, s3, bucket) = bed.parts();
    if !node.local_apiserver {
        absent::<()>(
            "local API server (MPU_TEST_KUBE_LOCAL=1)",
            "restarting the API server needs hack/kubeenv.sh's bed",
        );
        return;
    }
    create_uploads(s3, bucket, &keys("before/", 3)).await;
    create_uploads(s3, bucket, &keys("after/", 3)).await;
    let created = Instant::now();
    let namespace = namespace_with_credentials(client, "node-api", ceph).await;
    let (release, pods, _) = Release::install_ready(node, &namespace, 1, &[]).await;
    let pod_before = pods[0].clone();
    aged(created, AGE_WAIT).await;
    // One resource per prefix, swept from the pod once created.
    let from_pods = node.pod_ceph(ceph);
    let sweep = |name: &'static str| {
        let (namespace, from_pods) = (&namespace, &from_pods);
        async move {
            let spec = json!({"prefix": format!("{name}/")});
            create_cleanup(client, namespace, name, from_pods, bucket, spec).await;
            let status = succeeded(client, namespace, name, None).await;
            assert_eq!(status.last_run.unwrap().aborted, 3, "{name}");
        }
    };
    sweep("before").await;
    let (_, restarts_before, _) = container_state(&pod_before);

    let stopped_at = Instant::now();
    let stopped = StoppedApiServer::stop();
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert_eq!(
        pod_get(&pod_before, "/healthz").map(|r| r.0),
        Some(200),
        "the pod answers /healthz while the API server is away"
    );
    stopped.start();
    let outage = stopped_at.elapsed();

    // It carries on: a resource created after the restart is swept.
    sweep("after").await;
    assert_eq!(remaining_uploads(s3, bucket).await, vec![]);
    let pods = wait_for_ready_pods(node, &namespace, &release.selector(), 1).await;
    assert_eq!(
        pod_name(&pods[0]),
        pod_name(&pod_before),
        "the same pod, not a replacement"
    );
    let (_, restarts_after, last_exit) = container_state(&pods[0]);
    let log = node.kubectl(&["logs", &pod_name(&pods[0]), "-n", &namespace]);
    let failed_renewals = log.matches("renewal failed").count();
    println!("the pod's log: {failed_renewals} failed Lease renewals during the outage");
    if restarts_after == restarts_before {
        println!("API server down for {outage:?}: the pod's container was not restarted");
    } else {
        println!(
            "API server down for {outage:?}: the pod's container restarted {} time(s) (last exit \
             code {last_exit:?}) and recovered",
            restarts_after - restarts_before
        );
        assert_eq!(
            last_exit,
            Some(5),
            "a restart is only the documented exit on lost leadership"
        );
    }
}

/// (e) A real Prometheus finds the controller pods by the chart's `prometheus.io/*` pod
/// annotations (pod discovery fed from the API server), scrapes them at their pod IPs, and the
/// shipped rules (deploy/prometheus) pick the failing resources out of their series; with the
/// Lease taken from them MpuSweeperNoLeader's expression fires, and after `helm uninstall`
/// MpuSweeperControllerDown's.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_real_prometheus_scrapes_the_controller_pods_and_the_alerts_see_their_series() {
    let _turn = cluster_turn(ClusterUse::Shared).await;
    let Some((node, ceph)) = node_and_ceph().await else {
        return;
    };
    let Some(prometheus_binary) = std::env::var_os("MPU_TEST_PROMETHEUS").filter(|v| !v.is_empty())
    else {
        absent::<()>("Prometheus", "run hack/tools.sh up and source its env file");
        return;
    };
    let client = &node.kube.client;
    let resources = ThreeResources::prepare(&ceph, "node-mon", node.pod_host).await;
    let namespace = namespace_with_credentials(client, "node-monitoring", &ceph).await;
    let (release, pods, _) = Release::install_ready(&node, &namespace, 2, &[]).await;

    // Debian's Prometheus is built without Kubernetes service discovery: PodDiscovery watches
    // the namespace's pods in the API server and hands Prometheus what `kubernetes_sd_configs`
    // (role: pod) would, through a file; the scrape job keeps the pods by their annotations.
    let rules: Value =
        serde_yaml::from_str(&std::fs::read_to_string(RULES_FILE).unwrap()).expect("rules YAML");
    let by_name = alerts(&rules);
    let job = "mpu-sweeper-pods";
    let discovery = PodDiscovery::start(client.clone(), &namespace);
    let prometheus = Prometheus::start(
        Path::new(&prometheus_binary),
        &rules,
        json!([annotated_pods_job(job, &discovery)]),
    );
    prometheus.wait_until_ready(WAIT).await;
    let up = eventually("Prometheus to scrape both pods", WAIT, || async {
        let up = prometheus.query(&format!(r#"up{{job="{job}"}} == 1"#));
        (up.len() == 2).then_some(up)
    })
    .await;
    let scraped: BTreeSet<String> = up.iter().map(|(l, _)| l["pod"].clone()).collect();
    assert_eq!(scraped, names_of(&pods));
    for (labels, _) in &up {
        let pod = pods.iter().find(|p| pod_name(p) == labels["pod"]).unwrap();
        assert_eq!(labels["instance"], format!("{}:{HTTP_PORT}", pod_ip(pod)));
        assert_eq!(labels["namespace"], namespace);
    }
    eventually("one leader among the scraped pods", WAIT, || async {
        let leader = prometheus.query("sum(mpu_sweeper_leader)");
        (leader.len() == 1 && leader[0].1 == 1.0).then_some(())
    })
    .await;

    // Three resources, run from inside the leader's pod: one that succeeds, one whose bucket
    // does not exist, one whose aborts the fault proxy (on MPU_TEST_POD_HOST) refuses.
    resources
        .create(client, &namespace, &node.pod_ceph(&ceph))
        .await;
    let no_success = expr(&by_name, "MpuSweeperNoRecentSuccess");
    let no_success_within_1s = no_success.replace("> 93600", "> 1");
    assert_ne!(
        no_success_within_1s, no_success,
        "the threshold is where this test expects it"
    );
    resources
        .check_alerts(&prometheus, &by_name, &no_success_within_1s, &namespace)
        .await;

    // Somebody Prometheus does not see takes the Lease for an hour: both pods are up, neither
    // leads (the leader notices, stops, exits 5 and comes back as a standby).
    hand_lease_to_ghost(client, &namespace, &release.fullname).await;
    let ghosted = Instant::now();
    let down = expr(&by_name, "MpuSweeperControllerDown");
    let leaderless = prometheus
        .until_some(expr(&by_name, "MpuSweeperNoLeader"), POD_WAIT)
        .await;
    assert_eq!(leaderless.len(), 1, "{leaderless:?}");
    assert_eq!(leaderless[0].0["job"], job);
    assert_eq!(leaderless[0].0["namespace"], namespace);
    assert_eq!(prometheus.query(down), vec![], "the pods are up");
    println!(
        "MpuSweeperNoLeader's expression {:?} after the Lease was taken",
        ghosted.elapsed()
    );

    // Uninstalled: the pods go, the discovery drops them, and nothing reports a leader gauge.
    release.uninstall();
    let uninstalled = Instant::now();
    let gone = prometheus.until_some(down, POD_WAIT).await;
    assert_eq!(gone.len(), 1);
    assert_eq!(gone[0].1, 1.0);
    println!(
        "MpuSweeperControllerDown's expression {:?} after helm uninstall",
        uninstalled.elapsed()
    );
    eventually("the discovery to drop the pods", POD_WAIT, || async {
        prometheus
            .query(&format!(r#"up{{job="{job}"}}"#))
            .is_empty()
            .then_some(())
    })
    .await;
    resources.proxy.shutdown().await;
}
