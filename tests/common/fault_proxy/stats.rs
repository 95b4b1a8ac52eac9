//! What the proxy saw: one record per request (bounded), counts by operation, connections.

use std::collections::BTreeMap;
use std::ops::RangeBounds;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::rules::RuleStats;
use super::s3::{Op, S3Request};

/// Beyond this many records only the counters grow.
pub const DEFAULT_RECORD_LIMIT: usize = 2_000_000;

/// One request. Times are since the proxy started (seconds in JSON).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Record {
    pub seq: u64,
    #[serde(with = "seconds")]
    pub started: Duration,
    /// When the answer was sent in full, broken off, or given up; `None` while in flight.
    #[serde(with = "optional_seconds")]
    pub finished: Option<Duration>,
    pub op: Op,
    pub method: String,
    pub bucket: String,
    pub key: String,
    pub upload_id: String,
    /// The status sent to the client; 0 when no answer was sent.
    pub status: u16,
    /// The action applied (`Error`, `Hold`...), if a rule fired.
    pub fault: Option<String>,
    /// Requests of the same operation in flight when this one started, itself included.
    pub in_flight_at_start: usize,
    /// Answer body bytes sent to the client.
    pub body_bytes_sent: u64,
}

impl Record {
    pub fn duration(&self) -> Option<Duration> {
        self.finished.map(|f| f.saturating_sub(self.started))
    }
}

/// A JSON view of the counters, for the control API and for logs.
#[derive(Debug, Clone, Serialize)]
pub struct Snapshot {
    pub connections: u64,
    pub open_connections: usize,
    pub requests: u64,
    pub counts_by_op: BTreeMap<Op, usize>,
    /// AbortMultipartUpload requests per upload, most first.
    pub aborts_per_upload: Vec<UploadCount>,
    pub rules: Vec<RuleStats>,
    pub records_kept: usize,
}

#[derive(Debug, Clone, Serialize)]
pub struct UploadCount {
    pub key: String,
    pub upload_id: String,
    pub count: usize,
}

pub(crate) struct Stats {
    started: Instant,
    connections: AtomicU64,
    book: Mutex<Book>,
}

struct Book {
    /// Bumped by a reset so that requests begun before it do not write into new records.
    generation: u64,
    next_seq: u64,
    record_limit: usize,
    records: Vec<Record>,
    counts: BTreeMap<Op, usize>,
    /// Not reset: it is the present, not history.
    in_flight: BTreeMap<Op, usize>,
}

impl Stats {
    pub fn new() -> Self {
        Self {
            started: Instant::now(),
            connections: AtomicU64::new(0),
            book: Mutex::new(Book {
                generation: 0,
                next_seq: 0,
                record_limit: DEFAULT_RECORD_LIMIT,
                records: Vec::new(),
                counts: BTreeMap::new(),
                in_flight: BTreeMap::new(),
            }),
        }
    }

    fn book(&self) -> MutexGuard<'_, Book> {
        // A panic elsewhere cannot leave the book half-written in a way that matters to tests.
        self.book
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    pub fn since_start(&self) -> Duration {
        self.started.elapsed()
    }

    pub fn connection_accepted(&self) {
        self.connections.fetch_add(1, Ordering::Relaxed);
    }

    pub fn connections(&self) -> u64 {
        self.connections.load(Ordering::Relaxed)
    }

    /// Records a request starting; the handle finishes the record when dropped.
    pub fn begin(self: &Arc<Self>, request: &S3Request) -> RecordHandle {
        let started = self.since_start();
        let mut book = self.book();
        let in_flight = book.in_flight.entry(request.op).or_default();
        *in_flight += 1;
        let in_flight_at_start = *in_flight;
        *book.counts.entry(request.op).or_default() += 1;
        let seq = book.next_seq;
        book.next_seq += 1;
        if book.records.len() < book.record_limit {
            book.records.push(Record {
                seq,
                started,
                finished: None,
                op: request.op,
                method: request.method.clone(),
                bucket: request.bucket.clone(),
                key: request.key.clone(),
                upload_id: request.upload_id.clone(),
                status: 0,
                fault: None,
                in_flight_at_start,
                body_bytes_sent: 0,
            });
        }
        RecordHandle {
            stats: Arc::clone(self),
            generation: book.generation,
            seq,
            op: request.op,
            body_bytes_sent: 0,
            finished: false,
        }
    }

    pub fn records(&self) -> Vec<Record> {
        self.book().records.clone()
    }

    pub fn count(&self, op: Op) -> usize {
        self.book().counts.get(&op).copied().unwrap_or(0)
    }

    pub fn counts_by_op(&self) -> BTreeMap<Op, usize> {
        self.book().counts.clone()
    }

