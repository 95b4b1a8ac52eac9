//! The state of one sweep between events, and one method per event. It does no I/O, so each
//! transition is tested on its own; the driver in `mod.rs` only waits for the next event.

use std::collections::VecDeque;
use std::time::{Duration, SystemTime};

use tokio::time::Instant;

use super::abort::UploadOutcome;
use super::error::S3ErrorKind;
use super::listing::{ListedUpload, Page, ServerDate};
use super::{S3Error, SweepOptions, SweepStop, SweepSummary};
use crate::text;

/// Uploads dated before S3 existed (it opened in March 2006) carry a made-up date, not an age:
/// they are skipped, never aborted.
const EARLIEST_PLAUSIBLE_INITIATION: Duration = Duration::from_secs(1_136_073_600); // 2006-01-01

/// Clock disagreement worth a warning; smaller skews are ordinary.
const NOTABLE_SKEW: Duration = Duration::from_secs(300);

/// Warnings kept in a summary; more of the same kind say nothing new.
pub const MAX_WARNINGS: usize = 5;

/// Why the run is winding down: no more listing or launching, the aborts in flight may finish
/// until `until`.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Winding {
    Cancelled,
    DeadlinePassed,
}

#[derive(Debug)]
pub struct RunState {
    pub summary: SweepSummary,
    pending: VecDeque<ListedUpload>,
    listing_done: bool,
    stop: Option<SweepStop>,
    drain: Option<(Winding, Instant)>,
    page_capacity: usize,
    max_age: Duration,
    timeout: Duration,
    drain_timeout: Duration,
    clock_warnings: Vec<ClockWarning>,
    /// How far the server's clock ran behind this machine's on the last page with a usable
    /// `Date`, kept for pages without one.
    server_behind: Option<Duration>,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ClockWarning {
    Skew,
    Missing,
    Unparseable,
}

impl RunState {
    pub fn new(options: &SweepOptions, start_time: jiff::Timestamp) -> Self {
        Self {
            summary: SweepSummary::empty(options, start_time),
            pending: VecDeque::new(),
            listing_done: false,
            stop: None,
            drain: None,
            page_capacity: usize::try_from(options.page_size).unwrap_or(1).max(1),
            max_age: options.max_age.as_duration(),
            timeout: options.timeout,
            drain_timeout: options.drain_timeout,
            clock_warnings: Vec::new(),
            server_behind: None,
        }
    }

    /// The next page is fetched while the current one is still being aborted, so that aborts
    /// never wait on a listing request; fetching pauses while a full page is pending. Memory thus
    /// stays at about two pages and the aborts in flight, whatever the bucket holds.
    pub fn wants_page(&self) -> bool {
        !self.listing_done && self.pending.len() < self.page_capacity
    }

    /// The next stale upload to abort, if one is pending and the limit allows another in flight.
    pub fn next_upload(&mut self, in_flight: usize, limit: usize) -> Option<ListedUpload> {
        if in_flight < limit {
            self.pending.pop_front()
        } else {
            None
        }
    }

    pub fn is_finished(&self, in_flight: usize) -> bool {
        !self.wants_page() && self.pending.is_empty() && in_flight == 0
    }

    pub fn is_winding_down(&self) -> bool {
        self.drain.is_some()
    }

    /// When the aborts still in flight are given up on, once winding down.
    pub fn drain_deadline(&self) -> Option<Instant> {
        self.drain.map(|(_, until)| until)
    }

    pub fn on_page(&mut self, page: &Page, local_now: SystemTime) {
        let now = self.reference_time(&page.server_date, local_now);
        self.summary.found += page.uploads.len() as u64 + page.unusable;
        self.summary.skipped += page.unusable;
        for upload in &page.uploads {
            if !is_plausible(upload.initiated) {
                self.summary.skipped += 1;
            } else if super::is_stale(upload.initiated, now, self.max_age) {
                self.summary.stale += 1;
                self.summary.prefixes.add_upload(&upload.key);
                let age = upload
                    .initiated
                    .and_then(|t| now.duration_since(t).ok())
                    .map(|age| age.as_secs());
                self.summary.oldest_stale_age_seconds =
                    self.summary.oldest_stale_age_seconds.max(age);
                self.pending.push_back(upload.clone());
            }
        }
    }

