//! The operator against misbehaving endpoints: one controller on the real kube-apiserver sweeps
//! a namespace of resources whose buckets sit behind the fault proxy, each bucket with a fault of
//! its own. Each resource must end in the status its fault calls for, the others must not mind,
//! and no young upload may be aborted anywhere.

mod common;

use common::cluster::*;
use common::fault_proxy::{Action, DateRewrite, FaultProxy, MarkerMode, Op, Rule};
use common::*;
use kube::Api;
use mpu_sweeper::api::{MultipartCleanup, MultipartCleanupStatus};

/// One resource of the scene: its bucket, the rules scripted for it, its extra spec.
struct Case {
    name: &'static str,
    stale: usize,
    rules: fn(&str) -> Vec<Rule>,
    spec: serde_json::Value,
    /// The Ready reason the run must end with.
    reason: &'static str,
}

fn cases() -> Vec<Case> {
    vec![
        Case {
            name: "healthy",
            stale: 3,
            rules: |_| vec![],
            spec: serde_json::json!({}),
            reason: "Succeeded",
        },
        Case {
            name: "throttling",
            stale: 40,
            rules: |bucket| {
                vec![
                    Rule::on(Op::AbortMultipartUpload)
                        .bucket(bucket)
                        .share_seeded(0.3, 11)
                        .then(Action::slow_down()),
                ]
            },
            spec: serde_json::json!({}),
            reason: "Succeeded",
        },
        Case {
            name: "error-burst",
            stale: 8,
            rules: |bucket| {
                vec![
                    // Fewer errors than a request's attempts, so that no upload can use up its
                    // attempts inside the burst, however the retries fall.
                    Rule::on(Op::AbortMultipartUpload)
                        .bucket(bucket)
                        .window(2, 4)
                        .then(Action::internal_error()),
                ]
            },
            spec: serde_json::json!({}),
            reason: "Succeeded",
        },
        Case {
            name: "broken-listing",
            stale: 2,
            rules: |bucket| {
                vec![
                    Rule::on(Op::ListMultipartUploads)
                        .bucket(bucket)
                        .first(2)
                        .then(Action::reset_after(100)),
                ]
            },
            spec: serde_json::json!({}),
            reason: "Succeeded",
        },
        Case {
            name: "late-answers",
            stale: 3,
            // Held past the controller's 2 s request timeout, after the server aborted.
            rules: |bucket| {
                vec![
                    Rule::on(Op::AbortMultipartUpload)
                        .bucket(bucket)
                        .first(2)
                        .then(Action::hold_answer(std::time::Duration::from_secs(4))),
                ]
            },
            spec: serde_json::json!({}),
            reason: "Succeeded",
        },
        Case {
            name: "date-ahead",
            stale: 2,
            rules: |bucket| {
                vec![
                    Rule::on(Op::ListMultipartUploads)
                        .bucket(bucket)
                        .then(Action::Date(DateRewrite::OffsetSeconds(2 * 86_400))),
                ]
            },
            spec: serde_json::json!({"maxAge": "1d"}),
            reason: "Succeeded",
        },
        Case {
            name: "cycling",
            stale: 2,
            rules: |bucket| {
                vec![
                    Rule::on(Op::ListMultipartUploads)
                        .bucket(bucket)
                        .then(Action::Markers {
                            mode: MarkerMode::Cycle(vec![
                                ("~a".into(), "1".into()),
                                ("~b".into(), "2".into()),
                            ]),
                        }),
                ]
            },
            spec: serde_json::json!({}),
            reason: "ListingFailed",
        },
        Case {
            name: "endless",
            stale: 2,
            rules: |bucket| {
                vec![
                    Rule::on(Op::ListMultipartUploads)
                        .bucket(bucket)
                        .then(Action::Markers {
                            mode: MarkerMode::Fresh,
                        }),
                ]
            },
            spec: serde_json::json!({"timeout": "4s"}),
            reason: "DeadlineExceeded",
        },
        Case {
            name: "huge-page",
            stale: 2,
            rules: |bucket| {
                vec![
                    Rule::on(Op::ListMultipartUploads)
                        .bucket(bucket)
                        .then(Action::HugeListing {
                            bytes: 300 * 1024 * 1024,
                            chunked: true,
                        }),
                ]
            },
            spec: serde_json::json!({}),
            reason: "ListingFailed",
        },
        Case {
            name: "huge-message",
            stale: 2,
            rules: |bucket| {
                vec![
                    Rule::on(Op::ListMultipartUploads)
                        .bucket(bucket)
                        .then(Action::Error {
                            status: 403,
                            code: Some("AccessDenied".into()),
                            message: Some("go away ".into()),
                            message_bytes: Some(1024 * 1024),
                        }),
                ]
            },
            spec: serde_json::json!({}),
            reason: "AccessDenied",
        },
        Case {
            name: "uncoded-404",
            stale: 2,
            rules: |bucket| {
                vec![
                    Rule::on(Op::AbortMultipartUpload)
                        .bucket(bucket)
                        .then(Action::not_found_without_code()),
                ]
            },
            spec: serde_json::json!({}),
            reason: "AbortsFailed",
        },
        Case {
            name: "garbage-date",
            stale: 2,
            rules: |bucket| {
                vec![
                    Rule::on(Op::ListMultipartUploads)
                        .bucket(bucket)
                        .then(Action::Date(DateRewrite::Garbage("soon-ish".into()))),
                ]
            },
            spec: serde_json::json!({}),
            reason: "Succeeded",
        },
        Case {
            name: "epoch",
            stale: 2,
            rules: |bucket| {
                vec![
                    Rule::on(Op::ListMultipartUploads)
                        .bucket(bucket)
                        .then(Action::Initiated {
                            key_prefix: String::new(),
                            value: Some("1970-01-01T00:00:00.000Z".into()),
                        }),
                ]
            },
            spec: serde_json::json!({}),
            reason: "Succeeded",
        },
        Case {
            name: "escapes",
            stale: 2,
            rules: |bucket| {
                vec![
                    Rule::on(Op::ListMultipartUploads)
                        .bucket(bucket)
                        .then(Action::Inject {
                            key_prefix: String::new(),
                            key_suffix: Some("\u{1b}[31m\r\nforged".into()),
                            upload_id_suffix: Some("\u{7}\u{202e}".into()),
                        }),
                    Rule::on(Op::AbortMultipartUpload)
                        .bucket(bucket)
                        .then(Action::Error {
                            status: 400,
                            code: Some("Invalid\u{1b}[2J".into()),
                            message: Some("\u{1b}]0;owned\u{7}\u{9b}1m".into()),
                            message_bytes: None,
                        }),
                ]
            },
            spec: serde_json::json!({}),
            reason: "AbortsFailed",
        },
    ]
}

