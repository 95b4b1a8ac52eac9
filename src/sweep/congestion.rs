//! How many requests a run keeps in flight: additive increase, multiplicative decrease (as TCP
//! does), between 1 and the configured concurrency. A throttling or failing server halves it;
//! each success adds a little, so a full window of successes adds one.

/// Which decrease a request was sent after; see [`Aimd::on_congestion`].
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub struct Epoch(u64);

/// The concurrency limit of one run.
#[derive(Debug, Clone)]
pub struct Aimd {
    limit: f64,
    max: f64,
    /// Decreases so far.
    epoch: Epoch,
}

impl Aimd {
    /// Starts at `max`: a healthy server is swept at full speed from the first page.
    pub fn new(max: usize) -> Self {
        let max = max.max(1) as f64;
        Self {
            limit: max,
            max,
            epoch: Epoch(0),
        }
    }

    /// Requests that may be in flight now, at least 1.
    pub fn limit(&self) -> usize {
        (self.limit.floor() as usize).max(1)
    }

    /// To be stamped on a request as it is sent.
    pub fn epoch(&self) -> Epoch {
        self.epoch
    }

    pub fn on_success(&mut self) {
        self.limit = (self.limit + 1.0 / self.limit).min(self.max);
    }

    /// The server throttled or failed a request sent in `sent_in`. Only requests sent after the
    /// last decrease can cause another: the answers to requests sent together, before the server
    /// was heard from, halve the limit once (TCP's once-per-round-trip rule), not once each.
    pub fn on_congestion(&mut self, sent_in: Epoch) {
        if sent_in < self.epoch {
            return;
        }
        self.limit = (self.limit / 2.0).max(1.0);
        self.epoch = Epoch(self.epoch.0 + 1);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn starts_at_the_maximum_and_never_exceeds_it() {
        let mut limit = Aimd::new(16);
        assert_eq!(limit.limit(), 16);
        for _ in 0..1000 {
            limit.on_success();
        }
        assert_eq!(limit.limit(), 16);
    }

    #[test]
    fn a_burst_of_throttles_halves_once_per_round_trip() {
        let mut limit = Aimd::new(16);
        // Sixteen requests sent together all come back throttled: one halving.
        let sent = limit.epoch();
        for _ in 0..16 {
            limit.on_congestion(sent);
        }
        assert_eq!(limit.limit(), 8);
        // Requests sent after that decrease and throttled too: one more.
        let sent = limit.epoch();
        for _ in 0..8 {
            limit.on_congestion(sent);
        }
        assert_eq!(limit.limit(), 4);
        for _ in 0..10 {
            let sent = limit.epoch();
            limit.on_congestion(sent);
        }
        assert_eq!(limit.limit(), 1, "never below one");
    }

    #[test]
    fn recovers_additively_after_throttling_stops() {
        let mut limit = Aimd::new(16);
        limit.on_congestion(limit.epoch());
        assert_eq!(limit.limit(), 8);
        // About `limit` successes add one.
        for _ in 0..8 {
            limit.on_success();
        }
        assert_eq!(limit.limit(), 8);
        for _ in 0..9 {
            limit.on_success();
        }
        assert_eq!(limit.limit(), 9);
        for _ in 0..200 {
            limit.on_success();
        }
        assert_eq!(limit.limit(), 16);
    }
}
