//! The `server_answers` harness: the whole sweep engine (listing, aborts, verification, size
//! measurement, retries, error classification, the answer size cap, the server-clock logic)
//! against a scripted, hostile S3 server that answers from memory. Shared by
//! `fuzz/fuzz_targets/server_answers.rs` and `tests/fuzz_regressions.rs`, so that a regression
//! input replays through exactly the same code under `cargo test`.
//!
//! # Input
//!
//! ```text
//! OPTIONS LINE
//! --list--
//! ANSWER TO A LISTMULTIPARTUPLOADS REQUEST
//! --abort--
//! ANSWER TO AN ABORTMULTIPARTUPLOAD REQUEST
//! --parts--
//! ANSWER TO A LISTPARTS REQUEST
//! ...
//! ```
//!
//! The options line holds words, unknown ones ignored: `noverify`, `measure`, `dryrun`,
//! `prefix` (sweep under `data/`), `virtual` (virtual-host addressing), `concurrency=N` (1..=8,
//! default 1), `page=N` (1..=1000, default 2), `maxage=AGE` (default `1d`), `clock=UNIX_SECONDS`
//! (this machine's clock, default 2026-12-01T00:00:00Z).
//!
//! Each marker line (`--list--`, `--abort--`, `--parts--`) starts an answer for that kind of
//! request; each request the engine sends gets the next answer of its kind, in order. (One queue
//! per kind, not one for all: the engine lists while it aborts and `tokio::select!` polls its
//! branches in random order, so with one queue the same input would give a listing's answer to
//! an abort on one run and not on the next.) An answer is an HTTP/1.1 response as `curl -i`
//! shows it: a status line (`HTTP/1.1 200 OK`), header lines, an empty line, the body (`\r\n` or
//! `\n`). A status line `!io`, `!timeout`, `!user` or `!other` is a connection failure of that
//! kind instead. Two pseudo-headers shape the body: `x-fuzz-chunk: N` sends it in frames of N
//! bytes, `x-fuzz-break: N` breaks the connection after N bytes of it. What a real HTTP client
//! would refuse (a status line without a status, a header line that is not `name: value`, an
//! invalid header name or value) is a broken connection. When a kind's answers run out, its
//! requests get a plain final answer (an empty, complete listing; 204 for an abort; an empty
//! part list), so that every run ends quickly.
//!
//! # Checked
//!
//! The run returns, before its time limit; the engine sends at most one request more than the
//! answers given plus five per stale upload (size, three aborts, a final check); the counts add up (`aborted + alreadyGone + failed
//! <= stale <= found`, `stale + skipped <= found`, every stale upload handled unless the server
//! became unreachable); a dry run aborts nothing; every abort names an upload that was listed,
//! dated and older than the age limit by this machine's clock; every text the summary and the
//! stop show (failure examples, warnings, error messages and codes) has no control characters
//! and is shorter than 2 KiB. And directly on the raw input: `parse_server_date` and
//! `text::shown` never panic and escape and bound what they return.

#![allow(dead_code)]

use std::collections::{HashSet, VecDeque};
use std::pin::Pin;
use std::sync::{Arc, Mutex, MutexGuard};
use std::task::{Context, Poll};
use std::time::{Duration, SystemTime};

use aws_smithy_async::time::{SharedTimeSource, StaticTimeSource};
use aws_smithy_runtime_api::client::http::{
    HttpClient, HttpConnector, HttpConnectorFuture, HttpConnectorSettings, SharedHttpClient,
    SharedHttpConnector,
};
use aws_smithy_runtime_api::client::orchestrator::{HttpRequest, HttpResponse};
use aws_smithy_runtime_api::client::result::ConnectorError;
use aws_smithy_runtime_api::client::runtime_components::RuntimeComponents;
use aws_smithy_types::body::SdkBody;
use aws_smithy_types::date_time::{DateTime, Format};
use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use mpu_sweeper::max_age::MaxAge;
use mpu_sweeper::sweep::{
    AddressingStyle, CredentialSource, ListedUpload, RetryPolicy, S3Settings, ServerDate,
    SweepObserver, SweepOptions, SweepOutcome, SweepStop, SweepSummary, UploadOutcome,
    parse_server_date, sweep,
};
use mpu_sweeper::text;
use tokio_util::sync::CancellationToken;