    pub fn on_listing_end(&mut self) {
        self.listing_done = true;
    }

    pub fn on_listing_failed(&mut self, err: S3Error) {
        self.listing_done = true;
        self.stop.get_or_insert(SweepStop::ListingFailed(err));
    }

    pub fn on_handled(&mut self, upload: &ListedUpload, outcome: &UploadOutcome) {
        self.summary.record(upload, outcome);
        let UploadOutcome::Failed(err) = outcome else {
            return;
        };
        tracing::warn!(upload = %upload, error = %err, "abort failed");
        // A server that stopped answering (or that may not be reached at all) would fail every
        // remaining upload one by one: stop instead.
        if matches!(
            err.kind,
            S3ErrorKind::Unreachable
                | S3ErrorKind::Timeout
                | S3ErrorKind::Tls
                | S3ErrorKind::EndpointForbidden
                | S3ErrorKind::SendRefused
        ) && self.stop.is_none()
        {
            self.listing_done = true;
            self.pending.clear();
            self.stop = Some(SweepStop::ServerUnreachable(err.clone()));
        }
    }

    /// The caller cancelled: stop listing and launching; the aborts in flight may finish. A
    /// listing that failed before stays the reason the sweep stopped.
    pub fn on_cancel(&mut self, now: Instant) {
        self.wind_down(Winding::Cancelled, SweepStop::Cancelled, now);
    }

    /// The run's time limit passed: as a cancel, reported as such.
    pub fn on_deadline(&mut self, now: Instant) {
        let stop = SweepStop::DeadlineExceeded(self.timeout);
        self.wind_down(Winding::DeadlinePassed, stop, now);
    }

    fn wind_down(&mut self, why: Winding, stop: SweepStop, now: Instant) {
        if self.drain.is_some() {
            return;
        }
        self.drain = Some((why, now + self.drain_timeout));
        if !self.listing_done || !self.pending.is_empty() {
            self.stop.get_or_insert(stop);
        }
        self.listing_done = true;
        self.pending.clear();
    }

    /// The aborts still in flight did not finish in time. Their outcome is unknown: the next
    /// sweep lists them again if they survived.
    pub fn on_drain_expired(&mut self, left_in_flight: usize) {
        tracing::warn!(
            left = left_in_flight,
            "aborts in flight did not finish in time; leaving them"
        );
        let stop = match self.drain {
            Some((Winding::DeadlinePassed, _)) => SweepStop::DeadlineExceeded(self.timeout),
            _ => SweepStop::Cancelled,
        };
        self.stop.get_or_insert(stop);
    }

    pub fn finish(
        mut self,
        throttled: u64,
        completion_time: jiff::Timestamp,
    ) -> super::SweepOutcome {
        self.summary.throttled = throttled;
        self.summary.completion_time = completion_time;
        self.summary.top_prefixes = self.summary.prefixes.top();
        super::SweepOutcome {
            summary: self.summary,
            stop: self.stop,
        }
    }

    /// The clock ages are measured on: the earlier of the server's and this machine's. A node
    /// whose clock runs days fast then never ages uploads early, and neither does a server (or a
    /// proxy in front of it) whose `Date` runs ahead of the clock that stamped the uploads; a
    /// clock that runs slow only makes uploads look younger. A page without a usable `Date`
    /// keeps the lag the server showed on earlier pages, so that stripping the header cannot
    /// bring back a fast local clock. Disagreements are reported once.
    fn reference_time(&mut self, server: &ServerDate, local: SystemTime) -> SystemTime {
        let fallback = |behind: Option<Duration>| behind.map_or(local, |lag| local - lag);
        match server {
            ServerDate::Sent(server) => {
                let (skew, how) = match server.duration_since(local) {
                    Ok(ahead) => (ahead, "ahead of"),
                    Err(behind) => (behind.duration(), "behind"),
                };
                self.server_behind = (*server < local).then_some(skew);
                if skew > NOTABLE_SKEW {
                    self.warn_once(
                        ClockWarning::Skew,
                        format!(
                            "the server's clock (its Date header) is {} {how} this machine's; ages are measured on the earlier of the two, so no upload is aborted early",
                            human_duration(skew)
                        ),
                    );
                }
                (*server).min(local)
            }
            ServerDate::Missing => {
                self.warn_once(
                    ClockWarning::Missing,
                    "the server sent no Date header; ages are measured on this machine's clock"
                        .to_owned(),
                );
                fallback(self.server_behind)
            }
            ServerDate::Unparseable(value) => {
                self.warn_once(
                    ClockWarning::Unparseable,
                    format!(
                        "the server's Date header \"{value}\" is not an HTTP date; ages are measured on this machine's clock"
                    ),
                );
                fallback(self.server_behind)
            }
        }
    }