/// Whether `text` holds anything a terminal would act on.
fn has_terminal_controls(text: &str) -> bool {
    text.chars()
        .any(|c| c.is_control() || ('\u{202a}'..='\u{202e}').contains(&c))
}

fn texts_of(status: &MultipartCleanupStatus) -> Vec<String> {
    let mut texts: Vec<String> = status
        .conditions
        .iter()
        .map(|c| c.message.clone())
        .collect();
    if let Some(run) = &status.last_run {
        texts.extend(run.error.clone());
        texts.extend(run.warnings.clone());
    }
    texts
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn each_fault_shows_in_its_resource_and_no_other() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let proxy = FaultProxy::start(&ceph.endpoint)
        .await
        .expect("fault proxy");
    let through_proxy = Server {
        endpoint: proxy.endpoint(),
        ..ceph.clone()
    };
    let cases = cases();
    let mut buckets = Vec::new();
    for case in &cases {
        let bucket = create_bucket(&s3, case.name).await;
        create_uploads(&s3, &bucket, &keys("old/", case.stale)).await;
        for rule in (case.rules)(&bucket) {
            proxy.add_rule(rule);
        }
        buckets.push(bucket);
    }
    tokio::time::sleep(AGE_WAIT).await;
    let mut young = Vec::new();
    for bucket in &buckets {
        young.push(create_uploads(&s3, bucket, &keys("young/", 2)).await);
    }

    let namespace = namespace_with_credentials(&kube.client, "hostile", &ceph).await;
    let controller = ControllerProcess::start(
        &kube,
        &[
            "--namespace",
            &namespace,
            "--s3-request-timeout",
            "2",
            // Every resource sweeps at once, while its young uploads are still young.
            "--max-concurrent-sweeps",
            "32",
            "--max-concurrent-sweeps-per-namespace",
            "32",
        ],
    );
    for (case, bucket) in cases.iter().zip(&buckets) {
        create_cleanup(
            &kube.client,
            &namespace,
            case.name,
            &through_proxy,
            bucket,
            case.spec.clone(),
        )
        .await;
    }

    let mut statuses = Vec::new();
    for case in &cases {
        let status = wait_for_reason(&kube.client, &namespace, case.name, case.reason).await;
        let run = status.last_run.clone().expect("lastRun");
        eprintln!("{}: {:?} {:?}", case.name, condition(&status, "Ready"), run);
        for text in texts_of(&status) {
            assert!(!has_terminal_controls(&text), "{}: {text:?}", case.name);
            assert!(text.len() < 1024, "{}: {} bytes", case.name, text.len());
        }
        statuses.push(status);
    }
    let index_of = |name: &str| cases.iter().position(|c| c.name == name).unwrap();
    let by_name = |name: &str| {
        let status = statuses[index_of(name)].clone();
        let run = status.last_run.clone().unwrap();
        (status, run)
    };

    let (_, run) = by_name("healthy");
    assert_eq!((run.stale, run.aborted, run.throttled), (3, 3, 0));

    let (_, run) = by_name("throttling");
    assert_eq!((run.stale, run.aborted, run.failed), (40, 40, 0));
    assert!(run.throttled > 0, "{run:?}");

    let (_, run) = by_name("error-burst");
    assert_eq!((run.stale, run.aborted, run.failed), (8, 8, 0));

    let (_, run) = by_name("broken-listing");
    assert_eq!((run.stale, run.aborted), (2, 2));
    assert_eq!(
        proxy
            .count_where(|r| r.op == Op::ListMultipartUploads
                && r.bucket == buckets[index_of("broken-listing")]),
        3,
        "two broken answers, then the page"
    );

    let (_, run) = by_name("late-answers");
    assert_eq!(
        (run.stale, run.aborted, run.already_gone),
        (3, 3, 0),
        "aborts whose answers came too late are still ours"
    );

    let (_, run) = by_name("date-ahead");
    assert_eq!((run.found, run.stale, run.aborted), (4, 0, 0));
    assert!(
        run.warnings.iter().any(|w| w.contains("2d ahead of")),
        "{run:?}"
    );

    let (status, _) = by_name("cycling");
    let ready = condition(&status, "Ready").unwrap();
    assert!(
        ready.2.contains("a page marker it had given before"),
        "{ready:?}"
    );

    let (status, run) = by_name("endless");
    assert_eq!(
        run.aborted, 2,
        "what was listed before the deadline was handled"
    );
    let ready = condition(&status, "Ready").unwrap();
    assert!(ready.2.contains("spec.timeout 4s"), "{ready:?}");

    let (_, run) = by_name("huge-page");
    assert!(
        run.error.as_deref().unwrap().contains("larger than 4 MiB"),
        "{run:?}"
    );

    let (status, run) = by_name("huge-message");
    assert_eq!(condition(&status, "Stalled").map(|c| c.0), Some("True"));
    assert!(run.error.as_deref().unwrap().contains("go away"), "{run:?}");
    let api: Api<MultipartCleanup> = Api::namespaced(kube.client.clone(), &namespace);
    let object = serde_json::to_string(&api.get("huge-message").await.unwrap()).unwrap();
    assert!(
        object.len() < 16 * 1024,
        "the object stays small: {} bytes",
        object.len()
    );

    let (_, run) = by_name("uncoded-404");
    assert_eq!((run.stale, run.aborted, run.failed), (2, 0, 2));

    let (_, run) = by_name("garbage-date");
    assert_eq!(run.aborted, 2);
    assert!(
        run.warnings
            .iter()
            .any(|w| w.contains("\"soon-ish\" is not an HTTP date")),
        "{run:?}"
    );

    let (_, run) = by_name("epoch");
    assert_eq!(
        (run.found, run.skipped, run.stale, run.aborted),
        (4, 4, 0, 0)
    );

    let (status, _) = by_name("escapes");
    let ready = condition(&status, "Ready").unwrap();
    assert!(ready.2.contains("\\x1b]0;owned\\x07\\x9b1m"), "{ready:?}");
    let events = eventually("the escapes Warning", WAIT, || async {
        let events = events_for(&kube.client, &namespace, "escapes").await;
        events
            .iter()
            .any(|e| e.1 == "AbortsFailed")
            .then_some(events)
    })
    .await;
    for (_, _, note) in events {
        assert!(!has_terminal_controls(&note), "{note:?}");
    }

    // Its logs show server text escaped too.
    let log = controller.log();
    assert!(log.contains("abort failed"), "{log}");
    assert!(
        !log.chars().any(|c| c.is_control() && c != '\n'),
        "raw control characters in the controller's log"
    );
    assert!(!log.lines().any(|l| l.starts_with("forged")), "{log}");

    // The controller read a 300 MB page without holding it, and is still serving.
    let peak = peak_rss_kib(controller.pid());
    eprintln!("controller peak RSS: {peak} KiB");
    assert!(peak < 64 * 1024, "{peak} KiB");
    assert_eq!(controller.get("/healthz").map(|r| r.0), Some(200));
    let metrics = controller.get("/metrics").expect("metrics").1;
    assert!(
        metrics
            .lines()
            .any(|l| l.starts_with("mpu_sweeper_throttled_total{")
                && l.contains("name=\"throttling\"")
                && !l.ends_with(" 0")),
        "{metrics}"
    );

    // No young upload was aborted, whatever its endpoint did.
    for (bucket, young) in buckets.iter().zip(&young) {
        let left = remaining_uploads(&s3, bucket).await;
        for upload in young {
            assert!(
                left.contains(upload),
                "young {upload:?} of {bucket} aborted"
            );
        }
    }
}