pub const BUCKET: &str = "fuzz-bucket";
const ENDPOINT: &str = "http://s3.fuzz.invalid";
/// The marker lines, in the order of [`Kind`].
const MARKERS: [&[u8]; 3] = [b"--list--", b"--abort--", b"--parts--"];
/// 2026-12-01T00:00:00Z: a few days after the uploads of the seed answers were started.
const DEFAULT_CLOCK: i64 = 1_796_083_200;
/// Far from any real run's length: a run that gets there is stuck.
const RUN_TIMEOUT: Duration = Duration::from_secs(10);
/// Texts a summary shows stay well below this.
const TEXT_LIMIT: usize = 2048;
/// A hard stop for a request loop the invariants would only catch at the end.
const MAX_REQUESTS: usize = 100_000;

thread_local! {
    static RUNTIME: tokio::runtime::Runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .expect("a tokio runtime");
}

pub fn run(data: &[u8]) {
    check_text_functions(data);
    let input = Input::parse(data);
    let script = Script::new(input.answers.clone(), input.clock);
    let observer = Recorder::new(input.max_age.as_duration(), input.clock);
    let options = input.sweep_options();
    let outcome = RUNTIME.with(|runtime| {
        runtime.block_on(async {
            let settings = S3Settings {
                endpoint: Some(ENDPOINT.to_owned()),
                addressing_style: input.addressing,
                credentials: CredentialSource::Static {
                    access_key_id: "AKIDFUZZ".to_owned(),
                    secret_access_key: "fuzz-secret".to_owned(),
                    session_token: None,
                },
                time_source: Some(SharedTimeSource::new(StaticTimeSource::new(input.clock))),
                http_client: Some(SharedHttpClient::new(script.clone())),
                ..S3Settings::default()
            };
            let client = settings.client().await.expect("the settings are valid");
            let cancel = CancellationToken::new();
            sweep(&client, &options, &observer, &cancel).await
        })
    });
    if debug() {
        eprintln!("{outcome:#?}");
        for request in script.requests() {
            eprintln!("sent {} {}", request.method, request.uri);
        }
    }
    check_outcome(&input, &options, &script, &observer, &outcome);
}

/// `MPU_FUZZ_DEBUG=1` prints each run's outcome and requests (for `fuzz/run.sh replay`).
fn debug() -> bool {
    static DEBUG: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    *DEBUG.get_or_init(|| std::env::var_os("MPU_FUZZ_DEBUG").is_some_and(|v| v == "1"))
}

/// `parse_server_date` and `text::shown` on the raw bytes.
fn check_text_functions(data: &[u8]) {
    match parse_server_date(Some(data)) {
        ServerDate::Unparseable(shown) => check_text("an unparseable date", &shown, 64 + 40),
        ServerDate::Sent(_) | ServerDate::Missing => {}
    }
    let lossy = String::from_utf8_lossy(data);
    for limit in [0, 1, 7, 64, 256] {
        let shown = text::shown(&lossy, limit).to_string();
        check_text("text::shown", &shown, limit + 40);
        assert!(
            !shown.chars().any(is_invisible),
            "text::shown left an invisible formatting character in {shown:?}"
        );
        // Letters, digits, spaces and punctuation that needs no escape (not `\\`, `"`, `'`).
        let plain =
            |c: char| c.is_alphanumeric() || c == ' ' || "-_./:,;=+*()[]{}<>~!?@#$%^&|".contains(c);
        if lossy.chars().all(plain) && lossy.len() <= limit {
            assert_eq!(shown, lossy, "plain text that fits is shown unchanged");
        }
    }
}

