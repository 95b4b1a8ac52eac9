//! One controller shared by tenants, on the real kube-apiserver, with the S3 servers behind the
//! fault proxy: one namespace's stalled sweeps cannot starve another's; a frozen leader sends no
//! abort once a standby could have taken over; a sweep that waited for its slot uses the spec as
//! it is then; a resource deleted and created again never gets the old run's status; the
//! operator's fences (endpoint policy, Secret labels, minimum interval) hold; and a deleted
//! resource's metric series go.

mod common;

use std::time::Duration;

use common::cluster::*;
use common::fault_proxy::{Action, FaultProxy, Op, Rule};
use common::*;
use k8s_openapi::api::coordination::v1::Lease;
use kube::Api;
use kube::api::DeleteParams;
use mpu_sweeper::api::MultipartCleanup;

/// Hang guard for what the issue promises "within" a time; not a timing measurement.
const PROMPTLY: Duration = Duration::from_secs(60);

fn through(proxy: &FaultProxy, server: &Server) -> Server {
    Server {
        endpoint: proxy.endpoint(),
        ..server.clone()
    }
}

async fn reason_of(kube: &KubeBed, namespace: &str, name: &str) -> Option<String> {
    let status = status_of(&kube.client, namespace, name).await;
    condition(&status, "Ready").map(|c| c.1.to_owned())
}

