//! A fault-injecting HTTP proxy between the code under test and a real S3 server.
//!
//! Each request is classified as an S3 operation ([`Op`]) and checked against the scripted
//! [`Rule`]s: the first rule that matches and whose selector fires applies its [`Action`]
//! (an error answered in the server's place, a reset mid-answer, a hold, a rewritten listing...);
//! other requests are forwarded untouched, bodies streamed, the `Host` header unchanged so that
//! SigV4 signatures still hold. Every request is recorded ([`Record`]).
//!
//! ```ignore
//! let proxy = FaultProxy::start(&server.endpoint).await?;
//! proxy.add_rule(
//!     Rule::on(Op::AbortMultipartUpload).key_prefix("slow/").share(0.3).then(Action::slow_down()),
//! );
//! // point the client at proxy.endpoint() ...
//! assert_eq!(proxy.count(Op::AbortMultipartUpload), 10);
//! ```

mod answer;
mod body;
mod connection;
mod rewrite;
mod rules;
mod s3;
mod stats;
mod upstream;

use std::collections::BTreeMap;
use std::io;
use std::net::SocketAddr;
use std::ops::RangeBounds;
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::Instant;

use tokio::net::TcpListener;
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

// Each test binary (and the example) uses a different part of the API.
#[allow(unused_imports)]
pub use answer::REWRITE_CAP;
#[allow(unused_imports)]
pub use rules::{Action, DateRewrite, MarkerMode, Rule, RuleBuilder, RuleStats, Selector};
#[allow(unused_imports)]
pub use s3::{Op, S3Request};
#[allow(unused_imports)]
pub use stats::{DEFAULT_RECORD_LIMIT, Record, Snapshot, UploadCount};

use rules::{Firing, RuleBook};
use stats::Stats;
use upstream::Upstream;

/// A running proxy; dropping it (or [`FaultProxy::shutdown`]) stops it.
pub struct FaultProxy {
    address: SocketAddr,
    shared: Arc<Shared>,
    accepting: Option<JoinHandle<()>>,
}

/// What the connections share with the proxy handle.
pub(crate) struct Shared {
    upstream: Upstream,
    rules: Mutex<RuleBook>,
    stats: Arc<Stats>,
    shutdown: CancellationToken,
    /// Client connections being served.
    open_connections: watch::Sender<usize>,
}

impl Shared {
    fn rule_book(&self) -> MutexGuard<'_, RuleBook> {
        self.rules.lock().unwrap_or_else(|p| p.into_inner())
    }

    fn decide(&self, request: &S3Request) -> Option<Firing> {
        self.rule_book().decide(request, Instant::now())
    }
}