/// The characters `text` documents as escaped besides the controls: bidirectional overrides
/// and isolates, zero-width characters, the byte-order mark.
fn is_invisible(c: char) -> bool {
    matches!(c,
        '\u{061C}' | '\u{180E}' | '\u{200B}'..='\u{200F}' | '\u{2028}'..='\u{202E}'
        | '\u{2060}'..='\u{206F}' | '\u{FEFF}' | '\u{FFF9}'..='\u{FFFB}')
}

fn check_text(what: &str, text: &str, limit: usize) {
    assert!(
        !text.chars().any(char::is_control),
        "{what} shows a control character: {text:?}"
    );
    assert!(
        text.len() < limit,
        "{what} is {} bytes long (limit {limit}): {text:?}",
        text.len()
    );
}

/// The decoded fuzz input.
#[derive(Debug, Clone)]
pub struct Input {
    pub verify: bool,
    pub measure_bytes: bool,
    pub dry_run: bool,
    pub prefix: Option<String>,
    pub addressing: AddressingStyle,
    pub concurrency: usize,
    pub page_size: i32,
    pub max_age: MaxAge,
    pub clock: SystemTime,
    /// By [`Kind`].
    pub answers: [Vec<Answer>; 3],
}

/// The kinds of request the engine sends, each answered from its own queue.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Kind {
    List = 0,
    Abort = 1,
    Parts = 2,
}

impl Input {
    pub fn parse(data: &[u8]) -> Self {
        let (options, rest) = match data.iter().position(|&b| b == b'\n') {
            Some(end) => (&data[..end], &data[end + 1..]),
            None => (data, &[][..]),
        };
        let mut input = Input {
            verify: true,
            measure_bytes: false,
            dry_run: false,
            prefix: None,
            addressing: AddressingStyle::Path,
            concurrency: 1,
            page_size: 2,
            max_age: MaxAge::from_secs(86_400).unwrap(),
            clock: at(DEFAULT_CLOCK),
            answers: Default::default(),
        };
        for word in String::from_utf8_lossy(options).split_whitespace() {
            let (name, value) = word.split_once('=').unwrap_or((word, ""));
            match name {
                "noverify" => input.verify = false,
                "measure" => input.measure_bytes = true,
                "dryrun" => input.dry_run = true,
                "prefix" => input.prefix = Some("data/".to_owned()),
                "virtual" => input.addressing = AddressingStyle::Virtual,
                "concurrency" => {
                    if let Ok(n) = value.parse::<usize>() {
                        input.concurrency = n.clamp(1, 8);
                    }
                }
                "page" => {
                    if let Ok(n) = value.parse::<i32>() {
                        input.page_size = n.clamp(1, 1000);
                    }
                }
                "maxage" => {
                    if let Ok(age) = value.parse() {
                        input.max_age = age;
                    }
                }
                "clock" => {
                    if let Ok(secs) = value.parse::<i64>() {
                        // Years 1 to 9999, what HTTP dates and S3 timestamps can say.
                        input.clock = at(secs.clamp(-62_135_596_800, 253_402_300_799));
                    }
                }
                _ => {}
            }
        }
        for (kind, answer) in blocks(rest) {
            input.answers[kind as usize].push(Answer::parse(answer));
        }
        input
    }

    fn sweep_options(&self) -> SweepOptions {
        let mut options = SweepOptions::new(BUCKET, self.max_age);
        options.prefix = self.prefix.clone();
        options.page_size = self.page_size;
        options.concurrency = self.concurrency;
        options.dry_run = self.dry_run;
        options.verify = self.verify;
        options.measure_bytes = self.measure_bytes;
        options.timeout = RUN_TIMEOUT;
        options.drain_timeout = Duration::from_millis(100);
        options.retry = RetryPolicy {
            initial_backoff: Duration::ZERO,
            max_backoff: Duration::ZERO,
            ..RetryPolicy::default()
        };
        options.validate().expect("the harness makes valid options");
        options
    }
}

fn at(secs: i64) -> SystemTime {
    let magnitude = Duration::from_secs(secs.unsigned_abs());
    if secs >= 0 {
        SystemTime::UNIX_EPOCH + magnitude
    } else {
        SystemTime::UNIX_EPOCH - magnitude
    }
}

