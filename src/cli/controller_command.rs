//! `mpu-sweeper controller`: the Kubernetes operator.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::AtomicBool;
use std::time::Duration;

use clap::Args;
use tokio_util::sync::CancellationToken;

use super::exit;
use super::signals::wait_for_stop_signal;
use crate::controller::leader::LeaderElector;
use crate::controller::{self, ControllerConfig, Scope};
use crate::http::{self, HttpState};
use crate::metrics::Metrics;
use crate::sweep::Limits;
use crate::telemetry::{self, LogFormat};

#[derive(Debug, Args)]
pub struct ControllerArgs {
    /// Watch only this namespace (repeatable); all namespaces when absent.
    #[arg(
        long = "namespace",
        value_name = "NAMESPACE",
        env = "WATCH_NAMESPACES",
        value_delimiter = ','
    )]
    namespaces: Vec<String>,

    /// Address for /metrics, /healthz and /readyz.
    #[arg(long, default_value = "0.0.0.0:8080")]
    http_address: SocketAddr,

    /// Log format on stderr.
    #[arg(long, value_enum, default_value_t = LogFormat::Text)]
    log_format: LogFormat,

    /// Log level for mpu-sweeper's own logs (RUST_LOG overrides).
    #[arg(long, default_value = "info")]
    log_level: String,

    /// Run only while holding a Lease, so that replicas never sweep at once.
    #[arg(long)]
    leader_election: bool,

    /// Namespace of the leader-election Lease (defaults to the pod's namespace).
    #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
    leader_election_namespace: String,

    /// Name of the leader-election Lease.
    #[arg(long, default_value = "mpu-sweeper")]
    leader_election_lease: String,

    /// Seconds a leader's lease lasts without renewal; a standby takes over after it.
    #[arg(long, default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    lease_duration_seconds: u64,

    /// This replica's name in the Lease and in Events (defaults to the pod name).
    #[arg(long, env = "POD_NAME")]
    identity: Option<String>,

    /// Sweeps running at once across all resources.
    #[arg(long, default_value_t = 8, value_parser = clap::value_parser!(u16).range(1..=256))]
    max_concurrent_sweeps: u16,

    /// Seconds to wait for a TCP/TLS connection to an S3 endpoint.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    s3_connect_timeout: u64,

    /// Seconds one S3 request attempt may take before it is retried.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    s3_request_timeout: u64,
}

pub async fn run(args: ControllerArgs) -> u8 {
    telemetry::init(args.log_format, &args.log_level);
    let identity = args.identity.clone().unwrap_or_else(default_identity);
    let client = match kube::Client::try_default().await {
        Ok(client) => client,
        Err(err) => {
            eprintln!(
                "error: cannot configure the Kubernetes client (kubeconfig or in-cluster): {err}"
            );
            return exit::USAGE;
        }
    };
    let metrics = Arc::new(Metrics::new());
    let ready = Arc::new(AtomicBool::new(false));

    // `shutdown` is the signal; `stop` also fires when leadership is lost.
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_stop_signal().await;
            tracing::info!("stop signal: finishing sweeps in flight, then exiting");
            shutdown.cancel();
        }
    });
    let http_stop = CancellationToken::new();
    let state = HttpState {
        metrics: metrics.clone(),
        ready: ready.clone(),
    };
    let listener = match http::bind(args.http_address).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("error: cannot listen on {}: {err}", args.http_address);
            return exit::USAGE;
        }
    };
    let server = tokio::spawn(http::serve(listener, state, http_stop.clone()));

    let elector = args.leader_election.then(|| {
        LeaderElector::new(
            client.clone(),
            &args.leader_election_namespace,
            &args.leader_election_lease,
            &identity,
            Duration::from_secs(args.lease_duration_seconds),
        )
    });
    let stop = shutdown.child_token();
    if let Some(elector) = &elector {
        // A standby is healthy and ready: it is doing its job, which is waiting.
        ready.store(true, std::sync::atomic::Ordering::Relaxed);
        if !elector.acquire(&shutdown).await {
            http_stop.cancel();
            return exit::OK;
        }
        ready.store(false, std::sync::atomic::Ordering::Relaxed);
        metrics.set_leader(true);
    }

    let config = ControllerConfig {
        scope: Scope::from_namespaces(&args.namespaces),
        max_concurrent_sweeps: args.max_concurrent_sweeps,
        identity,
        limits: Limits {
            connect_timeout: Duration::from_secs(args.s3_connect_timeout),
            attempt_timeout: Duration::from_secs(args.s3_request_timeout),
        },
    };
    let controller = controller::run(client, config, metrics.clone(), ready, stop.clone());
    // The lease is renewed until the controller has wound down (aborts in flight finished, status
    // written), not just until the signal: a standby must not start sweeping while this replica
    // still works. Only then is it released.
    let wound_down = CancellationToken::new();
    let holding = async {
        match &elector {
            Some(elector) => elector.hold(&wound_down).await,
            _ => {
                wound_down.cancelled().await;
                true
            }
        }
    };
    tokio::pin!(controller, holding);
    let leadership_kept = tokio::select! {
        _ = &mut controller => {
            wound_down.cancel();
            holding.await
        }
        kept = &mut holding => {
            stop.cancel();
            controller.await;
            kept
        }
    };
    let leadership_lost = !leadership_kept;
    if let Some(elector) = &elector {
        metrics.set_leader(false);
        if !leadership_lost {
            elector.release().await;
        }
    }
    http_stop.cancel();
    if let Ok(Err(err)) = server.await {
        tracing::error!(error = %err, "HTTP server failed");
    }
    if leadership_lost {
        exit::SOME_FAILED
    } else {
        exit::OK
    }
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "mpu-sweeper".into());
    format!("{host}-{}", std::process::id())
}
