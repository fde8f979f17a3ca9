//! Wiring: arguments, logging, the watches, the admin server, shutdown.
//!
//! The controller watches LoadBalancerPools, the ConfigMaps it generated
//! (`.owns`), and Services, EndpointSlices, Deployments, template ConfigMaps
//! and the pods of `InPlace` agents (`Watches`, one `watch` call each), which
//! [`crate::triggers`] maps to the pools that name them.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::FutureExt as _;
use futures::StreamExt;
use futures::TryStreamExt as _;
use futures::stream::BoxStream;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client};
use lbpool_crds::LoadBalancerPool;
use tracing::{debug, error, info, warn};

use crate::admin::{self, Health, Role};
use crate::agents;
use crate::cache::{self, Caches, Keep, SERVICE_NAME_LABEL, Writers};
use crate::leader::{Candidate, LeaseConfig};
use crate::metrics::Metrics;
use crate::reconcile::{self, Context};
use crate::triggers;
use lbpool_checker::{HaproxyValidator, RemoteValidator, ValidationError, Validator};
use lbpool_process::{LogFormat, init_logging, termination};
use lbpool_wire::{FIELD_MANAGER, MANAGED_BY_LABEL, POOL_LABEL};

/// Command-line arguments (each also read from the environment).
#[derive(Debug, clap::Parser)]
#[command(name = "lbpool-controller", version, about)]
pub struct Args {
    /// Address of the admin server (/live, /ready, /metrics).
    #[arg(long, env = "LBPOOL_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,

    /// The HAProxy binary that checks every config (`haproxy -c`) before
    /// it is published, when no `--checker-socket` is given.
    #[arg(long, env = "LBPOOL_HAPROXY_BIN", default_value = "haproxy")]
    pub haproxy_bin: PathBuf,

    /// The checker service (`lbpool-checker`) to run `haproxy -c` in: a
    /// container beside this one that holds no credential. Without it, the
    /// check runs in this process's container (development, tests).
    #[arg(long, env = "LBPOOL_CHECKER_SOCKET")]
    pub checker_socket: Option<PathBuf>,

    /// Watch one namespace only; all namespaces when absent.
    #[arg(long, env = "LBPOOL_NAMESPACE")]
    pub namespace: Option<String>,

    /// Pools reconciled at once, at most. A reconcile mostly waits for the
    /// API server; `haproxy -c` runs are bounded separately, one per core.
    #[arg(long, env = "LBPOOL_CONCURRENCY", default_value_t = 64, value_parser = clap::value_parser!(u16).range(1..))]
    pub concurrency: u16,

    /// Log format.
    #[arg(long, env = "LBPOOL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,

    /// Name of this instance in Events and in the leader Lease (the pod
    /// name in a cluster; host name and process id when absent).
    #[arg(long, env = "POD_NAME")]
    pub instance: Option<String>,

    /// Run as one of several replicas: only the holder of the leader Lease
    /// reconciles.
    #[arg(long, env = "LBPOOL_LEADER_ELECTION")]
    pub leader_election: bool,

    /// Name of the leader Lease.
    #[arg(long, env = "LBPOOL_LEASE_NAME", default_value = "lbpool-controller")]
    pub lease_name: String,

    /// Namespace of the leader Lease (the controller's own namespace in a
    /// cluster; the client's default namespace when absent).
    #[arg(long, env = "POD_NAMESPACE")]
    pub lease_namespace: Option<String>,

    /// Seconds a Lease holds after its last renewal: how long a successor
    /// waits at most after its leader died. Renewed every third of it.
    #[arg(long, env = "LBPOOL_LEASE_DURATION_SECONDS", default_value_t = 15, value_parser = clap::value_parser!(u64).range(3..=300))]
    pub lease_duration_seconds: u64,
}

fn api<K>(client: &Client, namespace: Option<&str>) -> Api<K>
where
    K: kube::Resource<Scope = k8s_openapi::NamespaceResourceScope, DynamicType = ()>,
{
    match namespace {
        Some(ns) => Api::namespaced(client.clone(), ns),
        None => Api::all(client.clone()),
    }
}