/// The answers of `data`, each with its kind: the bytes after a marker line up to the newline
/// before the next marker line. Bytes before the first marker are ignored.
fn blocks(data: &[u8]) -> Vec<(Kind, &[u8])> {
    const KINDS: [Kind; 3] = [Kind::List, Kind::Abort, Kind::Parts];
    let mut blocks = Vec::new();
    let mut current: Option<(Kind, usize)> = None;
    let mut line_start = 0;
    while line_start <= data.len() {
        let line_end = data[line_start..]
            .iter()
            .position(|&b| b == b'\n')
            .map_or(data.len(), |at| line_start + at);
        let line = &data[line_start..line_end];
        let line = line.strip_suffix(b"\r").unwrap_or(line);
        if let Some(index) = MARKERS.iter().position(|m| *m == line) {
            if let Some((kind, start)) = current {
                blocks.push((kind, &data[start..line_start.saturating_sub(1).max(start)]));
            }
            current = Some((KINDS[index], (line_end + 1).min(data.len())));
        }
        line_start = line_end + 1;
    }
    if let Some((kind, start)) = current {
        blocks.push((kind, &data[start..]));
    }
    blocks
}

/// One scripted answer.
#[derive(Debug, Clone)]
pub enum Answer {
    /// The connection failed (`!io`, `!timeout`, `!user`, `!other`, or a response no HTTP client
    /// would accept).
    Broken(BrokenKind),
    Response {
        status: u16,
        headers: Vec<(http::HeaderName, http::HeaderValue)>,
        body: Bytes,
        chunk: Option<usize>,
        break_after: Option<usize>,
    },
}

#[derive(Debug, Clone, Copy)]
pub enum BrokenKind {
    Io,
    Timeout,
    User,
    Other,
}

impl Answer {
    pub fn parse(data: &[u8]) -> Self {
        let mut rest = data;
        let mut next_line = || -> Option<&[u8]> {
            if rest.is_empty() {
                return None;
            }
            let end = rest.iter().position(|&b| b == b'\n').unwrap_or(rest.len());
            let line = &rest[..end];
            rest = rest.get(end + 1..).unwrap_or_default();
            Some(line.strip_suffix(b"\r").unwrap_or(line))
        };
        let status_line = next_line().unwrap_or_default();
        if let Some(kind) = status_line.strip_prefix(b"!") {
            return Answer::Broken(match kind.trim_ascii() {
                b"io" => BrokenKind::Io,
                b"timeout" => BrokenKind::Timeout,
                b"user" => BrokenKind::User,
                _ => BrokenKind::Other,
            });
        }
        let Some(status) = parse_status(status_line) else {
            return Answer::Broken(BrokenKind::Io);
        };
        let mut headers = Vec::new();
        let mut chunk = None;
        let mut break_after = None;
        while let Some(line) = next_line() {
            if line.is_empty() {
                break;
            }
            let Some(colon) = line.iter().position(|&b| b == b':') else {
                return Answer::Broken(BrokenKind::Io);
            };
            let (name, value) = (&line[..colon], line[colon + 1..].trim_ascii());
            let (Ok(name), Ok(value)) = (
                http::HeaderName::from_bytes(name),
                http::HeaderValue::from_bytes(value),
            ) else {
                return Answer::Broken(BrokenKind::Io);
            };
            let number = || value.to_str().ok().and_then(|v| v.parse::<usize>().ok());
            match name.as_str() {
                "x-fuzz-chunk" => chunk = number().filter(|n| *n > 0),
                "x-fuzz-break" => break_after = number(),
                _ => headers.push((name, value)),
            }
        }
        Answer::Response {
            status,
            headers,
            body: Bytes::copy_from_slice(rest),
            chunk,
            break_after,
        }
    }

