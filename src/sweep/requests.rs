//! Sending one run's S3 requests: retries with backoff, a retry budget of the run's own, and the
//! run's concurrency limit, all fed by what the server answers. The SDK's own retries are off
//! (its retry budget is shared by every client in the process, so one tenant's failing endpoint
//! could use up the retries of all others); nothing here outlives the run.

use std::future::Future;
use std::sync::Mutex;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use super::congestion::Aimd;
use super::error::{RetryClass, S3Error};

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

/// Tokens a run starts with; a retry after a failure costs [`RETRY_COST`] (a timeout twice
/// that), a success gives one back. A server that fails most requests thus soon gets no
/// retries, while one that fails now and then is retried for as long as the run lasts.
const BUDGET_TOKENS: u32 = 500;
const RETRY_COST: u32 = 5;

/// What a request came to.
#[derive(Debug)]
pub struct Sent<T> {
    pub result: Result<T, S3Error>,
    /// An earlier attempt failed in a way that leaves open whether the server carried it out (a
    /// timeout, a connection broken mid-answer, a 5xx): "no such upload" on a retried abort then
    /// most likely means our own abort took.
    pub maybe_applied_before: bool,
}

/// The request side of one run, shared by its listing and its aborts.
#[derive(Debug)]
pub struct Requests {
    policy: RetryPolicy,
    budget: Mutex<u32>,
    limit: Mutex<Aimd>,
    throttled: AtomicU64,
}

impl Requests {
    pub fn new(policy: RetryPolicy, max_concurrency: usize) -> Self {
        Self {
            policy,
            budget: Mutex::new(BUDGET_TOKENS),
            limit: Mutex::new(Aimd::new(max_concurrency)),
            throttled: AtomicU64::new(0),
        }
    }

    /// Requests the run may have in flight now.
    pub fn concurrency_limit(&self) -> usize {
        lock(&self.limit).limit()
    }

    /// Throttled answers so far (each attempt counts).
    pub fn throttled(&self) -> u64 {
        self.throttled.load(Ordering::Relaxed)
    }

    /// Sends a request made by `attempt`, retrying as the policy and the budget allow.
    pub async fn send<T, F, Fut>(&self, mut attempt: F) -> Sent<T>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, S3Error>>,
    {
        let mut failures = 0u32;
        let mut throttles = 0u32;
        let mut maybe_applied_before = false;
        loop {
            let error = match attempt().await {
                Ok(value) => {
                    self.on_success();
                    return Sent {
                        result: Ok(value),
                        maybe_applied_before,
                    };
                }
                Err(error) => error,
            };
            let class = error.retry_class();
            let retry = match class {
                RetryClass::Final => false,
                RetryClass::Throttled => {
                    self.throttled.fetch_add(1, Ordering::Relaxed);
                    lock(&self.limit).on_congestion();
                    throttles += 1;
                    throttles < self.policy.max_throttled_attempts
                }
                RetryClass::Transient | RetryClass::TimedOut => {
                    lock(&self.limit).on_congestion();
                    failures += 1;
                    let cost = if class == RetryClass::TimedOut {
                        2 * RETRY_COST
                    } else {
                        RETRY_COST
                    };
                    failures < self.policy.max_attempts && self.withdraw(cost)
                }
            };
            if !retry {
                return Sent {
                    result: Err(error),
                    maybe_applied_before,
                };
            }
            maybe_applied_before |= class != RetryClass::Throttled;
            tokio::time::sleep(self.backoff(failures + throttles)).await;
        }
    }

    fn on_success(&self) {
        lock(&self.limit).on_success();
        let mut budget = lock(&self.budget);
        *budget = (*budget + 1).min(BUDGET_TOKENS);
    }

    fn withdraw(&self, cost: u32) -> bool {
        let mut budget = lock(&self.budget);
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

    /// A request that fails with `kind` `failures` times, then succeeds.
    async fn flaky(requests: &Requests, kind: S3ErrorKind, failures: u32) -> Sent<u32> {
        let calls = AtomicU32::new(0);
        requests
            .send(|| {
                let n = calls.fetch_add(1, Ordering::Relaxed);
                async move {
                    if n < failures {
                        Err(failure(kind))
                    } else {
                        Ok(n + 1)
                    }
                }
            })
            .await
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
            let calls = AtomicU32::new(0);
            let _ = requests
                .send(|| {
                    calls.fetch_add(1, Ordering::Relaxed);
                    async { Err::<(), _>(failure(S3ErrorKind::ServerError)) }
                })
                .await;
            retried += calls.load(Ordering::Relaxed) - 1;
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