    pub fn count_where(&self, predicate: impl Fn(&Record) -> bool) -> usize {
        self.book().records.iter().filter(|r| predicate(r)).count()
    }

    pub fn counts_by_upload(&self, op: Op) -> BTreeMap<(String, String), usize> {
        let mut counts = BTreeMap::new();
        for record in self.book().records.iter().filter(|r| r.op == op) {
            *counts
                .entry((record.key.clone(), record.upload_id.clone()))
                .or_default() += 1;
        }
        counts
    }

    pub fn max_in_flight(&self, op: Op, seqs: impl RangeBounds<u64>) -> usize {
        let book = self.book();
        let in_range = book
            .records
            .iter()
            .filter(|r| r.op == op && seqs.contains(&r.seq));
        in_range.map(|r| r.in_flight_at_start).max().unwrap_or(0)
    }

    pub fn reset(&self) {
        let mut book = self.book();
        book.generation += 1;
        book.next_seq = 0;
        book.records = Vec::new();
        book.counts.clear();
        self.connections.store(0, Ordering::Relaxed);
    }

    pub fn set_record_limit(&self, limit: usize) {
        let mut book = self.book();
        book.record_limit = limit;
        book.records.truncate(limit);
    }

    pub fn snapshot(&self, open_connections: usize, rules: Vec<RuleStats>) -> Snapshot {
        let mut aborts: Vec<_> = self
            .counts_by_upload(Op::AbortMultipartUpload)
            .into_iter()
            .map(|((key, upload_id), count)| UploadCount {
                key,
                upload_id,
                count,
            })
            .collect();
        aborts.sort_by_key(|a| std::cmp::Reverse(a.count));
        let book = self.book();
        Snapshot {
            connections: self.connections(),
            open_connections,
            requests: book.next_seq,
            counts_by_op: book.counts.clone(),
            aborts_per_upload: aborts,
            rules,
            records_kept: book.records.len(),
        }
    }

    /// Applies `change` to the request's record, if it is still kept.
    fn update(&self, generation: u64, seq: u64, change: impl FnOnce(&mut Record)) {
        let mut book = self.book();
        if book.generation != generation {
            return;
        }
        // Records are kept in seq order, though not every seq is kept.
        if let Ok(index) = book.records.binary_search_by_key(&seq, |r| r.seq) {
            change(&mut book.records[index]);
        }
    }
}

/// A request in flight; finishing it (or dropping it) stamps its record.
pub(crate) struct RecordHandle {
    stats: Arc<Stats>,
    generation: u64,
    seq: u64,
    op: Op,
    body_bytes_sent: u64,
    finished: bool,
}

impl RecordHandle {
    pub fn seq(&self) -> u64 {
        self.seq
    }

    pub fn set_fault(&self, fault: &str) {
        self.stats.update(self.generation, self.seq, |r| {
            r.fault = Some(fault.to_owned());
        });
    }

    pub fn set_status(&self, status: u16) {
        self.stats
            .update(self.generation, self.seq, |r| r.status = status);
    }

    pub fn add_body_bytes(&mut self, bytes: usize) {
        self.body_bytes_sent += bytes as u64;
    }

    pub fn finish(&mut self) {
        if std::mem::replace(&mut self.finished, true) {
            return;
        }
        let now = self.stats.since_start();
        let bytes = self.body_bytes_sent;
        self.stats.update(self.generation, self.seq, |r| {
            r.finished = Some(now);
            r.body_bytes_sent = bytes;
        });
        let mut book = self.stats.book();
        if let Some(in_flight) = book.in_flight.get_mut(&self.op) {
            *in_flight = in_flight.saturating_sub(1);
        }
    }
}

impl Drop for RecordHandle {
    fn drop(&mut self) {
        self.finish();
    }
}

mod seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Duration, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_f64(d.as_secs_f64())
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Duration, D::Error> {
        let secs = f64::deserialize(d)?;
        Duration::try_from_secs_f64(secs).map_err(serde::de::Error::custom)
    }
}

mod optional_seconds {
    use serde::{Deserialize, Deserializer, Serializer};
    use std::time::Duration;

    pub fn serialize<S: Serializer>(d: &Option<Duration>, s: S) -> Result<S::Ok, S::Error> {
        match d {
            Some(d) => s.serialize_some(&d.as_secs_f64()),
            None => s.serialize_none(),
        }
    }

    pub fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Duration>, D::Error> {
        let secs = Option::<f64>::deserialize(d)?;
        secs.map(Duration::try_from_secs_f64)
            .transpose()
            .map_err(serde::de::Error::custom)
    }
}