    fn respond(&self) -> Result<HttpResponse, ConnectorError> {
        let (status, headers, body, chunk, break_after) = match self {
            Answer::Broken(kind) => {
                let err: Box<dyn std::error::Error + Send + Sync> =
                    "scripted connection failure".into();
                return Err(match kind {
                    BrokenKind::Io => ConnectorError::io(err),
                    BrokenKind::Timeout => ConnectorError::timeout(err),
                    BrokenKind::User => ConnectorError::user(err),
                    BrokenKind::Other => ConnectorError::other(err, None),
                });
            }
            Answer::Response {
                status,
                headers,
                body,
                chunk,
                break_after,
            } => (*status, headers, body, *chunk, *break_after),
        };
        let body = if chunk.is_some() || break_after.is_some() {
            SdkBody::from_body_1_x(ScriptedBody {
                data: body.clone(),
                sent: 0,
                chunk: chunk.unwrap_or(usize::MAX),
                break_after,
            })
        } else {
            SdkBody::from(body.clone())
        };
        let mut response = http::Response::builder().status(status);
        for (name, value) in headers {
            response = response.header(name, value);
        }
        let response = response
            .body(body)
            .map_err(|e| ConnectorError::io(e.into()))?;
        // As the SDK's own HTTP client does: a header that is not UTF-8 fails the request.
        HttpResponse::try_from(response).map_err(|e| ConnectorError::other(e.into(), None))
    }
}

/// `HTTP/1.1 200 OK` (or only `200`): the status, 100..=999 as HTTP clients accept.
fn parse_status(line: &[u8]) -> Option<u16> {
    let mut words = line
        .split(|b| b.is_ascii_whitespace())
        .filter(|w| !w.is_empty());
    let mut word = words.next()?;
    if word.starts_with(b"HTTP/") {
        word = words.next()?;
    }
    if word.len() != 3 || !word.iter().all(u8::is_ascii_digit) {
        return None;
    }
    let status = std::str::from_utf8(word).ok()?.parse().ok()?;
    (100..=999).contains(&status).then_some(status)
}

/// A body sent in frames, which may break off.
struct ScriptedBody {
    data: Bytes,
    sent: usize,
    chunk: usize,
    break_after: Option<usize>,
}

impl Body for ScriptedBody {
    type Data = Bytes;
    type Error = std::io::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        _cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, std::io::Error>>> {
        let this = &mut *self;
        let end = this.break_after.unwrap_or(usize::MAX).min(this.data.len());
        if this.sent >= end {
            if this.break_after.is_some_and(|at| at < this.data.len()) {
                this.break_after = None;
                this.data = Bytes::new();
                return Poll::Ready(Some(Err(std::io::Error::new(
                    std::io::ErrorKind::ConnectionReset,
                    "scripted connection reset in the middle of the body",
                ))));
            }
            return Poll::Ready(None);
        }
        let upto = end.min(this.sent.saturating_add(this.chunk));
        let frame = this.data.slice(this.sent..upto);
        this.sent = upto;
        Poll::Ready(Some(Ok(Frame::data(frame))))
    }

    fn is_end_stream(&self) -> bool {
        self.sent >= self.data.len() && self.break_after.is_none()
    }

    fn size_hint(&self) -> SizeHint {
        SizeHint::default()
    }
}

/// What a request asked for, as far as the final answers and the checks need.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SentRequest {
    pub method: String,
    pub uri: String,
}

impl SentRequest {
    fn kind(&self) -> Option<Kind> {
        let query = self.query();
        let has = |name: &str| query.iter().any(|(n, _)| n == name);
        match self.method.as_str() {
            "DELETE" => Some(Kind::Abort),
            "GET" if has("uploadId") => Some(Kind::Parts),
            "GET" if has("uploads") => Some(Kind::List),
            _ => None,
        }
    }

    fn query(&self) -> Vec<(String, String)> {
        let query = self.uri.split_once('?').map_or("", |(_, q)| q);
        query
            .split('&')
            .filter(|p| !p.is_empty())
            .map(|pair| {
                let (name, value) = pair.split_once('=').unwrap_or((pair, ""));
                (percent_decode(name), percent_decode(value))
            })
            .collect()
    }

