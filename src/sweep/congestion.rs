//! How many requests a run keeps in flight, between 1 and the configured concurrency (the upper
//! bound). Two signals move it:
//!
//! - **What more requests in flight buy** (the idea of TCP Vegas and BBR): by Little's law a run
//!   completes `limit / answer time` requests a second. A run starts at [`START`] and, round after
//!   round (a round is as many answers as the limit), tries a higher limit: doubling at first
//!   (until [`DOUBLING_STRIKES`] doublings did not pay), then a quarter more every
//!   [`PROBE_EVERY`] rounds. It keeps the higher limit only if the
//!   rate rose with it; if answers slowed as much as the limit grew, the extra requests only
//!   queued at the server, and it goes back. Across a network, where every answer takes the
//!   round trip whatever the load, the limit grows until the server is the bound; on a loopback
//!   server whose CPU is the bound, it stays near the start. Answers slower than
//!   [`SHRINK_ABOVE`] times the best (smoothed over rounds: the server got busier) take a quarter off, but
//!   never below [`START`]: slow answers alone are no reason to go below the old fixed pace.
//! - **Throttling or failures** (TCP's AIMD): a `SlowDown`, 503, 5xx or timeout halves the
//!   limit, down to 1, once per round trip; each success then adds a little, so a full window of
//!   successes adds one, back up to [`START`], where the rate takes over again.

use std::time::Duration;

/// Requests in flight a run starts with (and the fixed concurrency of earlier versions).
pub const START: usize = 16;
/// Rounds between two tries of a higher limit, once the first doubling stopped paying.
const PROBE_EVERY: u32 = 8;
/// Doublings that did not pay before the limit grows only by quarters.
const DOUBLING_STRIKES: u32 = 3;
/// What a doubling must multiply the rate by to be kept.
const DOUBLING_GAIN: f64 = 1.25;
/// What a quarter more must multiply the rate by to be kept.
const PROBE_GAIN: f64 = 1.1;
/// Answer times (smoothed) above this factor of the best shrink the limit.
const SHRINK_ABOVE: f64 = 2.0;
/// The weight of the latest round in the smoothed answer time.
const SMOOTHING: f64 = 0.3;
/// What a shrink keeps of the limit.
const SHRINK_TO: f64 = 0.75;

/// Which decrease a request was sent after; see [`Limiter::on_congestion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Epoch(u64);

/// What a round of answers showed and did (for logs and the bench).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct RoundEnd {
    /// The limit the round ran at.
    pub ran_at: usize,
    /// The limit from now on.
    pub limit: usize,
    pub median: Duration,
    /// Requests a second the round completed, by Little's law.
    pub rate: f64,
}

/// A limit tried, and the rate it gave.
#[derive(Debug, Clone, Copy)]
struct Tried {
    limit: f64,
    rate: f64,
}

/// The concurrency limit of one run.
#[derive(Debug, Clone)]
pub struct Limiter {
    limit: f64,
    /// The rate alone never takes the limit below this.
    floor: f64,
    max: f64,
    /// Decreases so far.
    epoch: Epoch,
    /// Doubling, until doublings stop paying or the server throttles.
    slow_start: bool,
    failed_doublings: u32,
    /// Set while the current limit is on trial: the limit before it and its rate.
    on_trial: Option<Tried>,
    /// Rounds until the next trial.
    until_probe: u32,
    /// The first round after a change mixes answers from before it: it is not judged.
    settling: bool,
    /// Round medians, smoothed (an exponentially weighted average): one slow round among
    /// fast ones is noise, not a busier server.
    smoothed: Option<f64>,
    /// The lowest smoothed answer time so far, in seconds.
    best: Option<f64>,
    /// Answer times of the round under way.
    round: Vec<Duration>,
    /// Whether the run had as many requests in flight as the limit during this round: a limit
    /// the run does not fill says nothing about what more would do.
    reached: bool,
    peak: usize,
}

