//! How many aborts a run keeps in flight: additive increase, multiplicative decrease (as TCP
//! does), between 1 and the configured concurrency. A throttling or failing server halves it; each
//! success adds a little, so a full window of successes adds one.

/// The concurrency limit of one run.
#[derive(Debug, Clone)]
pub struct Aimd {
    limit: f64,
    max: f64,
    /// Answers since the last decrease; a new decrease waits for a full window of them, so that
    /// one burst of throttled answers to requests sent together halves the limit once, not
    /// once per answer.
    answers_since_decrease: u64,
    decreased: bool,
}

impl Aimd {
    /// Starts at `max`: a healthy server is swept at full speed from the first page.
    pub fn new(max: usize) -> Self {
        let max = max.max(1) as f64;
        Self {
            limit: max,
            max,
            answers_since_decrease: 0,
            decreased: false,
        }
    }

    /// Requests that may be in flight now, at least 1.
    pub fn limit(&self) -> usize {
        (self.limit.floor() as usize).max(1)
    }

    pub fn on_success(&mut self) {
        self.answers_since_decrease += 1;
        self.limit = (self.limit + 1.0 / self.limit).min(self.max);
    }

    /// The server throttled or failed a request.
    pub fn on_congestion(&mut self) {
        self.answers_since_decrease += 1;
        let window_passed = self.answers_since_decrease >= self.limit() as u64;
        if !self.decreased || window_passed {
            self.limit = (self.limit / 2.0).max(1.0);
            self.answers_since_decrease = 0;
            self.decreased = true;
        }
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
    fn a_burst_of_throttles_halves_once_per_window() {
        let mut limit = Aimd::new(16);
        // Sixteen requests in flight all come back throttled: one halving, then one more per
        // window of answers at the new limit.
        for _ in 0..13 {
            limit.on_congestion();
        }
        assert_eq!(
            limit.limit(),
            2,
            "16 -> 8 (1 answer), -> 4 (8 more), -> 2 (4 more)"
        );
        for _ in 0..10 {
            limit.on_congestion();
        }
        assert_eq!(limit.limit(), 1, "never below one");
    }

    #[test]
    fn recovers_additively_after_throttling_stops() {
        let mut limit = Aimd::new(16);
        limit.on_congestion();
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