    fn query_value(&self, name: &str) -> Option<String> {
        self.query()
            .into_iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v)
    }

    /// The object key a request names, from its path.
    fn key(&self, addressing: AddressingStyle) -> Option<String> {
        let after_scheme = self.uri.split_once("://").map_or(&*self.uri, |(_, r)| r);
        let path = after_scheme.find('/').map_or("/", |at| &after_scheme[at..]);
        let path = path.split_once('?').map_or(path, |(p, _)| p);
        let key = match addressing {
            AddressingStyle::Path => path.strip_prefix(&format!("/{BUCKET}/"))?,
            AddressingStyle::Virtual => path.strip_prefix('/')?,
        };
        Some(percent_decode(key))
    }
}

fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        let hex = |b: u8| (b as char).to_digit(16);
        if bytes[i] == b'%'
            && let (Some(h), Some(l)) = (
                bytes.get(i + 1).copied().and_then(hex),
                bytes.get(i + 2).copied().and_then(hex),
            )
        {
            out.push((h * 16 + l) as u8);
            i += 3;
            continue;
        }
        out.push(bytes[i]);
        i += 1;
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// The scripted server: the input's answers in order, then final answers.
#[derive(Debug, Clone)]
pub struct Script(Arc<Mutex<ScriptState>>);

#[derive(Debug)]
struct ScriptState {
    answers: [VecDeque<Answer>; 3],
    given: usize,
    clock: SystemTime,
    requests: Vec<SentRequest>,
}

impl Script {
    pub fn new(answers: [Vec<Answer>; 3], clock: SystemTime) -> Self {
        Self(Arc::new(Mutex::new(ScriptState {
            given: answers.iter().map(Vec::len).sum(),
            answers: answers.map(VecDeque::from),
            clock,
            requests: Vec::new(),
        })))
    }

    fn state(&self) -> MutexGuard<'_, ScriptState> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }

    pub fn requests(&self) -> Vec<SentRequest> {
        self.state().requests.clone()
    }

    pub fn answers_given(&self) -> usize {
        self.state().given
    }
}

impl HttpClient for Script {
    fn http_connector(
        &self,
        _settings: &HttpConnectorSettings,
        _components: &RuntimeComponents,
    ) -> SharedHttpConnector {
        SharedHttpConnector::new(self.clone())
    }
}

impl HttpConnector for Script {
    fn call(&self, request: HttpRequest) -> HttpConnectorFuture {
        let sent = SentRequest {
            method: request.method().to_owned(),
            uri: request.uri().to_owned(),
        };
        let mut state = self.state();
        assert!(
            state.requests.len() < MAX_REQUESTS,
            "the engine sent {MAX_REQUESTS} requests and goes on"
        );
        let answer = sent
            .kind()
            .and_then(|kind| state.answers[kind as usize].pop_front());
        let result = match answer {
            Some(answer) => answer.respond(),
            None => Ok(final_answer(&sent, state.clock)),
        };
        state.requests.push(sent);
        HttpConnectorFuture::ready(result)
    }
}

/// What a plain server answers once the script is over: the listing is complete and empty, an
/// abort succeeds, an aborted upload has no parts.
fn final_answer(request: &SentRequest, clock: SystemTime) -> HttpResponse {
    let (status, body) = match request.kind() {
        Some(Kind::Abort) => (204, String::new()),
        Some(Kind::Parts) => (
            200,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListPartsResult><Bucket>{BUCKET}</Bucket>\
                 <IsTruncated>false</IsTruncated></ListPartsResult>"
            ),
        ),
        Some(Kind::List) => (
            200,
            format!(
                "<?xml version=\"1.0\" encoding=\"UTF-8\"?><ListMultipartUploadsResult><Bucket>{BUCKET}</Bucket>\
                 <IsTruncated>false</IsTruncated></ListMultipartUploadsResult>"
            ),
        ),
        None => (200, String::new()),
    };
    let date = DateTime::from(clock)
        .fmt(Format::HttpDate)
        .unwrap_or_default();
    let response = http::Response::builder()
        .status(status)
        .header("date", date)
        .header("content-type", "application/xml")
        .body(SdkBody::from(body))
        .expect("a valid final answer");
    HttpResponse::try_from(response).expect("a valid final answer")
}