/// A watch's errors, logged and dropped: each watch retries on its own
/// [`WatchBackoff`]. Passed on, an error would pause the controller's whole
/// trigger stream: after an API server restart, with every watch failing
/// and relisting in turn, the pools went unwatched for most of a minute.
fn retrying<K>(
    watch: &'static str,
    events: impl futures::Stream<Item = Result<K, watcher::Error>>,
) -> impl futures::Stream<Item = Result<K, watcher::Error>> {
    events.filter(move |event| {
        if let Err(e) = event {
            warn!(watch, error = %e, "watch failed; retrying");
        }
        std::future::ready(event.is_ok())
    })
}

/// Backoff of a watch after an error: 250 ms doubling to at most 5 s,
/// reset by the next event. kube-runtime's default grows to 30 s and resets
/// only after 2 quiet minutes.
#[derive(Debug, Clone)]
pub struct WatchBackoff {
    next: Duration,
}

impl WatchBackoff {
    const MIN: Duration = Duration::from_millis(250);
    const MAX: Duration = Duration::from_secs(5);
}

impl Default for WatchBackoff {
    fn default() -> Self {
        Self { next: Self::MIN }
    }
}

impl Iterator for WatchBackoff {
    type Item = Duration;

    fn next(&mut self) -> Option<Duration> {
        let current = self.next;
        self.next = (current * 2).min(Self::MAX);
        Some(current)
    }
}

impl kube::runtime::utils::Backoff for WatchBackoff {
    fn reset(&mut self) {
        self.next = Self::MIN;
    }
}

/// A name for this process in the election when it has no pod name.
fn fallback_identity() -> String {
    let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
        .map(|h| h.trim().to_owned())
        .unwrap_or_else(|_| "lbpool".into());
    format!("{host}-{}", std::process::id())
}

/// How the controller run ended.
enum Stop {
    /// SIGTERM or SIGINT.
    Signal,
    /// Another replica holds the Lease now.
    Deposed,
}

