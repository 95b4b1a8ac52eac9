//! A cap on the rate at which a run sends requests, set only once the server has throttled.
//!
//! The concurrency limit alone cannot slow a run down enough for a server that allows a fixed
//! request rate: on a nearby server one request in flight already exceeds 50 a second, and every
//! request over the server's rate comes back `SlowDown` and has to be sent again. So a throttled
//! run also paces its requests (the CUBIC rate of TCP, as AWS SDKs' "adaptive" retry mode uses it):
//! a throttle sets the rate to [`BETA`] of what the run was sending, which then grows back along a
//! cubic curve, flat around the rate that was throttled, steeper beyond it. A server that keeps
//! its rate is thus probed gently and seldom; one that lifts it is found again within seconds.
//! Times are seconds since the run began, so the curve can be tested without a clock.

/// What a throttle keeps of the rate the run was sending at.
const BETA: f64 = 0.7;
/// The cubic's scale (requests a second per second cubed).
const SCALE: f64 = 0.4;
/// The rate never goes below this (requests a second).
const MIN_RATE: f64 = 0.5;
/// Requests that may go out together after a pause, in seconds' worth of the rate: small, so a
/// paced run sends evenly rather than in bursts.
const BURST_SECONDS: f64 = 0.1;
/// The send rate is measured over windows this long...
const MEASURE_EVERY: f64 = 0.5;
/// ...and smoothed with this weight for the latest window.
const MEASURE_WEIGHT: f64 = 0.8;

/// Which cut of the rate a request was booked after. Requests booked before a cut still go out
/// at the old pace, and their throttles say nothing about the new one.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, PartialOrd, Ord)]
pub struct Cuts(u64);

/// A request's place in the pace: how long it waits before it is sent, and its [`Cuts`].
#[derive(Debug, Clone, Copy)]
pub struct Booking {
    pub wait: f64,
    pub after: Cuts,
}

/// The rate cap of one run.
#[derive(Debug, Clone, Default)]
pub struct Pacer {
    /// Requests a second allowed; `None` until the server first throttles.
    rate: Option<f64>,
    /// Cuts so far: a throttle cuts only if its request was booked after the last cut.
    cuts: Cuts,
    /// Requests that may be sent now; negative when sends are booked ahead of their time.
    tokens: f64,
    refilled_at: f64,
    /// The rate at the last throttle, and when that was: the cubic's plateau and its origin.
    throttled_rate: f64,
    throttled_at: f64,
    /// Requests sent a second, smoothed (`None` before the first window ends); and the window
    /// being counted.
    sending: Option<f64>,
    window_start: f64,
    window_sends: u32,
}

impl Pacer {
    /// The rate now, if the run is paced.
    pub fn rate(&self) -> Option<f64> {
        self.rate
    }

    /// A request is about to be sent at `now`: how long it must wait first (zero when unpaced).
    /// Each call books a send, so requests that wait together go out one after another.
    pub fn on_send(&mut self, now: f64) -> Booking {
        self.measure(now);
        let after = self.cuts;
        let Some(rate) = self.rate else {
            return Booking { wait: 0.0, after };
        };
        let capacity = (rate * BURST_SECONDS).max(1.0);
        let elapsed = (now - self.refilled_at).max(0.0);
        self.tokens = (self.tokens + elapsed * rate).min(capacity);
        self.refilled_at = now;
        self.tokens -= 1.0;
        let wait = if self.tokens >= 0.0 {
            0.0
        } else {
            -self.tokens / rate
        };
        Booking { wait, after }
    }

    /// The server throttled, at `now`, a request booked `after` some cuts. Only a request booked
    /// after the last cut cuts again (TCP's once-per-round-trip rule): the throttles of requests
    /// booked together cut once. Returns whether it cut.
    pub fn on_throttle(&mut self, now: f64, after: Cuts) -> bool {
        if after < self.cuts {
            return false;
        }
        self.cuts = Cuts(self.cuts.0 + 1);
        self.measure(now);
        let sending = self.sending_rate(now).max(MIN_RATE);
        let from = self.rate.map_or(sending, |rate| rate.min(sending));
        self.throttled_rate = from;
        self.throttled_at = now;
        self.set_rate(from * BETA, now);
        true
    }

    /// A request succeeded at `now`: the rate moves along the cubic, but never past twice what
    /// the run really sends (a run held back by its concurrency limit is not owed a rate).
    pub fn on_success(&mut self, now: f64) {
        let Some(_) = self.rate else {
            return;
        };
        self.measure(now);
        let since = now - self.throttled_at;
        let plateau_at = (self.throttled_rate * (1.0 - BETA) / SCALE).cbrt();
        let cubic = SCALE * (since - plateau_at).powi(3) + self.throttled_rate;
        let ceiling = (2.0 * self.sending_rate(now)).max(self.throttled_rate * BETA);
        self.set_rate(cubic.min(ceiling), now);
    }

    fn set_rate(&mut self, rate: f64, now: f64) {
        if self.rate.is_none() {
            self.refilled_at = now;
            self.tokens = 0.0;
        }
        self.rate = Some(rate.max(MIN_RATE));
    }

    /// The send rate; early in a run, that of the window under way (a throttle in the first
    /// half second must not take a fast run down to a crawl).
    fn sending_rate(&self, now: f64) -> f64 {
        self.sending.unwrap_or_else(|| {
            f64::from(self.window_sends) / (now - self.window_start).max(MEASURE_EVERY / 10.0)
        })
    }

