//! `mpu-sweeper controller`: the Kubernetes operator. It serves its HTTP endpoints, leads (takes
//! the Lease, when elections are on), and runs the controller until it is stopped or loses the
//! lead.

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use clap::Args;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::exit;
use super::signals::wait_for_stop_signal;
use crate::controller::leader::{LeaderElector, Leadership};
use crate::controller::{self, ControllerConfig, Fences, Scope, SecretSelector};
use crate::http::{self, HttpState, Readiness};
use crate::metrics::Metrics;
use crate::sweep::{DEFAULT_DENIED, EndpointPolicy, Limits};
use crate::telemetry::{self, LoggingArgs};

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

    #[command(flatten)]
    logging: LoggingArgs,

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

    /// Sweeps running at once in one namespace, so that one tenant cannot take every slot.
    #[arg(long, default_value_t = 2, value_parser = clap::value_parser!(u16).range(1..=256))]
    max_concurrent_sweeps_per_namespace: u16,

    /// Seconds the watches may take to list the resources (at start, and after winning the
    /// leadership) before /healthz fails, so that the kubelet restarts a controller stuck there.
    #[arg(long, value_name = "SECONDS", default_value_t = 300, value_parser = clap::value_parser!(u64).range(1..=86400))]
    cache_sync_timeout: u64,

    /// Seconds to wait for a TCP/TLS connection to an S3 endpoint.
    #[arg(long, value_name = "SECONDS", default_value_t = 5, value_parser = clap::value_parser!(u64).range(1..=600))]
    s3_connect_timeout: u64,

    /// Seconds one S3 request attempt may take before it is retried.
    #[arg(long, value_name = "SECONDS", default_value_t = 30, value_parser = clap::value_parser!(u64).range(1..=3600))]
    s3_request_timeout: u64,

    /// Never connect to an endpoint address in this range (repeatable; checked on every address
    /// DNS gives, at every connection). Default: the link-local ranges of cloud metadata
    /// services. Give `none` to deny nothing.
    #[arg(long = "deny-endpoint-cidr", value_name = "CIDR", default_values_t = DEFAULT_DENIED.map(String::from), value_parser = parse_cidr)]
    deny_endpoint_cidrs: Vec<String>,

    /// Allow only endpoints whose host is this name, or below this domain with `*.domain`
    /// (repeatable). When absent, any host is allowed (the denied ranges still apply).
    #[arg(long = "allow-endpoint-host", value_name = "HOST")]
    allow_endpoint_hosts: Vec<String>,

    /// Refuse endpoints that are not https://.
    #[arg(long)]
    require_https: bool,

    /// Let resources use only Secrets matching this label selector (`key=value`, `key!=value`,
    /// `key`, `!key`, comma-separated), so that a platform team marks which credentials tenants
    /// may use.
    #[arg(long, value_name = "SELECTOR")]
    secret_label_selector: Option<SecretSelector>,

    /// The shortest time between two runs of one resource: schedules that fire more often are
    /// refused, and run requests made sooner wait for it. Same syntax as maxAge.
    #[arg(long, value_name = "DURATION", default_value = "5m", value_parser = parse_interval)]
    min_interval: Duration,
}

fn parse_cidr(text: &str) -> Result<String, String> {
    if text == "none" {
        return Ok(text.to_owned());
    }
    text.parse::<ipnet::IpNet>()
        .map(|net| net.to_string())
        .map_err(|e| format!("{text:?} is not a CIDR range like 169.254.0.0/16: {e}"))
}

fn parse_interval(text: &str) -> Result<Duration, String> {
    crate::max_age::parse_duration(text).map_err(|e| e.to_string())
}

impl ControllerArgs {
    fn fences(&self) -> Fences {
        Fences {
            endpoint_policy: EndpointPolicy {
                denied: self
                    .deny_endpoint_cidrs
                    .iter()
                    .filter(|cidr| *cidr != "none")
                    .map(|cidr| cidr.parse().expect("checked by the flag's parser"))
                    .collect(),
                allowed_hosts: self.allow_endpoint_hosts.clone(),
                require_https: self.require_https,
            },
            secret_selector: self.secret_label_selector.clone(),
            min_interval: self.min_interval,
        }
    }

    fn elector(&self, client: &kube::Client, identity: &str) -> Option<LeaderElector> {
        self.leader_election.then(|| {
            LeaderElector::new(
                client.clone(),
                &self.leader_election_namespace,
                &self.leader_election_lease,
                identity,
                Duration::from_secs(self.lease_duration_seconds),
            )
        })
    }
}

