//! The fault-injecting proxy of the test bed (`tests/common/fault_proxy`) against the real
//! servers: what each fault looks like to the AWS SDK, and what the proxy records.

mod common;

use std::time::{Duration, Instant};

use aws_sdk_s3::Client;
use aws_sdk_s3::config::retry::RetryConfig;
use aws_sdk_s3::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_s3::operation::list_multipart_uploads::ListMultipartUploadsOutput;
use aws_sdk_s3::primitives::ByteStream;
use common::fault_proxy::*;
use common::*;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

common::on_every_server!(
    forwards_multipart_requests_signed_and_kept_alive,
    marker_cycle_and_fresh_markers_reach_the_sdk,
    injected_control_characters_parse_back_in_keys,
    initiated_is_rewritten_or_removed,
);

async fn proxy_for(server: &Server) -> FaultProxy {
    FaultProxy::start(&server.endpoint)
        .await
        .expect("start the proxy")
}

/// A client of `server` through the proxy, one attempt per operation so every fault shows.
async fn client_via(server: &Server, proxy: &FaultProxy, attempt_timeout: Duration) -> Client {
    let mut settings = server.settings();
    settings.endpoint = Some(proxy.endpoint());
    settings.limits.attempt_timeout = attempt_timeout;
    let client = settings.client().await.expect("client");
    let config = client
        .config()
        .to_builder()
        .retry_config(RetryConfig::disabled());
    Client::from_conf(config.build())
}

/// A fresh bucket on `server`, a proxy in front of it, and clients of both.
struct Proxied {
    /// Straight to the server, past the proxy.
    direct: Client,
    bucket: String,
    proxy: FaultProxy,
    /// Through the proxy, one attempt per operation.
    client: Client,
}

async fn proxied(server: &Server, tag: &str, attempt_timeout: Duration) -> Proxied {
    let direct = server.client().await;
    let bucket = create_bucket(&direct, tag).await;
    let proxy = proxy_for(server).await;
    let client = client_via(server, &proxy, attempt_timeout).await;
    Proxied {
        direct,
        bucket,
        proxy,
        client,
    }
}

async fn list(client: &Client, bucket: &str) -> ListMultipartUploadsOutput {
    client
        .list_multipart_uploads()
        .bucket(bucket)
        .send()
        .await
        .expect("list uploads")
}