/// The config checker and its `haproxy -v`: the checker service when one
/// is named (waited for a while: its container may start after this one),
/// else `haproxy` in this container.
async fn checker(args: &Args) -> anyhow::Result<(Box<dyn Validator>, String)> {
    let Some(socket) = &args.checker_socket else {
        let local = HaproxyValidator::new(&args.haproxy_bin);
        let version = local.version().await.with_context(|| {
            format!(
                "the config gate needs HAProxy: {}",
                args.haproxy_bin.display()
            )
        })?;
        return Ok((Box::new(local), version));
    };
    let remote = RemoteValidator::new(socket);
    let started = std::time::Instant::now();
    loop {
        match remote.version().await {
            Ok(version) => return Ok((Box::new(remote), version)),
            Err(e @ ValidationError::Unavailable { .. })
                if started.elapsed() < Duration::from_secs(60) =>
            {
                debug!(error = %e, "waiting for the checker");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(e) => return Err(e).context("the config checker does not answer"),
        }
    }
}

/// Runs the controller until SIGTERM or SIGINT. With leader election, waits
/// for the Lease first, and exits with an error if it loses it.
pub async fn run(args: Args) -> anyhow::Result<()> {
    init_logging(args.log_format, "info,kube=warn");
    let (validator, version) = checker(&args).await?;
    info!(%version, checker = ?args.checker_socket, "configs are checked by the allowlist and haproxy -c");
    let metrics = Metrics::default();
    let client = client(&metrics).await?;
    let health = Health::new(metrics.clone());
    let (stop_admin, admin_stopped) = tokio::sync::oneshot::channel::<()>();
    let admin = tokio::spawn(admin::serve(
        args.admin_addr,
        health.clone(),
        metrics.clone(),
        async {
            let _ = admin_stopped.await;
        },
    ));
    let identity = args.instance.clone().unwrap_or_else(fallback_identity);
    let signal = termination().shared();

    let mut candidate = None;
    if args.leader_election {
        let Some(elected) = elect(&args, &client, &health, &identity, signal.clone()).await? else {
            return stop_admin_server(stop_admin, admin).await;
        };
        candidate = Some(elected);
    }
    health.set(Role::Syncing);
    let deposed = {
        let candidate = candidate.as_mut();
        async move {
            match candidate {
                Some(c) => c.deposed().await,
                None => std::future::pending().await,
            }
        }
    };
    // On a signal the controller stops taking work and finishes the
    // reconciles under way; deposed, it stops at once: another replica leads.
    let stop = tokio::select! {
        () = controller(&args, validator, client, metrics, health, identity, signal.clone()) => Stop::Signal,
        () = deposed => Stop::Deposed,
    };
    if let Some(c) = candidate {
        c.resign().await;
    }
    let stopped = stop_admin_server(stop_admin, admin).await;
    match stop {
        Stop::Signal => {
            info!("shutting down");
            stopped
        }
        Stop::Deposed => {
            anyhow::bail!("lost the leader Lease; exiting to rejoin the election with fresh caches")
        }
    }
}

/// The Kubernetes client, every request counted by verb.
async fn client(metrics: &Metrics) -> anyhow::Result<Client> {
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes client configuration")?;
    let counted = metrics.clone();
    let count = move |request: http::Request<kube::client::Body>| {
        counted.api_request(&request);
        request
    };
    Ok(kube::client::ClientBuilder::try_from(config)
        .context("Kubernetes client")?
        .with_layer(&tower::util::MapRequestLayer::new(count))
        .build())
}

/// Waits for the leader Lease, as a standby; `None` if `signal` came first.
async fn elect(
    args: &Args,
    client: &Client,
    health: &Health,
    identity: &str,
    signal: impl Future<Output = ()>,
) -> anyhow::Result<Option<Candidate>> {
    let config = LeaseConfig {
        name: args.lease_name.clone(),
        namespace: args
            .lease_namespace
            .clone()
            .unwrap_or_else(|| client.default_namespace().to_owned()),
        identity: identity.to_owned(),
        duration: Duration::from_secs(args.lease_duration_seconds),
    };
    let mut c = Candidate::join(client.clone(), &config).await?;
    health.set(Role::Standby);
    info!(lease = %format!("{}/{}", config.namespace, config.name), identity = c.identity(), "standby: waiting for the leader Lease");
    tokio::select! {
        elected = c.elected() => elected?,
        () = signal => {
            info!("shutting down before leading");
            c.resign().await;
            return Ok(None);
        }
    }
    info!(identity = c.identity(), "elected leader");
    Ok(Some(c))
}

async fn stop_admin_server(
    stop: tokio::sync::oneshot::Sender<()>,
    admin: tokio::task::JoinHandle<std::io::Result<()>>,
) -> anyhow::Result<()> {
    let _ = stop.send(());
    match admin.await {
        Ok(result) => result.context("admin server"),
        Err(e) => Err(e).context("admin server task"),
    }
}

/// The watches and the reconciles; runs until `shutdown`, then lets the
/// reconciles under way finish.
async fn controller(
    args: &Args,
    validator: Box<dyn Validator>,
    client: Client,
    metrics: Metrics,
    health: Health,
    identity: String,
    shutdown: impl Future<Output = ()> + Send + Sync + 'static,
) {
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: Some(identity),
    };
    let ns = args.namespace.as_deref();
    let (caches, writers) = Caches::new();
    let watches = Watches::new(&client, ns, writers);
    let ctx = Arc::new(Context::new(
        client,
        validator,
        reporter,
        metrics,
        caches.clone(),
    ));
    let (controller, namespaces) = wire(watches, caches.pools.clone(), args.concurrency);
    let controller = controller.graceful_shutdown_on(shutdown);
    let namespace_watch = namespaces.for_each(|_| std::future::ready(()));

    let synced = async move {
        caches.synced().await;
        info!(caches = ?caches, "caches synced; ready");
        health.set(Role::Leading);
    };
    info!(namespace = ns.unwrap_or("<all>"), admin = %args.admin_addr, "lbpool-controller started");
    let memory = ctx.clone();
    let reconciles = controller
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(move |res| {
            outcome(&memory, res);
            std::future::ready(())
        });
    // The namespace watch and the readiness probe never end; the reconciles
    // end on shutdown.
    tokio::select! {
        () = reconciles => {}
        ((), ()) = futures::future::join(namespace_watch, synced) => {}
    }
}