    fn warn_once(&mut self, kind: ClockWarning, message: String) {
        if self.clock_warnings.contains(&kind) {
            return;
        }
        self.clock_warnings.push(kind);
        tracing::warn!(bucket = %text::name(&self.summary.bucket), "{message}");
        if self.summary.warnings.len() < MAX_WARNINGS {
            self.summary.warnings.push(message);
        }
    }
}

/// Whether an upload's initiation time can be an age at all.
fn is_plausible(initiated: Option<SystemTime>) -> bool {
    initiated.is_some_and(|t| t >= SystemTime::UNIX_EPOCH + EARLIEST_PLAUSIBLE_INITIATION)
}

/// `2d 3h`, `5m 10s`: the two largest units, rounded to the smaller one.
fn human_duration(duration: Duration) -> String {
    const UNITS: [(&str, u64); 4] = [("d", 86_400), ("h", 3_600), ("m", 60), ("s", 1)];
    let secs = duration.as_secs() + u64::from(duration.subsec_millis() >= 500);
    let largest = |secs: u64| {
        UNITS
            .iter()
            .position(|(_, size)| secs >= *size)
            .unwrap_or(3)
    };
    let step = UNITS.get(largest(secs) + 1).map_or(1, |(_, size)| *size);
    let rounded = (secs + step / 2) / step * step;
    let first = largest(rounded);
    let mut left = rounded;
    let mut parts = Vec::new();
    for (unit, size) in UNITS.iter().skip(first).take(2) {
        let value = left / size;
        left %= size;
        if value > 0 {
            parts.push(format!("{value}{unit}"));
        }
    }
    if parts.is_empty() {
        "0s".to_owned()
    } else {
        parts.join(" ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::max_age::MaxAge;

    const DAY: Duration = Duration::from_secs(86_400);

    fn now() -> SystemTime {
        SystemTime::UNIX_EPOCH + Duration::from_secs(1_800_000_000)
    }

    fn state(page_size: i32) -> RunState {
        let mut options = SweepOptions::new("b", MaxAge::from_secs(86_400).unwrap());
        options.page_size = page_size;
        options.timeout = Duration::from_secs(3_600);
        options.drain_timeout = Duration::from_secs(90);
        RunState::new(&options, jiff::Timestamp::UNIX_EPOCH)
    }

    fn upload(key: &str, initiated: Option<SystemTime>) -> ListedUpload {
        ListedUpload {
            key: key.into(),
            upload_id: format!("id-{key}"),
            initiated,
        }
    }

    fn page(uploads: Vec<ListedUpload>, server_date: ServerDate) -> Page {
        Page {
            uploads,
            unusable: 0,
            server_date,
        }
    }

    fn old_and_young() -> Vec<ListedUpload> {
        vec![
            upload("old", Some(now() - 3 * DAY)),
            upload("young", Some(now() - DAY / 2)),
        ]
    }

    #[test]
    fn a_page_queues_its_stale_uploads_and_counts_the_rest() {
        let mut run = state(1000);
        let mut uploads = old_and_young();
        uploads.push(upload("undated", None));
        uploads.push(upload("epoch", Some(SystemTime::UNIX_EPOCH)));
        uploads.push(upload("future", Some(now() + DAY)));
        run.on_page(&page(uploads, ServerDate::Sent(now())), now());
        let s = &run.summary;
        assert_eq!((s.found, s.stale, s.skipped), (5, 1, 2));
        assert!(s.warnings.is_empty());
        assert_eq!(run.next_upload(0, 16).unwrap().key, "old");
        assert_eq!(run.next_upload(0, 16), None);
    }

    #[test]
    fn uploads_are_launched_only_within_the_limit() {
        let mut run = state(1000);
        run.on_page(
            &page(
                vec![
                    upload("a", Some(now() - 3 * DAY)),
                    upload("b", Some(now() - 3 * DAY)),
                ],
                ServerDate::Sent(now()),
            ),
            now(),
        );
        assert_eq!(run.next_upload(2, 2), None);
        assert_eq!(run.next_upload(1, 2).unwrap().key, "a");
        assert!(!run.is_finished(1));
    }

    #[test]
    fn listing_pauses_while_a_full_page_is_pending() {
        let mut run = state(1);
        assert!(run.wants_page());
        run.on_page(&page(old_and_young(), ServerDate::Sent(now())), now());
        assert!(
            !run.wants_page(),
            "one stale upload pending fills a page of one"
        );
        run.next_upload(0, 1);
        assert!(run.wants_page());
        run.on_listing_end();
        assert!(!run.wants_page());
        assert!(run.is_finished(0));
        assert!(!run.is_finished(1));
    }

    #[test]
    fn ages_use_the_earlier_clock_and_say_so_once() {
        // The server's Date runs two days ahead: its clock would make the young upload stale.
        let mut run = state(1000);
        let ahead = ServerDate::Sent(now() + 2 * DAY);
        run.on_page(&page(old_and_young(), ahead.clone()), now());
        run.on_page(&page(vec![], ahead), now());
        assert_eq!(run.summary.stale, 1, "only the really old upload");
        assert_eq!(run.summary.warnings.len(), 1);
        assert!(
            run.summary.warnings[0].contains("2d ahead of this machine's"),
            "{:?}",
            run.summary.warnings
        );
        // This machine's clock runs two days fast: the server's clock is used.
        let mut run = state(1000);
        run.on_page(
            &page(old_and_young(), ServerDate::Sent(now())),
            now() + 2 * DAY,
        );
        assert_eq!(run.summary.stale, 1);
        assert!(run.summary.warnings[0].contains("2d behind"));
    }

    #[test]
    fn a_page_without_a_date_keeps_the_lag_the_server_showed_before() {
        // This machine's clock runs two days fast; the server says so on its first page, then
        // stops sending a usable Date: the young upload must stay young.
        let mut run = state(1000);
        let fast_local = now() + 2 * DAY;
        run.on_page(&page(vec![], ServerDate::Sent(now())), fast_local);
        run.on_page(&page(old_and_young(), ServerDate::Missing), fast_local);
        run.on_page(
            &page(old_and_young(), ServerDate::Unparseable("x".into())),
            fast_local,
        );
        assert_eq!(run.summary.stale, 2, "only the old upload, twice");
    }

    #[test]
    fn uploads_dated_before_2006_are_implausible() {
        let day_2006 = SystemTime::UNIX_EPOCH + EARLIEST_PLAUSIBLE_INITIATION;
        assert!(is_plausible(Some(day_2006)));
        assert!(!is_plausible(Some(day_2006 - Duration::from_secs(1))));
        assert!(!is_plausible(None));
        let mut run = state(1000);
        let listed = Page {
            uploads: vec![upload("2005", Some(day_2006 - DAY))],
            unusable: 2,
            server_date: ServerDate::Sent(now()),
        };
        run.on_page(&listed, now());
        let s = &run.summary;
        assert_eq!((s.found, s.stale, s.skipped), (3, 0, 3));
    }

    #[test]
    fn a_missing_or_garbage_date_falls_back_to_the_local_clock_with_a_warning() {
        let mut run = state(1000);
        run.on_page(&page(old_and_young(), ServerDate::Missing), now());
        run.on_page(
            &page(
                old_and_young(),
                ServerDate::Unparseable("not a date".into()),
            ),
            now(),
        );
        assert_eq!(run.summary.stale, 2);
        let warnings = &run.summary.warnings;
        assert_eq!(warnings.len(), 2, "{warnings:?}");
        assert!(warnings[0].contains("no Date header"));
        assert!(warnings[1].contains("\"not a date\" is not an HTTP date"));
    }

    #[test]
    fn a_failed_listing_stops_listing_and_keeps_the_first_cause() {
        let mut run = state(1000);
        run.on_page(&page(old_and_young(), ServerDate::Sent(now())), now());
        let err = S3Error::new(S3ErrorKind::Other, None, "markers repeat");
        run.on_listing_failed(err.clone());
        assert!(!run.wants_page());
        assert_eq!(
            run.next_upload(0, 16).unwrap().key,
            "old",
            "what was listed is still handled"
        );
        run.on_cancel(Instant::now());
        let outcome = run.finish(0, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(outcome.stop, Some(SweepStop::ListingFailed(err)));
    }

    #[test]
    fn an_unreachable_server_stops_the_run_but_other_failures_do_not() {
        let mut run = state(1000);
        let old = vec![
            upload("a", Some(now() - 3 * DAY)),
            upload("b", Some(now() - 3 * DAY)),
            upload("c", Some(now() - 3 * DAY)),
        ];
        run.on_page(&page(old, ServerDate::Sent(now())), now());
        let a = run.next_upload(0, 1).unwrap();
        let denied = S3Error::new(S3ErrorKind::AccessDenied, None, "denied");
        run.on_handled(&a, &UploadOutcome::Failed(denied));
        assert!(run.wants_page() && run.next_upload(0, 1).is_some());
        let down = S3Error::new(S3ErrorKind::Unreachable, None, "refused");
        run.on_handled(&a, &UploadOutcome::Failed(down.clone()));
        assert!(!run.wants_page() && run.next_upload(0, 1).is_none());
        let outcome = run.finish(0, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(outcome.summary.failed, 2);
        assert_eq!(outcome.stop, Some(SweepStop::ServerUnreachable(down)));
    }

    #[test]
    fn cancel_and_deadline_wind_down_with_a_drain_deadline() {
        let start = Instant::now();
        let mut run = state(1000);
        run.on_page(&page(old_and_young(), ServerDate::Sent(now())), now());
        run.on_deadline(start);
        assert!(run.is_winding_down());
        assert_eq!(run.drain_deadline(), Some(start + Duration::from_secs(90)));
        assert!(!run.wants_page() && run.next_upload(0, 16).is_none());
        run.on_cancel(start + Duration::from_secs(1));
        assert_eq!(
            run.drain_deadline(),
            Some(start + Duration::from_secs(90)),
            "a later cancel changes nothing"
        );
        let outcome = run.finish(0, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(
            outcome.stop,
            Some(SweepStop::DeadlineExceeded(Duration::from_secs(3_600)))
        );
    }

    #[test]
    fn a_cancel_after_all_work_was_handed_out_is_no_stop() {
        let mut run = state(1000);
        run.on_page(&page(vec![], ServerDate::Sent(now())), now());
        run.on_listing_end();
        run.on_cancel(Instant::now());
        assert_eq!(run.finish(0, jiff::Timestamp::UNIX_EPOCH).stop, None);
        let mut run = state(1000);
        run.on_cancel(Instant::now());
        assert_eq!(
            run.finish(0, jiff::Timestamp::UNIX_EPOCH).stop,
            Some(SweepStop::Cancelled)
        );
    }

    #[test]
    fn an_expired_drain_names_what_started_it() {
        let mut run = state(1000);
        run.on_listing_end();
        run.on_deadline(Instant::now());
        run.on_drain_expired(3);
        assert_eq!(
            run.finish(7, jiff::Timestamp::UNIX_EPOCH).stop,
            Some(SweepStop::DeadlineExceeded(Duration::from_secs(3_600)))
        );
        let mut run = state(1000);
        run.on_listing_end();
        run.on_cancel(Instant::now());
        run.on_drain_expired(3);
        let outcome = run.finish(7, jiff::Timestamp::UNIX_EPOCH);
        assert_eq!(outcome.stop, Some(SweepStop::Cancelled));
        assert_eq!(outcome.summary.throttled, 7);
    }

    #[test]
    fn durations_read_in_the_two_largest_units() {
        assert_eq!(human_duration(Duration::from_secs(2 * 86_400 + 5)), "2d");
        assert_eq!(human_duration(Duration::from_secs(2 * 86_400 - 1)), "2d");
        assert_eq!(
            human_duration(Duration::from_secs(86_400 + 5 * 3_600)),
            "1d 5h"
        );
        assert_eq!(human_duration(Duration::from_secs(3_725)), "1h 2m");
        assert_eq!(human_duration(Duration::from_secs(301)), "5m 1s");
        assert_eq!(human_duration(Duration::ZERO), "0s");
    }
}
