//! The sweep's driver against an S3 server kept in memory (through `S3Settings::http_client`),
//! on tokio's paused clock: how many aborts it keeps in flight as a server throttles and stops
//! throttling, how a cancel or the deadline ends a run, and that retry budgets belong to a run.
//! Durations asserted here are virtual (the paused clock), not measured timings.

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};
use std::time::Duration;

use aws_smithy_runtime_api::client::http::{
    HttpConnector, HttpConnectorFuture, SharedHttpConnector, http_client_fn,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_types::body::SdkBody;
use mpu_sweeper::max_age::MaxAge;
use mpu_sweeper::sweep::{self, CredentialSource, NoProgress, S3Settings, SweepOptions, SweepStop};
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

/// How the in-memory server answers an abort, by the abort's number (from 0).
type AbortScript = dyn Fn(usize) -> Answer + Send + Sync;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Answer {
    Ok,
    SlowDown,
    InternalError,
    /// No answer within any timeout.
    Hang,
}

/// A bucket of stale uploads in memory. Every answer takes `latency` (virtual time); listings
/// come in pages of `page_size`, or never end when `endless`.
struct MemoryS3 {
    uploads: Mutex<BTreeMap<String, String>>,
    aborts: Mutex<AbortLog>,
    script: Box<AbortScript>,
    latency: Duration,
    endless: bool,
    pages: std::sync::atomic::AtomicUsize,
}

#[derive(Default)]
struct AbortLog {
    /// When each abort arrived (virtual time).
    arrivals: Vec<Instant>,
}

impl std::fmt::Debug for MemoryS3 {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("MemoryS3")
    }
}

impl MemoryS3 {
    fn new(uploads: usize, script: impl Fn(usize) -> Answer + Send + Sync + 'static) -> Arc<Self> {
        Arc::new(Self {
            uploads: Mutex::new(
                (0..uploads)
                    .map(|i| (format!("old/{i:06}"), format!("id-{i}")))
                    .collect(),
            ),
            aborts: Mutex::default(),
            script: Box::new(script),
            // Long against the paused clock's 1 ms ticks, so that requests sent together
            // arrive together.
            latency: Duration::from_millis(50),
            endless: false,
            pages: Default::default(),
        })
    }

    fn answer(&self, request: &HttpRequest) -> HttpResponse {
        let uri = request.uri().to_owned();
        let query = uri.split_once('?').map_or("", |(_, q)| q);
        let param = |name: &str| {
            query
                .split('&')
                .find_map(|pair| pair.strip_prefix(&format!("{name}=")))
                .map(percent_decode)
        };
        match request.method() {
            "GET" if query.split('&').any(|p| p == "uploads") => self.listing(param("key-marker")),
            "GET" => xml(404, error_body("NoSuchUpload")),
            "DELETE" => {
                let key = uri
                    .split('?')
                    .next()
                    .unwrap()
                    .rsplit("old/")
                    .next()
                    .unwrap();
                let removed = self.uploads.lock().unwrap().remove(&format!("old/{key}"));
                match removed {
                    Some(_) => empty(204),
                    None => xml(404, error_body("NoSuchUpload")),
                }
            }
            other => panic!("unexpected {other} {uri}"),
        }
    }

    fn listing(&self, after: Option<String>) -> HttpResponse {
        const PAGE: usize = 100;
        let page_number = self
            .pages
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        if self.endless {
            let next = format!("~fresh-{page_number:08}");
            return xml(200, listing_body(&[], Some(&next)));
        }
        let uploads = self.uploads.lock().unwrap();
        let page: Vec<(String, String)> = uploads
            .range(after.unwrap_or_default()..)
            .take(PAGE + 1)
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect();
        let truncated = page.len() > PAGE;
        let shown = &page[..page.len().min(PAGE)];
        let next = truncated.then(|| format!("{}!", shown.last().unwrap().0));
        xml(200, listing_body(shown, next.as_deref()))
    }

    fn client(self: &Arc<Self>) -> S3Settings {
        let server = self.clone();
        S3Settings {
            endpoint: Some("http://memory.test".into()),
            addressing_style: sweep::AddressingStyle::Path,
            credentials: CredentialSource::Static {
                access_key_id: "AKIDMEMORY".into(),
                secret_access_key: "memory".into(),
                session_token: None,
            },
            http_client: Some(http_client_fn(move |_, _| {
                SharedHttpConnector::new(Connector(server.clone()))
            })),
            ..S3Settings::default()
        }
    }

