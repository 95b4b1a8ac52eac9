//! The operator under faults: the S3 server killed in the middle of a large sweep, the S3 server
//! hanging under a cancelled sweep, and the API server restarted under a running controller.
//! They kill or freeze shared servers, so they run one at a time, in a test binary of their own
//! (cargo runs test binaries one after another).

mod common;

use std::process::Command;
use std::time::Duration;

use common::cluster::*;
use common::*;
use mpu_sweeper::sweep;

static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

fn run_ok(program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .status()
        .unwrap_or_else(|e| panic!("run {program}: {e}"));
    assert!(status.success(), "{program} {args:?} failed");
}

fn run_script(script: &str, command: &str) {
    run_ok("bash", &[script, command]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn s3_server_killed_mid_sweep_is_reported_and_the_next_run_finishes() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let script = std::env::var("MPU_TESTENV_SCRIPT").expect("MPU_TESTENV_SCRIPT");
    let fault = Server {
        endpoint: std::env::var("MPU_TEST_CEPH_FAULT_ENDPOINT")
            .expect("MPU_TEST_CEPH_FAULT_ENDPOINT"),
        ..ceph.clone()
    };
    run_script(&script, "fault-start");

    const TOTAL: usize = 3_000;
    let SweepUnderWay {
        s3,
        bucket,
        namespace,
        controller,
    } = sweep_under_way(&kube, &ceph, &fault, "big", TOTAL).await;
    run_script(&script, "fault-stop");

    let status = eventually("the interrupted run in status", WAIT, || async {
        let status = status_of(&kube.client, &namespace, "big").await;
        (condition(&status, "Ready").map(|c| c.1) == Some("EndpointUnreachable")).then_some(status)
    })
    .await;
    let run = status
        .last_run
        .clone()
        .expect("lastRun of the interrupted sweep");
    assert!(
        run.aborted >= 100 && (run.aborted as usize) < TOTAL,
        "aborted {}",
        run.aborted
    );
    let error = run.error.clone().unwrap_or_default();
    assert!(error.contains("stopped after listing"), "{error}");
    assert!(
        error.contains(&format!("aborted {} of", run.aborted)),
        "what was done: {error}"
    );
    assert!(
        controller.get("/healthz").is_some(),
        "the controller keeps running"
    );
    // The abort in flight when the server died may have been applied with its answer lost: that
    // one upload is gone but counted as failed, never the other way round.
    let gone = TOTAL - remaining_uploads(&s3, &bucket).await.len();
    let applied_unanswered = gone
        .checked_sub(run.aborted as usize)
        .expect("status counts more aborts than are really gone");
    assert!(
        applied_unanswered <= 1 && run.failed as usize >= applied_unanswered,
        "status counts {} aborted, {} failed; {gone} really gone",
        run.aborted,
        run.failed
    );

    // The server comes back; the next run finishes the job.
    run_script(&script, "fault-start");
    annotate(&kube.client, &namespace, "big", "after-restart").await;
    let status = eventually("the run after the server returned", WAIT, || async {
        let status = status_of(&kube.client, &namespace, "big").await;
        (status.last_handled_run_request.as_deref() == Some("after-restart")
            && condition(&status, "Ready").map(|c| c.1) == Some("Succeeded"))
        .then_some(status)
    })
    .await;
    assert_eq!(status.total_aborted as usize + applied_unanswered, TOTAL);
    assert_eq!(remaining_uploads(&s3, &bucket).await, vec![]);
}

/// Freezes the fault gateway (SIGSTOP) until dropped: its sockets stay open, nothing answers.
struct FrozenGateway;

impl FrozenGateway {
    fn freeze() -> Self {
        signal_fault_gateway("-STOP");
        Self
    }
}

impl Drop for FrozenGateway {
    fn drop(&mut self) {
        signal_fault_gateway("-CONT");
    }
}

fn signal_fault_gateway(signal: &str) {
    run_ok("pkill", &[signal, "-f", "ceph.conf -n client.rgw.fault"]);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_cancelled_sweep_does_not_wait_on_a_hung_server_past_its_drain_timeout() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some(ceph) = ceph() else {
        return;
    };
    let script = std::env::var("MPU_TESTENV_SCRIPT").expect("MPU_TESTENV_SCRIPT");
    run_script(&script, "fault-start");
    let fault = Server {
        endpoint: std::env::var("MPU_TEST_CEPH_FAULT_ENDPOINT")
            .expect("MPU_TEST_CEPH_FAULT_ENDPOINT"),
        ..ceph.clone()
    };
    let s3 = ceph.client().await;
    let bucket = create_bucket(&s3, "fault-hang").await;
    const TOTAL: usize = 1_000;
    create_uploads(&s3, &bucket, &keys("hang/", TOTAL)).await;
    tokio::time::sleep(AGE_WAIT).await;

    // Timeouts long enough that only the drain deadline can end the sweep early.
    let mut settings = fault.settings();
    settings.limits.attempt_timeout = Duration::from_secs(300);
    let client = settings.client().await.expect("client");
    let mut options = sweep::SweepOptions::new(bucket.clone(), MAX_AGE.parse().unwrap());
    options.concurrency = 4;
    options.drain_timeout = Duration::from_secs(2);
    let cancel = tokio_util::sync::CancellationToken::new();
    let running = {
        let cancel = cancel.clone();
        tokio::spawn(
            async move { sweep::sweep(&client, &options, &sweep::NoProgress, &cancel).await },
        )
    };
    eventually("the sweep to be under way", WAIT, || async {
        let left = remaining_uploads(&s3, &bucket).await.len();
        (left < TOTAL - 50).then_some(())
    })
    .await;

    let frozen = FrozenGateway::freeze();
    tokio::time::sleep(Duration::from_secs(1)).await;
    cancel.cancel();
    // Without the drain deadline the aborts in flight would wait for the 300 s attempt timeout.
    let outcome = tokio::time::timeout(Duration::from_secs(60), running)
        .await
        .expect("the cancelled sweep waited on the hung server")
        .expect("sweep task");
    drop(frozen);
    assert_eq!(outcome.stop, Some(sweep::SweepStop::Cancelled));
    let s = &outcome.summary;
    assert!(s.aborted >= 50 && (s.aborted as usize) < TOTAL, "{s:?}");
    // Aborts left in flight are counted nowhere: the next sweep lists them again if they live.
    let gone = TOTAL - remaining_uploads(&s3, &bucket).await.len();
    assert!(
        gone as u64 >= s.aborted,
        "counted {} aborted, {gone} gone",
        s.aborted
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn api_server_restart_under_a_running_controller() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    if std::env::var("MPU_TEST_KUBE_LOCAL").as_deref() != Ok("1") {
        eprintln!("SKIPPED: restarting the API server needs the local bed (hack/kubeenv.sh)");
        return;
    }
    let kubeenv = concat!(env!("CARGO_MANIFEST_DIR"), "/hack/kubeenv.sh");
    let s3 = ceph.client().await;
    let bucket = create_bucket(&s3, "fault-api").await;
    let namespace = namespace_with_credentials(&kube.client, "fault-api", &ceph).await;
    let controller = ControllerProcess::start(&kube, &["--namespace", &namespace]);
    create_cleanup(
        &kube.client,
        &namespace,
        "before",
        &ceph,
        &bucket,
        serde_json::json!({}),
    )
    .await;
    eventually("the first resource swept", WAIT, || async {
        (condition(
            &status_of(&kube.client, &namespace, "before").await,
            "Ready",
        )
        .map(|c| c.1)
            == Some("Succeeded"))
        .then_some(())
    })
    .await;

    run_script(kubeenv, "stop-apiserver");
    tokio::time::sleep(Duration::from_secs(3)).await;
    assert!(
        controller.get("/healthz").is_some(),
        "the controller survives the outage"
    );
    run_script(kubeenv, "start-apiserver");

    // It reconnects and carries on: a resource created after the restart is swept.
    create_uploads(&s3, &bucket, &keys("after/", 3)).await;
    tokio::time::sleep(AGE_WAIT).await;
    create_cleanup(
        &kube.client,
        &namespace,
        "after",
        &ceph,
        &bucket,
        serde_json::json!({}),
    )
    .await;
    let status = eventually("the resource created after the restart", WAIT, || async {
        let status = status_of(&kube.client, &namespace, "after").await;
        (condition(&status, "Ready").map(|c| c.1) == Some("Succeeded")).then_some(status)
    })
    .await;
    // The bucket says what was swept: a status write lost to another restart of the shared
    // apiserver (the node tests restart it too) makes the resource run again, and its last run
    // then finds nothing left to abort.
    let left = remaining_uploads(&s3, &bucket).await;
    assert!(
        left.iter().all(|(key, _)| !key.starts_with("after/")),
        "the uploads under after/ are gone: {left:?}; last run {:?}",
        status.last_run
    );
    assert!(controller.get("/healthz").is_some());
}

/// A run whose status the API server refuses for longer than the writer's retries (about half a
/// minute): the sweep is over and no watch event will come, yet the resource must not be left as
/// it was (its next run never decided, so never swept again). Here the controller's
/// ServiceAccount loses the right to write status, then gets it back; the run's status is then
/// written, and the bucket is not swept twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_whose_status_was_refused_is_written_once_the_api_server_takes_it() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let bucket = create_bucket(&s3, "fault-status").await;
    create_uploads(&s3, &bucket, &keys("old/", 3)).await;
    tokio::time::sleep(AGE_WAIT).await;
    let namespace = namespace_with_credentials(&kube.client, "fault-status", &ceph).await;
    // A controller ServiceAccount of this namespace, its right to write status in a binding of
    // its own.
    let rbac = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: sweeper, namespace: {namespace}}}\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: sweeper, namespace: {namespace}}}\n\
         rules:\n- {{apiGroups: [mpusweeper.io], resources: [multipartcleanups], verbs: [get, list, watch]}}\n\
         - {{apiGroups: [''], resources: [secrets], verbs: [get]}}\n\
         - {{apiGroups: [events.k8s.io], resources: [events], verbs: [create, patch]}}\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: sweeper-status, namespace: {namespace}}}\n\
         rules:\n- {{apiGroups: [mpusweeper.io], resources: [multipartcleanups/status], verbs: [get, patch]}}\n\
         ---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: sweeper, namespace: {namespace}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: sweeper}}\n\
         subjects: [{{kind: ServiceAccount, name: sweeper, namespace: {namespace}}}]\n"
    );
    kubectl_stdin(&kube.kubeconfig, &["apply", "-f", "-"], &rbac);
    let status_binding = format!(
        "apiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: sweeper-status, namespace: {namespace}}}\n\
         roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: sweeper-status}}\n\
         subjects: [{{kind: ServiceAccount, name: sweeper, namespace: {namespace}}}]\n"
    );
    let kubeconfig = service_account_kubeconfig(&kube.kubeconfig, &namespace, "sweeper");
    let controller = ControllerProcess::start_as(&kubeconfig, &["--namespace", &namespace], &[]);
    create_cleanup(
        &kube.client,
        &namespace,
        "refused",
        &ceph,
        &bucket,
        serde_json::json!({"schedule": "@every 1h"}),
    )
    .await;

    // The run sweeps the bucket, then its status write is refused until the writer gives up.
    eventually("the bucket swept", WAIT, || async {
        remaining_uploads(&s3, &bucket)
            .await
            .is_empty()
            .then_some(())
    })
    .await;
    eventually("the status writer giving up", WAIT, || async {
        controller
            .log()
            .contains("sweep could not finish")
            .then_some(())
    })
    .await;
    assert_eq!(
        status_of(&kube.client, &namespace, "refused").await,
        Default::default(),
        "no status written yet"
    );

    kubectl_stdin(&kube.kubeconfig, &["apply", "-f", "-"], &status_binding);
    let status = wait_for_reason(&kube.client, &namespace, "refused", "Succeeded").await;
    let last_run = status.last_run.as_ref().expect("the run's summary");
    assert_eq!((last_run.stale, last_run.aborted), (3, 3), "{status:?}");
    assert_eq!(status.total_aborted, 3, "swept once: {status:?}");
    assert!(status.next_run_time.is_some(), "the next run decided");
}

