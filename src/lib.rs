//! mpu-sweeper: finds and aborts stale S3 multipart uploads.
//!
//! - [`sweep`]: the S3 engine (no Kubernetes in it).
//! - [`cli`]: the command line, including the one-shot `sweep` command.
//! - [`api`]: the `MultipartCleanup` custom resource types.
//! - [`max_age`]: the age syntax shared by the command and the custom resource.

pub mod api;
pub mod cli;
pub mod controller;
pub mod http;
pub mod max_age;
pub mod metrics;
pub mod schedule;
pub mod sweep;
pub mod telemetry;
pub mod text;
