//! Rules: which requests (match), when (selector) and what (action), and the state that decides,
//! request by request, which rule applies.

use std::time::{Duration, Instant};

use serde::{Deserialize, Serialize};

use super::s3::{Op, S3Request};

/// One scripted fault. Rules are checked in order; the first that matches a request *and* whose
/// selector fires applies its action, the others do not see that request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Rule {
    /// The operations it applies to; empty means every operation.
    #[serde(default)]
    pub ops: Vec<Op>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bucket: Option<String>,
    /// Matches the object key; requests without a key never match a non-empty prefix.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub key_prefix: Option<String>,
    #[serde(default)]
    pub when: Selector,
    pub action: Action,
}

/// When a rule fires among the requests it matches. Request numbers count from 0.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub enum Selector {
    #[default]
    Always,
    /// A reproducible pseudo-random share: the same seed fires on the same request numbers.
    Share {
        fraction: f64,
        #[serde(default)]
        seed: u64,
    },
    /// The first n matching requests.
    First(u64),
    /// Every matching request after the first n.
    Skip(u64),
    /// Matching requests number `from` to `from + count - 1`.
    Window { from: u64, count: u64 },
    /// A burst in time, counted from when the rule was set.
    During { after_ms: u64, for_ms: u64 },
    /// Requests above a rate: a token bucket of that rate holding one second's worth.
    RateAbove { per_second: f64 },
}

