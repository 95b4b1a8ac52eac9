//! The test bed's fault-injecting S3 proxy as a standalone program, for benchmarks and pods:
//!
//! ```sh
//! cargo run --example fault_proxy -- --upstream http://127.0.0.1:18333 \
//!     --rules rules.json --control 127.0.0.1:9900
//! curl -X PUT --data '[{"ops":["AbortMultipartUpload"],"when":{"Share":{"fraction":0.3}},
//!     "action":{"Error":{"status":503,"code":"SlowDown"}}}]' http://127.0.0.1:9900/rules
//! curl http://127.0.0.1:9900/stats
//! ```
//!
//! Its first line on stdout is `listening on ADDR`. Control API: `PUT /rules` (JSON array,
//! replaces), `POST /rules` (one rule, appended), `DELETE /rules`, `GET /rules`, `GET /stats`,
//! `GET /records` (JSON lines), `POST /reset` (records and counts).

#[allow(dead_code)]
#[path = "../tests/common/fault_proxy/mod.rs"]
mod fault_proxy;

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use clap::Parser;
use fault_proxy::{FaultProxy, Rule};
use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Method, Request, Response, StatusCode};
use hyper_util::rt::TokioIo;
use tokio::net::TcpListener;

/// Rules bigger than this are refused (they are a few hundred bytes each).
const MAX_RULES_BYTES: usize = 4 * 1024 * 1024;

#[derive(Parser, Debug)]
#[command(about = "A fault-injecting HTTP proxy in front of an S3 server")]
struct Args {
    /// Where to listen for S3 clients.
    #[arg(long, default_value = "127.0.0.1:0")]
    listen: SocketAddr,
    /// The real server, http://host:port.
    #[arg(long)]
    upstream: String,
    /// A JSON array of rules to start with.
    #[arg(long)]
    rules: Option<std::path::PathBuf>,
    /// Where to serve the control API (none if absent).
    #[arg(long)]
    control: Option<SocketAddr>,
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    let proxy = Arc::new(FaultProxy::start_on(args.listen, &args.upstream).await?);
    if let Some(path) = &args.rules {
        let text = std::fs::read_to_string(path)?;
        let rules = parse_rules(text.as_bytes()).map_err(anyhow::Error::msg)?;
        proxy.set_rules(rules);
    }
    println!("listening on {}", proxy.local_addr());
    if let Some(control) = args.control {
        let listener = TcpListener::bind(control).await?;
        println!("control API on {}", listener.local_addr()?);
        tokio::spawn(serve_control(listener, Arc::clone(&proxy)));
    }
    wait_for_signal().await?;
    if let Ok(proxy) = Arc::try_unwrap(proxy) {
        proxy.shutdown().await;
    }
    Ok(())
}

async fn wait_for_signal() -> std::io::Result<()> {
    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = terminate.recv() => {}
        interrupted = tokio::signal::ctrl_c() => interrupted?,
    }
    Ok(())
}

fn parse_rules(json: &[u8]) -> Result<Vec<Rule>, String> {
    let rules: Vec<Rule> = serde_json::from_slice(json).map_err(|e| format!("rules: {e}"))?;
    for (index, rule) in rules.iter().enumerate() {
        rule.validate()
            .map_err(|why| format!("rule {index}: {why}"))?;
    }
    Ok(rules)
}

async fn serve_control(listener: TcpListener, proxy: Arc<FaultProxy>) {
    loop {
        let Ok((stream, _)) = listener.accept().await else {
            continue;
        };
        let proxy = Arc::clone(&proxy);
        let service = service_fn(move |request| control(Arc::clone(&proxy), request));
        tokio::spawn(async move {
            let _ = http1::Builder::new()
                .serve_connection(TokioIo::new(stream), service)
                .await;
        });
    }
}

type ControlAnswer = Response<Full<Bytes>>;

async fn control(
    proxy: Arc<FaultProxy>,
    request: Request<Incoming>,
) -> Result<ControlAnswer, Infallible> {
    let route = (request.method().clone(), request.uri().path().to_owned());
    let answer = match (route.0, route.1.as_str()) {
        (Method::PUT, "/rules") => match read_body(request).await.and_then(|b| parse_rules(&b)) {
            Ok(rules) => {
                proxy.set_rules(rules);
                json(&proxy.rules())
            }
            Err(why) => text(StatusCode::BAD_REQUEST, why),
        },
        (Method::POST, "/rules") => match read_body(request).await.and_then(|b| parse_rule(&b)) {
            Ok(rule) => {
                proxy.add_rule(rule);
                json(&proxy.rules())
            }
            Err(why) => text(StatusCode::BAD_REQUEST, why),
        },
        (Method::DELETE, "/rules") => {
            proxy.clear_rules();
            text(StatusCode::OK, "rules cleared\n".into())
        }
        (Method::GET, "/rules") => json(&proxy.rules()),
        (Method::GET, "/stats") => json(&proxy.snapshot()),
        (Method::GET, "/records") => records(&proxy),
        (Method::POST, "/reset") => {
            proxy.reset_stats();
            text(StatusCode::OK, "stats reset\n".into())
        }
        _ => text(StatusCode::NOT_FOUND, "no such control endpoint\n".into()),
    };
    Ok(answer)
}

fn parse_rule(json: &[u8]) -> Result<Rule, String> {
    let rule: Rule = serde_json::from_slice(json).map_err(|e| format!("rule: {e}"))?;
    rule.validate()?;
    Ok(rule)
}

async fn read_body(request: Request<Incoming>) -> Result<Bytes, String> {
    let collected = Limited::new(request.into_body(), MAX_RULES_BYTES)
        .collect()
        .await
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok(collected.to_bytes())
}

fn records(proxy: &FaultProxy) -> ControlAnswer {
    let mut lines = Vec::new();
    for record in proxy.records() {
        if serde_json::to_writer(&mut lines, &record).is_ok() {
            lines.push(b'\n');
        }
    }
    with_type(StatusCode::OK, "application/x-ndjson", lines.into())
}

fn json(value: &impl serde::Serialize) -> ControlAnswer {
    match serde_json::to_vec_pretty(value) {
        Ok(body) => with_type(StatusCode::OK, "application/json", body.into()),
        Err(e) => text(StatusCode::INTERNAL_SERVER_ERROR, format!("{e}\n")),
    }
}

fn text(status: StatusCode, message: String) -> ControlAnswer {
    with_type(status, "text/plain", message.into())
}

fn with_type(status: StatusCode, content_type: &'static str, body: Bytes) -> ControlAnswer {
    let mut response = Response::new(Full::new(body));
    *response.status_mut() = status;
    response.headers_mut().insert(
        hyper::header::CONTENT_TYPE,
        hyper::header::HeaderValue::from_static(content_type),
    );
    response
}
