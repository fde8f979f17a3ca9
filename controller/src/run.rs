//! Wiring: arguments, logging, the watches, the admin server, shutdown.
//!
//! The controller watches LoadBalancerPools, the ConfigMaps it generated
//! (`.owns`), and Services, EndpointSlices, Deployments, template ConfigMaps
//! and the pods of `InPlace` agents, which it maps to the pools that name
//! them through a lookup in the pool store (no API call per event).

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use futures::FutureExt as _;
use futures::StreamExt;
use futures::TryStreamExt as _;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Controller;
use kube::runtime::events::Reporter;
use kube::runtime::reflector::{ObjectRef, Store};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt};
use lbpool_crds::LoadBalancerPool;
use tracing::{debug, error, info, warn};

use crate::admin::{self, Health, Role};
use crate::agents;
use crate::cache::{self, Caches, SERVICE_NAME_LABEL, Writers};
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

/// The pools in `namespace` for which `names` is true.
fn pools_where(
    store: &Store<LoadBalancerPool>,
    namespace: Option<String>,
    names: impl Fn(&LoadBalancerPool) -> bool,
) -> Vec<ObjectRef<LoadBalancerPool>> {
    store
        .state()
        .iter()
        .filter(|p| p.namespace() == namespace && names(p))
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Pools whose backends are this Service's.
pub fn pools_for_service(
    store: &Store<LoadBalancerPool>,
    svc: &Service,
) -> Vec<ObjectRef<LoadBalancerPool>> {
    let name = svc.name_any();
    pools_where(store, svc.namespace(), |p| p.spec.backend.service == name)
}

/// Pools whose backends come from this EndpointSlice's Service.
pub fn pools_for_slice(
    store: &Store<LoadBalancerPool>,
    slice: &EndpointSlice,
) -> Vec<ObjectRef<LoadBalancerPool>> {
    let Some(service) = slice.labels().get(SERVICE_NAME_LABEL).cloned() else {
        return Vec::new();
    };
    pools_where(store, slice.namespace(), |p| {
        p.spec.backend.service == service
    })
}

/// Pools served by this Deployment.
pub fn pools_for_deployment(
    store: &Store<LoadBalancerPool>,
    d: &Deployment,
) -> Vec<ObjectRef<LoadBalancerPool>> {
    let name = d.name_any();
    pools_where(store, d.namespace(), |p| p.spec.haproxy.deployment == name)
}

/// The pool an agent's pod serves: its label names it.
pub fn pool_of_agent(pod: &Pod) -> Option<ObjectRef<LoadBalancerPool>> {
    let pool = pod.labels().get(POOL_LABEL)?;
    Some(ObjectRef::new(pool).within(&pod.namespace()?))
}

/// Pools whose template is this ConfigMap (by its metadata).
pub fn pools_for_template(
    store: &Store<LoadBalancerPool>,
    cm: &impl ResourceExt,
) -> Vec<ObjectRef<LoadBalancerPool>> {
    let name = cm.name_any();
    pools_where(store, cm.namespace(), |p| {
        p.spec
            .template
            .as_ref()
            .is_some_and(|t| t.config_map == name)
    })
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

/// Runs the controller until SIGTERM or SIGINT. With leader election, waits
/// for the Lease first, and exits with an error if it loses it.
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

pub async fn run(args: Args) -> anyhow::Result<()> {
    init_logging(args.log_format, "info,kube=warn");
    let (validator, version) = checker(&args).await?;
    info!(%version, checker = ?args.checker_socket, "configs are checked by the allowlist and haproxy -c");

    let metrics = Metrics::default();
    let config = kube::Config::infer()
        .await
        .context("no Kubernetes client configuration")?;
    let counted = metrics.clone();
    let count = move |request: http::Request<kube::client::Body>| {
        counted.api_request(&request);
        request
    };
    let client = kube::client::ClientBuilder::try_from(config)
        .context("Kubernetes client")?
        .with_layer(&tower::util::MapRequestLayer::new(count))
        .build();
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
        let config = LeaseConfig {
            name: args.lease_name.clone(),
            namespace: args
                .lease_namespace
                .clone()
                .unwrap_or_else(|| client.default_namespace().to_owned()),
            identity: identity.clone(),
            duration: Duration::from_secs(args.lease_duration_seconds),
        };
        let mut c = Candidate::join(client.clone(), &config).await?;
        health.set(Role::Standby);
        info!(lease = %format!("{}/{}", config.namespace, config.name), identity = c.identity(), "standby: waiting for the leader Lease");
        tokio::select! {
            elected = c.elected() => elected?,
            () = signal.clone() => {
                info!("shutting down before leading");
                c.resign().await;
                return stop_admin_server(stop_admin, admin).await;
            }
        }
        info!(identity = c.identity(), "elected leader");
        candidate = Some(c);
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
    match stop {
        Stop::Signal => {
            info!("shutting down");
            stop_admin_server(stop_admin, admin).await
        }
        Stop::Deposed => {
            let _ = stop_admin_server(stop_admin, admin).await;
            anyhow::bail!("lost the leader Lease; exiting to rejoin the election with fresh caches")
        }
    }
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
    let Writers {
        pools: pool_writer,
        services: service_writer,
        slices: mut slice_writer,
        deployments: deployment_writer,
        config_maps: config_map_writer,
        config_map_names: name_writer,
        namespaces: namespace_writer,
        agents: agent_writer,
    } = writers;
    // Namespaces: only names and deletion marks, to leave alone the pools of
    // a namespace being deleted.
    let namespace_config = match ns {
        Some(ns) => watcher::Config::default().fields(&format!("metadata.name={ns}")),
        None => watcher::Config::default(),
    };
    let namespace_watch = watcher(
        Api::<PartialObjectMeta<Namespace>>::all(client.clone()),
        namespace_config,
    )
    .backoff(WatchBackoff::default())
    .modify(cache::slim_namespace)
    .reflect(namespace_writer)
    .for_each(|_| std::future::ready(()));
    let ctx = Arc::new(Context::new(
        client.clone(),
        validator,
        reporter,
        metrics,
        caches.clone(),
    ));

    // Every watch feeds a cache (cache.rs) before it triggers anything, so a
    // reconcile it triggers reads what triggered it.
    // Pools: cached without managedFields; reconciled on a spec change or a
    // deletion, not on the status this controller writes (see triggers.rs).
    let mut pool_trigger = triggers::pool_trigger();
    let pools = watcher(
        api::<LoadBalancerPool>(&client, ns),
        watcher::Config::default(),
    )
    .backoff(WatchBackoff::default())
    .modify(|p| p.managed_fields_mut().clear())
    .reflect(pool_writer)
    .filter_map(move |event| std::future::ready(event.map(|e| pool_trigger.on(e)).transpose()));
    let services = watcher(api::<Service>(&client, ns), watcher::Config::default())
        .backoff(WatchBackoff::default())
        .modify(cache::slim_service)
        .reflect(service_writer)
        .touched_objects();
    let slices = watcher(
        api::<EndpointSlice>(&client, ns),
        watcher::Config::default().labels(SERVICE_NAME_LABEL),
    )
    .backoff(WatchBackoff::default())
    .modify(cache::slim_slice)
    .map_ok(move |event| {
        slice_writer.apply_watcher_event(&event);
        event
    })
    .touched_objects();
    let mut deployment_trigger = triggers::deployment_trigger();
    let deployments = watcher(api::<Deployment>(&client, ns), watcher::Config::default())
        .backoff(WatchBackoff::default())
        .modify(cache::slim_deployment)
        .reflect(deployment_writer)
        .filter_map(move |event| {
            std::future::ready(event.map(|e| deployment_trigger.on(e)).transpose())
        });
    // Generated ConfigMaps: looked at when edited by someone else or deleted.
    let owned = watcher::Config::default().labels(&format!("{MANAGED_BY_LABEL}={FIELD_MANAGER}"));
    let config_maps = watcher(api::<ConfigMap>(&client, ns), owned)
        .backoff(WatchBackoff::default())
        .modify(cache::slim_config_map)
        .reflect(config_map_writer)
        .filter_map(|event| std::future::ready(event.map(triggers::config_map_event).transpose()));
    // Every ConfigMap, metadata only: whose each is, and user templates
    // (an edit re-renders the pools that use it).
    let config_map_names = watcher(
        api::<PartialObjectMeta<ConfigMap>>(&client, ns),
        watcher::Config::default(),
    )
    .backoff(WatchBackoff::default())
    .modify(cache::slim_names)
    .reflect(name_writer)
    .touched_objects();
    // Pods of InPlace agents (labelled by the agents): looked at when what an
    // agent reports changes.
    let mut agent_trigger = triggers::agent_trigger();
    let agents = watcher(
        api::<Pod>(&client, ns),
        watcher::Config::default().labels(POOL_LABEL),
    )
    .backoff(WatchBackoff::default())
    .modify(agents::slim_pod)
    .reflect(agent_writer)
    .filter_map(move |event| std::future::ready(event.map(|e| agent_trigger.on(e)).transpose()));
    let store = caches.pools.clone();
    let (service_store, slice_store, deployment_store, template_store) =
        (store.clone(), store.clone(), store.clone(), store.clone());
    let controller = Controller::for_stream(retrying("pools", pools), store.clone())
        .with_config(kube::runtime::controller::Config::default().concurrency(args.concurrency))
        .owns_stream(retrying("generated configmaps", config_maps))
        .watches_stream(retrying("services", services), move |svc| {
            pools_for_service(&service_store, &svc)
        })
        .watches_stream(retrying("endpointslices", slices), move |slice| {
            pools_for_slice(&slice_store, &slice)
        })
        .watches_stream(retrying("deployments", deployments), move |d| {
            pools_for_deployment(&deployment_store, &d)
        })
        .watches_stream(retrying("configmaps", config_map_names), move |cm| {
            pools_for_template(&template_store, &cm)
        })
        .watches_stream(retrying("agent pods", agents), |pod| pool_of_agent(&pod))
        .graceful_shutdown_on(shutdown);

    let synced = async move {
        caches.synced().await;
        info!(caches = ?caches, "caches synced; ready");
        health.set(Role::Leading);
    };

    info!(namespace = ns.unwrap_or("<all>"), admin = %args.admin_addr, "lbpool-controller started");
    let memory = ctx.clone();
    let reconciles = controller
        .run(reconcile::reconcile, reconcile::error_policy, ctx)
        .for_each(|res| {
            let memory = memory.clone();
            async move {
                use kube::runtime::controller::Error as E;
                match res {
                    Ok(_) => {}
                    // A reconcile queued for a pool deleted since: the usual end
                    // of a pool, not an error. Forget what was kept for it.
                    Err(E::ObjectNotFound(obj)) => {
                        let pool = ObjectRef::<LoadBalancerPool>::new(&obj.name)
                            .within(obj.namespace.as_deref().unwrap_or_default());
                        debug!(pool = %format!("{}/{}", obj.namespace.as_deref().unwrap_or_default(), obj.name), "pool deleted");
                        memory.forget(&pool);
                    }
                    // Logged by the error policy.
                    Err(E::ReconcilerFailed(..)) => {}
                    Err(e) => error!(error = %e, "controller stream error"),
                }
            }
        });
    // The namespace watch and the readiness probe never end; the reconciles
    // end on shutdown.
    tokio::select! {
        () = reconciles => {}
        ((), ()) = futures::future::join(namespace_watch, synced) => {}
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{pool, slice};
    use kube::runtime::reflector::store;
    use kube::runtime::watcher::Event;

    fn store_with(pools: Vec<LoadBalancerPool>) -> Store<LoadBalancerPool> {
        let (reader, mut writer) = store::<LoadBalancerPool>();
        writer.apply_watcher_event(&Event::Init);
        for p in pools {
            writer.apply_watcher_event(&Event::InitApply(p));
        }
        writer.apply_watcher_event(&Event::InitDone);
        reader
    }

    #[test]
    fn a_slice_maps_to_the_pools_of_its_service_in_its_namespace() {
        let mut other_ns = pool();
        other_ns.metadata.namespace = Some("other".into());
        let mut other_svc = pool();
        other_svc.metadata.name = Some("api".into());
        other_svc.spec.backend.service = "api".into();
        let store = store_with(vec![pool(), other_ns, other_svc]);
        let refs = pools_for_slice(&store, &slice("webapp-abc", "http", 3000, &[]));
        assert_eq!(refs, vec![ObjectRef::new("webapp").within("demo")]);
    }

    #[test]
    fn a_slice_without_service_label_maps_to_nothing() {
        let store = store_with(vec![pool()]);
        let mut s = slice("x", "http", 3000, &[]);
        s.metadata.labels = None;
        assert!(pools_for_slice(&store, &s).is_empty());
    }

    #[test]
    fn a_config_map_maps_to_the_pools_whose_template_it_holds() {
        let mut templated = pool();
        templated.spec.template = Some(lbpool_crds::TemplateRef {
            config_map: "my-template".into(),
            key: "haproxy.cfg.hbs".into(),
        });
        let mut plain = pool();
        plain.metadata.name = Some("plain".into());
        let store = store_with(vec![templated, plain]);
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("my-template".into());
        cm.metadata.namespace = Some("demo".into());
        assert_eq!(
            pools_for_template(&store, &cm),
            vec![ObjectRef::new("webapp").within("demo")]
        );
        cm.metadata.namespace = Some("other".into());
        assert!(pools_for_template(&store, &cm).is_empty());
    }

    #[test]
    fn watch_backoff_doubles_to_five_seconds_and_resets() {
        use kube::runtime::utils::Backoff as _;
        let mut b = WatchBackoff::default();
        let first: Vec<u128> = b.by_ref().take(7).map(|d| d.as_millis()).collect();
        assert_eq!(first, [250, 500, 1000, 2000, 4000, 5000, 5000]);
        b.reset();
        assert_eq!(b.next(), Some(Duration::from_millis(250)));
    }

    #[test]
    fn a_deployment_maps_to_the_pools_it_serves() {
        let store = store_with(vec![pool()]);
        let mut d = Deployment::default();
        d.metadata.name = Some("haproxy".into());
        d.metadata.namespace = Some("demo".into());
        assert_eq!(pools_for_deployment(&store, &d).len(), 1);
        d.metadata.name = Some("nginx".into());
        assert!(pools_for_deployment(&store, &d).is_empty());
    }
}