    /// For each abort, the aborts that arrived within one latency up to it, itself included:
    /// the number the client had in flight (an answer takes exactly one latency here).
    fn in_flight_at_arrival(&self) -> Vec<usize> {
        let arrivals = self.aborts.lock().unwrap().arrivals.clone();
        (0..arrivals.len())
            .map(|i| {
                arrivals[..=i]
                    .iter()
                    .filter(|at| arrivals[i].duration_since(**at) < self.latency)
                    .count()
            })
            .collect()
    }
}

#[derive(Debug)]
struct Connector(Arc<MemoryS3>);

impl HttpConnector for Connector {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let server = self.0.clone();
        HttpConnectorFuture::new(async move {
            let is_abort = request.method() == "DELETE";
            let scripted = if is_abort {
                let mut log = server.aborts.lock().unwrap();
                log.arrivals.push(Instant::now());
                Some((server.script)(log.arrivals.len() - 1))
            } else {
                None
            };
            let latency = if scripted == Some(Answer::Hang) {
                Duration::from_secs(24 * 3600)
            } else {
                server.latency
            };
            tokio::time::sleep(latency).await;
            let response = match scripted {
                Some(Answer::SlowDown) => xml(503, error_body("SlowDown")),
                Some(Answer::InternalError) => xml(500, error_body("InternalError")),
                _ => server.answer(&request),
            };
            Ok(response)
        })
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%' && i + 2 < bytes.len() {
            let hex = std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap();
            out.push(u8::from_str_radix(hex, 16).unwrap());
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8(out).unwrap()
}

fn xml(status: u16, body: String) -> HttpResponse {
    let mut response = HttpResponse::new(status.try_into().unwrap(), SdkBody::from(body));
    response
        .headers_mut()
        .insert("content-type", "application/xml");
    response
}

fn empty(status: u16) -> HttpResponse {
    HttpResponse::new(status.try_into().unwrap(), SdkBody::empty())
}

fn error_body(code: &str) -> String {
    format!("<?xml version=\"1.0\"?><Error><Code>{code}</Code><Message>m</Message></Error>")
}

fn listing_body(uploads: &[(String, String)], next_key: Option<&str>) -> String {
    let mut body =
        String::from("<?xml version=\"1.0\"?><ListMultipartUploadsResult><Bucket>b</Bucket>");
    body.push_str(&format!(
        "<IsTruncated>{}</IsTruncated>",
        next_key.is_some()
    ));
    if let Some(next) = next_key {
        body.push_str(&format!(
            "<NextKeyMarker>{next}</NextKeyMarker><NextUploadIdMarker>x</NextUploadIdMarker>"
        ));
    }
    for (key, id) in uploads {
        body.push_str(&format!(
            "<Upload><Key>{key}</Key><UploadId>{id}</UploadId><Initiated>2020-01-01T00:00:00.000Z</Initiated></Upload>"
        ));
    }
    body.push_str("</ListMultipartUploadsResult>");
    body
}

fn options() -> SweepOptions {
    let mut options = SweepOptions::new("b", MaxAge::from_secs(60).unwrap());
    options.verify = false;
    options.concurrency = 16;
    options
}

#[tokio::test(start_paused = true)]
async fn throttling_cuts_the_aborts_in_flight_and_they_grow_back_when_it_stops() {
    // Enough uploads for the pace, cut by the throttles, to grow back along its cubic curve
    // (about 10 s of virtual time here).
    const UPLOADS: usize = 2_000;
    // The first 40 aborts are throttled, every one after is served.
    let server = MemoryS3::new(
        UPLOADS,
        |n| if n < 40 { Answer::SlowDown } else { Answer::Ok },
    );
    let client = server.client().client().await.unwrap();
    let outcome = sweep::sweep(&client, &options(), &NoProgress, &CancellationToken::new()).await;
    assert_eq!(outcome.stop, None);
    let s = &outcome.summary;
    assert_eq!((s.aborted, s.failed, s.throttled), (UPLOADS as u64, 0, 40));

    let arrivals = server.in_flight_at_arrival();

    let max_in = |range: std::ops::Range<usize>| arrivals[range].iter().copied().max().unwrap();
    let low = arrivals[16..100].iter().copied().min().unwrap();
    eprintln!(
        "in flight: first 16 up to {}, then down to {low}, last 100 up to {}",
        max_in(0..16),
        max_in(arrivals.len() - 100..arrivals.len())
    );
    assert_eq!(max_in(0..16), 16, "a healthy start");
    assert!(
        low <= 2,
        "throttling halves the limit round after round: {low}"
    );
    assert_eq!(
        max_in(arrivals.len() - 100..arrivals.len()),
        16,
        "once the server stops throttling the limit grows back to the maximum"
    );
}

