//! Sending one run's S3 requests: retries with backoff, a retry budget of the run's own, the
//! run's concurrency limit and, once the server throttles, its rate cap, all fed by what the
//! server answers. The SDK's own retries are off
//! (its retry budget is shared by every client in the process, so one tenant's failing endpoint
//! could use up the retries of all others); nothing here outlives the run.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use tokio_util::sync::CancellationToken;

use super::congestion::{Epoch, Limiter};
use super::error::{RetryClass, S3Error};
use super::pacing::{Cuts, Pacer};

/// How failed requests are retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RetryPolicy {
    /// Attempts per request when it fails (5xx, broken connections, timeouts), the first included.
    pub max_attempts: u32,
    /// Attempts per request while the server throttles it. Throttling asks for a slower pace,
    /// not for giving up, so this is higher; the run's deadline bounds the total.
    pub max_throttled_attempts: u32,
    pub initial_backoff: Duration,
    pub max_backoff: Duration,
}

impl Default for RetryPolicy {
    fn default() -> Self {
        Self {
            max_attempts: 5,
            max_throttled_attempts: 20,
            initial_backoff: Duration::from_millis(200),
            max_backoff: Duration::from_secs(20),
        }
    }
}

/// Tokens a run starts with, for each [`Lane`]; a retry after a failure costs [`RETRY_COST`]
/// (a timeout twice that), a success gives one back. A server that fails most requests thus soon
/// gets no retries, while one that fails now and then is retried for as long as the run lasts.
const BUDGET_TOKENS: u32 = 500;
const RETRY_COST: u32 = 5;
/// Attempts per request refused for a skewed signing clock; the second is signed by the server's.
const MAX_CLOCK_SKEW_ATTEMPTS: u32 = 3;

/// Which retry budget a request draws on: a storm of failing aborts must not leave the listing,
/// which the whole run depends on, without retries.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Lane {
    Listing,
    Uploads,
}

/// What a request came to.
#[derive(Debug)]
pub struct Sent<T> {
    pub result: Result<T, S3Error>,
    /// An earlier attempt reached the server and failed in a way that leaves open whether the
    /// server carried it out (a timeout, a connection broken mid-answer, a 5xx): "no such
    /// upload" on a retried abort then most likely means our own abort took.
    pub maybe_applied_before: bool,
}

/// The request side of one run, shared by its listing and its aborts.
#[derive(Debug)]
pub struct Requests {
    policy: RetryPolicy,
    budgets: Mutex<[u32; 2]>,
    limit: Mutex<Limiter>,
    pacer: Mutex<Pacer>,
    /// When the run began: the pacer's clock counts from here.
    began: tokio::time::Instant,
    /// Attempts in flight now.
    in_flight: AtomicUsize,
    throttled: AtomicU64,
    /// Cancelled when the run winds down: no more retries, and backoffs end at once.
    winding_down: CancellationToken,
}

/// What one request has been through so far.
#[derive(Debug, Default)]
struct Attempts {
    failures: u32,
    throttles: u32,
    skews: u32,
    maybe_applied: bool,
}

impl Requests {
    pub fn new(policy: RetryPolicy, max_concurrency: usize) -> Self {
        Self {
            policy,
            budgets: Mutex::new([BUDGET_TOKENS; 2]),
            limit: Mutex::new(Limiter::new(max_concurrency)),
            pacer: Mutex::new(Pacer::default()),
            began: tokio::time::Instant::now(),
            in_flight: AtomicUsize::new(0),
            throttled: AtomicU64::new(0),
            winding_down: CancellationToken::new(),
        }
    }

    /// Requests the run may have in flight now.
    pub fn concurrency_limit(&self) -> usize {
        lock(&self.limit).limit()
    }

    /// The highest concurrency limit of the run so far.
    pub fn peak_concurrency(&self) -> usize {
        lock(&self.limit).peak()
    }

    /// Throttled answers so far (each attempt counts).
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// The run stops: requests in flight get no further attempts, so that the drain is not
    /// stretched by backoffs.
    pub fn wind_down(&self) {
        self.winding_down.cancel();
    }