/// What a firing rule does to its request.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum Action {
    /// Answers an S3 XML error without forwarding; no code and no message give an empty body.
    Error {
        status: u16,
        #[serde(default)]
        code: Option<String>,
        #[serde(default)]
        message: Option<String>,
        /// Pads the message to this many bytes.
        #[serde(default)]
        message_bytes: Option<usize>,
    },
    /// Forwards, relays the head and the first `after_bytes` of the body, then resets the TCP
    /// connection.
    ResetMidAnswer { after_bytes: usize },
    /// Holds the answer `ms` after getting it from the server (`forward_first`), or holds the
    /// request `ms` before forwarding it.
    Hold {
        ms: u64,
        #[serde(default)]
        forward_first: bool,
    },
    /// Latency: half before forwarding, half after the answer's head.
    Delay { ms: u64 },
    /// Answers a ListMultipartUploads itself with a generated listing of about `bytes` bytes.
    HugeListing {
        bytes: u64,
        #[serde(default)]
        chunked: bool,
    },
    /// Marks a listing page truncated and sets its next markers to scripted values.
    Markers { mode: MarkerMode },
    /// Replaces the answer's `Date` header.
    Date(DateRewrite),
    /// Sets (or removes, with `None`) the `<Initiated>` of listed uploads under `key_prefix`.
    Initiated {
        #[serde(default)]
        key_prefix: String,
        #[serde(default)]
        value: Option<String>,
    },
    /// Appends text (control characters...) to the key and upload ID of listed uploads under
    /// `key_prefix`, as XML character references.
    Inject {
        #[serde(default)]
        key_prefix: String,
        #[serde(default)]
        key_suffix: Option<String>,
        #[serde(default)]
        upload_id_suffix: Option<String>,
    },
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum MarkerMode {
    /// (NextKeyMarker, NextUploadIdMarker) pairs handed out in turn, round and round.
    Cycle(Vec<(String, String)>),
    /// A new pair on every page: `~fresh-000001`, `~fresh-000002`...
    Fresh,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub enum DateRewrite {
    Garbage(String),
    /// The real `Date` moved by this many seconds.
    OffsetSeconds(i64),
    Remove,
}

impl Rule {
    /// A rule for one operation; finish it with [`RuleBuilder::then`].
    pub fn on(op: Op) -> RuleBuilder {
        Self::on_ops([op])
    }

    pub fn on_ops(ops: impl IntoIterator<Item = Op>) -> RuleBuilder {
        RuleBuilder {
            ops: ops.into_iter().collect(),
            bucket: None,
            key_prefix: None,
            when: Selector::Always,
        }
    }

    /// A rule for every operation.
    pub fn any() -> RuleBuilder {
        Self::on_ops([])
    }

    pub fn matches(&self, request: &S3Request) -> bool {
        (self.ops.is_empty() || self.ops.contains(&request.op))
            && self.bucket.as_ref().is_none_or(|b| *b == request.bucket)
            && self
                .key_prefix
                .as_ref()
                .is_none_or(|p| request.key.starts_with(p.as_str()))
    }

    /// What a rule must satisfy to be set; the control API answers 400 otherwise.
    pub fn validate(&self) -> Result<(), String> {
        match &self.when {
            Selector::Share { fraction, .. } if !(0.0..=1.0).contains(fraction) => {
                return Err(format!("share fraction {fraction} is not within 0..=1"));
            }
            Selector::RateAbove { per_second }
                if !(per_second.is_finite() && *per_second > 0.0) =>
            {
                return Err(format!("rate {per_second}/s is not a positive number"));
            }
            _ => {}
        }
        match &self.action {
            Action::Error { status, .. } if !(200..=599).contains(status) => {
                Err(format!("error status {status} is not within 200..=599"))
            }
            Action::Markers {
                mode: MarkerMode::Cycle(pairs),
            } if pairs.is_empty() => Err("a marker cycle needs at least one pair".into()),
            _ => Ok(()),
        }
    }
}

/// Builds a [`Rule`] for Rust tests:
/// `Rule::on(Op::AbortMultipartUpload).key_prefix("slow/").share(0.3).then(Action::slow_down())`.
#[derive(Debug, Clone)]
#[must_use = "a rule does nothing until `then` gives it an action"]
pub struct RuleBuilder {
    ops: Vec<Op>,
    bucket: Option<String>,
    key_prefix: Option<String>,
    when: Selector,
}

impl RuleBuilder {
    /// One more operation the rule applies to.
    pub fn or(mut self, op: Op) -> Self {
        self.ops.push(op);
        self
    }

    pub fn bucket(mut self, bucket: impl Into<String>) -> Self {
        self.bucket = Some(bucket.into());
        self
    }

    pub fn key_prefix(mut self, prefix: impl Into<String>) -> Self {
        self.key_prefix = Some(prefix.into());
        self
    }

    pub fn when(mut self, selector: Selector) -> Self {
        self.when = selector;
        self
    }

    /// A share of the matching requests, with a fixed seed.
    pub fn share(self, fraction: f64) -> Self {
        self.share_seeded(fraction, 1)
    }

    pub fn share_seeded(self, fraction: f64, seed: u64) -> Self {
        self.when(Selector::Share { fraction, seed })
    }

    pub fn first(self, n: u64) -> Self {
        self.when(Selector::First(n))
    }

    pub fn skip(self, n: u64) -> Self {
        self.when(Selector::Skip(n))
    }

    pub fn window(self, from: u64, count: u64) -> Self {
        self.when(Selector::Window { from, count })
    }

    pub fn during(self, after: Duration, length: Duration) -> Self {
        self.when(Selector::During {
            after_ms: millis(after),
            for_ms: millis(length),
        })
    }

    pub fn rate_above(self, per_second: f64) -> Self {
        self.when(Selector::RateAbove { per_second })
    }

    pub fn then(self, action: Action) -> Rule {
        Rule {
            ops: self.ops,
            bucket: self.bucket,
            key_prefix: self.key_prefix,
            when: self.when,
            action,
        }
    }
}

fn millis(duration: Duration) -> u64 {
    u64::try_from(duration.as_millis()).unwrap_or(u64::MAX)
}

impl Action {
    pub fn error(status: u16, code: &str, message: &str) -> Self {
        Self::Error {
            status,
            code: Some(code.to_owned()),
            message: Some(message.to_owned()),
            message_bytes: None,
        }
    }

    pub fn slow_down() -> Self {
        Self::error(503, "SlowDown", "Please reduce your request rate.")
    }

    pub fn internal_error() -> Self {
        Self::error(
            500,
            "InternalError",
            "We encountered an internal error. Please try again.",
        )
    }

    /// A 404 with an empty body: no error code at all.
    pub fn not_found_without_code() -> Self {
        Self::Error {
            status: 404,
            code: None,
            message: None,
            message_bytes: None,
        }
    }

    pub fn reset_after(after_bytes: usize) -> Self {
        Self::ResetMidAnswer { after_bytes }
    }

    /// Holds the request before forwarding it.
    pub fn hold(duration: Duration) -> Self {
        Self::Hold {
            ms: millis(duration),
            forward_first: false,
        }
    }

    /// Forwards (so the server applies the request), then holds the answer.
    pub fn hold_answer(duration: Duration) -> Self {
        Self::Hold {
            ms: millis(duration),
            forward_first: true,
        }
    }

    /// Never forwards nor answers, until the client or the proxy gives up.
    pub fn stall() -> Self {
        Self::Hold {
            ms: u64::MAX,
            forward_first: false,
        }
    }

    pub fn delay(round_trip: Duration) -> Self {
        Self::Delay {
            ms: millis(round_trip),
        }
    }

    /// The action's name, as records show it.
    pub fn kind(&self) -> &'static str {
        match self {
            Self::Error { .. } => "Error",
            Self::ResetMidAnswer { .. } => "ResetMidAnswer",
            Self::Hold { .. } => "Hold",
            Self::Delay { .. } => "Delay",
            Self::HugeListing { .. } => "HugeListing",
            Self::Markers { .. } => "Markers",
            Self::Date(_) => "Date",
            Self::Initiated { .. } => "Initiated",
            Self::Inject { .. } => "Inject",
        }
    }
}

