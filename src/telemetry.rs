//! Logging setup shared by every subcommand: tracing to stderr, as text or JSON.

use std::io::IsTerminal;

use tracing::level_filters::LevelFilter;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::{FilterExt, Targets};
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, fmt};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// The logging flags every command takes.
#[derive(Debug, Clone, clap::Args)]
pub struct LoggingArgs {
    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    pub log_format: LogFormat,

    /// Log level for mpu-sweeper's own logs: error, warn, info, debug or trace (RUST_LOG
    /// overrides).
    #[arg(long, default_value = "info")]
    pub log_level: String,
}

/// The most verbose level some SDK targets may log at, whatever the user asks for: below it they
/// print signed request material (canonical requests carry session tokens), credentials'
/// debug forms, or whole answer bodies (a hostile server's text, unescaped).
const CAPS: &[(&str, LevelFilter)] = &[
    ("aws_sigv4", LevelFilter::INFO),
    ("aws_credential_types", LevelFilter::INFO),
    ("aws_config", LevelFilter::INFO),
    ("aws_smithy_runtime", LevelFilter::INFO),
    ("aws_smithy_runtime_api", LevelFilter::INFO),
    // Request IDs as the server sent them, and profile values.
    ("aws_sdk_s3", LevelFilter::INFO),
    ("aws_runtime", LevelFilter::INFO),
];

/// What the user asked for: `RUST_LOG` if set, else `default_level` for this crate and `warn`
/// for everything else.
pub fn requested(default_level: &str) -> EnvFilter {
    let base = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| format!("warn,mpu_sweeper={default_level}"));
    EnvFilter::try_new(&base).unwrap_or_else(|_| EnvFilter::new("warn"))
}

/// The caps, as a filter that lets everything else through.
fn caps() -> Targets {
    CAPS.iter().fold(
        Targets::new().with_default(LevelFilter::TRACE),
        |targets, (target, level)| targets.with_target(*target, *level),
    )
}

/// Installs the global subscriber. Safe to call once per process.
pub fn init(args: &LoggingArgs) {
    let filter = requested(&args.log_level).and(caps());
    let layer = match args.log_format {
        LogFormat::Text => fmt::layer()
            .with_writer(std::io::stderr)
            // Colour codes only for a terminal; in a pipe or a log file they are noise.
            .with_ansi(std::io::stderr().is_terminal())
            .with_target(true)
            .boxed(),
        LogFormat::Json => fmt::layer()
            .json()
            .flatten_event(true)
            .with_writer(std::io::stderr)
            .with_target(true)
            .boxed(),
    };
    // A second init (tests) keeps the first subscriber; that is fine.
    drop(
        tracing_subscriber::registry()
            .with(layer.with_filter(filter))
            .try_init(),
    );
}

#[cfg(test)]
mod tests {
    use super::*;
    use tracing::Level;
    use tracing_subscriber::layer::Filter;

    #[test]
    fn caps_hold_whatever_level_is_asked_for() {
        let caps = caps();
        assert!(!caps.would_enable("aws_sigv4", &Level::DEBUG));
        assert!(!caps.would_enable("aws_smithy_runtime::client::orchestrator", &Level::TRACE));
        assert!(caps.would_enable("aws_smithy_runtime", &Level::WARN));
        assert!(caps.would_enable("mpu_sweeper", &Level::TRACE));
        let _: &dyn Filter<tracing_subscriber::Registry> = &caps;
    }
}