/// Records what the engine reports while it runs.
#[derive(Debug)]
pub struct Recorder(Mutex<Recorded>);

#[derive(Debug)]
struct Recorded {
    listed: HashSet<(String, String)>,
    /// Listed uploads dated after 2006 and older than the age limit by this machine's clock: the
    /// only ones the engine may abort (it measures age on the earlier of the two clocks).
    abortable: HashSet<(String, String)>,
    handled: u64,
    found: u64,
    max_age: Duration,
    clock: SystemTime,
    problems: Vec<String>,
}

impl Recorder {
    pub fn new(max_age: Duration, clock: SystemTime) -> Self {
        Self(Mutex::new(Recorded {
            listed: HashSet::new(),
            abortable: HashSet::new(),
            handled: 0,
            found: 0,
            max_age,
            clock,
            problems: Vec::new(),
        }))
    }

    fn inner(&self) -> MutexGuard<'_, Recorded> {
        self.0.lock().unwrap_or_else(|e| e.into_inner())
    }
}

/// Uploads started before 2006 carry a made-up date (S3 did not exist).
const EARLIEST_PLAUSIBLE: Duration = Duration::from_secs(1_136_073_600);

fn old_enough(upload: &ListedUpload, max_age: Duration, clock: SystemTime) -> bool {
    upload.initiated.is_some_and(|initiated| {
        initiated >= SystemTime::UNIX_EPOCH + EARLIEST_PLAUSIBLE
            && clock
                .duration_since(initiated)
                .is_ok_and(|age| age > max_age)
    })
}

impl SweepObserver for Recorder {
    fn page_listed(&self, page: &[ListedUpload], summary: &SweepSummary) {
        let mut inner = self.inner();
        let (max_age, clock) = (inner.max_age, inner.clock);
        // The summary also counts, as found and skipped, entries without a key or upload ID,
        // which the observer does not see.
        inner.found += page.len() as u64;
        if inner.found > summary.found || summary.found - inner.found > summary.skipped {
            let problem = format!(
                "pages listed {} usable uploads, the summary says found {} and skipped {}",
                inner.found, summary.found, summary.skipped
            );
            inner.problems.push(problem);
        }
        for upload in page {
            let id = (upload.key.clone(), upload.upload_id.clone());
            if old_enough(upload, max_age, clock) {
                inner.abortable.insert(id.clone());
            }
            inner.listed.insert(id);
        }
    }

    fn upload_handled(
        &self,
        upload: &ListedUpload,
        _outcome: &UploadOutcome,
        summary: &SweepSummary,
    ) {
        let mut inner = self.inner();
        inner.handled += 1;
        let id = (upload.key.clone(), upload.upload_id.clone());
        if !inner.abortable.contains(&id) {
            let problem = format!(
                "handled an upload that was not listed as stale: {upload:?} (summary {summary:?})"
            );
            inner.problems.push(problem);
        }
    }
}

