//! Many buckets per run, the lifecycle rule that prevents stale uploads, and where they come
//! from: the `sweep` command against the real servers (and the fault proxy where a count or a
//! refusal is needed).

mod common;

use aws_sdk_s3::types::{
    BucketLifecycleConfiguration, ExpirationStatus, LifecycleExpiration, LifecycleRule,
    LifecycleRuleFilter,
};
use common::fault_proxy::{Action, FaultProxy, Op, Rule};
use common::*;

common::on_every_server!(
    several_buckets_by_name_and_by_pattern,
    a_missing_bucket_is_reported_and_the_others_swept,
    at_most_fifty_buckets_are_listed_and_the_rest_counted,
    top_prefixes_oldest_age_and_stale_bytes_come_from_a_dry_run,
    lifecycle_rule_on_this_server,
);

/// Runs `sweep` with `args` against `endpoint` (the server's own unless a proxy is given).
fn sweep(server: &Server, endpoint: &str, args: &[&str]) -> CliRun {
    let mut all = vec![
        "sweep",
        "--endpoint",
        endpoint,
        "--addressing-style",
        "path",
        "--max-age",
        MAX_AGE,
        "--quiet",
    ];
    if !args.contains(&"--output") {
        all.extend(["--output", "json"]);
    }
    all.extend(args);
    run_cli(server, &all, &[])
}

/// A tag unique to this process and call, for bucket names that one pattern picks out.
fn unique_tag(what: &str) -> String {
    bucket_name(what).replace("t-", "")
}

/// `count` buckets named `t-<tag>-...`, each with `stale` old uploads and one young one.
async fn buckets_with_uploads(
    s3: &aws_sdk_s3::Client,
    tag: &str,
    count: usize,
    stale: usize,
) -> Vec<String> {
    let mut buckets = Vec::new();
    for _ in 0..count {
        let bucket = create_bucket(s3, tag).await;
        create_uploads(s3, &bucket, &keys("old/", stale)).await;
        buckets.push(bucket);
    }
    tokio::time::sleep(AGE_WAIT).await;
    for bucket in &buckets {
        create_uploads(s3, bucket, &keys("young/", 1)).await;
    }
    buckets.sort();
    buckets
}