/// VmHWM of a running process, in KiB.
fn peak_rss_kib(pid: u32) -> u64 {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("proc status");
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .expect("VmHWM")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_run_lost_with_its_controller_is_retried_with_backoff() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let proxy = FaultProxy::start(&ceph.endpoint)
        .await
        .expect("fault proxy");
    let through_proxy = Server {
        endpoint: proxy.endpoint(),
        ..ceph.clone()
    };
    let bucket = create_bucket(&s3, "lost-run").await;
    create_uploads(&s3, &bucket, &keys("old/", 5)).await;
    tokio::time::sleep(AGE_WAIT).await;
    // Every abort hangs: the sweep stays Running until its controller dies.
    proxy.add_rule(Rule::on(Op::AbortMultipartUpload).then(Action::stall()));

    let namespace = namespace_with_credentials(&kube.client, "lost-run", &ceph).await;
    let mut first = ControllerProcess::start(&kube, &["--namespace", &namespace]);
    create_cleanup(
        &kube.client,
        &namespace,
        "lost",
        &through_proxy,
        &bucket,
        serde_json::json!({}),
    )
    .await;
    wait_for_reason(&kube.client, &namespace, "lost", "Running").await;
    eventually("aborts in flight", WAIT, || async {
        (proxy.count(Op::AbortMultipartUpload) > 0).then_some(())
    })
    .await;
    // Killed mid-run, as the kernel's OOM killer would: no chance to write status.
    first.kill();
    proxy.clear_rules();
    let deletes_before = proxy.count(Op::AbortMultipartUpload);

    let _second = ControllerProcess::start(&kube, &["--namespace", &namespace]);
    let status = wait_for_reason(&kube.client, &namespace, "lost", "Interrupted").await;
    let ready = condition(&status, "Ready").unwrap();
    assert!(ready.2.contains("did not finish"), "{ready:?}");
    assert_eq!(status.consecutive_failures, 1);
    let retry_at = status.next_run_time.clone().expect("nextRunTime").0;
    let now = jiff::Timestamp::now();
    assert!(
        retry_at > now,
        "the lost run is retried after a backoff, not at once: {retry_at} vs {now}"
    );
    assert_eq!(
        proxy.count(Op::AbortMultipartUpload),
        deletes_before,
        "nothing swept before the backoff"
    );

    // After the backoff the run happens and finishes the job.
    let status = wait_for_reason(&kube.client, &namespace, "lost", "Succeeded").await;
    assert_eq!(status.consecutive_failures, 0);
    assert_eq!(remaining_uploads(&s3, &bucket).await, vec![]);
}
