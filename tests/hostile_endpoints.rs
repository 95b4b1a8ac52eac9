//! The `sweep` command against endpoints that misbehave: the real Ceph RGW and SeaweedFS behind
//! the fault proxy, scripted per test. Every scenario checks the exit status and summary, and
//! afterwards, on the real server, that no young upload was aborted.

mod common;

use std::time::Duration;

use common::fault_proxy::{Action, DateRewrite, FaultProxy, MarkerMode, Op, Rule};
use common::*;

common::on_every_server!(
    a_throttling_server_is_slowed_down_and_every_stale_upload_still_goes,
    across_a_round_trip_more_requests_are_kept_in_flight_up_to_the_bound,
    an_internal_error_burst_is_retried,
    answers_lost_after_the_abort_count_as_aborted,
    a_listing_broken_mid_answer_is_retried,
    a_huge_listing_page_is_refused_with_bounded_memory,
    cycling_markers_stop_the_listing_at_the_first_repeat,
    a_listing_that_never_ends_stops_at_the_deadline,
    a_garbage_date_falls_back_to_the_local_clock_and_says_so,
    a_server_date_days_off_never_ages_young_uploads,
    uploads_dated_1970_or_undated_are_skipped,
    a_404_without_a_code_is_a_failure_not_gone,
    a_megabyte_error_message_is_cut,
    control_characters_from_the_server_are_escaped,
);

/// A bucket with stale uploads under the given prefixes and young ones under `young/`, and a
/// fault proxy in front of the server.
struct Scene {
    server: Server,
    s3: aws_sdk_s3::Client,
    bucket: String,
    stale: Vec<(String, String)>,
    young: Vec<(String, String)>,
    proxy: FaultProxy,
}

const YOUNG: usize = 3;

async fn scene(server: Server, tag: &str, stale: &[(&str, usize)]) -> Scene {
    let s3 = server.client().await;
    let bucket = create_bucket(&s3, tag).await;
    let mut stale_uploads = Vec::new();
    for (prefix, count) in stale {
        stale_uploads.extend(create_uploads(&s3, &bucket, &keys(prefix, *count)).await);
    }
    tokio::time::sleep(AGE_WAIT).await;
    let young = create_uploads(&s3, &bucket, &keys("young/", YOUNG)).await;
    let proxy = FaultProxy::start(&server.endpoint)
        .await
        .expect("start the fault proxy");
    Scene {
        server,
        s3,
        bucket,
        stale: stale_uploads,
        young,
        proxy,
    }
}

impl Scene {
    /// Runs `mpu-sweeper sweep` through the proxy with `--max-age 3s` and `extra` flags.
    fn sweep(&self, extra: &[&str]) -> CliRun {
        self.sweep_with_age(MAX_AGE, extra)
    }

    fn sweep_with_age(&self, max_age: &str, extra: &[&str]) -> CliRun {
        let endpoint = self.proxy.endpoint();
        let mut args = vec![
            "sweep",
            "--endpoint",
            &endpoint,
            "--addressing-style",
            "path",
            "--bucket",
            &self.bucket,
            "--max-age",
            max_age,
            "--quiet",
        ];
        if !extra.contains(&"--output") {
            args.extend(["--output", "json"]);
        }
        args.extend(extra);
        run_cli(&self.server, &args, &[])
    }

    /// What is left in the bucket, read from the real server; the young uploads are always among it.
    async fn remaining(&self) -> Vec<(String, String)> {
        let left = remaining_uploads(&self.s3, &self.bucket).await;
        for young in &self.young {
            assert!(left.contains(young), "young upload {young:?} was aborted");
        }
        left
    }

    /// The stale uploads under `prefix`, sorted.
    fn stale_under(&self, prefix: &str) -> Vec<(String, String)> {
        let mut uploads: Vec<_> = self
            .stale
            .iter()
            .filter(|(key, _)| key.starts_with(prefix))
            .cloned()
            .collect();
        uploads.sort();
        uploads
    }

    async fn assert_only_young_left(&self) {
        let mut young = self.young.clone();
        young.sort();
        assert_eq!(self.remaining().await, young);
    }
}

fn counts(json: &serde_json::Value) -> [u64; 6] {
    [
        "found",
        "stale",
        "aborted",
        "alreadyGone",
        "failed",
        "skipped",
    ]
    .map(|field| {
        json[field]
            .as_u64()
            .unwrap_or_else(|| panic!("{field} in {json}"))
    })
}