impl FaultProxy {
    /// Listens on 127.0.0.1 on a free port and forwards to `upstream` (`http://host:port`).
    pub async fn start(upstream: &str) -> io::Result<Self> {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)), upstream).await
    }

    pub async fn start_on(listen: SocketAddr, upstream: &str) -> io::Result<Self> {
        let upstream = Upstream::parse(upstream)?;
        let listener = TcpListener::bind(listen).await?;
        let address = listener.local_addr()?;
        let shared = Arc::new(Shared {
            upstream,
            rules: Mutex::new(RuleBook::default()),
            stats: Arc::new(Stats::new()),
            shutdown: CancellationToken::new(),
            open_connections: watch::Sender::new(0),
        });
        let accepting = tokio::spawn(accept(listener, Arc::clone(&shared)));
        Ok(Self {
            address,
            shared,
            accepting: Some(accepting),
        })
    }

    /// `http://127.0.0.1:PORT`, for the client's endpoint setting.
    pub fn endpoint(&self) -> String {
        format!("http://{}", self.address)
    }

    pub fn local_addr(&self) -> SocketAddr {
        self.address
    }

    pub fn upstream(&self) -> &str {
        &self.shared.upstream.url
    }

    /// Replaces the rules; they apply from the next request on.
    ///
    /// # Panics
    /// On a rule that fails [`Rule::validate`]: a test that scripts an impossible fault is wrong.
    pub fn set_rules(&self, rules: Vec<Rule>) {
        for rule in &rules {
            assert_valid(rule);
        }
        self.shared.rule_book().set(rules, Instant::now());
    }

    /// Adds a rule after the others.
    ///
    /// # Panics
    /// On a rule that fails [`Rule::validate`].
    pub fn add_rule(&self, rule: Rule) {
        assert_valid(&rule);
        self.shared.rule_book().add(rule, Instant::now());
    }

    pub fn clear_rules(&self) {
        self.set_rules(Vec::new());
    }

    /// The rules in force, with how many requests each matched and how often it fired.
    pub fn rules(&self) -> Vec<RuleStats> {
        self.shared.rule_book().stats()
    }

    /// The kept records, in request order.
    pub fn records(&self) -> Vec<Record> {
        self.shared.stats.records()
    }

    /// Requests of this operation (counted even beyond the record limit).
    pub fn count(&self, op: Op) -> usize {
        self.shared.stats.count(op)
    }

    pub fn counts_by_op(&self) -> BTreeMap<Op, usize> {
        self.shared.stats.counts_by_op()
    }

    /// Kept records that satisfy `predicate`.
    pub fn count_where(&self, predicate: impl Fn(&Record) -> bool) -> usize {
        self.shared.stats.count_where(predicate)
    }

    /// Requests of `op` per (key, uploadId): e.g. how many DELETEs each upload got.
    pub fn counts_by_upload(&self, op: Op) -> BTreeMap<(String, String), usize> {
        self.shared.stats.counts_by_upload(op)
    }

    /// TCP connections accepted since start (or the last reset).
    pub fn connections(&self) -> u64 {
        self.shared.stats.connections()
    }

    /// Client connections being served now.
    pub fn open_connections(&self) -> usize {
        *self.shared.open_connections.borrow()
    }

    /// The most requests of `op` in flight at once, as seen by the requests numbered `seqs`.
    pub fn max_in_flight(&self, op: Op, seqs: impl RangeBounds<u64>) -> usize {
        self.shared.stats.max_in_flight(op, seqs)
    }

    /// Forgets records, counts and connections; rules and their counts stay.
    pub fn reset_stats(&self) {
        self.shared.stats.reset();
    }

    /// Keeps at most `limit` records (default [`DEFAULT_RECORD_LIMIT`]).
    pub fn set_record_limit(&self, limit: usize) {
        self.shared.stats.set_record_limit(limit);
    }

    pub fn snapshot(&self) -> Snapshot {
        self.shared
            .stats
            .snapshot(self.open_connections(), self.rules())
    }

    /// Stops accepting, drops every connection (ending holds and generated listings) and waits
    /// until they are gone.
    pub async fn shutdown(mut self) {
        self.shared.shutdown.cancel();
        if let Some(accepting) = self.accepting.take() {
            let _ = accepting.await;
        }
        let mut open = self.shared.open_connections.subscribe();
        let _ = open.wait_for(|&n| n == 0).await;
    }
}

impl Drop for FaultProxy {
    fn drop(&mut self) {
        self.shared.shutdown.cancel();
    }
}

fn assert_valid(rule: &Rule) {
    if let Err(why) = rule.validate() {
        panic!("invalid fault proxy rule {rule:?}: {why}");
    }
}

async fn accept(listener: TcpListener, shared: Arc<Shared>) {
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            () = shared.shutdown.cancelled() => return,
        };
        match accepted {
            Ok((stream, _)) => {
                shared.stats.connection_accepted();
                let guard = OpenConnection::new(Arc::clone(&shared));
                tokio::spawn(async move {
                    connection::serve(Arc::clone(&guard.0), stream).await;
                    drop(guard);
                });
            }
            // Out of file descriptors and the like: wait a little rather than spin.
            Err(_) => tokio::time::sleep(std::time::Duration::from_millis(20)).await,
        }
    }
}

/// Counts a connection as open while it lives, even if its task is cancelled.
struct OpenConnection(Arc<Shared>);

impl OpenConnection {
    fn new(shared: Arc<Shared>) -> Self {
        shared.open_connections.send_modify(|n| *n += 1);
        Self(shared)
    }
}

impl Drop for OpenConnection {
    fn drop(&mut self) {
        self.0.open_connections.send_modify(|n| *n -= 1);
    }
}