fn bucket_names(json: &serde_json::Value) -> Vec<String> {
    json["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| b["bucket"].as_str().unwrap().to_owned())
        .collect()
}

async fn several_buckets_by_name_and_by_pattern(server: Server) {
    let s3 = server.client().await;
    let tag = unique_tag("sel");
    let buckets = buckets_with_uploads(&s3, &tag, 3, 2).await;
    // By name: two of them.
    let run = sweep(
        &server,
        &server.endpoint,
        &["--bucket", &buckets[0], "--bucket", &buckets[1]],
    );
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(bucket_names(&json), &buckets[..2]);
    assert_eq!(
        (json["found"].as_u64(), json["aborted"].as_u64()),
        (Some(6), Some(4))
    );
    assert!(
        json.get("bucket").is_none(),
        "no single bucket in the totals: {json}"
    );
    assert_eq!(
        remaining_uploads(&s3, &buckets[2]).await.len(),
        3,
        "the third untouched"
    );

    // By pattern, leaving one out: the listed buckets come from ListBuckets.
    let excluded = buckets[2].rsplit('-').next().unwrap();
    let include = format!("t-{tag}-*");
    let exclude = format!("*-{excluded}");
    let run = sweep(
        &server,
        &server.endpoint,
        &["--include", &include, "--exclude", &exclude],
    );
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(bucket_names(&json), &buckets[..2]);
    assert_eq!(json["aborted"].as_u64(), Some(0), "already swept");
    let run = sweep(&server, &server.endpoint, &["--include", &include]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(bucket_names(&json), buckets);
    assert_eq!(
        json["aborted"].as_u64(),
        Some(2),
        "the third one's, at last"
    );
    for bucket in &buckets {
        assert_eq!(
            remaining_uploads(&s3, bucket).await.len(),
            1,
            "young kept in {bucket}"
        );
    }
}

async fn a_missing_bucket_is_reported_and_the_others_swept(server: Server) {
    let s3 = server.client().await;
    let buckets = buckets_with_uploads(&s3, "some-missing", 2, 3).await;
    let missing = bucket_name("never-created");
    let run = sweep(
        &server,
        &server.endpoint,
        &[
            "--bucket",
            &buckets[0],
            "--bucket",
            &missing,
            "--bucket",
            &buckets[1],
        ],
    );
    assert_eq!(
        run.status, 1,
        "some of the work failed; stderr: {}",
        run.stderr
    );
    let json = run.json();
    assert_eq!(json["aborted"].as_u64(), Some(6));
    let reports = json["buckets"].as_array().unwrap();
    let failed: Vec<&serde_json::Value> =
        reports.iter().filter(|b| !b["error"].is_null()).collect();
    assert_eq!(failed.len(), 1, "{reports:?}");
    assert_eq!(failed[0]["bucket"], missing.as_str());
    assert!(
        failed[0]["error"]
            .as_str()
            .unwrap()
            .contains("does not exist"),
        "{}",
        failed[0]["error"]
    );
    assert!(run.stderr.contains("1 of 3 buckets"), "{}", run.stderr);

    // Only missing buckets: nothing could be swept at all.
    let run = sweep(&server, &server.endpoint, &["--bucket", &missing]);
    assert_eq!(run.status, 3, "stderr: {}", run.stderr);
}

async fn at_most_fifty_buckets_are_listed_and_the_rest_counted(server: Server) {
    let s3 = server.client().await;
    let tag = unique_tag("cap");
    for _ in 0..55 {
        create_bucket(&s3, &tag).await;
    }
    let include = format!("t-{tag}-*");
    let run = sweep(
        &server,
        &server.endpoint,
        &["--include", &include, "--dry-run"],
    );
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(json["buckets"].as_array().unwrap().len(), 50);
    assert_eq!(json["moreBuckets"].as_u64(), Some(5));
    let run = sweep(
        &server,
        &server.endpoint,
        &["--include", &include, "--dry-run", "--output", "text"],
    );
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    assert!(run.stdout.contains("55 buckets"), "{}", run.stdout);
    assert!(
        run.stdout.contains("... and 5 more buckets"),
        "{}",
        run.stdout
    );
}

async fn top_prefixes_oldest_age_and_stale_bytes_come_from_a_dry_run(server: Server) {
    let s3 = server.client().await;
    let bucket = create_bucket(&s3, "origins").await;
    let mut expected_bytes = 0u64;
    for (prefix, count, part) in [("etl/", 7, 1024), ("ckpt/", 4, 2048), ("tmp/", 2, 512)] {
        for (key, upload_id) in create_uploads(&s3, &bucket, &keys(prefix, count)).await {
            upload_part(&s3, &bucket, &key, &upload_id, 1, part).await;
            expected_bytes += part as u64;
        }
    }
    tokio::time::sleep(AGE_WAIT).await;
    create_uploads(&s3, &bucket, &keys("etl/young-", 3)).await;
    let run = sweep(
        &server,
        &server.endpoint,
        &["--bucket", &bucket, "--dry-run", "--measure-bytes"],
    );
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    let top: Vec<(String, u64, u64)> = json["topPrefixes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|p| {
            (
                p["prefix"].as_str().unwrap().to_owned(),
                p["uploads"].as_u64().unwrap(),
                p["bytes"].as_u64().unwrap(),
            )
        })
        .collect();
    assert_eq!(
        top,
        [
            ("etl/".to_owned(), 7, 7 * 1024),
            ("ckpt/".to_owned(), 4, 4 * 2048),
            ("tmp/".to_owned(), 2, 2 * 512)
        ]
    );
    assert_eq!(json["staleBytes"].as_u64(), Some(expected_bytes));
    // Ages come from the server's Date, which has whole seconds: the oldest may read up to a
    // second under the 4.5 s waited (the young ones read 0 or 1).
    let oldest = json["oldestStaleAgeSeconds"].as_u64().unwrap();
    assert!((3..600).contains(&oldest), "{oldest}");
    assert_eq!(json["aborted"].as_u64(), Some(0));
    assert_eq!(
        remaining_uploads(&s3, &bucket).await.len(),
        16,
        "a dry run aborts nothing"
    );
    let run = sweep(
        &server,
        &server.endpoint,
        &[
            "--bucket",
            &bucket,
            "--dry-run",
            "--output",
            "text",
            "--prefix-depth",
            "1",
        ],
    );
    assert!(
        run.stdout.contains("stale uploads by prefix:\n  etl/: 7"),
        "{}",
        run.stdout
    );
    assert!(
        run.stdout.contains("oldest stale upload: "),
        "{}",
        run.stdout
    );
}

fn expiration_rule() -> LifecycleRule {
    LifecycleRule::builder()
        .id("expire-logs")
        .status(ExpirationStatus::Enabled)
        .filter(LifecycleRuleFilter::builder().prefix("logs/").build())
        .expiration(LifecycleExpiration::builder().days(30).build())
        .build()
        .unwrap()
}

async fn rules_of(s3: &aws_sdk_s3::Client, bucket: &str) -> Vec<LifecycleRule> {
    match s3
        .get_bucket_lifecycle_configuration()
        .bucket(bucket)
        .send()
        .await
    {
        Ok(out) => out.rules().to_vec(),
        Err(_) => Vec::new(),
    }
}

fn lifecycle_states(json: &serde_json::Value) -> Vec<String> {
    json["buckets"]
        .as_array()
        .unwrap()
        .iter()
        .map(|b| {
            b["lifecycle"]["state"]
                .as_str()
                .unwrap_or("none")
                .to_owned()
        })
        .collect()
}

/// What the server does with the rule; on Ceph RGW (which supports it) the whole contract.
async fn lifecycle_rule_on_this_server(server: Server) {
    let s3 = server.client().await;
    let proxy = FaultProxy::start(&server.endpoint).await.expect("proxy");
    let endpoint = proxy.endpoint();
    let with_rules = create_bucket(&s3, "lc-rules").await;
    let empty = create_bucket(&s3, "lc-empty").await;
    let existing = s3
        .put_bucket_lifecycle_configuration()
        .bucket(&with_rules)
        .lifecycle_configuration(
            BucketLifecycleConfiguration::builder()
                .rules(expiration_rule())
                .build()
                .unwrap(),
        )
        .send()
        .await;
    let before = rules_of(&s3, &with_rules).await;
    create_uploads(&s3, &empty, &keys("old/", 2)).await;
    tokio::time::sleep(AGE_WAIT).await;
    let both = ["--bucket", with_rules.as_str(), "--bucket", empty.as_str()];

    let mut args = both.to_vec();
    args.extend(["--lifecycle-rule", "ensure", "--lifecycle-days", "3"]);
    let run = sweep(&server, &endpoint, &args);
    let json = run.json();
    let states = lifecycle_states(&json);
    eprintln!(
        "{:?}: existing rule written: {}; ensure gave {states:?}; {}",
        server.kind,
        existing.is_ok(),
        json["buckets"]
    );
    assert_eq!(
        json["aborted"].as_u64(),
        Some(2),
        "the sweep itself runs whatever the rule does"
    );
    if server.kind != ServerKind::Ceph {
        // Recorded in the README's table of server differences; any honest state will do.
        assert!(
            states
                .iter()
                .all(|s| ["Applied", "Unsupported", "Failed", "Denied"].contains(&s.as_str())),
            "{states:?}"
        );
        return;
    }
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    assert_eq!(states, ["Applied", "Applied"]);
    let after = rules_of(&s3, &with_rules).await;
    let ours: Vec<&LifecycleRule> = after
        .iter()
        .filter(|r| r.id() == Some(mpu_sweeper::sweep::RULE_ID))
        .collect();
    assert_eq!(ours.len(), 1);
    assert_eq!(
        ours[0]
            .abort_incomplete_multipart_upload()
            .and_then(|a| a.days_after_initiation()),
        Some(3)
    );
    let others: Vec<&LifecycleRule> = after
        .iter()
        .filter(|r| r.id() != Some(mpu_sweeper::sweep::RULE_ID))
        .collect();
    assert_eq!(
        others,
        before.iter().collect::<Vec<_>>(),
        "the Expiration rule unchanged"
    );

    // Report finds it; a second ensure writes nothing.
    let mut args = both.to_vec();
    args.extend(["--lifecycle-rule", "report"]);
    let json = sweep(&server, &endpoint, &args).json();
    assert_eq!(lifecycle_states(&json), ["Present", "Present"]);
    let writes = proxy.count(Op::PutBucketLifecycle);
    let mut args = both.to_vec();
    args.extend(["--lifecycle-rule", "ensure", "--lifecycle-days", "3"]);
    let json = sweep(&server, &endpoint, &args).json();
    assert_eq!(lifecycle_states(&json), ["Present", "Present"]);
    assert_eq!(proxy.count(Op::PutBucketLifecycle), writes, "no write");

    // A credential refused the lifecycle configuration: Denied, and the sweep still runs.
    create_uploads(&s3, &empty, &keys("old-again/", 1)).await;
    tokio::time::sleep(AGE_WAIT).await;
    proxy.add_rule(Rule::on(Op::GetBucketLifecycle).then(Action::Error {
        status: 403,
        code: Some("AccessDenied".into()),
        message: Some("Access Denied".into()),
        message_bytes: None,
    }));
    let mut args = vec!["--bucket", empty.as_str()];
    args.extend(["--lifecycle-rule", "report"]);
    let run = sweep(&server, &endpoint, &args);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(lifecycle_states(&json), ["Denied"]);
    assert_eq!(json["aborted"].as_u64(), Some(1));
}