async fn wait_for_reason_within(
    kube: &KubeBed,
    namespace: &str,
    name: &str,
    reason: &str,
    limit: Duration,
) {
    eventually(&format!("{namespace}/{name} {reason}"), limit, || async {
        (reason_of(kube, namespace, name).await.as_deref() == Some(reason)).then_some(())
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_namespace_of_stalled_sweeps_does_not_starve_the_others() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let proxy = FaultProxy::start(&ceph.endpoint).await.expect("proxy");
    // Every listing of the busy tenant's buckets hangs.
    let busy = namespace_with_credentials(&kube.client, "busy", &ceph).await;
    let quiet = namespace_with_credentials(&kube.client, "quiet", &ceph).await;
    let controller = ControllerProcess::start(
        &kube,
        &[
            "--namespace",
            &busy,
            "--namespace",
            &quiet,
            "--max-concurrent-sweeps",
            "4",
        ],
    );
    let mut stalled_buckets = Vec::new();
    for i in 0..6 {
        let bucket = create_bucket(&s3, &format!("stall{i}")).await;
        proxy.add_rule(
            Rule::on(Op::ListMultipartUploads)
                .bucket(&bucket)
                .then(Action::stall()),
        );
        create_cleanup(
            &kube.client,
            &busy,
            &format!("stalled-{i}"),
            &through(&proxy, &ceph),
            &bucket,
            serde_json::json!({}),
        )
        .await;
        stalled_buckets.push(bucket);
    }
    // Two run (the namespace's share), the rest wait with conditions that say so.
    let reasons = eventually("two running, four queued", PROMPTLY, || async {
        let mut reasons = Vec::new();
        for i in 0..6 {
            reasons.push(reason_of(&kube, &busy, &format!("stalled-{i}")).await);
        }
        let count = |r: &str| reasons.iter().filter(|x| x.as_deref() == Some(r)).count();
        (count("Running") == 2 && count("Queued") == 4).then_some(reasons)
    })
    .await;
    eprintln!("busy namespace: {reasons:?}");

    // Another tenant's new resource is swept at once.
    let quiet_bucket = create_bucket(&s3, "quiet").await;
    create_uploads(&s3, &quiet_bucket, &keys("old/", 3)).await;
    tokio::time::sleep(AGE_WAIT).await;
    create_cleanup(
        &kube.client,
        &quiet,
        "quiet",
        &through(&proxy, &ceph),
        &quiet_bucket,
        serde_json::json!({}),
    )
    .await;
    wait_for_reason_within(&kube, &quiet, "quiet", "Succeeded", PROMPTLY).await;
    assert_eq!(
        status_of(&kube.client, &quiet, "quiet")
            .await
            .last_run
            .unwrap()
            .aborted,
        3
    );

    // Suspending a stalled sweep and a queued one takes effect at once.
    let running = (0..6)
        .map(|i| format!("stalled-{i}"))
        .zip(&reasons)
        .find(|(_, r)| r.as_deref() == Some("Running"))
        .map(|(name, _)| name)
        .unwrap();
    let queued = (0..6)
        .map(|i| format!("stalled-{i}"))
        .zip(&reasons)
        .find(|(_, r)| r.as_deref() == Some("Queued"))
        .map(|(name, _)| name)
        .unwrap();
    for name in [&running, &queued] {
        patch_spec(
            &kube.client,
            &busy,
            name,
            serde_json::json!({"suspend": true}),
        )
        .await;
        wait_for_reason_within(&kube, &busy, name, "Suspended", Duration::from_secs(5)).await;
    }
    let metrics = controller.get("/metrics").unwrap().1;
    assert!(metrics.contains("mpu_sweeper_sweeps_running"), "{metrics}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_sweep_that_waited_for_its_slot_uses_the_spec_as_it_is_then() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let proxy = FaultProxy::start(&ceph.endpoint).await.expect("proxy");
    let namespace = namespace_with_credentials(&kube.client, "waiter", &ceph).await;
    let _controller = ControllerProcess::start(
        &kube,
        &[
            "--namespace",
            &namespace,
            "--max-concurrent-sweeps-per-namespace",
            "1",
        ],
    );
    let blocker_bucket = create_bucket(&s3, "blocker").await;
    proxy.add_rule(
        Rule::on(Op::ListMultipartUploads)
            .bucket(&blocker_bucket)
            .then(Action::stall()),
    );
    create_cleanup(
        &kube.client,
        &namespace,
        "blocker",
        &through(&proxy, &ceph),
        &blocker_bucket,
        serde_json::json!({}),
    )
    .await;
    wait_for_reason(&kube.client, &namespace, "blocker", "Running").await;

    let bucket = create_bucket(&s3, "waiter").await;
    let uploads = create_uploads(&s3, &bucket, &keys("old/", 4)).await;
    tokio::time::sleep(AGE_WAIT).await;
    create_cleanup(
        &kube.client,
        &namespace,
        "waiter",
        &through(&proxy, &ceph),
        &bucket,
        serde_json::json!({}),
    )
    .await;
    wait_for_reason(&kube.client, &namespace, "waiter", "Queued").await;
    // While it waits, the user makes it a dry run; then the slot frees up.
    patch_spec(
        &kube.client,
        &namespace,
        "waiter",
        serde_json::json!({"dryRun": true}),
    )
    .await;
    patch_spec(
        &kube.client,
        &namespace,
        "blocker",
        serde_json::json!({"suspend": true}),
    )
    .await;
    let status = wait_for_reason(&kube.client, &namespace, "waiter", "Succeeded").await;
    let run = status.last_run.unwrap();
    assert!(run.dry_run, "{run:?}");
    assert_eq!((run.stale, run.aborted), (4, 0));
    let mut uploads = uploads;
    uploads.sort();
    assert_eq!(
        remaining_uploads(&s3, &bucket).await,
        uploads,
        "nothing aborted"
    );
    assert_eq!(proxy.count(Op::AbortMultipartUpload), 0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_resource_created_again_never_gets_the_old_run_s_status() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let proxy = FaultProxy::start(&ceph.endpoint).await.expect("proxy");
    let namespace = namespace_with_credentials(&kube.client, "recreate", &ceph).await;
    let _controller = ControllerProcess::start(&kube, &["--namespace", &namespace]);
    let old_bucket = create_bucket(&s3, "recreate-old").await;
    create_uploads(&s3, &old_bucket, &keys("old/", 30)).await;
    tokio::time::sleep(AGE_WAIT).await;
    // The old resource's aborts crawl, so that its run is under way when it is replaced.
    proxy.add_rule(
        Rule::on(Op::AbortMultipartUpload)
            .bucket(&old_bucket)
            .then(Action::delay(Duration::from_millis(400))),
    );
    create_cleanup(
        &kube.client,
        &namespace,
        "same-name",
        &through(&proxy, &ceph),
        &old_bucket,
        serde_json::json!({"concurrency": 1}),
    )
    .await;
    eventually("the old run under way", WAIT, || async {
        (proxy.count(Op::AbortMultipartUpload) >= 2).then_some(())
    })
    .await;

    let api: Api<MultipartCleanup> = Api::namespaced(kube.client.clone(), &namespace);
    api.delete("same-name", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("the old resource gone", WAIT, || async {
        api.get_opt("same-name").await.ok()?.is_none().then_some(())
    })
    .await;
    let new_bucket = create_bucket(&s3, "recreate-new").await;
    create_uploads(&s3, &new_bucket, &keys("new/", 2)).await;
    tokio::time::sleep(AGE_WAIT).await;
    let created = create_cleanup(
        &kube.client,
        &namespace,
        "same-name",
        &through(&proxy, &ceph),
        &new_bucket,
        serde_json::json!({}),
    )
    .await;
    let status = wait_for_reason(&kube.client, &namespace, "same-name", "Succeeded").await;
    let run = status.last_run.clone().unwrap();
    assert_eq!(
        (run.found, run.aborted),
        (2, 2),
        "the new resource's own run: {run:?}"
    );
    assert_eq!(
        status.total_aborted, 2,
        "no count of the old run: {status:?}"
    );
    let current = api.get("same-name").await.unwrap();
    assert_eq!(current.metadata.uid, created.metadata.uid);
    // Give the old run's last write time to land, if it were going to.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let later = status_of(&kube.client, &namespace, "same-name").await;
    assert_eq!(later.total_aborted, 2, "{later:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_frozen_leader_sends_no_abort_after_a_standby_took_over() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let proxy = FaultProxy::start(&ceph.endpoint).await.expect("proxy");
    const TOTAL: usize = 300;
    let bucket = create_bucket(&s3, "freeze").await;
    create_uploads(&s3, &bucket, &keys("old/", TOTAL)).await;
    tokio::time::sleep(AGE_WAIT).await;
    // Slow enough that the leader is mid-sweep for a while.
    proxy.add_rule(
        Rule::on(Op::AbortMultipartUpload).then(Action::delay(Duration::from_millis(40))),
    );
    let namespace = namespace_with_credentials(&kube.client, "freeze", &ceph).await;
    let lease_name = "mpu-sweeper";
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
                lease_name,
                "--lease-duration-seconds",
                "6",
                "--identity",
                identity,
            ],
        )
    };
    let leases: Api<Lease> = Api::namespaced(kube.client.clone(), CONTROLLER_NAMESPACE);
    let holder = || async {
        leases
            .get_opt(lease_name)
            .await
            .ok()
            .flatten()
            .and_then(|l| l.spec?.holder_identity)
    };
    let mut leader = replica("freeze-a");
    eventually("freeze-a to lead", WAIT, || async {
        (holder().await.as_deref() == Some("freeze-a")).then_some(())
    })
    .await;
    let standby = replica("freeze-b");
    create_cleanup(
        &kube.client,
        &namespace,
        "frozen",
        &through(&proxy, &ceph),
        &bucket,
        serde_json::json!({"concurrency": 2}),
    )
    .await;
    eventually("the leader's sweep under way", WAIT, || async {
        (proxy.count(Op::AbortMultipartUpload) >= 20).then_some(())
    })
    .await;
    // Marked Running (a run that lasts is): the standby then knows the run was lost.
    wait_for_reason(&kube.client, &namespace, "frozen", "Running").await;

    // Frozen mid-sweep until the standby holds the Lease; then it wakes up.
    signal(leader.pid(), "-STOP");
    let frozen_at = proxy.count(Op::AbortMultipartUpload);
    eventually("freeze-b to take over", WAIT, || async {
        (holder().await.as_deref() == Some("freeze-b")).then_some(())
    })
    .await;
    signal(leader.pid(), "-CONT");
    let exit = {
        let deadline = tokio::time::Instant::now() + WAIT;
        loop {
            if let Some(code) = leader.try_exit_code() {
                break code;
            }
            assert!(
                tokio::time::Instant::now() < deadline,
                "the old leader did not stop"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    };
    assert_eq!(
        exit,
        5,
        "it exits for lost leadership; log:\n{}",
        leader.log()
    );
    // Nothing reached the server from it after the freeze: the standby does not sweep before
    // its 15 s backoff for the lost run, and the old leader is gone by then.
    let after_resume = proxy.count(Op::AbortMultipartUpload);
    assert!(
        after_resume <= frozen_at + 2,
        "aborts sent after losing the lease: {frozen_at} at the freeze, {after_resume} after"
    );
    assert!(leader.log().contains("leadership lost"), "{}", leader.log());

    // The new leader finishes the job; no upload got two aborts.
    let status = wait_for_reason(&kube.client, &namespace, "frozen", "Succeeded").await;
    assert_eq!(remaining_uploads(&s3, &bucket).await, vec![]);
    let per_upload = proxy.counts_by_upload(Op::AbortMultipartUpload);
    let twice: Vec<_> = per_upload.iter().filter(|(_, n)| **n > 1).collect();
    eprintln!(
        "aborts at the freeze: {frozen_at}; in all: {}; uploads aborted twice: {}",
        proxy.count(Op::AbortMultipartUpload),
        twice.len()
    );
    assert!(twice.is_empty(), "aborted by both replicas: {twice:?}");
    assert_eq!(per_upload.len(), TOTAL);
    assert!(
        status.last_run.unwrap().found as usize <= TOTAL - frozen_at + 2,
        "the standby's run found what the leader left"
    );
    drop(standby);
}

fn signal(pid: u32, signal: &str) {
    let status = std::process::Command::new("kill")
        .args([signal, &pid.to_string()])
        .status()
        .expect("kill");
    assert!(status.success());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn denied_endpoints_are_never_connected_to() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let proxy = FaultProxy::start(&ceph.endpoint).await.expect("proxy");
    let namespace = namespace_with_credentials(&kube.client, "fenced", &ceph).await;
    let _controller = ControllerProcess::start(
        &kube,
        &[
            "--namespace",
            &namespace,
            "--deny-endpoint-cidr",
            "169.254.0.0/16",
            "--deny-endpoint-cidr",
            "127.0.0.0/8",
            "--deny-endpoint-cidr",
            "::1/128",
        ],
    );
    let bucket = create_bucket(&s3, "fenced").await;
    let port = proxy.local_addr().port();
    for (name, endpoint) in [
        ("metadata", "http://169.254.169.254".to_owned()),
        ("loopback-address", proxy.endpoint()),
        ("loopback-by-name", format!("http://localhost:{port}")),
    ] {
        let server = Server {
            endpoint: endpoint.clone(),
            ..ceph.clone()
        };
        create_cleanup(
            &kube.client,
            &namespace,
            name,
            &server,
            &bucket,
            serde_json::json!({}),
        )
        .await;
        let status = wait_for_reason(&kube.client, &namespace, name, "EndpointForbidden").await;
        assert_eq!(
            condition(&status, "Stalled").map(|c| c.0),
            Some("True"),
            "{name}"
        );
        let message = condition(&status, "Ready").unwrap().2;
        assert!(message.contains("denies"), "{name}: {message}");
    }
    assert_eq!(proxy.connections(), 0, "no connection was made");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn allowed_hosts_https_and_labeled_secrets_are_enforced() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let namespace = namespace_with_credentials(&kube.client, "allow", &ceph).await;
    labeled_credentials_secret(
        &kube.client,
        &namespace,
        "marked",
        &ceph.access_key,
        &ceph.secret_key,
        &[("mpusweeper.io/tenant-credentials", "true")],
    )
    .await;
    let _controller = ControllerProcess::start(
        &kube,
        &[
            "--namespace",
            &namespace,
            "--allow-endpoint-host",
            "localhost",
            "--secret-label-selector",
            "mpusweeper.io/tenant-credentials=true",
        ],
    );
    let bucket = create_bucket(&s3, "allow").await;
    create_uploads(&s3, &bucket, &keys("old/", 2)).await;
    tokio::time::sleep(AGE_WAIT).await;
    let port = ceph.endpoint.rsplit(':').next().unwrap();
    let by_name = Server {
        endpoint: format!("http://localhost:{port}"),
        ..ceph.clone()
    };
    let marked = serde_json::json!({"credentialsSecretRef": {"name": "marked"}});
    create_cleanup(
        &kube.client,
        &namespace,
        "allowed",
        &by_name,
        &bucket,
        marked.clone(),
    )
    .await;
    let status = wait_for_reason(&kube.client, &namespace, "allowed", "Succeeded").await;
    assert_eq!(status.last_run.unwrap().aborted, 2);

    create_cleanup(
        &kube.client,
        &namespace,
        "other-host",
        &ceph,
        &bucket,
        marked,
    )
    .await;
    let status = wait_for_reason(&kube.client, &namespace, "other-host", "EndpointForbidden").await;
    assert!(
        condition(&status, "Ready")
            .unwrap()
            .2
            .contains("not among the hosts"),
        "{status:?}"
    );
    create_cleanup(
        &kube.client,
        &namespace,
        "unmarked-secret",
        &by_name,
        &bucket,
        serde_json::json!({}),
    )
    .await;
    let status = wait_for_reason(
        &kube.client,
        &namespace,
        "unmarked-secret",
        "SecretNotAllowed",
    )
    .await;
    let message = condition(&status, "Ready").unwrap().2;
    assert!(
        message.contains("mpusweeper.io/tenant-credentials=true"),
        "{message}"
    );
    assert!(!message.contains(&ceph.secret_key) && !message.contains(&ceph.access_key));

    // HTTPS required: the plain endpoint is refused.
    let https_namespace = namespace_with_credentials(&kube.client, "https", &ceph).await;
    let _strict =
        ControllerProcess::start(&kube, &["--namespace", &https_namespace, "--require-https"]);
    create_cleanup(
        &kube.client,
        &https_namespace,
        "plain",
        &ceph,
        &bucket,
        serde_json::json!({}),
    )
    .await;
    let status =
        wait_for_reason(&kube.client, &https_namespace, "plain", "EndpointForbidden").await;
    assert!(
        condition(&status, "Ready").unwrap().2.contains("https"),
        "{status:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn frequent_schedules_are_refused_and_run_requests_wait_for_the_minimum_interval() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let namespace = namespace_with_credentials(&kube.client, "interval", &ceph).await;
    let _controller =
        ControllerProcess::start(&kube, &["--namespace", &namespace, "--min-interval", "5m"]);
    let bucket = create_bucket(&s3, "interval").await;
    create_cleanup(
        &kube.client,
        &namespace,
        "every-second",
        &ceph,
        &bucket,
        serde_json::json!({"schedule": "@every 1s"}),
    )
    .await;
    let status = wait_for_reason(&kube.client, &namespace, "every-second", "InvalidSpec").await;
    let message = condition(&status, "Ready").unwrap().2;
    assert!(
        message.contains("--min-interval") && message.contains("5m"),
        "{message}"
    );

    // Not the default @hourly: a first run just before the hour would show its next scheduled
    // run, minutes away, as if it were the request's wait.
    create_cleanup(
        &kube.client,
        &namespace,
        "requested",
        &ceph,
        &bucket,
        serde_json::json!({"schedule": "@every 1h"}),
    )
    .await;
    let first = wait_for_reason(&kube.client, &namespace, "requested", "Succeeded").await;
    let started = first.last_run.unwrap().start_time.0;
    annotate(&kube.client, &namespace, "requested", "again").await;
    let waiting = eventually("the request's wait in nextRunTime", WAIT, || async {
        let status = status_of(&kube.client, &namespace, "requested").await;
        let next = status.next_run_time.clone()?.0;
        (next < started + jiff::SignedDuration::from_mins(6)).then_some(status)
    })
    .await;
    let next = waiting.next_run_time.unwrap().0;
    assert_eq!(next, started + jiff::SignedDuration::from_mins(5));
    tokio::time::sleep(Duration::from_secs(3)).await;
    let still = status_of(&kube.client, &namespace, "requested").await;
    assert_eq!(still.last_handled_run_request, None, "not run yet");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_deleted_resource_s_metric_series_go() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let namespace = namespace_with_credentials(&kube.client, "series", &ceph).await;
    let controller = ControllerProcess::start(&kube, &["--namespace", &namespace]);
    let bucket = create_bucket(&s3, "series").await;
    create_cleanup(
        &kube.client,
        &namespace,
        "short-lived",
        &ceph,
        &bucket,
        serde_json::json!({}),
    )
    .await;
    wait_for_reason(&kube.client, &namespace, "short-lived", "Succeeded").await;
    let series = format!(r#"name="short-lived",namespace="{namespace}""#);
    let metrics = controller.get("/metrics").unwrap().1;
    assert!(metrics.contains(&series), "{metrics}");

    let api: Api<MultipartCleanup> = Api::namespaced(kube.client.clone(), &namespace);
    api.delete("short-lived", &DeleteParams::default())
        .await
        .expect("delete");
    eventually("the series gone from /metrics", WAIT, || async {
        let metrics = controller.get("/metrics")?.1;
        (!metrics.contains(&series)).then_some(())
    })
    .await;
}