impl Limiter {
    /// `max` is the configured concurrency.
    pub fn new(max: usize) -> Self {
        let max = max.max(1) as f64;
        let start = (START as f64).min(max);
        Self {
            limit: start,
            floor: start,
            max,
            epoch: Epoch(0),
            slow_start: true,
            failed_doublings: 0,
            on_trial: None,
            until_probe: 0,
            settling: true,
            smoothed: None,
            best: None,
            round: Vec::with_capacity(START),
            reached: false,
            peak: start as usize,
        }
    }

    /// Requests that may be in flight now, at least 1.
    pub fn limit(&self) -> usize {
        (self.limit.floor() as usize).max(1)
    }

    /// The highest limit of the run so far.
    pub fn peak(&self) -> usize {
        self.peak
    }

    /// To be stamped on a request as it is sent, with the requests then in flight (this one
    /// included).
    pub fn on_send(&mut self, in_flight: usize) -> Epoch {
        self.reached |= in_flight >= self.limit();
        self.epoch
    }

    /// A request succeeded after `took`; returns what the round did if this answer ended one.
    pub fn on_success(&mut self, took: Duration) -> Option<RoundEnd> {
        if self.limit < self.floor {
            // Recovering from throttling: additive, as TCP's congestion avoidance.
            self.limit = (self.limit + 1.0 / self.limit).min(self.floor);
            return None;
        }
        self.round.push(took);
        if self.round.len() < self.limit() {
            return None;
        }
        Some(self.end_round())
    }

    fn end_round(&mut self) -> RoundEnd {
        let ran_at = self.limit;
        let reached = std::mem::take(&mut self.reached);
        let mid = self.round.len() / 2;
        let median = *self.round.select_nth_unstable(mid).1;
        self.round.clear();
        let rate = ran_at / median.as_secs_f64().max(1e-6);
        if std::mem::take(&mut self.settling) {
            return self.round_end(ran_at, median, rate);
        }
        let seconds = median.as_secs_f64();
        if let Some(before) = self.on_trial.take() {
            self.judge_trial(before, reached, rate, seconds);
        } else {
            // Only rounds at a settled limit count towards the answer time it gives.
            let smoothed = self
                .smoothed
                .map_or(seconds, |s| s + SMOOTHING * (seconds - s));
            let best = self.best.map_or(smoothed, |best| best.min(smoothed));
            (self.smoothed, self.best) = (Some(smoothed), Some(best));
            if smoothed > SHRINK_ABOVE * best && self.limit > self.floor {
                self.change((self.limit * SHRINK_TO).max(self.floor));
                self.end_trials();
                // The next limit's answer time is measured afresh.
                self.smoothed = None;
            } else if reached {
                if self.until_probe == 0 {
                    self.try_higher(rate);
                } else {
                    self.until_probe -= 1;
                }
            }
        }
        self.round_end(ran_at, median, rate)
    }

    fn round_end(&mut self, ran_at: f64, median: Duration, rate: f64) -> RoundEnd {
        self.peak = self.peak.max(self.limit());
        RoundEnd {
            ran_at: ran_at as usize,
            limit: self.limit(),
            median,
            rate,
        }
    }

    /// Keeps the limit on trial if the rate rose with it enough, or goes back.
    fn judge_trial(&mut self, before: Tried, reached: bool, rate: f64, seconds: f64) {
        let gain = if self.slow_start {
            DOUBLING_GAIN
        } else {
            PROBE_GAIN
        };
        if reached && rate >= before.rate * gain {
            self.smoothed = Some(seconds);
            self.best = Some(self.best.map_or(seconds, |best| best.min(seconds)));
            self.try_higher(rate);
        } else {
            self.change(before.limit);
            self.on_trial = None;
            self.until_probe = PROBE_EVERY;
            // One slow round (a pause at the server, a busy network) must not end the doubling
            // for good: it ends after DOUBLING_STRIKES doublings that did not pay.
            self.failed_doublings += u32::from(self.slow_start);
            if self.failed_doublings >= DOUBLING_STRIKES {
                self.slow_start = false;
            }
        }
    }