fn error_line(run: &CliRun) -> String {
    run.stderr
        .lines()
        .rfind(|l| l.starts_with("error:"))
        .unwrap_or_else(|| panic!("no error line in: {}", run.stderr))
        .to_owned()
}

async fn a_throttling_server_is_slowed_down_and_every_stale_upload_still_goes(server: Server) {
    // A server that allows 50 aborts a second, as S3 throttles a prefix: SlowDown above it.
    const STALE: usize = 600;
    const ALLOWED: f64 = 50.0;
    let scene = scene(server, "throttle", &[("old/", STALE)]).await;
    scene.proxy.add_rule(
        Rule::on(Op::AbortMultipartUpload)
            .rate_above(ALLOWED)
            .then(Action::slow_down()),
    );
    let run = scene.sweep(&["--no-verify"]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(
        counts(&json),
        [STALE as u64 + 3, STALE as u64, STALE as u64, 0, 0, 0]
    );
    let throttled = json["throttled"].as_u64().unwrap();
    let deletes = scene.proxy.count(Op::AbortMultipartUpload);
    assert_eq!(
        deletes as u64,
        STALE as u64 + throttled,
        "each throttled abort was sent again"
    );
    assert!(throttled > 0, "the server throttled the first burst");
    scene.assert_only_young_left().await;

    // The proxy sees the pace fall to the server's: the sweep starts with up to 16 aborts in
    // flight; once throttled it paces its requests, so that after the first burst few aborts
    // are sent only to be throttled. (How many are in flight then depends on how slowly the
    // server answers a paced request, not on the throttling: it is shown, not asserted.)
    let aborts: Vec<_> = scene
        .proxy
        .records()
        .into_iter()
        .filter(|r| r.op == Op::AbortMultipartUpload)
        .collect();
    let first = aborts
        .iter()
        .take(32)
        .map(|r| r.in_flight_at_start)
        .max()
        .unwrap();
    let later = &aborts[aborts.len() / 3..];
    let later_max = later.iter().map(|r| r.in_flight_at_start).max().unwrap();
    let later_throttled = later.iter().filter(|r| r.status == 503).count();
    let share = later_throttled as f64 / later.len() as f64;
    eprintln!(
        "aborts in flight at the proxy: up to {first} at first, then up to {later_max}; \
         throttled: {throttled} of {deletes}, {later_throttled} of the last {}",
        later.len()
    );
    assert!(
        share < 0.1,
        "a paced run is seldom throttled: {later_throttled} of {}",
        later.len()
    );
}

/// 40 ms per request (the proxy holds each one): doubling the requests in flight doubles the
/// rate, so the sweep raises its limit past the 16 it starts with; `--concurrency` still bounds it.
async fn across_a_round_trip_more_requests_are_kept_in_flight_up_to_the_bound(server: Server) {
    const STALE: usize = 400;
    let scene = scene(server, "latency", &[("old/", STALE)]).await;
    scene
        .proxy
        .add_rule(Rule::any().then(Action::delay(Duration::from_millis(40))));
    let most_in_flight = || {
        let records = scene.proxy.records();
        let aborts: Vec<_> = records
            .iter()
            .filter(|r| r.op == Op::AbortMultipartUpload)
            .collect();
        let mut ids: Vec<&str> = aborts.iter().map(|r| r.upload_id.as_str()).collect();
        ids.sort_unstable();
        ids.dedup();
        assert_eq!(ids.len(), aborts.len(), "an upload was aborted twice");
        records.iter().map(|r| r.in_flight_at_start).max().unwrap()
    };

    let run = scene.sweep(&[]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(
        counts(&json),
        [STALE as u64 + 3, STALE as u64, STALE as u64, 0, 0, 0]
    );
    let peak = json["peakConcurrency"].as_u64().unwrap();
    let grown = most_in_flight();
    eprintln!("default bound: limit peaked at {peak}, {grown} requests in flight at most");
    assert!(peak >= 32, "the limit never grew: {peak}");
    assert!(grown > 16, "never more than 16 in flight: {grown}");
    scene.assert_only_young_left().await;

    // As many again under another prefix (the young uploads are no longer young), under a bound
    // of 24: the limit stops there.
    let more = create_uploads(&scene.s3, &scene.bucket, &keys("again/", STALE)).await;
    tokio::time::sleep(AGE_WAIT).await;
    scene.proxy.reset_stats();
    let run = scene.sweep(&["--concurrency", "24", "--prefix", "again/"]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    assert_eq!(run.json()["aborted"].as_u64(), Some(more.len() as u64));
    assert_eq!(run.json()["peakConcurrency"].as_u64(), Some(24));
    let bounded = most_in_flight();
    eprintln!("bound 24: {bounded} requests in flight at most");
    assert!(
        bounded <= 24 + 1,
        "the bound is 24 (and the listing): {bounded}"
    );
    assert_eq!(
        remaining_uploads(&scene.s3, &scene.bucket).await.len(),
        YOUNG
    );
}

async fn an_internal_error_burst_is_retried(server: Server) {
    const STALE: usize = 60;
    const ERRORS: u64 = 30;
    let scene = scene(server, "burst", &[("old/", STALE)]).await;
    scene.proxy.add_rule(
        Rule::on(Op::AbortMultipartUpload)
            .window(5, ERRORS)
            .then(Action::internal_error()),
    );
    let run = scene.sweep(&[]);
    let json = run.json();
    let [found, stale, aborted, gone, failed, skipped] = counts(&json);
    assert_eq!(
        scene.proxy.rules()[0].fired,
        ERRORS,
        "the whole burst was sent"
    );
    // Each upload gets its attempts; the burst is counted in requests, so an upload whose
    // retries all come back inside it fails (and the next run takes it), but the burst can use
    // up the attempts of no more than ERRORS / attempts uploads: without retries it would fail 30.
    let attempts = mpu_sweeper::sweep::RetryPolicy::default().max_attempts;
    eprintln!("a burst of {ERRORS} errors: {aborted} aborted, {failed} failed");
    assert!(
        failed <= ERRORS / u64::from(attempts),
        "{failed} failed; stderr: {}",
        run.stderr
    );
    assert_eq!(
        [found, stale, aborted + failed, gone, skipped],
        [STALE as u64 + 3, STALE as u64, STALE as u64, 0, 0]
    );
    assert_eq!(
        run.status,
        if failed == 0 { 0 } else { 1 },
        "stderr: {}",
        run.stderr
    );
    let tries = scene.proxy.counts_by_upload(Op::AbortMultipartUpload);
    let exhausted = tries.values().filter(|&&n| n >= attempts as usize).count();
    assert!(exhausted as u64 >= failed, "{tries:?}");

    // The burst is over: the next run aborts what it left.
    scene.proxy.clear_rules();
    let again = scene.sweep(&[]);
    assert_eq!(again.status, 0, "stderr: {}", again.stderr);
    assert_eq!(again.json()["aborted"].as_u64(), Some(failed));
    scene.assert_only_young_left().await;
}

async fn answers_lost_after_the_abort_count_as_aborted(server: Server) {
    let scene = scene(server, "lost", &[("old/", 10)]).await;
    // The server aborts, but the answers of the first four aborts arrive after the client gave
    // up on them; the retries then find the uploads gone: our own aborts, not somebody else's.
    scene.proxy.add_rule(
        Rule::on(Op::AbortMultipartUpload)
            .first(4)
            .then(Action::hold_answer(Duration::from_secs(3))),
    );
    let run = scene.sweep(&["--request-timeout", "1"]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    assert_eq!(counts(&run.json()), [13, 10, 10, 0, 0, 0]);
    scene.assert_only_young_left().await;
}

async fn a_listing_broken_mid_answer_is_retried(server: Server) {
    let scene = scene(server, "reset", &[("old/", 5)]).await;
    scene.proxy.add_rule(
        Rule::on(Op::ListMultipartUploads)
            .first(2)
            .then(Action::reset_after(100)),
    );
    let run = scene.sweep(&[]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    assert_eq!(counts(&run.json()), [8, 5, 5, 0, 0, 0]);
    assert_eq!(scene.proxy.count(Op::ListMultipartUploads), 3);
    scene.assert_only_young_left().await;
}

async fn a_huge_listing_page_is_refused_with_bounded_memory(server: Server) {
    let scene = scene(server, "huge", &[("old/", 2)]).await;
    for chunked in [false, true] {
        scene.proxy.reset_stats();
        scene
            .proxy
            .set_rules(vec![Rule::on(Op::ListMultipartUploads).then(
                Action::HugeListing {
                    bytes: 300 * 1024 * 1024,
                    chunked,
                },
            )]);
        let run = scene.sweep(&[]);
        assert_eq!(run.status, 3, "chunked {chunked}; stderr: {}", run.stderr);
        let error = error_line(&run);
        assert!(error.contains("larger than 4 MiB"), "{error}");
        assert_eq!(
            scene.proxy.count(Op::ListMultipartUploads),
            1,
            "refused, not retried"
        );
        let sent: u64 = scene
            .proxy
            .records()
            .iter()
            .map(|r| r.body_bytes_sent)
            .sum();
        eprintln!(
            "huge page, chunked {chunked}: peak RSS {} KiB, {sent} bytes sent by the proxy",
            run.max_rss_kib
        );
        assert!(
            run.max_rss_kib > 0 && run.max_rss_kib < 64 * 1024,
            "{} KiB",
            run.max_rss_kib
        );
        assert!(
            sent < 64 * 1024 * 1024,
            "the client stopped reading: {sent}"
        );
    }
    assert_eq!(scene.remaining().await.len(), 2 + YOUNG);
}

async fn cycling_markers_stop_the_listing_at_the_first_repeat(server: Server) {
    let scene = scene(server, "cycle", &[("old/", 4)]).await;
    scene
        .proxy
        .add_rule(Rule::on(Op::ListMultipartUploads).then(Action::Markers {
            mode: MarkerMode::Cycle(vec![
                ("~cycle-a".into(), "id-a".into()),
                ("~cycle-b".into(), "id-b".into()),
            ]),
        }));
    let run = scene.sweep(&[]);
    assert_eq!(run.status, 3, "stderr: {}", run.stderr);
    let error = error_line(&run);
    assert!(
        error.contains("a page marker it had given before")
            && error.contains("\"~cycle-a\"")
            && error.contains("\"id-a\""),
        "{error}"
    );
    // A, B, then A again: the third page's marker repeats, and no fourth page is asked for.
    assert_eq!(scene.proxy.count(Op::ListMultipartUploads), 3);
    // What the first page listed was still handled.
    assert_eq!(run.json()["aborted"].as_u64(), Some(4));
    scene.assert_only_young_left().await;
}

async fn a_listing_that_never_ends_stops_at_the_deadline(server: Server) {
    let scene = scene(server, "fresh", &[("old/", 4)]).await;
    scene
        .proxy
        .add_rule(Rule::on(Op::ListMultipartUploads).then(Action::Markers {
            mode: MarkerMode::Fresh,
        }));
    let run = scene.sweep(&["--timeout", "3s"]);
    assert_eq!(run.status, 4, "stderr: {}", run.stderr);
    let error = error_line(&run);
    assert!(
        error.contains("time limit (--timeout 3s) passed"),
        "{error}"
    );
    let json = run.json();
    assert_eq!(json["aborted"].as_u64(), Some(4));
    assert!(json["error"].as_str().unwrap().contains("time limit"));
    assert!(scene.proxy.count(Op::ListMultipartUploads) > 3);
    scene.assert_only_young_left().await;
}

async fn a_garbage_date_falls_back_to_the_local_clock_and_says_so(server: Server) {
    let scene = scene(server, "baddate", &[("old/", 3)]).await;
    scene.proxy.add_rule(
        Rule::on(Op::ListMultipartUploads)
            .then(Action::Date(DateRewrite::Garbage("yesterday-ish".into()))),
    );
    let run = scene.sweep(&[]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(counts(&json), [6, 3, 3, 0, 0, 0]);
    let warnings = json["warnings"].to_string();
    assert!(
        warnings.contains("Date header \\\"yesterday-ish\\\" is not an HTTP date"),
        "{warnings}"
    );
    assert!(
        run.stderr.contains("yesterday-ish"),
        "logged too: {}",
        run.stderr
    );
    scene.assert_only_young_left().await;
}

async fn a_server_date_days_off_never_ages_young_uploads(server: Server) {
    const TWO_DAYS: i64 = 2 * 86_400;
    let scene = scene(server, "skewdate", &[("old/", 3)]).await;
    // Two days ahead: by that clock every upload would be two days old.
    scene.proxy.add_rule(
        Rule::on(Op::ListMultipartUploads).then(Action::Date(DateRewrite::OffsetSeconds(TWO_DAYS))),
    );
    let run = scene.sweep_with_age("1d", &[]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(counts(&json), [6, 0, 0, 0, 0, 0]);
    assert!(
        json["warnings"].to_string().contains("2d ahead of"),
        "{json}"
    );
    // Two days behind: uploads look younger, which is the safe side; nothing goes.
    scene.proxy.set_rules(vec![
        Rule::on(Op::ListMultipartUploads)
            .then(Action::Date(DateRewrite::OffsetSeconds(-TWO_DAYS))),
    ]);
    let run = scene.sweep(&[]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(counts(&json), [6, 0, 0, 0, 0, 0]);
    assert!(json["warnings"].to_string().contains("behind"), "{json}");
    assert_eq!(scene.remaining().await.len(), 3 + YOUNG);
    // Two days ahead again, with uploads old enough by this machine's clock: they go. The SDK
    // signs each next request by the last answer's Date, so some aborts are first refused for
    // a skewed clock; sent again, they pass.
    scene.proxy.set_rules(vec![
        Rule::on(Op::ListMultipartUploads).then(Action::Date(DateRewrite::OffsetSeconds(TWO_DAYS))),
    ]);
    let run = scene.sweep(&[]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    assert_eq!(counts(&run.json()), [6, 3, 3, 0, 0, 0]);
    scene.assert_only_young_left().await;
}

async fn uploads_dated_1970_or_undated_are_skipped(server: Server) {
    let scene = scene(server, "epoch", &[("epoch/", 2), ("old/", 2)]).await;
    let initiated = |value: Option<&str>| {
        vec![Rule::on(Op::ListMultipartUploads).then(Action::Initiated {
            key_prefix: "epoch/".into(),
            value: value.map(str::to_owned),
        })]
    };
    scene
        .proxy
        .set_rules(initiated(Some("1970-01-01T00:00:00.000Z")));
    let run = scene.sweep(&[]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    assert_eq!(
        counts(&run.json()),
        [7, 2, 2, 0, 0, 2],
        "epoch/ skipped, old/ aborted"
    );
    scene.proxy.set_rules(initiated(None));
    let run = scene.sweep(&[]);
    assert_eq!(run.status, 0, "stderr: {}", run.stderr);
    assert_eq!(
        counts(&run.json()),
        [5, 0, 0, 0, 0, 2],
        "undated epoch/ skipped"
    );
    let mut left = scene.stale_under("epoch/");
    left.extend(scene.young.iter().cloned());
    left.sort();
    assert_eq!(scene.remaining().await, left);
}

async fn a_404_without_a_code_is_a_failure_not_gone(server: Server) {
    let scene = scene(server, "nocode", &[("nf/", 3), ("old/", 2)]).await;
    scene.proxy.add_rule(
        Rule::on(Op::AbortMultipartUpload)
            .key_prefix("nf/")
            .then(Action::not_found_without_code()),
    );
    let run = scene.sweep(&[]);
    assert_eq!(run.status, 1, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(counts(&json), [8, 5, 2, 0, 3, 0]);
    let message = json["failures"][0]["message"].as_str().unwrap();
    assert!(
        message.contains("404 without an S3 error code") && message.contains("still exists"),
        "{message}"
    );
    let mut left = scene.stale_under("nf/");
    left.extend(scene.young.iter().cloned());
    left.sort();
    assert_eq!(scene.remaining().await, left);
}

/// An S3 error answer whose message is padded to a megabyte.
fn megabyte_error(status: u16, code: &str) -> Action {
    Action::Error {
        status,
        code: Some(code.into()),
        message: Some("the disk is on fire ".into()),
        message_bytes: Some(1024 * 1024),
    }
}

async fn a_megabyte_error_message_is_cut(server: Server) {
    let scene = scene(server, "bigmsg", &[("big/", 2)]).await;
    // On a listing (answers up to 4 MiB are read): the message is kept, cut to 256 bytes.
    scene.proxy.set_rules(vec![
        Rule::on(Op::ListMultipartUploads).then(megabyte_error(403, "AccessDenied")),
    ]);
    let run = scene.sweep(&[]);
    assert_eq!(run.status, 3, "stderr: {}", run.stderr);
    let error = error_line(&run);
    assert!(
        error.contains("the disk is on fire") && error.contains("more bytes)"),
        "{error}"
    );
    assert!(error.len() < 800, "{error}");
    assert!(run.stderr.len() < 4096, "{}", run.stderr);

    // On an abort, whose real answers are tiny, a megabyte is not even read.
    scene.proxy.set_rules(vec![
        Rule::on(Op::AbortMultipartUpload).then(megabyte_error(500, "InternalError")),
    ]);
    let run = scene.sweep(&[]);
    assert_eq!(run.status, 1, "stderr: {}", run.stderr);
    let json = run.json();
    assert_eq!(counts(&json), [5, 2, 0, 0, 2, 0]);
    let message = json["failures"][0]["message"].as_str().unwrap();
    assert!(message.contains("larger than 64 KiB"), "{message}");
    assert_eq!(
        scene.proxy.count(Op::AbortMultipartUpload),
        2,
        "refused, not retried"
    );
    assert!(run.stdout.len() < 4096, "{}", run.stdout);
    assert_eq!(scene.remaining().await.len(), 2 + YOUNG);
}

/// Whether `text` holds anything a terminal would act on: C0/C1 controls other than newline,
/// DEL, or the bidirectional overrides.
/// Whether `text` holds anything a terminal would act on, or that would start a line of its own
/// inside one: C0/C1 controls other than the newline, DEL, line and paragraph separators, the
/// bidirectional overrides.
fn has_terminal_controls(text: &str) -> bool {
    text.chars().any(|c| {
        (c.is_control() && c != '\n')
            || matches!(c, '\u{2028}' | '\u{2029}' | '\u{202a}'..='\u{202e}')
    })
}

/// Whether a line of `text` was forged by server text carrying a newline.
fn has_forged_line(text: &str) -> bool {
    text.lines().any(|line| line.starts_with("forged"))
}

async fn control_characters_from_the_server_are_escaped(server: Server) {
    let scene = scene(server, "ansi", &[("ansi/", 2)]).await;
    scene.proxy.set_rules(vec![
        Rule::on(Op::ListMultipartUploads).then(Action::Inject {
            key_prefix: "ansi/".into(),
            key_suffix: Some("\u{1b}[31m\u{7}\r\nforged: key".into()),
            upload_id_suffix: Some("\u{1b}]0;owned\u{7}\u{202e}\u{2028}".into()),
        }),
        Rule::on(Op::AbortMultipartUpload).then(Action::Error {
            status: 500,
            code: Some("Internal\u{1b}[2JError".into()),
            message: Some("\u{1b}[2J\u{9b}1mcleared\u{202e}\nforged: message".into()),
            message_bytes: None,
        }),
    ]);
    for output in ["json", "text"] {
        let run = scene.sweep(&["--output", output, "--max-attempts", "1"]);
        assert_eq!(run.status, 1, "stderr: {}", run.stderr);
        assert!(
            !has_terminal_controls(&run.stdout),
            "{output}: {:?}",
            run.stdout
        );
        assert!(
            !has_terminal_controls(&run.stderr),
            "{output}: {:?}",
            run.stderr
        );
        assert!(
            !has_forged_line(&run.stdout) && !has_forged_line(&run.stderr),
            "{output}: {}\n{}",
            run.stdout,
            run.stderr
        );
        // What was escaped is still there to read.
        let shown = if output == "json" {
            let failure = &run.json()["failures"][0];
            ["key", "uploadId", "message"]
                .map(|field| failure[field].as_str().unwrap_or_default().to_owned())
                .join(" ")
        } else {
            run.stdout.clone()
        };
        assert!(
            shown.contains("\\x1b[31m\\x07\\r\\nforged: key"),
            "{output}: {shown}"
        );
        assert!(
            shown.contains("\\x1b]0;owned\\x07\\u{202e}\\u{2028}"),
            "{output}: {shown}"
        );
        assert!(
            shown.contains("\\x1b[2J\\x9b1mcleared\\u{202e}\\nforged: message"),
            "{output}: {shown}"
        );
        assert!(
            run.stderr.contains("abort failed"),
            "logged: {}",
            run.stderr
        );
    }
    assert_eq!(scene.remaining().await.len(), 2 + YOUNG);
}
