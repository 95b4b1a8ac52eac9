//! Progress of a long sweep on stderr: a spinner on a terminal, a log line every few seconds otherwise.

use std::io::IsTerminal;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

use crate::sweep::{ListedUpload, SweepObserver, SweepSummary, UploadOutcome};

const LOG_INTERVAL: Duration = Duration::from_secs(10);

pub struct Progress {
    spinner: Option<ProgressBar>,
    last_log: Mutex<Instant>,
}

impl Progress {
    pub fn new(enabled: bool) -> Self {
        let spinner = (enabled && std::io::stderr().is_terminal()).then(|| {
            let spinner = ProgressBar::with_draw_target(None, ProgressDrawTarget::stderr());
            spinner.set_style(
                ProgressStyle::with_template("{spinner} {elapsed} {msg}").expect("static template"),
            );
            spinner.enable_steady_tick(Duration::from_millis(120));
            spinner
        });
        Self {
            spinner,
            last_log: Mutex::new(Instant::now()),
        }
    }

    fn update(&self, summary: &SweepSummary) {
        if let Some(spinner) = &self.spinner {
            spinner.set_message(counts_line(summary));
            return;
        }
        let mut last = self.last_log.lock().unwrap_or_else(|e| e.into_inner());
        if last.elapsed() >= LOG_INTERVAL {
            *last = Instant::now();
            tracing::info!(target: "mpu_sweeper::progress", "{}", counts_line(summary));
        }
    }

    pub fn finish(&self) {
        if let Some(spinner) = &self.spinner {
            spinner.finish_and_clear();
        }
    }
}

impl SweepObserver for Progress {
    fn page_listed(&self, _page: &[ListedUpload], summary: &SweepSummary) {
        self.update(summary);
    }

    fn upload_handled(
        &self,
        upload: &ListedUpload,
        outcome: &UploadOutcome,
        summary: &SweepSummary,
    ) {
        tracing::debug!(upload = %upload, ?outcome, "upload handled");
        self.update(summary);
    }
}

pub fn counts_line(s: &SweepSummary) -> String {
    let mut line = format!(
        "listed {} · stale {} · aborted {} · already gone {} · failed {} · skipped {}",
        s.found, s.stale, s.aborted, s.already_gone, s.failed, s.skipped
    );
    if s.throttled > 0 {
        line.push_str(&format!(" · throttled {}", s.throttled));
    }
    line
}