pub async fn run(args: ControllerArgs) -> u8 {
    telemetry::init(&args.logging);
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
    let ready = Arc::new(Readiness::new(Duration::from_secs(args.cache_sync_timeout)));
    let Some(server) = serve(&args, metrics.clone(), ready.clone()).await else {
        return exit::USAGE;
    };

    // `shutdown` is the signal; the controller's own stop also fires when leadership is lost.
    let shutdown = CancellationToken::new();
    tokio::spawn({
        let shutdown = shutdown.clone();
        async move {
            wait_for_stop_signal().await;
            tracing::info!("stop signal: finishing sweeps in flight, then exiting");
            shutdown.cancel();
        }
    });
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    tokio::spawn(super::return_freed_memory());
    let elector = args.elector(&client, &identity);
    let leadership = match &elector {
        Some(elector) => {
            if !lead(elector, &shutdown, &ready, &metrics).await {
                server.stop().await;
                return exit::OK;
            }
            elector.leadership()
        }
        None => {
            // Without elections this replica leads: the "no leader" alert must not fire.
            metrics.set_leader(true);
            Leadership::unelected()
        }
    };
    let config = ControllerConfig {
        scope: Scope::from_namespaces(&args.namespaces),
        max_concurrent_sweeps: args.max_concurrent_sweeps,
        max_concurrent_sweeps_per_namespace: args.max_concurrent_sweeps_per_namespace,
        identity,
        limits: Limits {
            connect_timeout: Duration::from_secs(args.s3_connect_timeout),
            attempt_timeout: Duration::from_secs(args.s3_request_timeout),
        },
        fences: args.fences(),
        leadership,
    };
    let kept =
        run_until_stopped(client, config, &metrics, ready, &shutdown, elector.as_ref()).await;
    server.stop().await;
    if kept {
        exit::OK
    } else {
        exit::LEADERSHIP_LOST
    }
}

/// The HTTP endpoints, serving until stopped.
struct Server {
    stop: CancellationToken,
    task: JoinHandle<std::io::Result<()>>,
}

impl Server {
    async fn stop(self) {
        self.stop.cancel();
        if let Ok(Err(err)) = self.task.await {
            tracing::error!(error = %err, "HTTP server failed");
        }
    }
}

/// Binds first, so that a busy port fails start-up rather than going unnoticed.
async fn serve(
    args: &ControllerArgs,
    metrics: Arc<Metrics>,
    readiness: Arc<Readiness>,
) -> Option<Server> {
    let listener = match http::bind(args.http_address).await {
        Ok(listener) => listener,
        Err(err) => {
            eprintln!("error: cannot listen on {}: {err}", args.http_address);
            return None;
        }
    };
    let stop = CancellationToken::new();
    let state = HttpState { metrics, readiness };
    let task = tokio::spawn(http::serve(listener, state, stop.clone()));
    Some(Server { stop, task })
}

/// Waits for the Lease; `false` if shut down first. A standby is healthy and ready: it is doing
/// its job, which is waiting.
async fn lead(
    elector: &LeaderElector,
    shutdown: &CancellationToken,
    ready: &Readiness,
    metrics: &Metrics,
) -> bool {
    ready.set(true);
    if !elector.acquire(shutdown).await {
        // An attempt cut short by the signal, or by its timeout, may still have taken the lease
        // at the server: give it back (a no-op when another replica holds it).
        elector.release().await;
        return false;
    }
    ready.set(false);
    metrics.set_leader(true);
    true
}

/// Runs the controller until the signal or the loss of leadership; `false` when leadership was
/// lost. The Lease is renewed until the controller has wound down (aborts in flight finished,
/// status written), not just until the signal: a standby must not start sweeping while this
/// replica still works. Only then is it released.
async fn run_until_stopped(
    client: kube::Client,
    config: ControllerConfig,
    metrics: &Arc<Metrics>,
    ready: Arc<Readiness>,
    shutdown: &CancellationToken,
    elector: Option<&LeaderElector>,
) -> bool {
    let stop = shutdown.child_token();
    let controller = controller::run(client, config, metrics.clone(), ready, stop.clone());
    let wound_down = CancellationToken::new();
    let holding = async {
        match elector {
            Some(elector) => elector.hold(&wound_down).await,
            None => {
                wound_down.cancelled().await;
                true
            }
        }
    };
    tokio::pin!(controller, holding);
    let kept = tokio::select! {
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
    if let Some(elector) = elector {
        metrics.set_leader(false);
        if kept {
            elector.release().await;
        }
    }
    kept
}

fn default_identity() -> String {
    let host = std::env::var("HOSTNAME").unwrap_or_else(|_| "mpu-sweeper".into());
    format!("{host}-{}", std::process::id())
}