#[tokio::test(start_paused = true)]
async fn a_cancel_under_throttling_ends_the_run_without_waiting_out_backoffs() {
    let server = MemoryS3::new(200, |_| Answer::SlowDown);
    let client = server.client().client().await.unwrap();
    let cancel = CancellationToken::new();
    let sweep_options = options();
    let run = sweep::sweep(&client, &sweep_options, &NoProgress, &cancel);
    let cancel_later = async {
        tokio::time::sleep(Duration::from_secs(5)).await;
        cancel.cancel();
        Instant::now()
    };
    let (outcome, cancelled_at) = tokio::join!(run, cancel_later);
    let after_cancel = cancelled_at.elapsed();
    assert_eq!(outcome.stop, Some(SweepStop::Cancelled));
    assert!(
        after_cancel < Duration::from_secs(1),
        "the drain did not wait for backoffs (up to 20 s each): {after_cancel:?}"
    );
    assert!(outcome.summary.throttled > 0);
}

#[tokio::test(start_paused = true)]
async fn aborts_that_never_answer_are_left_when_the_drain_time_is_up() {
    let server = MemoryS3::new(50, |_| Answer::Hang);
    let client = server.client().client().await.unwrap();
    let cancel = CancellationToken::new();
    let mut sweep_options = options();
    sweep_options.drain_timeout = Duration::from_secs(5);
    let run = sweep::sweep(&client, &sweep_options, &NoProgress, &cancel);
    let cancel_later = async {
        tokio::time::sleep(Duration::from_secs(1)).await;
        cancel.cancel();
        Instant::now()
    };
    let (outcome, cancelled_at) = tokio::join!(run, cancel_later);
    let after_cancel = cancelled_at.elapsed();
    assert_eq!(outcome.stop, Some(SweepStop::Cancelled));
    assert_eq!(outcome.summary.aborted + outcome.summary.failed, 0);
    assert!(
        after_cancel >= Duration::from_secs(5) && after_cancel < Duration::from_secs(6),
        "the drain lasts its timeout, not the 30 s attempt timeout: {after_cancel:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn an_endless_listing_ends_at_the_deadline() {
    let mut server = MemoryS3::new(0, |_| Answer::Ok);
    Arc::get_mut(&mut server).unwrap().endless = true;
    let client = server.client().client().await.unwrap();
    let mut sweep_options = options();
    sweep_options.timeout = Duration::from_secs(30);
    let started = Instant::now();
    let outcome = sweep::sweep(
        &client,
        &sweep_options,
        &NoProgress,
        &CancellationToken::new(),
    )
    .await;
    let took = started.elapsed();
    assert_eq!(
        outcome.stop,
        Some(SweepStop::DeadlineExceeded(Duration::from_secs(30)))
    );
    assert!(
        took >= Duration::from_secs(30) && took < Duration::from_secs(31),
        "{took:?}"
    );
}

#[tokio::test(start_paused = true)]
async fn one_runs_failing_server_does_not_use_up_another_runs_retries() {
    // One server fails every abort, the other one in five: run together in one process, the
    // second still gets every retry it needs.
    let broken = MemoryS3::new(300, |_| Answer::InternalError);
    let flaky = MemoryS3::new(300, |n| {
        if n % 5 == 0 {
            Answer::InternalError
        } else {
            Answer::Ok
        }
    });
    let broken_client = broken.client().client().await.unwrap();
    let flaky_client = flaky.client().client().await.unwrap();
    let sweep_options = options();
    let cancel = CancellationToken::new();
    let (broken_run, flaky_run) = tokio::join!(
        sweep::sweep(&broken_client, &sweep_options, &NoProgress, &cancel),
        sweep::sweep(&flaky_client, &sweep_options, &NoProgress, &cancel),
    );
    assert_eq!(broken_run.summary.aborted, 0);
    assert!(broken_run.summary.failed > 0);
    let s = &flaky_run.summary;
    assert_eq!((s.aborted, s.failed), (300, 0), "{s:?}");
}
