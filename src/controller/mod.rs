//! The `MultipartCleanup` controller. A reconcile never waits for a sweep: it reads the resource,
//! checks the spec against the syntax and the operator's fences (`settings`), decides what is due
//! (`decide`), writes the status (`status`) and, when a sweep is due, queues it (`queue`). Sweeps
//! run beside the reconciles (`runner`), a few at a time in all and per namespace, and write
//! their own results (`verdict`). It knows nothing of S3 wire details; those stay in
//! [`crate::sweep`].

mod conditions;
mod decide;
pub mod leader;
mod looks;
mod queue;
mod reason;
mod reconcile;
mod runner;
mod settings;
mod status;
mod verdict;

use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::{FutureExt, StreamExt};
use kube::core::PartialObjectMeta;
use kube::runtime::controller::{self, Controller};
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::{self, ObjectRef, Store};
use kube::runtime::{WatchStreamExt, watcher};
use kube::{Api, Client, Resource};
use tokio_util::sync::CancellationToken;

use crate::api::MultipartCleanup;
use crate::http::Readiness;
use crate::metrics::{Metrics, ReconcileFailure};
use crate::sweep::Limits;
use crate::text;
use leader::Leadership;
use queue::SweepQueue;
use status::StatusWriter;

pub use reason::Reason;
pub use settings::{Fences, SecretSelector};

/// Where the controller looks for resources.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Scope {
    AllNamespaces,
    Namespaces(Vec<String>),
}

impl Scope {
    /// No namespace means all of them. A namespace named twice is watched once: two watches of
    /// one namespace would sweep its resources twice.
    pub fn from_namespaces(namespaces: &[String]) -> Self {
        let mut unique: Vec<String> = namespaces.to_vec();
        unique.sort();
        unique.dedup();
        if unique.is_empty() {
            Self::AllNamespaces
        } else {
            Self::Namespaces(unique)
        }
    }

    /// One entry per watch: the namespace it watches, or `None` for the watch of all.
    fn watches(&self) -> Vec<Option<String>> {
        match self {
            Self::AllNamespaces => vec![None],
            Self::Namespaces(namespaces) => namespaces.iter().cloned().map(Some).collect(),
        }
    }
}

pub struct ControllerConfig {
    pub scope: Scope,
    /// Sweeps running at once across all resources.
    pub max_concurrent_sweeps: u16,
    /// Sweeps running at once in one namespace.
    pub max_concurrent_sweeps_per_namespace: u16,
    /// Identifies this replica in Events.
    pub identity: String,
    pub limits: Limits,
    pub fences: Fences,
    /// Whether this replica may sweep and write status; checked before each.
    pub leadership: Leadership,
}

/// What reconciles and sweeps share.
struct Context {
    client: Client,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    /// Cancelled at shutdown or when leadership is lost: sweeps stop listing, finish aborts in
    /// flight and write status.
    stop: CancellationToken,
    limits: Limits,
    fences: Fences,
    leadership: Leadership,
    /// The watches' caches (one per watched namespace, or one for all).
    stores: Vec<Store<Cached>>,
    queue: Mutex<SweepQueue>,
    /// Wakes the dispatcher when a sweep is queued or ends.
    queue_changed: tokio::sync::Notify,
    /// Reconciles running at once over all the watches. Each `Controller` bounds its own, but
    /// one per watched namespace (100 of them) would otherwise send thousands of GETs at once,
    /// each on a connection of its own.
    reconcile_slots: tokio::sync::Semaphore,
    writer: StatusWriter,
    /// What the last look at each resource decided.
    last_looks: looks::LastLooks,
    /// Reconcile triggers, one per watch.
    look_again: LookAgain,
}

impl Context {
    /// Drops what is kept about a resource that is gone: its series, queued sweep and last look.
    fn forget(&self, namespace: &str, name: &str) {
        self.metrics.forget(namespace, name);
        self.queue().withdraw(namespace, name);
        self.last_looks.forget(namespace, name);
    }