    /// Sends a request made by `attempt`, retrying as the policy and the lane's budget allow.
    pub async fn send<T, F, Fut>(&self, lane: Lane, mut attempt: F) -> Sent<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, S3Error>>,
    {
        let mut so_far = Attempts::default();
        loop {
            let booked = self.wait_for_pace().await;
            let sending = InFlight::count(&self.in_flight);
            let epoch = lock(&self.limit).on_send(sending.now);
            let sent_at = tokio::time::Instant::now();
            let answer = attempt().await;
            drop(sending);
            let error = match answer {
                Ok(value) => {
                    self.on_success(lane, sent_at.elapsed());
                    return Sent {
                        result: Ok(value),
                        maybe_applied_before: so_far.maybe_applied,
                    };
                }
                Err(error) => error,
            };
            let retry = self.may_retry(lane, &error, (epoch, booked), &mut so_far);
            let backoff = match retry {
                Some(backoff) if !self.winding_down.is_cancelled() => backoff,
                _ => {
                    return Sent {
                        result: Err(error),
                        maybe_applied_before: so_far.maybe_applied,
                    };
                }
            };
            tokio::select! {
                () = tokio::time::sleep(backoff) => {}
                () = self.winding_down.cancelled() => {
                    return Sent {
                        result: Err(error),
                        maybe_applied_before: so_far.maybe_applied,
                    };
                }
            }
        }
    }

    /// Records a failed attempt; the backoff before the next one, or `None` for no retry.
    fn may_retry(
        &self,
        lane: Lane,
        error: &S3Error,
        (sent_in, booked): (Epoch, Cuts),
        so_far: &mut Attempts,
    ) -> Option<Duration> {
        let class = error.retry_class();
        let retry = match class {
            RetryClass::Final => false,
            RetryClass::ClockSkew => {
                so_far.skews += 1;
                return (so_far.skews < MAX_CLOCK_SKEW_ATTEMPTS).then_some(Duration::ZERO);
            }
            RetryClass::Throttled => {
                self.throttled.fetch_add(1, Ordering::Relaxed);
                lock(&self.limit).on_congestion(sent_in);
                let mut pacer = lock(&self.pacer);
                if pacer.on_throttle(self.seconds(), booked) {
                    tracing::debug!(per_second = pacer.rate().map(f64::round), "paced");
                }
                so_far.throttles += 1;
                so_far.throttles < self.policy.max_throttled_attempts
            }
            RetryClass::Transient | RetryClass::TimedOut => {
                lock(&self.limit).on_congestion(sent_in);
                so_far.failures += 1;
                so_far.maybe_applied |= error.may_have_arrived;
                let cost = if class == RetryClass::TimedOut {
                    2 * RETRY_COST
                } else {
                    RETRY_COST
                };
                so_far.failures < self.policy.max_attempts && self.withdraw(lane, cost)
            }
        };
        retry.then(|| self.backoff(so_far.failures + so_far.throttles))
    }

    /// Waits until the rate cap lets one more request go (at once while the server has not
    /// throttled). A run winding down sends what it has without waiting: its few remaining
    /// requests are bounded by the concurrency limit.
    async fn wait_for_pace(&self) -> Cuts {
        let booking = lock(&self.pacer).on_send(self.seconds());
        if booking.wait > 0.0 {
            tokio::select! {
                () = tokio::time::sleep(Duration::from_secs_f64(booking.wait)) => {}
                () = self.winding_down.cancelled() => {}
            }
        }
        booking.after
    }

    fn seconds(&self) -> f64 {
        self.began.elapsed().as_secs_f64()
    }

    fn on_success(&self, lane: Lane, took: Duration) {
        lock(&self.pacer).on_success(self.seconds());
        if let Some(round) = lock(&self.limit).on_success(took) {
            tracing::debug!(
                ran_at = round.ran_at,
                median_ms = round.median.as_secs_f64() * 1e3,
                per_second = round.rate.round(),
                limit = round.limit,
                "concurrency round"
            );
        }
        let mut budgets = lock(&self.budgets);
        let budget = &mut budgets[lane as usize];
        *budget = (*budget + 1).min(BUDGET_TOKENS);
    }

    fn withdraw(&self, lane: Lane, cost: u32) -> bool {
        let mut budgets = lock(&self.budgets);
        let budget = &mut budgets[lane as usize];
        if *budget < cost {
            return false;
        }
        *budget -= cost;
        true
    }

