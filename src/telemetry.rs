//! Logging setup shared by every subcommand: tracing to stderr, as text or JSON.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::filter::Directive;

#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum)]
pub enum LogFormat {
    #[default]
    Text,
    Json,
}

/// Targets that can log signed request material (canonical requests carry session tokens) at
/// debug or trace. They are capped whatever the user asks for, so no log level prints a secret.
const CAPPED_TARGETS: &[&str] = &[
    "aws_sigv4=info",
    "aws_credential_types=info",
    "aws_config=info",
];

/// Builds the filter from `RUST_LOG` if set, else from `default_level` for this crate and `warn`
/// for everything else.
pub fn filter(default_level: &str) -> EnvFilter {
    let base = std::env::var("RUST_LOG")
        .ok()
        .filter(|v| !v.trim().is_empty())
        .unwrap_or_else(|| format!("warn,mpu_sweeper={default_level}"));
    let mut filter = EnvFilter::try_new(&base).unwrap_or_else(|_| EnvFilter::new("warn"));
    for capped in CAPPED_TARGETS {
        let directive: Directive = capped.parse().expect("static directive parses");
        filter = filter.add_directive(directive);
    }
    filter
}

/// Installs the global subscriber. Safe to call once per process.
pub fn init(format: LogFormat, default_level: &str) {
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter(default_level))
        .with_writer(std::io::stderr)
        .with_target(true);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    // A second init (tests) keeps the first subscriber; that is fine.
    drop(result);
}