    /// Has the resource reconciled again (and again, by the error policy, until one succeeds).
    /// For a sweep that ended without its status written or its next run decided: no watch
    /// event would come, and without one the resource would never be swept again.
    /// It comes after [`LOOK_AGAIN_AFTER`]: a failure that comes back at once must not make a
    /// loop of requests to the API server that has just failed.
    fn look_again(&self, namespace: &str, name: &str) {
        self.last_looks.forget(namespace, name);
        let Some(watch) = self.look_again.watch_of(namespace) else {
            return;
        };
        let resource = ObjectRef::new(name).within(namespace);
        tokio::spawn(async move {
            tokio::time::sleep(LOOK_AGAIN_AFTER).await;
            // Fails only once the controller loop is gone (shutdown): nothing left to look.
            let _ = watch.unbounded_send(resource);
        });
    }

    fn queue(&self) -> std::sync::MutexGuard<'_, SweepQueue> {
        self.queue.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// An Event on the resource; Event notes are cut to what the API server takes (1 kB).
    async fn publish(
        &self,
        mpc: &MultipartCleanup,
        type_: EventType,
        reason: Reason,
        message: &str,
    ) {
        const EVENT_NOTE_MAX_BYTES: usize = 1024;
        let event = Event {
            type_,
            reason: reason.as_str().to_owned(),
            note: Some(text::bounded(message, EVENT_NOTE_MAX_BYTES)),
            action: "Sweep".to_owned(),
            secondary: None,
        };
        if let Err(err) = self.recorder.publish(&event, &mpc.object_ref(&())).await {
            tracing::warn!(error = %settings::api_error_summary(&err), "could not publish event");
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("Kubernetes API error: {0}")]
    Kube(#[from] kube::Error),
    #[error("this replica does not hold the leadership; nothing is written")]
    NotLeader,
}

impl From<&Error> for ReconcileFailure {
    fn from(err: &Error) -> Self {
        match err {
            Error::Kube(_) => ReconcileFailure::KubernetesApi,
            Error::NotLeader => ReconcileFailure::NotLeader,
        }
    }
}

/// Runs until `stop` is cancelled, then lets running sweeps wind down and returns.
/// `ready` turns true once every watch has listed its resources.
pub async fn run(
    client: Client,
    config: ControllerConfig,
    metrics: Arc<Metrics>,
    ready: Arc<Readiness>,
    stop: CancellationToken,
) {
    let watches = config.scope.watches();
    let apis = watches.iter().map(|namespace| match namespace {
        None => Api::<Cached>::all(client.clone()),
        Some(namespace) => Api::namespaced(client.clone(), namespace),
    });
    // Reconciles only read, decide and write: many may run at once, whatever the sweeps do.
    const RECONCILES_AT_ONCE: u16 = 32;
    let (look_again, triggers) = LookAgain::new(watches.clone());
    let controllers: Vec<_> = apis
        .zip(triggers)
        .map(|(api, trigger)| {
            let (store, writer) = reflector::store();
            let changes = watcher(api, watcher::Config::default())
                .default_backoff()
                .modify(slim)
                .reflect(writer)
                .applied_objects();
            Controller::for_stream(changes, store)
                .reconcile_on(trigger)
                .with_config(controller::Config::default().concurrency(RECONCILES_AT_ONCE))
                .graceful_shutdown_on(stop.clone().cancelled_owned())
        })
        .collect();
    let stores: Vec<Store<Cached>> = controllers.iter().map(|c| c.store()).collect();
    let context = Arc::new(Context {
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: "mpu-sweeper".into(),
                instance: Some(config.identity.clone()),
            },
        ),
        client: client.clone(),
        writer: StatusWriter::new(config.leadership.clone(), metrics.clone()),
        last_looks: looks::LastLooks::default(),
        look_again,
        metrics,
        stop: stop.clone(),
        limits: config.limits.clone(),
        fences: config.fences.clone(),
        leadership: config.leadership.clone(),
        stores: stores.clone(),
        queue: Mutex::new(SweepQueue::new(
            usize::from(config.max_concurrent_sweeps),
            usize::from(config.max_concurrent_sweeps_per_namespace),
        )),
        queue_changed: tokio::sync::Notify::new(),
        reconcile_slots: tokio::sync::Semaphore::new(usize::from(RECONCILES_AT_ONCE)),
    });
    let reconciles = controllers.into_iter().map(|controller| {
        let context = context.clone();
        let store = controller.store();
        let loop_ = controller
            .run(
                reconcile::reconcile,
                reconcile::error_policy,
                context.clone(),
            )
            .for_each(move |result| {
                let context = context.clone();
                async move { log_loop_error(&context, result) }
            });
        let stop = stop.clone();
        async move {
            tokio::select! {
                () = loop_ => {}
                () = stopped_before_listed(store, stop) => {}
            }
        }
    });
    let all_synced = async move {
        for store in stores {
            if store.wait_until_ready().await.is_err() {
                return;
            }
        }
        ready.set(true);
        tracing::info!("caches synced; controller ready");
    };
    // A watch that never syncs (an API server that stalls its list) must not hold up shutdown.
    let readiness = async {
        tokio::select! {
            () = all_synced => {}
            () = stop.cancelled() => {}
        }
    };
    tokio::join!(
        futures::future::join_all(reconciles),
        runner::dispatch(context.clone()),
        forget_deleted(context.clone()),
        readiness
    );
    tracing::info!("controller stopped");
}