    /// Exponential backoff with full jitter, so that requests throttled together do not come
    /// back together.
    fn backoff(&self, retries: u32) -> Duration {
        let ceiling = self
            .policy
            .initial_backoff
            .saturating_mul(1u32 << retries.saturating_sub(1).min(16))
            .min(self.policy.max_backoff);
        ceiling.mul_f64(fastrand::f64())
    }
}

/// One attempt counted in flight until it is dropped, answered or not (a run that gives up on
/// its drain drops attempts mid-flight).
struct InFlight<'a> {
    counter: &'a AtomicUsize,
    /// Attempts in flight when this one was sent, itself included.
    now: usize,
}

impl<'a> InFlight<'a> {
    fn count(counter: &'a AtomicUsize) -> Self {
        let now = counter.fetch_add(1, Ordering::Relaxed) + 1;
        Self { counter, now }
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.counter.fetch_sub(1, Ordering::Relaxed);
    }
}

fn lock<T>(mutex: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    mutex.lock().unwrap_or_else(|e| e.into_inner())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::sweep::S3ErrorKind;
    use std::sync::atomic::AtomicU32;

    fn quick() -> RetryPolicy {
        RetryPolicy {
            initial_backoff: Duration::from_millis(1),
            max_backoff: Duration::from_millis(2),
            ..RetryPolicy::default()
        }
    }

    fn failure(kind: S3ErrorKind) -> S3Error {
        S3Error::new(kind, None, "x")
    }

    /// A request whose attempt number `n` (from 0) comes to `script(n)`; the attempts made.
    async fn scripted(
        requests: &Requests,
        lane: Lane,
        script: impl Fn(u32) -> Result<(), S3Error>,
    ) -> (Sent<()>, u32) {
        let calls = AtomicU32::new(0);
        let sent = requests
            .send(lane, || {
                let outcome = script(calls.fetch_add(1, Ordering::Relaxed));
                async move { outcome }
            })
            .await;
        (sent, calls.load(Ordering::Relaxed))
    }

    /// A request that fails with `kind` `failures` times, then succeeds; the attempts made.
    async fn flaky(requests: &Requests, kind: S3ErrorKind, failures: u32) -> Sent<u32> {
        let (sent, calls) = scripted(requests, Lane::Uploads, |n| {
            if n < failures {
                Err(failure(kind))
            } else {
                Ok(())
            }
        })
        .await;
        Sent {
            result: sent.result.map(|()| calls),
            maybe_applied_before: sent.maybe_applied_before,
        }
    }

    #[tokio::test]
    async fn throttled_requests_are_retried_counted_and_slow_the_run_down() {
        let requests = Requests::new(quick(), 16);
        let sent = flaky(&requests, S3ErrorKind::Throttled, 7).await;
        assert_eq!(
            sent.result.unwrap(),
            8,
            "seven throttles, then the eighth attempt"
        );
        assert!(
            !sent.maybe_applied_before,
            "a throttled request was not carried out"
        );
        assert_eq!(requests.throttled(), 7);
        assert!(requests.concurrency_limit() < 16);
    }

    #[tokio::test]
    async fn failures_are_retried_up_to_the_attempt_limit() {
        let requests = Requests::new(quick(), 16);
        let sent = flaky(&requests, S3ErrorKind::ServerError, 4).await;
        assert_eq!(sent.result.unwrap(), 5);
        assert!(sent.maybe_applied_before);
        let sent = flaky(&requests, S3ErrorKind::ServerError, 5).await;
        assert_eq!(sent.result.unwrap_err().kind, S3ErrorKind::ServerError);
        let sent = flaky(&requests, S3ErrorKind::Throttled, 20).await;
        assert_eq!(sent.result.unwrap_err().kind, S3ErrorKind::Throttled);
    }

    #[tokio::test]
    async fn final_errors_are_not_retried() {
        let requests = Requests::new(quick(), 16);
        let sent = flaky(&requests, S3ErrorKind::AccessDenied, 1).await;
        assert_eq!(sent.result.unwrap_err().kind, S3ErrorKind::AccessDenied);
        assert_eq!(requests.concurrency_limit(), 16);
    }

    #[tokio::test]
    async fn the_budget_runs_dry_when_most_requests_fail_and_refills_on_success() {
        let requests = Requests::new(quick(), 16);
        // 500 tokens pay for 100 retries of a server that always fails.
        let mut retried = 0;
        for _ in 0..60 {
            let (_, calls) = scripted(&requests, Lane::Uploads, |_| {
                Err(failure(S3ErrorKind::ServerError))
            })
            .await;
            retried += calls - 1;
        }
        assert_eq!(retried, 100);
        let sent = flaky(&requests, S3ErrorKind::ServerError, 1).await;
        assert!(sent.result.is_err(), "no retry left");
        for _ in 0..5 {
            flaky(&requests, S3ErrorKind::ServerError, 0).await;
        }
        let sent = flaky(&requests, S3ErrorKind::ServerError, 1).await;
        assert_eq!(sent.result.unwrap(), 2, "successes paid for one more retry");
    }

    #[tokio::test]
    async fn the_listing_keeps_its_retries_when_the_aborts_used_theirs_up() {
        let requests = Requests::new(quick(), 16);
        for _ in 0..30 {
            flaky(&requests, S3ErrorKind::ServerError, 10).await;
        }
        assert!(
            flaky(&requests, S3ErrorKind::ServerError, 1)
                .await
                .result
                .is_err()
        );
        let (listed, _) = scripted(&requests, Lane::Listing, |n| {
            if n == 0 {
                Err(failure(S3ErrorKind::ServerError))
            } else {
                Ok(())
            }
        })
        .await;
        assert!(listed.result.is_ok(), "the listing's own budget paid");
    }

    #[tokio::test]
    async fn a_skewed_clock_is_retried_at_once_without_slowing_down() {
        let requests = Requests::new(RetryPolicy::default(), 16);
        let (sent, _) = scripted(&requests, Lane::Uploads, |n| {
            if n == 0 {
                let mut skewed = failure(S3ErrorKind::InvalidCredentials);
                skewed.code = Some("RequestTimeTooSkewed".into());
                Err(skewed)
            } else {
                Ok(())
            }
        })
        .await;
        assert!(sent.result.is_ok());
        assert_eq!(requests.concurrency_limit(), 16);
    }

    #[tokio::test]
    async fn a_failure_that_never_reached_the_server_was_not_carried_out() {
        let requests = Requests::new(quick(), 16);
        let (sent, _) = scripted(&requests, Lane::Uploads, |n| {
            if n == 0 {
                let mut refused = failure(S3ErrorKind::Unreachable);
                refused.may_have_arrived = false;
                Err(refused)
            } else {
                Ok(())
            }
        })
        .await;
        assert!(sent.result.is_ok() && !sent.maybe_applied_before);
    }

    #[tokio::test(start_paused = true)]
    async fn winding_down_ends_backoffs_and_retries() {
        let requests = std::sync::Arc::new(Requests::new(RetryPolicy::default(), 16));
        let throttled_forever = {
            let requests = requests.clone();
            tokio::spawn(async move {
                requests
                    .send(Lane::Uploads, || async {
                        Err::<(), _>(failure(S3ErrorKind::Throttled))
                    })
                    .await
            })
        };
        tokio::time::sleep(Duration::from_millis(500)).await;
        let started = tokio::time::Instant::now();
        requests.wind_down();
        let sent = throttled_forever.await.unwrap();
        assert_eq!(sent.result.unwrap_err().kind, S3ErrorKind::Throttled);
        assert_eq!(started.elapsed(), Duration::ZERO, "no backoff waited out");
        let (sent, calls) = scripted(&requests, Lane::Uploads, |_| {
            Err(failure(S3ErrorKind::ServerError))
        })
        .await;
        assert!(sent.result.is_err());
        assert_eq!(calls, 1, "no retry once winding down");
    }

    #[test]
    fn backoff_grows_exponentially_up_to_the_maximum() {
        let requests = Requests::new(RetryPolicy::default(), 1);
        for _ in 0..100 {
            assert!(requests.backoff(1) <= Duration::from_millis(200));
            assert!(requests.backoff(3) <= Duration::from_millis(800));
            assert!(requests.backoff(40) <= Duration::from_secs(20));
        }
    }
}
