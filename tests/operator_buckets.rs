//! The operator with a bucket selector and the lifecycle rule, on the real kube-apiserver and
//! Ceph RGW: status per bucket, the LifecycleRuleReady condition, the printer columns.

mod common;

use common::cluster::*;
use common::*;

/// `count` buckets named `t-<tag>-...`, each with two stale uploads and one young one.
async fn buckets(s3: &aws_sdk_s3::Client, tag: &str, count: usize) -> Vec<String> {
    let mut names = Vec::new();
    for _ in 0..count {
        let bucket = create_bucket(s3, tag).await;
        create_uploads(s3, &bucket, &keys("jobs/", 2)).await;
        names.push(bucket);
    }
    tokio::time::sleep(AGE_WAIT).await;
    for bucket in &names {
        create_uploads(s3, bucket, &keys("young/", 1)).await;
    }
    names.sort();
    names
}

/// The value under `header` in the first row of a `kubectl get` table (cells may be empty).
fn column(table: &str, header: &str) -> String {
    let mut lines = table.lines();
    let head = lines.next().unwrap();
    let start = head
        .match_indices(header)
        .find(|(at, _)| head[at + header.len()..].starts_with(' '))
        .map(|(at, _)| at)
        .unwrap();
    let row = lines.next().unwrap();
    row.get(start..)
        .unwrap_or("")
        .split_whitespace()
        .next()
        .filter(|_| !row[start..].starts_with(' '))
        .unwrap_or("")
        .to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_selector_resource_reports_each_bucket_and_its_lifecycle_rule() {
    let Some((kube, ceph)) = kube_and_ceph().await else {
        return;
    };
    let s3 = ceph.client().await;
    let tag = bucket_name("opsel").replace("t-", "");
    let chosen = buckets(&s3, &tag, 3).await;
    let namespace = namespace_with_credentials(&kube.client, "selector", &ceph).await;
    let _controller = ControllerProcess::start(&kube, &["--namespace", &namespace]);
    let selector = serde_json::json!({"include": [format!("t-{tag}-*")]});
    let mut spec = serde_json::json!({
        "bucketSelector": selector,
        "lifecycleRule": {"mode": "Ensure", "daysAfterInitiation": 5},
    });
    create_cleanup(
        &kube.client,
        &namespace,
        "many",
        &ceph,
        "unused",
        spec.clone(),
    )
    .await;
    let status = wait_for_reason(&kube.client, &namespace, "many", "Succeeded").await;
    let run = status.last_run.clone().unwrap();
    assert_eq!((run.bucket_count, run.aborted, run.found), (3, 6, 9));
    let listed: Vec<&str> = run.buckets.iter().map(|b| b.bucket.as_str()).collect();
    assert_eq!(
        listed,
        chosen.iter().map(String::as_str).collect::<Vec<_>>()
    );
    for bucket in &run.buckets {
        assert_eq!((bucket.stale, bucket.aborted), (2, 2), "{bucket:?}");
        let lifecycle = bucket.lifecycle.as_ref().expect("lifecycle state");
        assert_eq!(lifecycle.state, "Applied", "{lifecycle:?}");
        assert_eq!(lifecycle.days_after_initiation, Some(5));
    }
    assert_eq!(run.top_prefixes[0].uploads, 2, "{:?}", run.top_prefixes);
    assert!(
        run.top_prefixes[0].prefix.ends_with("/jobs/"),
        "{:?}",
        run.top_prefixes
    );
    assert_eq!(
        condition(&status, "LifecycleRuleReady").map(|c| (c.0, c.1)),
        Some(("True", "Present"))
    );
    // Printer columns: no single bucket, three swept.
    let table = kubectl(&kube.kubeconfig, &["get", "mpc", "many", "-n", &namespace]);
    assert_eq!(
        (column(&table, "BUCKET"), column(&table, "BUCKETS")),
        ("".to_owned(), "3".to_owned()),
        "{table}"
    );

    // Report mode on the same buckets finds the rule; a missing bucket among them is reported
    // for itself while the others are swept.
    let missing = bucket_name("opsel-missing");
    spec["lifecycleRule"] = serde_json::json!({"mode": "Report"});
    spec["bucketSelector"]["names"] = serde_json::json!([missing]);
    create_cleanup(
        &kube.client,
        &namespace,
        "with-missing",
        &ceph,
        "unused",
        spec,
    )
    .await;
    let status = wait_for_reason(&kube.client, &namespace, "with-missing", "BucketsFailed").await;
    let run = status.last_run.clone().unwrap();
    assert_eq!(run.bucket_count, 4);
    let failed: Vec<_> = run.buckets.iter().filter(|b| b.error.is_some()).collect();
    assert_eq!(failed.len(), 1);
    assert_eq!(failed[0].bucket, missing);
    let message = condition(&status, "Ready").unwrap().2;
    assert!(
        message.contains("1 of 4 buckets could not be swept"),
        "{message}"
    );
    // The missing bucket has no rule to find: the condition says which.
    let lifecycle = condition(&status, "LifecycleRuleReady").unwrap();
    assert_eq!(lifecycle.0, "False", "{lifecycle:?}");
    for bucket in &chosen {
        assert_eq!(
            remaining_uploads(&s3, bucket).await.len(),
            1,
            "young kept in {bucket}"
        );
    }
}