    /// Puts a higher limit on trial, if the bound allows one.
    fn try_higher(&mut self, rate: f64) {
        let higher = if self.slow_start {
            self.limit * 2.0
        } else {
            (self.limit * 1.25).max(self.limit + 1.0)
        };
        let higher = higher.min(self.max);
        if higher > self.limit {
            self.on_trial = Some(Tried {
                limit: self.limit,
                rate,
            });
            self.change(higher);
        }
    }

    fn end_trials(&mut self) {
        self.slow_start = false;
        self.on_trial = None;
        self.until_probe = PROBE_EVERY;
    }

    fn change(&mut self, limit: f64) {
        if limit != self.limit {
            self.limit = limit;
            self.settling = true;
        }
    }

    /// The server throttled or failed a request sent in `sent_in`. Only requests sent after the
    /// last decrease can cause another: the answers to requests sent together, before the server
    /// was heard from, halve the limit once (TCP's once-per-round-trip rule), not once each.
    /// Returns whether it did.
    pub fn on_congestion(&mut self, sent_in: Epoch) -> bool {
        if sent_in < self.epoch {
            return false;
        }
        self.end_trials();
        self.limit = (self.limit / 2.0).max(1.0);
        self.epoch = Epoch(self.epoch.0 + 1);
        // Answer times measured at the old limit say nothing about the new one.
        self.round.clear();
        self.reached = false;
        self.settling = true;
        true
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const MS: Duration = Duration::from_millis(1);

    /// One full round at the current limit, every answer taking `took`, the limit reached.
    fn round(limiter: &mut Limiter, took: Duration) -> RoundEnd {
        let n = limiter.limit();
        limiter.on_send(n);
        (0..n)
            .filter_map(|_| limiter.on_success(took))
            .last()
            .unwrap()
    }

    /// A server `round_trip` away that completes `capacity` requests a second: answers take the
    /// round trip, or longer once requests queue. The limits of `rounds` rounds against it.
    fn against(
        limiter: &mut Limiter,
        round_trip: Duration,
        capacity: f64,
        rounds: usize,
    ) -> Vec<usize> {
        (0..rounds)
            .map(|_| {
                let queued = Duration::from_secs_f64(limiter.limit() as f64 / capacity);
                round(limiter, round_trip.max(queued)).limit
            })
            .collect()
    }

    #[test]
    fn starts_at_sixteen_or_the_bound_if_lower() {
        assert_eq!(Limiter::new(128).limit(), 16);
        assert_eq!(Limiter::new(4).limit(), 4);
        assert_eq!(Limiter::new(0).limit(), 1);
    }

    #[test]
    fn across_a_network_it_grows_until_the_server_is_the_bound() {
        // 10 ms away, 5,000 requests/s: 50 in flight fill it.
        let mut limiter = Limiter::new(256);
        let limits = against(&mut limiter, 10 * MS, 5000.0, 40);
        // Each limit settles one round, then is judged: 32 and 64 pay, 128 does not.
        assert_eq!(&limits[..8], [16, 32, 32, 64, 64, 128, 128, 64]);
        // Two more doublings are tried, PROBE_EVERY rounds apart; then a quarter more is.
        assert_eq!(limits[17..19], [128, 128]);
        assert_eq!(limits[29..31], [128, 128]);
        assert!(limits[31..].iter().all(|&l| l == 64), "{limits:?}");
        let later = against(&mut limiter, 10 * MS, 5000.0, 12);
        assert!(later.iter().all(|&l| l == 64 || l == 80), "{later:?}");
        assert_eq!(later.iter().filter(|&&l| l == 80).count(), 2, "{later:?}");
        assert_eq!(limiter.peak(), 128);
    }

    #[test]
    fn a_server_whose_cpu_is_the_bound_keeps_the_start() {
        // On loopback: 1 ms with nothing queued, 1,000 requests/s.
        let mut limiter = Limiter::new(256);
        let limits = against(&mut limiter, MS, 1000.0, 30);
        assert_eq!(&limits[..4], [16, 32, 32, 16]);
        assert!(
            limits[4..].iter().all(|&l| l == 16 || l == 32),
            "{limits:?}"
        );
        assert_eq!(limits.iter().filter(|&&l| l == 32).count(), 6);
        assert_eq!(limiter.peak(), 32);
    }

    #[test]
    fn the_bound_is_never_passed() {
        let mut limiter = Limiter::new(40);
        let limits = against(&mut limiter, 10 * MS, 1e6, 20);
        assert_eq!(limits.iter().max(), Some(&40));
        assert_eq!(*limits.last().unwrap(), 40);
    }

    #[test]
    fn a_limit_the_run_does_not_fill_is_not_raised() {
        let mut limiter = Limiter::new(128);
        for _ in 0..5 {
            limiter.on_send(3);
            let end = (0..16).filter_map(|_| limiter.on_success(10 * MS)).last();
            assert_eq!(end.unwrap().limit, 16);
        }
    }

    #[test]
    fn a_server_that_slows_down_brings_the_limit_back_but_not_below_the_start() {
        let mut limiter = Limiter::new(256);
        against(&mut limiter, 10 * MS, 5000.0, 12);
        assert_eq!(limiter.limit(), 64);
        // Another load arrives: the server now completes 1,000 requests/s.
        let limits = against(&mut limiter, 10 * MS, 1000.0, 20);
        assert_eq!(&limits[..6], [48, 48, 36, 36, 27, 27]);
        // Down to twice the best answer time, with a try of a quarter more now and then.
        assert!(
            limits[6..].iter().all(|&l| (16..=25).contains(&l)),
            "{limits:?}"
        );
    }

    #[test]
    fn the_median_ignores_a_few_slow_answers() {
        let mut limiter = Limiter::new(64);
        round(&mut limiter, 10 * MS);
        limiter.on_send(16);
        let mut end = None;
        for i in 0..16 {
            let took = if i % 8 == 0 { 500 * MS } else { 10 * MS };
            end = limiter.on_success(took).or(end);
        }
        let end = end.unwrap();
        assert_eq!((end.limit, end.median), (32, 10 * MS));
    }

    #[test]
    fn a_burst_of_throttles_halves_once_per_round_trip() {
        let mut limit = Limiter::new(16);
        // Sixteen requests sent together all come back throttled: one halving.
        let sent = limit.on_send(16);
        for _ in 0..16 {
            limit.on_congestion(sent);
        }
        assert_eq!(limit.limit(), 8);
        // Requests sent after that decrease and throttled too: one more.
        let sent = limit.on_send(8);
        for _ in 0..8 {
            limit.on_congestion(sent);
        }
        assert_eq!(limit.limit(), 4);
        for _ in 0..10 {
            let sent = limit.on_send(1);
            limit.on_congestion(sent);
        }
        assert_eq!(limit.limit(), 1, "never below one");
    }

    #[test]
    fn recovers_additively_after_throttling_then_tries_higher_only_now_and_then() {
        let mut limit = Limiter::new(64);
        let sent = limit.on_send(16);
        limit.on_congestion(sent);
        assert_eq!(limit.limit(), 8);
        // About `limit` successes add one.
        for _ in 0..8 {
            limit.on_success(10 * MS);
        }
        assert_eq!(limit.limit(), 8);
        for _ in 0..9 {
            limit.on_success(10 * MS);
        }
        assert_eq!(limit.limit(), 9);
        while limit.limit() < 16 {
            limit.on_success(10 * MS);
        }
        // No more doubling: a quarter more, after a settling round and PROBE_EVERY rounds.
        let limits = against(&mut limit, 10 * MS, 1e6, 12);
        assert_eq!(limits, [16, 16, 16, 16, 16, 16, 16, 16, 16, 20, 20, 25]);
    }
}
