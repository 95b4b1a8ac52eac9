//! The operator end to end: a real kube-apiserver, the controller as a separate process running
//! under the ServiceAccount token that `deploy/rbac` binds, and the Ceph RGW test bed.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::ListParams;
use mpu_sweeper::api::MultipartCleanup;

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_new_resource_sweeps_at_once_and_reports_counts_conditions_events_and_metrics() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let bucket = create_bucket(&s3, "e2e-basic").await;
    create_uploads(&s3, &bucket, &keys("old/", 5)).await;
    tokio::time::sleep(AGE_WAIT).await;
    let mut fresh = create_uploads(&s3, &bucket, &keys("new/", 2)).await;

    let namespace = namespace_with_credentials(&kube.client, "basic", &ceph).await;
    let controller = ControllerProcess::start(&kube, &["--namespace", &namespace]);
    create_cleanup(
        &kube.client,
        &namespace,
        "nightly",
        &ceph,
        &bucket,
        serde_json::json!({}),
    )
    .await;

    let status = wait_for_reason(&kube.client, &namespace, "nightly", "Succeeded").await;
    let run = status.last_run.clone().expect("lastRun");
    assert_eq!(
        (
            run.found,
            run.stale,
            run.aborted,
            run.already_gone,
            run.failed
        ),
        (7, 5, 5, 0, 0)
    );
    assert_eq!(status.total_aborted, 5);
    assert_eq!(
        condition(&status, "Ready"),
        Some(("True", "Succeeded", "aborted 5 of 5 stale uploads"))
    );
    assert_eq!(condition(&status, "Stalled").map(|c| c.0), Some("False"));
    assert_eq!(
        condition(&status, "Reconciling").map(|c| c.0),
        Some("False")
    );
    assert!(status.last_successful_run_time.is_some());
    let next = status.next_run_time.clone().expect("nextRunTime");
    assert!(next.0 > run.start_time.0, "next run after this one");
    assert!(status.observed_generation.is_some());
    fresh.sort();
    assert_eq!(
        remaining_uploads(&s3, &bucket).await,
        fresh,
        "stale gone, fresh kept"
    );

    // Printer columns, as a user sees them.
    let table = kubectl(&kube.kubeconfig, &["get", "mpc", "-n", &namespace]);
    let header: Vec<&str> = table.lines().next().unwrap().split_whitespace().collect();
    assert_eq!(
        header,
        [
            "NAME", "BUCKET", "BUCKETS", "MAX-AGE", "SCHEDULE", "LAST-RUN", "ABORTED", "READY",
            "AGE"
        ]
    );
    let row: Vec<&str> = table.lines().nth(1).unwrap().split_whitespace().collect();
    assert_eq!(
        (row[0], row[1], row[2], row[3], row[4], row[6], row[7]),
        (
            "nightly",
            bucket.as_str(),
            "1",
            "3s",
            "@hourly",
            "5",
            "True"
        )
    );

    let events = eventually("the success Event", WAIT, || async {
        let events = events_for(&kube.client, &namespace, "nightly").await;
        events.iter().any(|e| e.1 == "Succeeded").then_some(events)
    })
    .await;
    assert!(
        events.contains(&(
            "Normal".into(),
            "Succeeded".into(),
            "aborted 5 of 5 stale uploads".into()
        )),
        "{events:?}"
    );

    let metrics = controller.get("/metrics").expect("metrics answer").1;
    let labels = format!(r#"bucket="{bucket}",name="nightly",namespace="{namespace}""#);
    for line in [
        format!("mpu_sweeper_uploads_aborted_total{{{labels}}} 5"),
        format!("mpu_sweeper_uploads_found_total{{{labels}}} 7"),
        format!("mpu_sweeper_uploads_stale_total{{{labels}}} 5"),
        format!("mpu_sweeper_uploads_failed_total{{{labels}}} 0"),
        format!(r#"mpu_sweeper_runs_total{{{labels},result="succeeded"}} 1"#),
    ] {
        assert!(
            metrics.lines().any(|l| l == line),
            "missing {line:?} in\n{metrics}"
        );
    }
    assert!(metrics.contains("mpu_sweeper_last_success_timestamp_seconds{"));
    assert!(metrics.contains(r#"mpu_sweeper_run_duration_seconds_count{name="nightly""#));
    assert_eq!(controller.get("/healthz").map(|r| r.0), Some(200));
    assert_eq!(controller.get("/readyz").map(|r| r.0), Some(200));
    // `kubectl wait` works on the Ready condition (kstatus).
    kubectl(
        &kube.kubeconfig,
        &[
            "wait",
            "--for=condition=Ready",
            "mpc/nightly",
            "-n",
            &namespace,
            "--timeout=30s",
        ],
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn run_now_annotation_reruns_and_suspend_stops_runs() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let bucket = create_bucket(&s3, "e2e-runnow").await;
    let namespace = namespace_with_credentials(&kube.client, "runnow", &ceph).await;
    let _controller = ControllerProcess::start(&kube, &["--namespace", &namespace]);
    create_cleanup(
        &kube.client,
        &namespace,
        "hourly",
        &ceph,
        &bucket,
        serde_json::json!({}),
    )
    .await;
    let first = wait_for_reason(&kube.client, &namespace, "hourly", "Succeeded").await;
    assert_eq!(first.last_run.as_ref().unwrap().found, 0);

    // New stale uploads are not swept before the schedule says so...
    create_uploads(&s3, &bucket, &keys("later/", 3)).await;
    tokio::time::sleep(AGE_WAIT).await;
    assert_eq!(
        status_of(&kube.client, &namespace, "hourly")
            .await
            .total_aborted,
        0
    );
    // ...but at once when asked.
    annotate(&kube.client, &namespace, "hourly", "now-1").await;
    let status = eventually("the requested run", WAIT, || async {
        let status = status_of(&kube.client, &namespace, "hourly").await;
        (status.last_handled_run_request.as_deref() == Some("now-1")
            && condition(&status, "Ready").map(|c| c.1) == Some("Succeeded"))
        .then_some(status)
    })
    .await;
    assert_eq!(status.total_aborted, 3);
    assert_eq!(status.last_run.as_ref().unwrap().aborted, 3);
    assert_eq!(remaining_uploads(&s3, &bucket).await, vec![]);

    // Suspended: status says so and a run request is not acted on.
    patch_spec(
        &kube.client,
        &namespace,
        "hourly",
        serde_json::json!({"suspend": true}),
    )
    .await;
    let suspended = wait_for_reason(&kube.client, &namespace, "hourly", "Suspended").await;
    assert_eq!(condition(&suspended, "Ready").map(|c| c.0), Some("False"));
    assert!(suspended.next_run_time.is_none());
    let stale = create_uploads(&s3, &bucket, &keys("while-suspended/", 2)).await;
    tokio::time::sleep(AGE_WAIT).await;
    annotate(&kube.client, &namespace, "hourly", "now-2").await;
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = status_of(&kube.client, &namespace, "hourly").await;
    assert_eq!(still.last_handled_run_request.as_deref(), Some("now-1"));
    assert_eq!(remaining_uploads(&s3, &bucket).await.len(), stale.len());

    // Resumed: the pending request runs.
    patch_spec(
        &kube.client,
        &namespace,
        "hourly",
        serde_json::json!({"suspend": false}),
    )
    .await;
    let resumed = eventually("the run after resuming", WAIT, || async {
        let status = status_of(&kube.client, &namespace, "hourly").await;
        (status.last_handled_run_request.as_deref() == Some("now-2")
            && condition(&status, "Ready").map(|c| c.1) == Some("Succeeded"))
        .then_some(status)
    })
    .await;
    assert_eq!(resumed.total_aborted, 5);

    // Suspended and resumed between runs, with nothing requested: Ready again with the last
    // run's result, and no sweep that the schedule did not call for (a day-long interval keeps
    // an hour boundary out of the picture).
    let last_start = resumed.last_run.as_ref().unwrap().start_time.clone();
    for (spec, reason) in [
        (
            serde_json::json!({"suspend": true, "schedule": "@every 1d"}),
            "Suspended",
        ),
        (serde_json::json!({"suspend": false}), "Succeeded"),
    ] {
        patch_spec(&kube.client, &namespace, "hourly", spec).await;
        wait_for_reason(&kube.client, &namespace, "hourly", reason).await;
    }
    let idle = status_of(&kube.client, &namespace, "hourly").await;
    assert_eq!(condition(&idle, "Ready").map(|c| c.0), Some("True"));
    assert_eq!(condition(&idle, "Stalled").map(|c| c.0), Some("False"));
    assert_eq!(
        idle.last_run.unwrap().start_time,
        last_start,
        "it swept again"
    );
    assert!(idle.next_run_time.is_some());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn suspending_a_running_sweep_stops_it() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    const TOTAL: usize = 3_000;
    let run = sweep_under_way(&kube, &ceph, &ceph, "runaway", TOTAL).await;
    patch_spec(
        &kube.client,
        &run.namespace,
        "runaway",
        serde_json::json!({"suspend": true}),
    )
    .await;
    let suspended = wait_for_reason(&kube.client, &run.namespace, "runaway", "Suspended").await;
    let last = suspended.last_run.expect("the stopped run in status");
    let error = last.error.unwrap_or_default();
    assert!(
        error.contains("interrupted by a change to the resource"),
        "{error}"
    );
    let left = remaining_uploads(&run.s3, &run.bucket).await.len();
    assert!(left > 0, "the sweep ran to the end");
    assert_eq!(
        TOTAL - left,
        last.aborted as usize,
        "status counts what is gone"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn dry_run_resource_counts_and_aborts_nothing() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let bucket = create_bucket(&s3, "e2e-dry").await;
    let mut uploads = create_uploads(&s3, &bucket, &keys("old/", 4)).await;
    tokio::time::sleep(AGE_WAIT).await;
    let namespace = namespace_with_credentials(&kube.client, "dry", &ceph).await;
    let _controller = ControllerProcess::start(&kube, &["--namespace", &namespace]);
    create_cleanup(
        &kube.client,
        &namespace,
        "dry",
        &ceph,
        &bucket,
        serde_json::json!({"dryRun": true}),
    )
    .await;
    let status = wait_for_reason(&kube.client, &namespace, "dry", "Succeeded").await;
    let run = status.last_run.unwrap();
    assert!(run.dry_run);
    assert_eq!((run.found, run.stale, run.aborted), (4, 4, 0));
    uploads.sort();
    assert_eq!(remaining_uploads(&s3, &bucket).await, uploads);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn bad_input_is_reported_and_fixed_input_recovers() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let bucket = create_bucket(&s3, "e2e-bad").await;
    create_uploads(&s3, &bucket, &keys("old/", 2)).await;
    let namespace = namespace(&kube.client, "bad").await;
    let controller = ControllerProcess::start(&kube, &["--namespace", &namespace]);

    // No Secret yet.
    create_cleanup(
        &kube.client,
        &namespace,
        "nosecret",
        &ceph,
        &bucket,
        serde_json::json!({}),
    )
    .await;
    let status = wait_for_reason(&kube.client, &namespace, "nosecret", "SecretNotFound").await;
    assert_eq!(condition(&status, "Stalled").map(|c| c.0), Some("True"));
    assert!(
        condition(&status, "Ready")
            .unwrap()
            .2
            .contains("create it with keys AWS_ACCESS_KEY_ID")
    );

    // A Secret with the wrong secret key: the server rejects it.
    let wrong = "definitely-not-the-right-secret-key-000000";
    credentials_secret(
        &kube.client,
        &namespace,
        "s3-credentials",
        &ceph.access_key,
        wrong,
    )
    .await;
    let status = wait_for_reason(&kube.client, &namespace, "nosecret", "CredentialsRejected").await;
    assert_eq!(condition(&status, "Stalled").map(|c| c.0), Some("True"));

    // Rotated to the right key: the next retry succeeds.
    credentials_secret(
        &kube.client,
        &namespace,
        "s3-credentials",
        &ceph.access_key,
        &ceph.secret_key,
    )
    .await;
    let status = wait_for_reason(&kube.client, &namespace, "nosecret", "Succeeded").await;
    assert_eq!(status.consecutive_failures, 0);

    // Unreachable endpoint: not stalled (the network may come back), retried.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let dead = Server {
        endpoint: format!("http://127.0.0.1:{port}"),
        ..ceph.clone()
    };
    create_cleanup(
        &kube.client,
        &namespace,
        "down",
        &dead,
        &bucket,
        serde_json::json!({}),
    )
    .await;
    let status = wait_for_reason(&kube.client, &namespace, "down", "EndpointUnreachable").await;
    assert_eq!(condition(&status, "Stalled").map(|c| c.0), Some("False"));
    assert!(status.next_run_time.is_some());

    // A missing bucket and a schedule that does not parse.
    create_cleanup(
        &kube.client,
        &namespace,
        "nobucket",
        &ceph,
        &bucket_name("absent"),
        serde_json::json!({}),
    )
    .await;
    wait_for_reason(&kube.client, &namespace, "nobucket", "BucketNotFound").await;
    create_cleanup(
        &kube.client,
        &namespace,
        "badschedule",
        &ceph,
        &bucket,
        serde_json::json!({"schedule": "at noon"}),
    )
    .await;
    let status = wait_for_reason(&kube.client, &namespace, "badschedule", "InvalidSpec").await;
    assert!(
        condition(&status, "Ready")
            .unwrap()
            .2
            .contains("spec.schedule")
    );

    // Warning Events name the causes; nothing anywhere shows a secret.
    let events = eventually("warning events", WAIT, || async {
        let mut all = events_for(&kube.client, &namespace, "nosecret").await;
        all.extend(events_for(&kube.client, &namespace, "down").await);
        let reasons: Vec<&str> = all
            .iter()
            .filter(|e| e.0 == "Warning")
            .map(|e| e.1.as_str())
            .collect();
        (reasons.contains(&"SecretNotFound")
            && reasons.contains(&"CredentialsRejected")
            && reasons.contains(&"EndpointUnreachable"))
        .then_some(all)
    })
    .await;
    let everything = format!(
        "{events:?}{:?}{}{}",
        status_of(&kube.client, &namespace, "nosecret").await,
        controller.log(),
        controller.get("/metrics").unwrap().1
    );
    assert!(
        !everything.contains(&ceph.secret_key) && !everything.contains(wrong),
        "a secret leaked"
    );
    assert!(
        controller.get("/healthz").is_some(),
        "the controller is still running"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn fifty_resources_at_once_all_get_swept() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let namespace = namespace_with_credentials(&kube.client, "fifty", &ceph).await;
    let mut buckets = Vec::new();
    for _ in 0..50 {
        let bucket = create_bucket(&s3, "e2e-fifty").await;
        create_uploads(&s3, &bucket, &keys("old/", 2)).await;
        buckets.push(bucket);
    }
    tokio::time::sleep(AGE_WAIT).await;
    let controller = ControllerProcess::start(&kube, &["--namespace", &namespace]);
    let creations = buckets.iter().enumerate().map(|(i, bucket)| {
        let client = kube.client.clone();
        let (namespace, ceph) = (namespace.clone(), ceph.clone());
        async move {
            create_cleanup(
                &client,
                &namespace,
                &format!("mpc-{i:02}"),
                &ceph,
                bucket,
                serde_json::json!({}),
            )
            .await
        }
    });
    futures::future::join_all(creations).await;

    let api: Api<MultipartCleanup> = Api::namespaced(kube.client.clone(), &namespace);
    let swept = |m: &MultipartCleanup| {
        let status = m.status.clone().unwrap_or_default();
        condition(&status, "Ready").map(|c| c.0) == Some("True")
            && status.last_run.as_ref().is_some_and(|r| r.aborted == 2)
    };
    let all_swept = eventually(
        "all 50 resources Ready with their counts",
        Duration::from_secs(240),
        || async {
            let list = api.list(&ListParams::default()).await.ok()?;
            (list.items.iter().filter(|m| swept(m)).count() == 50).then_some(())
        },
    );
    if tokio::time::timeout(Duration::from_secs(180), all_swept)
        .await
        .is_err()
    {
        // Say which resources are behind and what the controller did, not just "timed out".
        let list = api.list(&ListParams::default()).await.unwrap();
        let behind: Vec<_> = list
            .items
            .iter()
            .filter(|m| !swept(m))
            .map(|m| format!("{:?}: {:?}", m.metadata.name, m.status))
            .collect();
        let log = controller.log();
        let tail = log.lines().rev().take(60).collect::<Vec<_>>();
        let tail = tail.into_iter().rev().collect::<Vec<_>>().join("\n");
        panic!(
            "{} resources not swept after 180s: {behind:#?}\ncontroller log tail:\n{tail}",
            behind.len()
        );
    }
    for bucket in &buckets {
        assert_eq!(remaining_uploads(&s3, bucket).await, vec![], "{bucket}");
    }
    // Each resource swept exactly once.
    let metrics = controller.get("/metrics").unwrap().1;
    let runs: Vec<&str> = metrics
        .lines()
        .filter(|l| l.starts_with("mpu_sweeper_runs_total{"))
        .collect();
    assert_eq!(runs.len(), 50, "{runs:?}");
    assert!(
        runs.iter().all(|l| l.ends_with(r#"result="succeeded"} 1"#)),
        "{runs:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_replicas_elect_one_leader_and_fail_over() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let bucket = create_bucket(&s3, "e2e-leader").await;
    let namespace = namespace_with_credentials(&kube.client, "leader", &ceph).await;
    // The one Lease name the shipped RBAC lets the controller read and renew.
    let lease_name = "mpu-sweeper".to_owned();
    let replica = |identity: &str| {
        ControllerProcess::start(
            &kube,
            &[
                "--namespace",
                &namespace,
                "--leader-election",
                "--leader-election-namespace",
                CONTROLLER_NAMESPACE,
                "--leader-election-lease",
                &lease_name,
                "--lease-duration-seconds",
                "6",
                "--identity",
                identity,
            ],
        )
    };
    let mut first = replica("replica-a");
    let leases: Api<Lease> = Api::namespaced(kube.client.clone(), CONTROLLER_NAMESPACE);
    let holder = || async {
        leases
            .get_opt(&lease_name)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    eventually("replica-a to lead", WAIT, || async {
        (holder().await.as_deref() == Some("replica-a")).then_some(())
    })
    .await;
    let second = replica("replica-b");
    eventually("replica-b standing by and ready", WAIT, || async {
        (second.get("/readyz").map(|r| r.0) == Some(200)).then_some(())
    })
    .await;
    assert!(
        second
            .get("/metrics")
            .unwrap()
            .1
            .contains("mpu_sweeper_leader 0")
    );
    assert!(
        first
            .get("/metrics")
            .unwrap()
            .1
            .contains("mpu_sweeper_leader 1")
    );

    create_cleanup(
        &kube.client,
        &namespace,
        "elected",
        &ceph,
        &bucket,
        serde_json::json!({}),
    )
    .await;
    wait_for_reason(&kube.client, &namespace, "elected", "Succeeded").await;
    let events = events_for(&kube.client, &namespace, "elected").await;
    assert!(!events.is_empty());
    // Only the leader swept: its metrics count the run, the standby's do not.
    assert!(
        first
            .get("/metrics")
            .unwrap()
            .1
            .contains("mpu_sweeper_runs_total{"),
        "the leader did not count the run"
    );
    assert!(
        !second
            .get("/metrics")
            .unwrap()
            .1
            .contains("mpu_sweeper_runs_total{"),
        "the standby swept"
    );

    // The leader dies without releasing the lease: the standby takes over once it expires.
    first.kill();
    eventually("replica-b to take over", WAIT, || async {
        (holder().await.as_deref() == Some("replica-b")).then_some(())
    })
    .await;
    create_uploads(&s3, &bucket, &keys("after-failover/", 2)).await;
    tokio::time::sleep(AGE_WAIT).await;
    annotate(&kube.client, &namespace, "elected", "after-failover").await;
    let status = eventually("a run by the new leader", WAIT, || async {
        let status = status_of(&kube.client, &namespace, "elected").await;
        (status.last_handled_run_request.as_deref() == Some("after-failover")
            && condition(&status, "Ready").map(|c| c.1) == Some("Succeeded"))
        .then_some(status)
    })
    .await;
    assert_eq!(status.last_run.unwrap().aborted, 2);
    assert!(
        second
            .get("/metrics")
            .unwrap()
            .1
            .contains("mpu_sweeper_leader 1")
    );

    // A standby stopped while it waits exits 0 and leaves the leader's lease alone (it gives
    // the lease back only if one of its attempts took it).
    let mut third = replica("replica-c");
    eventually("replica-c standing by and ready", WAIT, || async {
        (third.get("/readyz").map(|r| r.0) == Some(200)).then_some(())
    })
    .await;
    assert_eq!(third.terminate(), 0);
    assert_eq!(holder().await.as_deref(), Some("replica-b"));

    // SIGTERM: exit 0 and hand the lease back.
    let mut second = second;
    assert_eq!(second.terminate(), 0);
    let released = leases.get(&lease_name).await.unwrap();
    assert_eq!(
        released.spec.unwrap().holder_identity,
        None,
        "lease released on shutdown"
    );
}

/// A scheduled run that changes nothing but the run itself costs one status write: counted as
/// the resource's MODIFIED events on a watch (every write is one), against the runs they carry.
#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_scheduled_run_costs_one_status_write() {
    use futures::StreamExt;
    use kube::api::{WatchEvent, WatchParams};
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let bucket = create_bucket(&s3, "e2e-writes").await;
    let namespace = namespace_with_credentials(&kube.client, "writes", &ceph).await;
    let _controller = ControllerProcess::start(&kube, &["--namespace", &namespace]);
    create_cleanup(
        &kube.client,
        &namespace,
        "often",
        &ceph,
        &bucket,
        serde_json::json!({"schedule": "@every 2s"}),
    )
    .await;
    wait_for_reason(&kube.client, &namespace, "often", "Succeeded").await;

    let api: Api<MultipartCleanup> = Api::namespaced(kube.client.clone(), &namespace);
    let from = api
        .get("often")
        .await
        .unwrap()
        .metadata
        .resource_version
        .unwrap();
    let params = WatchParams::default().fields("metadata.name=often");
    let mut events = api.watch(&params, &from).await.unwrap().boxed();
    let (mut writes, mut runs) = (0, std::collections::BTreeSet::new());
    let window = tokio::time::sleep(Duration::from_secs(12));
    tokio::pin!(window);
    loop {
        tokio::select! {
            () = &mut window => break,
            event = events.next() => match event {
                Some(Ok(WatchEvent::Modified(mpc))) => {
                    writes += 1;
                    let status = mpc.status.unwrap_or_default();
                    runs.insert(status.last_run.map(|run| run.start_time.0));
                }
                Some(Ok(WatchEvent::Bookmark(_))) => {}
                other => panic!("unexpected watch event: {other:?}"),
            },
        }
    }
    eprintln!("{writes} status writes carrying {} runs", runs.len());
    assert!(runs.len() >= 3, "runs every 2 s: {runs:?}");
    assert_eq!(writes, runs.len(), "one write per run: {runs:?}");
}