fn check_outcome(
    input: &Input,
    options: &SweepOptions,
    script: &Script,
    recorder: &Recorder,
    outcome: &SweepOutcome,
) {
    let summary = &outcome.summary;
    let recorded = recorder.inner();
    assert!(recorded.problems.is_empty(), "{:#?}", recorded.problems);

    // The counts add up.
    let handled = summary.aborted + summary.already_gone + summary.failed;
    assert!(handled <= summary.stale, "{summary:#?}");
    assert!(summary.stale <= summary.found, "{summary:#?}");
    assert!(
        summary.stale + summary.skipped <= summary.found,
        "{summary:#?}"
    );
    assert!(summary.skipped <= summary.found, "{summary:#?}");
    assert!(
        recorded.found <= summary.found && summary.found - recorded.found <= summary.skipped,
        "{} usable uploads listed: {summary:#?}",
        recorded.found
    );
    assert_eq!(
        summary.failures.len() as u64,
        summary
            .failed
            .min(mpu_sweeper::sweep::MAX_FAILURE_EXAMPLES as u64),
        "{summary:#?}"
    );
    assert!(summary.warnings.len() <= 5, "{summary:#?}");
    assert_eq!(
        summary.bytes_freed.is_some(),
        options.measure_bytes && !options.dry_run,
        "{summary:#?}"
    );
    if options.dry_run {
        assert_eq!(handled, 0, "a dry run aborted: {summary:#?}");
    } else {
        assert_eq!(handled, recorded.handled, "{summary:#?}");
    }
    match &outcome.stop {
        // Every stale upload listed was handled, also when a later page failed.
        None | Some(SweepStop::ListingFailed(_)) => assert_eq!(
            recorded.handled, summary.stale,
            "stale uploads left unhandled without a reason: {outcome:#?}"
        ),
        Some(SweepStop::ServerUnreachable(_)) => {
            assert!(recorded.handled <= summary.stale, "{outcome:#?}")
        }
        Some(SweepStop::Cancelled | SweepStop::DeadlineExceeded(_)) => {
            panic!("the run did not end by itself within {RUN_TIMEOUT:?}: {outcome:#?}")
        }
    }

    // What the summary shows is safe to show.
    for failure in &summary.failures {
        check_text("a failure's key", &failure.key, TEXT_LIMIT);
        check_text("a failure's upload ID", &failure.upload_id, TEXT_LIMIT);
        check_text("a failure's code", &failure.code, TEXT_LIMIT);
        check_text("a failure's message", &failure.message, TEXT_LIMIT);
    }
    for warning in &summary.warnings {
        check_text("a warning", warning, TEXT_LIMIT);
    }
    if let Some(SweepStop::ListingFailed(err) | SweepStop::ServerUnreachable(err)) = &outcome.stop {
        check_text("the stop's message", &err.message, TEXT_LIMIT);
        check_text("the stop's display", &err.to_string(), TEXT_LIMIT);
        if let Some(code) = &err.code {
            check_text("the stop's code", code, TEXT_LIMIT);
        }
    }

    // What was sent.
    let requests = script.requests();
    let per_upload = 2 + u64::from(mpu_sweeper::sweep::MAX_ABORT_ATTEMPTS);
    let bound = script.answers_given() as u64 + 1 + per_upload * summary.stale;
    assert!(
        requests.len() as u64 <= bound,
        "{} requests for {} answers and {} stale uploads: {:#?}",
        requests.len(),
        script.answers_given(),
        summary.stale,
        requests
    );
    for request in &requests {
        match request.method.as_str() {
            "DELETE" => {
                assert!(!options.dry_run, "a dry run sent {request:?}");
                let key = request.key(input.addressing);
                let upload_id = request.query_value("uploadId");
                let (Some(key), Some(upload_id)) = (key, upload_id) else {
                    panic!("an abort that names no upload: {request:?}");
                };
                assert!(
                    recorded
                        .abortable
                        .contains(&(key.clone(), upload_id.clone())),
                    "aborted ({key:?}, {upload_id:?}), which was not listed as stale: {request:?}"
                );
            }
            "GET" if request.query_value("uploadId").is_some() => {
                let key = request.key(input.addressing).unwrap_or_default();
                let upload_id = request.query_value("uploadId").unwrap_or_default();
                assert!(
                    recorded
                        .abortable
                        .contains(&(key.clone(), upload_id.clone())),
                    "listed the parts of ({key:?}, {upload_id:?}), which was not listed as stale: {request:?}"
                );
            }
            "GET" if request.query_value("uploads").is_some() => {
                let page = request.query_value("max-uploads");
                assert_eq!(page, Some(options.page_size.to_string()), "{request:?}");
                assert_eq!(
                    request.query_value("prefix"),
                    options.prefix.clone(),
                    "{request:?}"
                );
            }
            "GET" => {}
            other => panic!("the engine sent a {other} request: {request:?}"),
        }
    }
}