/// A rule with what it has seen: how many requests it matched and how often it fired.
#[derive(Debug, Clone, Serialize)]
pub struct RuleStats {
    pub rule: Rule,
    pub matched: u64,
    pub fired: u64,
}

/// The action for one request, with the choices made for it (the markers of this page).
#[derive(Debug, Clone)]
pub(crate) struct Firing {
    pub action: Action,
    pub markers: Option<(String, String)>,
}

/// The rules in force and their state.
#[derive(Debug, Default)]
pub(crate) struct RuleBook {
    rules: Vec<LiveRule>,
}

#[derive(Debug)]
struct LiveRule {
    rule: Rule,
    set_at: Instant,
    matched: u64,
    fired: u64,
    random: SplitMix64,
    tokens: TokenBucket,
    pages_marked: u64,
}

impl RuleBook {
    pub fn set(&mut self, rules: Vec<Rule>, now: Instant) {
        self.rules = rules.into_iter().map(|r| LiveRule::new(r, now)).collect();
    }

    pub fn add(&mut self, rule: Rule, now: Instant) {
        self.rules.push(LiveRule::new(rule, now));
    }

    pub fn stats(&self) -> Vec<RuleStats> {
        self.rules
            .iter()
            .map(|r| RuleStats {
                rule: r.rule.clone(),
                matched: r.matched,
                fired: r.fired,
            })
            .collect()
    }

    /// The action for this request, if a rule fires on it.
    pub fn decide(&mut self, request: &S3Request, now: Instant) -> Option<Firing> {
        self.rules
            .iter_mut()
            .filter(|live| live.rule.matches(request))
            .find_map(|live| live.fires(now).then(|| live.firing()))
    }
}

impl LiveRule {
    fn new(rule: Rule, now: Instant) -> Self {
        let (seed, rate) = match rule.when {
            Selector::Share { seed, .. } => (seed, 1.0),
            Selector::RateAbove { per_second } => (0, per_second),
            _ => (0, 1.0),
        };
        Self {
            rule,
            set_at: now,
            matched: 0,
            fired: 0,
            random: SplitMix64(seed),
            tokens: TokenBucket::full(rate, now),
            pages_marked: 0,
        }
    }

    /// Counts a matching request and says whether the selector fires on it.
    fn fires(&mut self, now: Instant) -> bool {
        let number = self.matched;
        self.matched += 1;
        let fires = match self.rule.when {
            Selector::Always => true,
            Selector::Share { fraction, .. } => self.random.next_fraction() < fraction,
            Selector::First(n) => number < n,
            Selector::Skip(n) => number >= n,
            Selector::Window { from, count } => number >= from && number - from < count,
            Selector::During { after_ms, for_ms } => {
                let elapsed = millis(now.saturating_duration_since(self.set_at));
                elapsed >= after_ms && elapsed - after_ms < for_ms
            }
            Selector::RateAbove { .. } => !self.tokens.take(now),
        };
        self.fired += u64::from(fires);
        fires
    }

    fn firing(&mut self) -> Firing {
        let markers = match &self.rule.action {
            Action::Markers { mode } => markers_for_page(mode, self.pages_marked),
            _ => None,
        };
        self.pages_marked += u64::from(markers.is_some());
        Firing {
            action: self.rule.action.clone(),
            markers,
        }
    }
}

/// The (NextKeyMarker, NextUploadIdMarker) of the `page`-th page a Markers rule rewrites.
fn markers_for_page(mode: &MarkerMode, page: u64) -> Option<(String, String)> {
    match mode {
        MarkerMode::Cycle(pairs) => {
            let index = usize::try_from(page % pairs.len().max(1) as u64).ok()?;
            pairs.get(index).cloned()
        }
        // Markers starting with `~` sort after any real key or upload ID, so the real server
        // answers an empty page for them.
        MarkerMode::Fresh => {
            let marker = format!("~fresh-{:06}", page + 1);
            Some((marker.clone(), marker))
        }
    }
}

/// A tiny reproducible PRNG (SplitMix64); good enough to pick a share of requests.
#[derive(Debug, Clone)]
struct SplitMix64(u64);

