//! The command line: `mpu-sweeper sweep | controller | crd`.

mod controller_command;
mod progress;
mod report;
mod signals;
mod sweep_command;

use std::process::ExitCode;

use clap::{Parser, Subcommand};

pub use sweep_command::SweepArgs;

/// Exit statuses, shared by every subcommand.
pub mod exit {
    /// Everything worked.
    pub const OK: u8 = 0;
    /// The sweep ran but some aborts failed.
    pub const SOME_FAILED: u8 = 1;
    /// Bad usage: flags, values, unreadable files.
    pub const USAGE: u8 = 2;
    /// The bucket could not be listed (credentials, missing bucket, endpoint unreachable), or the
    /// endpoint stopped answering during the sweep.
    pub const LISTING_FAILED: u8 = 3;
    /// The run's time limit passed; what was done is in the summary.
    pub const DEADLINE_EXCEEDED: u8 = 4;
    /// The controller lost its leadership (another replica leads now) and stopped.
    pub const LEADERSHIP_LOST: u8 = 5;
    /// Interrupted by a signal after finishing the aborts in flight.
    pub const INTERRUPTED: u8 = 130;
}

#[derive(Debug, Parser)]
#[command(
    name = "mpu-sweeper",
    version,
    about = "Finds and aborts stale S3 multipart uploads"
)]
pub struct Cli {
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Sweep buckets once: list incomplete multipart uploads and abort those older than --max-age.
    Sweep(SweepArgs),
    /// Run the Kubernetes controller for MultipartCleanup resources.
    Controller(controller_command::ControllerArgs),
    /// Print the MultipartCleanup CustomResourceDefinition as YAML.
    Crd,
}

pub fn main() -> ExitCode {
    let cli = Cli::parse();
    let runtime = match tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
    {
        Ok(runtime) => runtime,
        Err(err) => {
            eprintln!("error: cannot start the async runtime: {err}");
            return ExitCode::FAILURE;
        }
    };
    let status = match cli.command {
        Command::Sweep(args) => runtime.block_on(sweep_command::run(args)),
        Command::Controller(args) => runtime.block_on(controller_command::run(args)),
        Command::Crd => {
            print!("{}", crate::api::crd_yaml());
            exit::OK
        }
    };
    ExitCode::from(status)
}