/// Polls `check` every 50 ms until it holds; a hang guard, not a timing assertion.
async fn eventually(what: &str, mut check: impl FnMut() -> bool) {
    let deadline = Instant::now() + Duration::from_secs(30);
    while !check() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

async fn forwards_multipart_requests_signed_and_kept_alive(server: Server) {
    let direct = server.client().await;
    let bucket = create_bucket(&direct, "proxy-plain").await;
    let proxy = proxy_for(&server).await;
    assert_eq!(proxy.connections(), 0, "nothing connected yet");
    let client = client_via(&server, &proxy, Duration::from_secs(30)).await;

    // One after another, so one kept-alive connection can carry them all.
    let mut created = Vec::new();
    for key in keys("plain/", 12) {
        let out = client
            .create_multipart_upload()
            .bucket(&bucket)
            .key(&key)
            .send()
            .await
            .expect("create through the proxy");
        created.push((key, out.upload_id().expect("upload id").to_owned()));
    }
    // A 6 MiB part streams through.
    let (key, upload_id) = &created[0];
    upload_part(&client, &bucket, key, upload_id, 1, 6 << 20).await;
    object_round_trip(&client, &bucket).await;
    let listed = list(&client, &bucket).await;
    assert_eq!(listed.uploads().len(), created.len());
    for (key, upload_id) in &created {
        client
            .abort_multipart_upload()
            .bucket(&bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
            .await
            .expect("abort through the proxy");
    }
    assert_eq!(remaining_uploads(&direct, &bucket).await, vec![]);

    assert_eq!(proxy.count(Op::CreateMultipartUpload), created.len());
    assert_eq!(proxy.count(Op::UploadPart), 1);
    for op in [
        Op::PutObject,
        Op::HeadObject,
        Op::GetObject,
        Op::DeleteObject,
    ] {
        assert_eq!(proxy.count(op), 1, "{op:?}");
    }
    assert_eq!(proxy.count(Op::ListMultipartUploads), 1);
    let aborts = proxy.counts_by_upload(Op::AbortMultipartUpload);
    let expected = created.iter().cloned().map(|upload| (upload, 1)).collect();
    assert_eq!(
        aborts, expected,
        "one DELETE per upload, keys and IDs decoded"
    );
    let records = proxy.records();
    assert!(
        records
            .iter()
            .all(|r| (200..300).contains(&r.status) && r.fault.is_none())
    );
    assert!(
        records
            .iter()
            .all(|r| r.finished.is_some() && r.bucket == bucket)
    );
    let part = records
        .iter()
        .find(|r| r.op == Op::UploadPart)
        .expect("part");
    assert_eq!((&part.key, &part.upload_id), (key, upload_id));
    assert!(
        proxy.connections() <= 2,
        "{} connections for {} requests",
        proxy.connections(),
        records.len()
    );
    assert_eq!(proxy.max_in_flight(Op::AbortMultipartUpload, ..), 1);
}

/// An object written, looked at, read and deleted: HEAD answers have a length but no body.
async fn object_round_trip(client: &Client, bucket: &str) {
    let body = vec![b'o'; 100_000];
    let put = client.put_object().bucket(bucket).key("object");
    put.body(ByteStream::from(body.clone()))
        .send()
        .await
        .expect("put object");
    let head = client.head_object().bucket(bucket).key("object");
    let head = head.send().await.expect("head object");
    assert_eq!(head.content_length(), Some(body.len() as i64));
    let get = client.get_object().bucket(bucket).key("object");
    let got = get.send().await.expect("get object").body.collect().await;
    assert_eq!(got.expect("object body").into_bytes(), body);
    let delete = client.delete_object().bucket(bucket).key("object");
    delete.send().await.expect("delete object");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_slow_down_share_fails_about_that_share() {
    let Some(server) = ceph() else {
        return;
    };
    let Proxied {
        bucket,
        proxy,
        client,
        ..
    } = proxied(&server, "proxy-share", Duration::from_secs(30)).await;
    proxy.add_rule(
        Rule::on(Op::ListMultipartUploads)
            .share(0.3)
            .then(Action::slow_down()),
    );

    const REQUESTS: usize = 200;
    let mut slowed = 0;
    for _ in 0..REQUESTS {
        match client.list_multipart_uploads().bucket(&bucket).send().await {
            Ok(_) => {}
            Err(e) => {
                let status = e.raw_response().map(|r| r.status().as_u16());
                assert_eq!((status, e.code()), (Some(503), Some("SlowDown")), "{e:?}");
                assert_eq!(e.message(), Some("Please reduce your request rate."));
                slowed += 1;
            }
        }
    }
    println!("{slowed} of {REQUESTS} slowed down");
    assert!((40..=80).contains(&slowed), "{slowed} of {REQUESTS}");
    let rule = &proxy.rules()[0];
    assert_eq!((rule.matched, rule.fired), (REQUESTS as u64, slowed as u64));
    let recorded = proxy.count_where(|r| r.status == 503 && r.fault.as_deref() == Some("Error"));
    assert_eq!(recorded, slowed);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn errors_arrive_whole_even_with_a_megabyte_message_or_no_code() {
    let Some(server) = ceph() else {
        return;
    };
    let Proxied {
        direct,
        bucket,
        proxy,
        client,
    } = proxied(&server, "proxy-errors", Duration::from_secs(30)).await;
    let (key, upload_id) = create_uploads(&direct, &bucket, &keys("e/", 1))
        .await
        .remove(0);
    const MESSAGE_BYTES: usize = 1 << 20;
    proxy.set_rules(vec![
        Rule::on(Op::ListMultipartUploads).then(Action::Error {
            status: 500,
            code: Some("InternalError".into()),
            message: Some("<big & bad>".into()),
            message_bytes: Some(MESSAGE_BYTES),
        }),
        Rule::on(Op::AbortMultipartUpload).then(Action::not_found_without_code()),
    ]);

    let big = client
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .expect_err("the scripted 500");
    assert_eq!(big.code(), Some("InternalError"));
    let message = big.message().expect("message");
    assert_eq!(message.len(), MESSAGE_BYTES);
    assert!(message.starts_with("<big & bad>xxx") && message.ends_with("xxx"));

    let bare = client
        .abort_multipart_upload()
        .bucket(&bucket)
        .key(&key)
        .upload_id(&upload_id)
        .send()
        .await
        .expect_err("the scripted 404");
    // The SDK names a bodiless 404 "NotFound" itself; on the wire there was no code at all.
    let raw = bare.raw_response().expect("an answer");
    assert_eq!(raw.status().as_u16(), 404);
    assert_eq!(raw.body().bytes(), Some(&b""[..]), "{bare:?}");
    assert_eq!(bare.message(), None);
    assert!(
        upload_exists(&direct, &bucket, &key, &upload_id).await,
        "never forwarded"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_reset_mid_answer_is_an_io_error_not_an_answer() {
    let Some(server) = ceph() else {
        return;
    };
    let Proxied {
        direct,
        bucket,
        proxy,
        client,
    } = proxied(&server, "proxy-reset", Duration::from_secs(30)).await;
    let uploads = create_uploads(&direct, &bucket, &keys("reset/", 20)).await;
    proxy.set_rules(vec![
        Rule::on(Op::ListMultipartUploads).then(Action::reset_after(300)),
        Rule::on(Op::AbortMultipartUpload).then(Action::reset_after(0)),
    ]);

    let broken = client
        .list_multipart_uploads()
        .bucket(&bucket)
        .send()
        .await
        .expect_err("a broken listing");
    println!("listing reset after 300 bytes: {broken:?}");
    assert!(
        matches!(broken, SdkError::ResponseError(_)),
        "the head arrived, the body broke: {broken:?}"
    );
    let listing = proxy.records().remove(0);
    assert_eq!((listing.status, listing.body_bytes_sent), (200, 300));

    // An abort's answer has no body: the connection is reset before its head, after the server
    // applied it.
    let (key, upload_id) = &uploads[0];
    let lost = client
        .abort_multipart_upload()
        .bucket(&bucket)
        .key(key)
        .upload_id(upload_id)
        .send()
        .await
        .expect_err("a lost answer");
    println!("abort reset before its answer: {lost:?}");
    assert!(matches!(lost, SdkError::DispatchFailure(_)), "{lost:?}");
    assert!(!upload_exists(&direct, &bucket, key, upload_id).await);
    let abort = proxy.records().remove(1);
    assert_eq!(
        (abort.status, abort.fault.as_deref()),
        (0, Some("ResetMidAnswer"))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn held_answers_time_out_the_client_and_end_with_it() {
    let Some(server) = ceph() else {
        return;
    };
    let Proxied {
        direct,
        bucket,
        proxy,
        client,
    } = proxied(&server, "proxy-hold", Duration::from_secs(1)).await;
    let uploads = create_uploads(&direct, &bucket, &keys("hold/", 3)).await;
    let abort = |(key, upload_id): &(String, String)| {
        client
            .abort_multipart_upload()
            .bucket(&bucket)
            .key(key)
            .upload_id(upload_id)
            .send()
    };

    // Forwarded first: the abort is applied, its answer comes too late.
    proxy.set_rules(vec![
        Rule::on(Op::AbortMultipartUpload).then(Action::hold_answer(Duration::from_secs(3))),
    ]);
    let late = abort(&uploads[0]).await.expect_err("held past the timeout");
    assert!(matches!(late, SdkError::TimeoutError(_)), "{late:?}");
    let (key, upload_id) = &uploads[0];
    assert!(
        !upload_exists(&direct, &bucket, key, upload_id).await,
        "applied"
    );

    // Held before forwarding: never applied; the hold ends when the client gives up.
    proxy.set_rules(vec![
        Rule::on(Op::AbortMultipartUpload).then(Action::stall()),
    ]);
    let stalled = abort(&uploads[1]).await.expect_err("stalled");
    assert!(matches!(stalled, SdkError::TimeoutError(_)), "{stalled:?}");
    let (key, upload_id) = &uploads[1];
    assert!(
        upload_exists(&direct, &bucket, key, upload_id).await,
        "never forwarded"
    );
    eventually("the stalled request to end with its client", || {
        proxy.records().last().is_some_and(|r| r.finished.is_some())
    })
    .await;

    // Shutting the proxy down ends a stall at once, whatever the client's patience.
    let patient = client_via(&server, &proxy, Duration::from_secs(600)).await;
    let (key, upload_id) = uploads[2].clone();
    let bucket_name = bucket.clone();
    let waiting = tokio::spawn(async move {
        let send = patient
            .abort_multipart_upload()
            .bucket(bucket_name)
            .key(key)
            .upload_id(upload_id)
            .send();
        send.await
    });
    eventually("the third abort to arrive", || {
        proxy.count(Op::AbortMultipartUpload) == 3
    })
    .await;
    let started = Instant::now();
    proxy.shutdown().await;
    let outcome = tokio::time::timeout(Duration::from_secs(30), waiting)
        .await
        .expect("the client saw the shutdown")
        .expect("task");
    println!(
        "stalled client released {:?} after shutdown: {outcome:?}",
        started.elapsed()
    );
    assert!(outcome.is_err());
}

/// Sends a raw unsigned request and returns the connection with the answer's first bytes.
async fn raw_request(proxy: &FaultProxy, request_line: &str) -> tokio::net::TcpStream {
    let mut stream = tokio::net::TcpStream::connect(proxy.local_addr())
        .await
        .expect("connect to the proxy");
    let request = format!(
        "{request_line} HTTP/1.1\r\nHost: {}\r\n\r\n",
        proxy.local_addr()
    );
    stream
        .write_all(request.as_bytes())
        .await
        .expect("send request");
    stream
}

fn vm_rss_kib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap_or_default();
    status
        .lines()
        .find_map(|line| line.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap_or(0)
}

/// Reads until the end of the answer's head; returns it and the body bytes read after it.
async fn read_head(stream: &mut tokio::net::TcpStream) -> (String, Vec<u8>) {
    let mut read = Vec::new();
    let mut buffer = vec![0u8; 64 * 1024];
    loop {
        let n = stream.read(&mut buffer).await.expect("read the answer");
        assert!(n > 0, "the answer ended in its head");
        read.extend_from_slice(&buffer[..n]);
        if let Some(end) = read.windows(4).position(|w| w == b"\r\n\r\n") {
            let head = String::from_utf8_lossy(&read[..end]).into_owned();
            return (head, read[end + 4..].to_vec());
        }
    }
}

fn header<'a>(head: &'a str, name: &str) -> Option<&'a str> {
    head.lines().find_map(|line| {
        let (field, value) = line.split_once(':')?;
        field.eq_ignore_ascii_case(name).then(|| value.trim())
    })
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn a_huge_listing_is_generated_while_sent_and_stops_with_its_client() {
    // The proxy answers these itself: no server needed.
    let proxy = FaultProxy::start("http://127.0.0.1:9")
        .await
        .expect("start");
    const HUGE: u64 = 300_000_000;
    for chunked in [false, true] {
        proxy.reset_stats();
        proxy.set_rules(vec![Rule::on(Op::ListMultipartUploads).then(
            Action::HugeListing {
                bytes: HUGE,
                chunked,
            },
        )]);
        let rss_before = vm_rss_kib();
        let mut stream = raw_request(&proxy, "GET /any-bucket?uploads").await;
        let (head, mut body) = read_head(&mut stream).await;
        let length = header(&head, "content-length").and_then(|n| n.parse::<u64>().ok());
        if chunked {
            assert_eq!(
                header(&head, "transfer-encoding"),
                Some("chunked"),
                "{head}"
            );
            assert_eq!(length, None);
        } else {
            let length = length.expect("content-length");
            assert!(length > HUGE - 1000 && length <= HUGE, "{length}");
        }
        // Read a megabyte, then go away.
        let mut more = vec![0u8; 1 << 20];
        stream.read_exact(&mut more).await.expect("the first MB");
        body.extend_from_slice(&more);
        let text = String::from_utf8_lossy(&body);
        assert!(
            text.contains("<Key>huge/000000001</Key>"),
            "{}",
            &text[..300]
        );
        drop(stream);

        eventually("the generation to stop", || proxy.open_connections() == 0).await;
        let record = proxy.records().remove(0);
        let rss_after = vm_rss_kib();
        println!(
            "chunked {chunked}: sent {} bytes before the client left; RSS {rss_before} -> {rss_after} KiB",
            record.body_bytes_sent
        );
        assert!(record.finished.is_some());
        assert!(record.body_bytes_sent < 64 << 20, "{record:?}");
        assert!(rss_after.saturating_sub(rss_before) < 150 * 1024);
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn answers_over_the_rewrite_cap_pass_unchanged() {
    // A proxy behind a proxy: the inner one generates listings, the outer one rewrites them.
    let inner = FaultProxy::start("http://127.0.0.1:9")
        .await
        .expect("start");
    let outer = FaultProxy::start(&inner.endpoint()).await.expect("start");
    outer.add_rule(Rule::on(Op::ListMultipartUploads).then(Action::Initiated {
        key_prefix: "huge/".into(),
        value: Some("1970-01-01T00:00:00.000Z".into()),
    }));
    let over = REWRITE_CAP as u64 + 4_000_000;
    for (bytes, rewritten) in [(1_000_000, true), (over, false)] {
        inner.set_rules(vec![Rule::on(Op::ListMultipartUploads).then(
            Action::HugeListing {
                bytes,
                chunked: false,
            },
        )]);
        let mut stream = raw_request(&outer, "GET /b?uploads").await;
        let (head, mut body) = read_head(&mut stream).await;
        let length: usize = header(&head, "content-length")
            .and_then(|n| n.parse().ok())
            .expect("content-length");
        let mut rest = vec![0u8; length - body.len()];
        stream.read_exact(&mut rest).await.expect("the whole body");
        body.extend_from_slice(&rest);
        let text = String::from_utf8_lossy(&body);
        assert_eq!(text.contains("1970-01-01"), rewritten, "{bytes} bytes");
        assert_eq!(text.contains("2020-01-01"), !rewritten, "{bytes} bytes");
        assert!(text.ends_with("</ListMultipartUploadsResult>"));
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn generated_listings_parse_with_and_without_a_length() {
    let Some(server) = ceph() else {
        return;
    };
    let proxy = proxy_for(&server).await;
    let client = client_via(&server, &proxy, Duration::from_secs(30)).await;
    for chunked in [false, true] {
        proxy.set_rules(vec![Rule::on(Op::ListMultipartUploads).then(
            Action::HugeListing {
                bytes: 2_000_000,
                chunked,
            },
        )]);
        let page = list(&client, "generated").await;
        let uploads = page.uploads();
        println!("chunked {chunked}: {} uploads", uploads.len());
        assert!(uploads.len() > 5_000, "{}", uploads.len());
        assert_eq!(uploads[0].key(), Some("huge/000000001"));
        let initiated = uploads[0].initiated().expect("initiated");
        assert_eq!(initiated.secs(), 1_577_836_800, "2020-01-01");
        assert_eq!(page.is_truncated(), Some(false));
    }
}

async fn marker_cycle_and_fresh_markers_reach_the_sdk(server: Server) {
    let Proxied {
        direct,
        bucket,
        proxy,
        client,
    } = proxied(&server, "proxy-markers", Duration::from_secs(30)).await;
    create_uploads(&direct, &bucket, &keys("m/", 3)).await;
    let pair = |k: &str, u: &str| (k.to_owned(), u.to_owned());
    let cycle = vec![pair("~a", "~a-upload"), pair("~b", "~b-upload")];
    let pages = |mode| {
        proxy.set_rules(vec![
            Rule::on(Op::ListMultipartUploads).then(Action::Markers { mode }),
        ]);
        markers_of_pages(&client, &bucket, 4)
    };

    let cycled = pages(MarkerMode::Cycle(cycle.clone())).await;
    assert_eq!(cycled, [&cycle[..], &cycle[..]].concat());
    let fresh = pages(MarkerMode::Fresh).await;
    let expected: Vec<_> = (1..=4)
        .map(|n| format!("~fresh-{n:06}"))
        .map(|m| (m.clone(), m))
        .collect();
    assert_eq!(fresh, expected);
}

/// Follows `pages` pages, sending back the markers each gave; the first has the real uploads.
async fn markers_of_pages(client: &Client, bucket: &str, pages: usize) -> Vec<(String, String)> {
    let mut markers = Vec::new();
    let (mut key_marker, mut id_marker) = (None, None);
    for page in 0..pages {
        let out = client
            .list_multipart_uploads()
            .bucket(bucket)
            .set_key_marker(key_marker)
            .set_upload_id_marker(id_marker)
            .send()
            .await
            .expect("list a page");
        assert_eq!(out.is_truncated(), Some(true));
        let expected_uploads = if page == 0 { 3 } else { 0 };
        assert_eq!(out.uploads().len(), expected_uploads, "page {page}");
        key_marker = out.next_key_marker().map(str::to_owned);
        id_marker = out.next_upload_id_marker().map(str::to_owned);
        markers.push((
            key_marker.clone().unwrap_or_default(),
            id_marker.clone().unwrap_or_default(),
        ));
    }
    markers
}

async fn injected_control_characters_parse_back_in_keys(server: Server) {
    let Proxied {
        direct,
        bucket,
        proxy,
        client,
    } = proxied(&server, "proxy-inject", Duration::from_secs(30)).await;
    let mut uploads = create_uploads(&direct, &bucket, &["inj/a".into(), "plain".into()]).await;
    uploads.sort();
    const KEY_SUFFIX: &str = "\u{1b}[31m\u{7}\u{202e}\r";
    const ID_SUFFIX: &str = "\u{1b}[0m";
    proxy.add_rule(Rule::on(Op::ListMultipartUploads).then(Action::Inject {
        key_prefix: "inj/".into(),
        key_suffix: Some(KEY_SUFFIX.into()),
        upload_id_suffix: Some(ID_SUFFIX.into()),
    }));

    let mut listed: Vec<_> = list(&client, &bucket)
        .await
        .uploads()
        .iter()
        .map(|u| {
            (
                u.key().expect("key").to_owned(),
                u.upload_id().expect("upload id").to_owned(),
            )
        })
        .collect();
    listed.sort();
    let injected = (
        format!("{}{KEY_SUFFIX}", uploads[0].0),
        format!("{}{ID_SUFFIX}", uploads[0].1),
    );
    assert_eq!(listed, vec![injected, uploads[1].clone()]);
}

async fn initiated_is_rewritten_or_removed(server: Server) {
    let Proxied {
        direct,
        bucket,
        proxy,
        client,
    } = proxied(&server, "proxy-initiated", Duration::from_secs(30)).await;
    create_uploads(
        &direct,
        &bucket,
        &["old/a".into(), "old/b".into(), "new".into()],
    )
    .await;
    let initiated = |value: Option<&str>| {
        proxy.set_rules(vec![Rule::on(Op::ListMultipartUploads).then(
            Action::Initiated {
                key_prefix: "old/".into(),
                value: value.map(str::to_owned),
            },
        )]);
        async {
            let page = list(&client, &bucket).await;
            let mut seen: Vec<_> = page
                .uploads()
                .iter()
                .map(|u| {
                    (
                        u.key().expect("key").to_owned(),
                        u.initiated().map(|t| t.secs()),
                    )
                })
                .collect();
            seen.sort();
            seen
        }
    };

    let epoch = initiated(Some("1970-01-01T00:00:00.000Z")).await;
    assert_eq!(
        epoch[1..],
        [("old/a".into(), Some(0)), ("old/b".into(), Some(0))]
    );
    let recent = epoch[0].1.expect("new keeps its date");
    assert_eq!(epoch[0].0, "new");
    assert!(recent > 1_700_000_000, "{recent}");
    let removed = initiated(None).await;
    assert_eq!(
        removed[1..],
        [("old/a".into(), None), ("old/b".into(), None)]
    );
}

/// An unsigned GET / through the proxy (the server refuses it, with a Date); the Date it got.
async fn date_through(proxy: &FaultProxy) -> Option<String> {
    let mut stream = raw_request(proxy, "GET /").await;
    let (head, _) = read_head(&mut stream).await;
    header(&head, "date").map(str::to_owned)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn date_headers_are_replaced_shifted_or_removed() {
    let Some(server) = ceph() else {
        return;
    };
    let proxy = proxy_for(&server).await;
    let mut dates = Vec::new();
    for rewrite in [
        DateRewrite::Garbage("not a date".into()),
        DateRewrite::OffsetSeconds(2 * 86_400),
        DateRewrite::Remove,
    ] {
        proxy.set_rules(vec![Rule::any().then(Action::Date(rewrite))]);
        dates.push(date_through(&proxy).await);
    }
    println!("{dates:?}");
    assert_eq!(dates[0].as_deref(), Some("not a date"));
    let shifted = jiff::fmt::rfc2822::DateTimeParser::new()
        .parse_timestamp(dates[1].as_deref().expect("a shifted date"))
        .expect("an HTTP date");
    let ahead = shifted.as_second() - jiff::Timestamp::now().as_second();
    assert!(
        (2 * 86_400 - 60..=2 * 86_400 + 60).contains(&ahead),
        "{ahead}"
    );
    assert_eq!(dates[2], None);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn rate_above_throttles_what_goes_past_the_rate() {
    let Some(server) = ceph() else {
        return;
    };
    let Proxied {
        bucket,
        proxy,
        client,
        ..
    } = proxied(&server, "proxy-rate", Duration::from_secs(30)).await;
    proxy.add_rule(
        Rule::on(Op::ListMultipartUploads)
            .rate_above(20.0)
            .then(Action::slow_down()),
    );
    let burst = |n| {
        let client = client.clone();
        let bucket = bucket.clone();
        async move {
            let mut throttled = 0;
            for _ in 0..n {
                let sent = client.list_multipart_uploads().bucket(&bucket).send().await;
                throttled += usize::from(sent.is_err());
            }
            throttled
        }
    };

    let started = Instant::now();
    let throttled = burst(100).await;
    let elapsed = started.elapsed();
    println!("100 requests in {elapsed:?} at most 20/s: {throttled} throttled");
    let allowed = 20.0 + 20.0 * elapsed.as_secs_f64();
    assert!(throttled as f64 >= 100.0 - allowed - 1.0, "{throttled}");
    tokio::time::sleep(Duration::from_secs(1)).await;
    assert_eq!(burst(10).await, 0, "the bucket refilled");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn delay_adds_its_latency_without_serialising_requests() {
    let Some(server) = ceph() else {
        return;
    };
    let Proxied {
        bucket,
        proxy,
        client,
        ..
    } = proxied(&server, "proxy-delay", Duration::from_secs(30)).await;
    const DELAY: Duration = Duration::from_millis(200);
    proxy.add_rule(Rule::on(Op::ListMultipartUploads).then(Action::delay(DELAY)));

    let started = Instant::now();
    let lists = (0..8).map(|_| list(&client, &bucket));
    futures::future::join_all(lists).await;
    println!(
        "8 concurrent listings with {DELAY:?} each took {:?} in all",
        started.elapsed()
    );
    let records = proxy.records();
    assert_eq!(records.len(), 8);
    for record in &records {
        let duration = record.duration().expect("finished");
        println!("  request {}: {duration:?}", record.seq);
        assert!(duration >= DELAY, "{record:?}");
    }
    println!(
        "at most {} in flight at once",
        proxy.max_in_flight(Op::ListMultipartUploads, ..)
    );
}

#[test]
fn rules_round_trip_through_json() {
    let rules = vec![
        Rule::on(Op::AbortMultipartUpload)
            .key_prefix("slow/")
            .share(0.3)
            .then(Action::slow_down()),
        Rule::any().window(2, 3).then(Action::Markers {
            mode: MarkerMode::Cycle(vec![("~a".into(), "~b".into())]),
        }),
        Rule::on(Op::ListMultipartUploads).then(Action::Date(DateRewrite::OffsetSeconds(-5))),
    ];
    let json = serde_json::to_string(&rules).expect("to JSON");
    let back: Vec<Rule> = serde_json::from_str(&json).expect("from JSON");
    assert_eq!(back, rules);
    let typed: Vec<Rule> = serde_json::from_str(
        r#"[{"ops":["AbortMultipartUpload"],"when":{"First":2},
             "action":{"Error":{"status":503,"code":"SlowDown"}}},
            {"action":{"Hold":{"ms":1000,"forward_first":true}}}]"#,
    )
    .expect("hand-written rules");
    assert_eq!(typed[0].when, Selector::First(2));
    assert_eq!(typed[1].when, Selector::Always);
    assert!(typed[1].ops.is_empty());
}