/// The pool controller: its own watches, and every other watch mapped to
/// the pools it concerns; and the namespace watch, which triggers nothing.
fn wire(
    watches: Watches,
    store: kube::runtime::reflector::Store<LoadBalancerPool>,
    concurrency: u16,
) -> (
    Controller<LoadBalancerPool>,
    Events<PartialObjectMeta<Namespace>>,
) {
    let (service_store, slice_store, deployment_store, template_store) =
        (store.clone(), store.clone(), store.clone(), store.clone());
    let controller = Controller::for_stream(watches.pools, store)
        .with_config(kube::runtime::controller::Config::default().concurrency(concurrency))
        .owns_stream(watches.config_maps)
        .watches_stream(watches.services, move |svc| {
            triggers::pools_for_service(&service_store, &svc)
        })
        .watches_stream(watches.slices, move |slice| {
            triggers::pools_for_slice(&slice_store, &slice)
        })
        .watches_stream(watches.deployments, move |d| {
            triggers::pools_for_deployment(&deployment_store, &d)
        })
        .watches_stream(watches.config_map_names, move |cm| {
            triggers::pools_for_template(&template_store, &cm)
        })
        .watches_stream(watches.agents, |pod| triggers::pool_of_agent(&pod));
    (controller, watches.namespaces)
}

/// What the controller does with a reconcile's outcome.
fn outcome<T>(
    ctx: &Context,
    res: Result<T, kube::runtime::controller::Error<crate::Error, watcher::Error>>,
) {
    use kube::runtime::controller::Error as E;
    match res {
        Ok(_) => {}
        // A reconcile queued for a pool deleted since: the usual end of a
        // pool, not an error. Forget what was kept for it.
        Err(E::ObjectNotFound(obj)) => {
            let ns = obj.namespace.as_deref().unwrap_or_default();
            debug!(pool = %format!("{ns}/{}", obj.name), "pool deleted");
            ctx.forget(&ObjectRef::new(&obj.name).within(ns));
        }
        // Logged by the error policy.
        Err(E::ReconcilerFailed(..)) => {}
        Err(e) => error!(error = %e, "controller stream error"),
    }
}

/// A watch's stream of objects to look at.
type Objects<K> = BoxStream<'static, Result<K, watcher::Error>>;

/// Every watch of the controller. Each feeds a cache ([`crate::cache`])
/// before it triggers anything, so a reconcile it triggers reads what
/// triggered it; which events trigger is [`crate::triggers`]' part.
struct Watches {
    /// Namespaces: only names and deletion marks, to leave alone the pools
    /// of a namespace being deleted. Triggers nothing.
    namespaces: Events<PartialObjectMeta<Namespace>>,
    /// Cached without managedFields; reconciled on a spec change or a
    /// deletion, not on the status this controller writes.
    pools: Objects<LoadBalancerPool>,
    services: Objects<Service>,
    slices: Objects<EndpointSlice>,
    deployments: Objects<Deployment>,
    /// The generated ConfigMaps: looked at when edited by someone else or
    /// deleted.
    config_maps: Objects<ConfigMap>,
    /// Every ConfigMap, metadata only: whose each is, and user templates
    /// (an edit re-renders the pools that use it).
    config_map_names: Objects<PartialObjectMeta<ConfigMap>>,
    /// The pods of `InPlace` agents (labelled by the agents): looked at when
    /// what an agent reports changes.
    agents: Objects<Pod>,
}