impl SplitMix64 {
    fn next(&mut self) -> u64 {
        self.0 = self.0.wrapping_add(0x9E37_79B9_7F4A_7C15);
        let mut z = self.0;
        z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
        z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
        z ^ (z >> 31)
    }

    /// Uniform in [0, 1).
    fn next_fraction(&mut self) -> f64 {
        (self.next() >> 11) as f64 / (1u64 << 53) as f64
    }
}

/// Admits `rate` requests per second on average, `rate` at once at most.
#[derive(Debug, Clone)]
struct TokenBucket {
    rate: f64,
    tokens: f64,
    refilled: Instant,
}

impl TokenBucket {
    fn full(rate: f64, now: Instant) -> Self {
        Self {
            rate,
            tokens: rate,
            refilled: now,
        }
    }

    /// Takes a token if there is one.
    fn take(&mut self, now: Instant) -> bool {
        let elapsed = now.saturating_duration_since(self.refilled).as_secs_f64();
        self.tokens = (self.tokens + elapsed * self.rate).min(self.rate);
        self.refilled = now;
        if self.tokens >= 1.0 {
            self.tokens -= 1.0;
            true
        } else {
            false
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request(op: Op, key: &str) -> S3Request {
        S3Request {
            op,
            method: "GET".into(),
            bucket: "b".into(),
            key: key.into(),
            upload_id: String::new(),
        }
    }

    fn fired(rule: Rule, requests: u64, now: impl Fn(u64) -> Instant) -> Vec<u64> {
        let mut book = RuleBook::default();
        book.set(vec![rule], now(0));
        let abort = request(Op::AbortMultipartUpload, "k");
        (0..requests)
            .filter(|&i| book.decide(&abort, now(i)).is_some())
            .collect()
    }

    #[test]
    fn selectors_fire_on_the_requests_they_name() {
        let start = Instant::now();
        let at = |_| start;
        let on = || Rule::on(Op::AbortMultipartUpload);
        assert_eq!(
            fired(on().first(2).then(Action::slow_down()), 5, at),
            [0, 1]
        );
        assert_eq!(fired(on().skip(3).then(Action::slow_down()), 5, at), [3, 4]);
        assert_eq!(
            fired(on().window(1, 2).then(Action::slow_down()), 5, at),
            [1, 2]
        );
        let ms = |i| start + Duration::from_millis(i * 100);
        let burst = on().during(Duration::from_millis(200), Duration::from_millis(200));
        assert_eq!(fired(burst.then(Action::slow_down()), 6, ms), [2, 3]);
        // 10 per second, one second's worth at once: 10 pass, then one per 100 ms.
        let fast = |i| start + Duration::from_millis(i);
        let throttled = fired(on().rate_above(10.0).then(Action::slow_down()), 200, fast);
        assert!((187..=189).contains(&throttled.len()), "{throttled:?}");
        assert_eq!(throttled[0], 10);
        let share = |seed| {
            fired(
                on().share_seeded(0.3, seed).then(Action::slow_down()),
                1000,
                at,
            )
        };
        assert_eq!(
            share(7),
            share(7),
            "the same seed fires on the same requests"
        );
        assert!((250..350).contains(&share(7).len()), "{}", share(7).len());
    }

    #[test]
    fn first_matching_rule_that_fires_applies_and_others_do_not_see_it() {
        let mut book = RuleBook::default();
        let now = Instant::now();
        let slow = Rule::on(Op::AbortMultipartUpload).key_prefix("slow/");
        book.set(
            vec![
                slow.clone().first(1).then(Action::slow_down()),
                slow.then(Action::internal_error()),
                Rule::any().then(Action::delay(Duration::from_millis(5))),
            ],
            now,
        );
        let kinds: Vec<_> = [
            request(Op::AbortMultipartUpload, "slow/a"),
            request(Op::AbortMultipartUpload, "slow/a"),
            request(Op::AbortMultipartUpload, "fast/a"),
            request(Op::ListMultipartUploads, ""),
        ]
        .iter()
        .map(|r| book.decide(r, now).map(|f| f.action))
        .collect();
        assert_eq!(
            kinds,
            [
                Some(Action::slow_down()),
                Some(Action::internal_error()),
                Some(Action::delay(Duration::from_millis(5))),
                Some(Action::delay(Duration::from_millis(5))),
            ]
        );
        let counts: Vec<_> = book.stats().iter().map(|s| (s.matched, s.fired)).collect();
        assert_eq!(counts, [(2, 1), (1, 1), (2, 2)]);
    }
}