/// An API server that accepts connections and never answers: the watches never list, so the
/// controller is never ready, and SIGTERM must still end it (the readiness wait used to hold
/// the shutdown forever). It needs no bed: the stalled server is a listener of the test's own.
#[test]
fn a_controller_whose_api_server_never_answers_is_not_ready_and_stops_on_sigterm() {
    let kubeconfig = stalled_api_server("sigterm");
    let mut controller = ControllerProcess::start_as(&kubeconfig, &[], &[]);
    let readyz = (0..100).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        controller.get("/readyz")
    });
    let (code, body) = readyz.expect("the controller serves /readyz");
    assert_eq!(code, 503, "{body}");
    // The watches are stuck in their first list now, not merely starting.
    std::thread::sleep(Duration::from_secs(2));
    assert_eq!(controller.get("/readyz").map(|(code, _)| code), Some(503));
    let code = controller.terminate();
    let _ = std::fs::remove_file(&kubeconfig);
    assert_eq!(code, 0, "log:\n{}", controller.log());
}

/// The same stalled API server, with leader election: the replica waits for the Lease without
/// end, and still stops on SIGTERM (each attempt is bounded and gives way to the signal).
#[test]
fn a_standby_whose_api_server_never_answers_stops_on_sigterm() {
    let kubeconfig = stalled_api_server("standby");
    let mut controller = ControllerProcess::start_as(
        &kubeconfig,
        &["--leader-election", "--lease-duration-seconds", "3"],
        &[],
    );
    let serving = (0..100).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        controller.get("/healthz")
    });
    serving.expect("the controller serves /healthz");
    // Past a few attempts, each longer than the retry period without the bound.
    std::thread::sleep(Duration::from_secs(4));
    let code = controller.terminate();
    let _ = std::fs::remove_file(&kubeconfig);
    assert_eq!(code, 0, "log:\n{}", controller.log());
    assert!(
        controller.log().contains("did not answer in time"),
        "{}",
        controller.log()
    );
}