impl Watches {
    fn new(client: &Client, ns: Option<&str>, writers: Writers) -> Self {
        let all = watcher::Config::default;
        let namespaces = match ns {
            Some(ns) => all().fields(&format!("metadata.name={ns}")),
            None => all(),
        };
        let generated = all().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
        let w = writers;
        let (service, slice) = (all(), all().labels(SERVICE_NAME_LABEL));
        Self {
            namespaces: watch(
                Api::all(client.clone()),
                namespaces,
                cache::slim_namespace,
                w.namespaces,
            ),
            pools: triggered(
                "pools",
                watch(api(client, ns), all(), cache::slim_pool, w.pools),
                triggers::pool_trigger(),
            ),
            services: touched(
                "services",
                watch(api(client, ns), service, cache::slim_service, w.services),
            ),
            slices: touched(
                "endpointslices",
                watch(api(client, ns), slice, cache::slim_slice, w.slices),
            ),
            deployments: triggered(
                "deployments",
                watch(
                    api(client, ns),
                    all(),
                    cache::slim_deployment,
                    w.deployments,
                ),
                triggers::deployment_trigger(),
            ),
            config_maps: filtered(
                "generated configmaps",
                watch(
                    api(client, ns),
                    generated,
                    cache::slim_config_map,
                    w.config_maps,
                ),
                triggers::config_map_event,
            ),
            config_map_names: touched(
                "configmaps",
                watch(
                    api(client, ns),
                    all(),
                    cache::slim_names,
                    w.config_map_names,
                ),
            ),
            agents: triggered(
                "agent pods",
                watch(
                    api(client, ns),
                    all().labels(POOL_LABEL),
                    agents::slim_pod,
                    w.agents,
                ),
                triggers::agent_trigger(),
            ),
        }
    }
}

/// One watch: lists and watches `api`, retrying on [`WatchBackoff`];
/// each object slimmed to what the controller reads, then kept in its
/// cache before it is passed on.
fn watch<K>(
    api: Api<K>,
    config: watcher::Config,
    slim: fn(&mut K),
    mut cache: impl Keep<K> + Send + 'static,
) -> Events<K>
where
    K: kube::Resource + Clone + serde::de::DeserializeOwned + std::fmt::Debug + Send + 'static,
{
    watcher(api, config)
        .backoff(WatchBackoff::default())
        .modify(slim)
        .map_ok(move |event| {
            cache.keep(&event);
            event
        })
        .boxed()
}

/// A watch's events.
type Events<K> = BoxStream<'static, Result<watcher::Event<K>, watcher::Error>>;

/// Every object an event touches is looked at.
fn touched<K: Send + 'static>(watch: &'static str, events: Events<K>) -> Objects<K> {
    retrying(watch, events.touched_objects()).boxed()
}

/// The objects a trigger ([`triggers::Changes`]) passes on are looked at.
fn triggered<K, V>(
    watch: &'static str,
    events: Events<K>,
    mut changes: triggers::Changes<K, V>,
) -> Objects<K>
where
    K: kube::Resource<DynamicType = ()> + Send + 'static,
    V: PartialEq + Send + 'static,
{
    filtered(watch, events, move |event| changes.on(event))
}

/// The objects `pass` returns for an event are looked at.
fn filtered<K: Send + 'static>(
    watch: &'static str,
    events: Events<K>,
    mut pass: impl FnMut(watcher::Event<K>) -> Option<K> + Send + 'static,
) -> Objects<K> {
    let objects =
        events.filter_map(move |event| std::future::ready(event.map(&mut pass).transpose()));
    retrying(watch, objects).boxed()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn watch_backoff_doubles_to_five_seconds_and_resets() {
        use kube::runtime::utils::Backoff as _;
        let mut b = WatchBackoff::default();
        let first: Vec<u128> = b.by_ref().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(first, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(250)));
    }
}