    fn measure(&mut self, now: f64) {
        self.window_sends += 1;
        let window = now - self.window_start;
        if window >= MEASURE_EVERY {
            let latest = f64::from(self.window_sends) / window;
            self.sending = Some(self.sending.map_or(latest, |s| {
                MEASURE_WEIGHT * latest + (1.0 - MEASURE_WEIGHT) * s
            }));
            self.window_start = now;
            self.window_sends = 0;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A run that sends as fast as the pacer lets it (and the concurrency `burst` allows when
    /// unpaced) against a server that accepts `allowed` a second with a bucket of one second's
    /// worth; returns (accepted, throttled) per second of the last `judged` of `seconds`.
    fn against_a_rate_limit(allowed: f64, seconds: f64, judged: f64) -> (f64, f64) {
        let mut pacer = Pacer::default();
        let mut server_tokens = allowed;
        let (mut now, mut last) = (0.0_f64, 0.0_f64);
        let (mut accepted, mut throttled) = (0u32, 0u32);
        while now < seconds {
            // Unpaced, the run sends every millisecond (a loopback server's answer time).
            let booking = pacer.on_send(now);
            now += booking.wait.max(0.001);
            server_tokens = (server_tokens + (now - last) * allowed).min(allowed);
            last = now;
            let counted = now >= seconds - judged;
            if server_tokens >= 1.0 {
                server_tokens -= 1.0;
                pacer.on_success(now);
                accepted += u32::from(counted);
            } else {
                pacer.on_throttle(now, booking.after);
                throttled += u32::from(counted);
            }
        }
        (f64::from(accepted) / judged, f64::from(throttled) / judged)
    }

    #[test]
    fn unthrottled_runs_are_not_paced() {
        let mut pacer = Pacer::default();
        for i in 0..10_000 {
            assert_eq!(pacer.on_send(f64::from(i) * 1e-4).wait, 0.0);
            pacer.on_success(f64::from(i) * 1e-4);
        }
        assert_eq!(pacer.rate(), None);
    }

    #[test]
    fn a_server_that_allows_a_fixed_rate_gets_close_to_it_and_is_seldom_throttled() {
        for allowed in [20.0, 50.0, 100.0, 400.0] {
            let (accepted, throttled) = against_a_rate_limit(allowed, 120.0, 100.0);
            assert!(
                accepted >= 0.9 * allowed,
                "{allowed}/s allowed: {accepted}/s accepted"
            );
            assert!(
                throttled <= 0.05 * (accepted + throttled),
                "{allowed}/s allowed: {throttled}/s throttled of {accepted}/s"
            );
        }
    }

    #[test]
    fn a_throttle_early_in_the_run_cuts_from_what_was_sent_so_far() {
        let mut pacer = Pacer::default();
        // 100 sends in the first 0.1 s: 1,000 a second.
        for i in 0..100 {
            pacer.on_send(f64::from(i) * 0.001);
        }
        assert!(pacer.on_throttle(0.1, Cuts::default()));
        let rate = pacer.rate().unwrap();
        assert!((600.0..=800.0).contains(&rate), "{rate}");
    }

    #[test]
    fn a_throttle_cuts_the_rate_to_beta_of_what_was_sent() {
        let mut pacer = Pacer::default();
        // 100 sends a second for two seconds, then a throttle.
        for i in 0..200 {
            pacer.on_send(f64::from(i) * 0.01);
        }
        assert!(pacer.on_throttle(2.0, Cuts::default()));
        let rate = pacer.rate().unwrap();
        assert!((60.0..=80.0).contains(&rate), "{rate}");
        // Booked sends wait their turn: 1 / rate apart.
        let waits: Vec<f64> = (0..5).map(|_| pacer.on_send(2.0).wait).collect();
        for pair in waits.windows(2) {
            assert!((pair[1] - pair[0] - 1.0 / rate).abs() < 1e-9, "{waits:?}");
        }
    }

    #[test]
    fn throttles_of_requests_booked_before_a_cut_cut_no_further() {
        let mut pacer = Pacer::default();
        for i in 0..100 {
            pacer.on_send(f64::from(i) * 0.01);
        }
        let before = pacer.on_send(1.0).after;
        assert!(pacer.on_throttle(1.0, before));
        let cut = pacer.rate().unwrap();
        // Twenty requests booked before the cut come back throttled: no further cut.
        for _ in 0..20 {
            assert!(!pacer.on_throttle(1.01, before));
        }
        assert_eq!(pacer.rate(), Some(cut));
        // One booked after it does cut.
        let after = pacer.on_send(1.02).after;
        assert!(pacer.on_throttle(1.03, after));
        assert!(pacer.rate().unwrap() < cut);
    }

    #[test]
    fn the_rate_grows_back_past_the_throttled_one_when_the_server_stops_throttling() {
        let mut pacer = Pacer::default();
        for i in 0..100 {
            pacer.on_send(f64::from(i) * 0.01);
        }
        pacer.on_throttle(1.0, Cuts::default());
        let cut = pacer.rate().unwrap();
        let mut now = 1.0;
        while now < 20.0 {
            now += pacer.on_send(now).wait.max(0.001);
            pacer.on_success(now);
        }
        assert!(
            pacer.rate().unwrap() > 3.0 * cut,
            "{:?} from {cut}",
            pacer.rate()
        );
    }
}