/// One reconcile trigger per watch, in the order of the watches: a trigger sent to the watch of
/// another namespace would find no such resource in its cache and read as a deletion.
struct LookAgain {
    /// `None` for the one watch of all namespaces.
    senders: Vec<(Option<String>, TriggerSender)>,
}

type Trigger = futures::channel::mpsc::UnboundedReceiver<ObjectRef<Cached>>;
type TriggerSender = futures::channel::mpsc::UnboundedSender<ObjectRef<Cached>>;

impl LookAgain {
    /// `watches` as [`Scope::watches`] gives them.
    fn new(watches: Vec<Option<String>>) -> (Self, Vec<Trigger>) {
        let (senders, triggers) = watches
            .into_iter()
            .map(|namespace| {
                let (sender, trigger) = futures::channel::mpsc::unbounded();
                ((namespace, sender), trigger)
            })
            .unzip();
        (Self { senders }, triggers)
    }

    /// The trigger of the watch that holds `namespace`, if one does.
    fn watch_of(&self, namespace: &str) -> Option<TriggerSender> {
        self.senders
            .iter()
            .find(|(watched, _)| watched.as_deref().is_none_or(|w| w == namespace))
            .map(|(_, sender)| sender.clone())
    }
}

/// How long after a sweep that could not finish its resource is looked at again.
const LOOK_AGAIN_AFTER: Duration = Duration::from_secs(5);

/// Resolves when `stop` comes before the watch has listed once. kube's graceful shutdown waits
/// for the reconciles, which wait for that list: a watch that never lists (an API server that
/// stalls) would hold the shutdown forever. No reconcile has started then, so none is cut off.
async fn stopped_before_listed(store: Store<Cached>, stop: CancellationToken) {
    stop.cancelled().await;
    if store.wait_until_ready().now_or_never().is_none() {
        return;
    }
    std::future::pending().await
}

/// What the watch caches keep of a resource: its metadata without `managedFields` (a tree per
/// writer, the largest part of a resource that has run), nor kubectl's copy of the last applied
/// spec. Reconciles and sweeps read the resource itself from the API server; the caches only say
/// which resources exist, with their uid and generation, and trigger the reconciles. At 5,000
/// resources whole objects took most of the controller's memory.
pub type Cached = PartialObjectMeta<MultipartCleanup>;

const LAST_APPLIED_ANNOTATION: &str = "kubectl.kubernetes.io/last-applied-configuration";

fn slim(resource: &mut Cached) {
    resource.metadata.managed_fields = None;
    if let Some(annotations) = resource.metadata.annotations.as_mut() {
        annotations.remove(LAST_APPLIED_ANNOTATION);
    }
}

type LoopResult = Result<
    (
        kube::runtime::reflector::ObjectRef<Cached>,
        kube::runtime::controller::Action,
    ),
    controller::Error<Error, watcher::Error>,
>;