/// The same stalled API server: past `--cache-sync-timeout`, /healthz fails as well, so that the
/// kubelet restarts a controller that would otherwise stay unready for good.
#[test]
fn a_controller_whose_caches_never_sync_fails_its_liveness_check() {
    let kubeconfig = stalled_api_server("liveness");
    let controller = ControllerProcess::start_as(&kubeconfig, &["--cache-sync-timeout", "2"], &[]);
    let healthz = (0..300).find_map(|_| {
        std::thread::sleep(Duration::from_millis(100));
        controller.get("/healthz").filter(|(code, _)| *code != 200)
    });
    let _ = std::fs::remove_file(&kubeconfig);
    let (code, body) = healthz.expect("/healthz fails within 30 s");
    assert_eq!(code, 503, "{body}");
    assert!(body.contains("caches not synced"), "{body}");
    assert_eq!(controller.get("/readyz").map(|(code, _)| code), Some(503));
}

/// A kubeconfig for an API server that accepts connections and never answers: a listener of
/// the test's own, on a thread that holds every connection until the test process ends.
fn stalled_api_server(tag: &str) -> std::path::PathBuf {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    // Accepted connections are kept open and never read.
    std::thread::spawn(move || {
        let mut held = Vec::new();
        for stream in listener.incoming().flatten() {
            held.push(stream);
        }
    });
    let kubeconfig = std::env::temp_dir().join(format!(
        "mpu-sweeper-stalled-{tag}-{}.kubeconfig",
        std::process::id()
    ));
    std::fs::write(
        &kubeconfig,
        format!(
            "apiVersion: v1\nkind: Config\ncurrent-context: stalled\n\
             clusters: [{{name: stalled, cluster: {{server: 'http://127.0.0.1:{port}'}}}}]\n\
             users: [{{name: u, user: {{token: unused}}}}]\n\
             contexts: [{{name: stalled, context: {{cluster: stalled, user: u}}}}]\n"
        ),
    )
    .unwrap();
    kubeconfig
}