/// A resource deleted before its reconcile is the normal end of its series; anything else the
/// loop reports (watch failures, a reconcile that failed) is worth a warning.
fn log_loop_error(context: &Context, result: LoopResult) {
    match result {
        Ok(_) => {}
        Err(controller::Error::ObjectNotFound(gone)) => {
            let namespace = gone.namespace.clone().unwrap_or_default();
            context.forget(&namespace, &gone.name);
            tracing::debug!(resource = %gone, "resource deleted");
        }
        Err(err) => tracing::warn!(error = %err, "controller loop"),
    }
}

/// How often the series of deleted resources are looked for.
const FORGET_INTERVAL: Duration = Duration::from_secs(10);

/// Removes the metric series of resources that are gone, so that an alert on a deleted
/// resource stops. A deletion does not reach a reconcile (that would take a finalizer, which
/// would block deleting resources once the operator is uninstalled): the watch caches say.
async fn forget_deleted(ctx: Arc<Context>) {
    loop {
        tokio::select! {
            () = tokio::time::sleep(FORGET_INTERVAL) => {}
            () = ctx.stop.cancelled() => return,
        }
        let mut known = ctx.metrics.tracked();
        known.extend(ctx.last_looks.resources());
        known.sort_unstable();
        known.dedup();
        for (namespace, name) in known {
            let resource = ObjectRef::<Cached>::new(&name).within(&namespace);
            if ctx
                .stores
                .iter()
                .all(|store| store.get(&resource).is_none())
            {
                ctx.forget(&namespace, &name);
                tracing::debug!(%resource, "resource deleted; its series removed");
            }
        }
    }
}

/// How often the reconcile of a resource whose sweep runs looks again.
const BUSY_RECHECK: Duration = Duration::from_secs(10);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_cache_keeps_no_managed_fields_nor_last_applied_spec() {
        use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ManagedFieldsEntry, ObjectMeta};
        use kube::core::PartialObjectMetaExt;
        let run_requested = crate::api::RUN_REQUESTED_ANNOTATION;
        let mut cached: Cached = ObjectMeta {
            uid: Some("u1".into()),
            generation: Some(3),
            managed_fields: Some(vec![ManagedFieldsEntry::default()]),
            annotations: Some(
                [
                    (LAST_APPLIED_ANNOTATION.to_owned(), "{...}".to_owned()),
                    (run_requested.to_owned(), "t1".to_owned()),
                ]
                .into(),
            ),
            ..ObjectMeta::default()
        }
        .into_response_partial();
        slim(&mut cached);
        assert_eq!(cached.metadata.managed_fields, None);
        let annotations = cached.metadata.annotations.unwrap();
        assert_eq!(annotations.keys().collect::<Vec<_>>(), [run_requested]);
        assert_eq!(cached.metadata.uid.as_deref(), Some("u1"));
        assert_eq!(cached.metadata.generation, Some(3));
    }

    #[test]
    fn a_look_again_goes_to_the_watch_of_its_namespace() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        let (look_again, mut triggers) =
            LookAgain::new(Scope::Namespaces(names(&["a", "b"])).watches());
        let send = |watch: TriggerSender| {
            watch
                .unbounded_send(ObjectRef::new("x").within("b"))
                .unwrap()
        };
        send(look_again.watch_of("b").expect("b is watched"));
        assert!(triggers[1].try_recv().is_ok(), "b's watch");
        assert!(triggers[0].try_recv().is_err(), "nothing for a");
        assert!(look_again.watch_of("c").is_none(), "c is not watched");

        let (look_again, mut triggers) = LookAgain::new(Scope::AllNamespaces.watches());
        send(look_again.watch_of("c").expect("all are watched"));
        assert!(triggers[0].try_recv().is_ok());
    }

    #[test]
    fn a_namespace_named_twice_is_watched_once() {
        let names = |v: &[&str]| v.iter().map(|s| s.to_string()).collect::<Vec<_>>();
        assert_eq!(Scope::from_namespaces(&[]), Scope::AllNamespaces);
        assert_eq!(
            Scope::from_namespaces(&names(&["b", "a", "b"])),
            Scope::Namespaces(names(&["a", "b"]))
        );
    }
}
