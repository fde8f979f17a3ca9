//! I/O: the only module that calls the Kubernetes API.
//!
//! One reconcile of one pool: look up the Service, its EndpointSlices, the
//! ConfigMap and the Deployment in the watch caches ([`crate::cache`]), and
//! read a user template; build, render and validate (pure, plus `haproxy
//! -c` where a check can fail); write the ConfigMap and patch the
//! Deployment's pod-template annotation when the hash changed and the
//! rollout interval allows; apply the status when it changed. A pool that
//! cannot be served keeps its last good ConfigMap and says why in its
//! status.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, ObjectReference};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::controller::Action;
use kube::runtime::events::{Event, EventType, Recorder, Reporter};
use kube::runtime::reflector::ObjectRef;
use kube::{Client, Resource, ResourceExt};
use lbpool_crds::{LoadBalancerPool, LoadBalancerPoolStatus};
use serde_json::json;
use tracing::{debug, info, warn};

use crate::agents;
use crate::cache::Caches;
use crate::conditions::reason;
use crate::desired::{self, DeploymentState};
use crate::error::{Context as _, Error};
use crate::metrics::{Metrics, UpdateKind};
use crate::model::{self, InvalidPool, Model};
use crate::render::{RenderedConfig, Renderer, Template};
use crate::strategy::{ConfigMapNow, ConfigMapWrite, Found, Strategy};
use lbpool_checker::{ValidationError, Validator};
use lbpool_wire::FIELD_MANAGER as MANAGER;

/// How often an invalid pool is looked at again even without a change (a
/// safety net: the inputs that can make it valid are all watched).
const INVALID_RETRY: Duration = Duration::from_secs(15);
/// How long a user template may take to render.
const RENDER_TIMEOUT: Duration = Duration::from_secs(2);
/// A safety net: every pool is reconciled at least this often.
const RESYNC: Duration = Duration::from_secs(600);
/// Events sent at once, at most: each may hold a connection to the API
/// server, and a burst of invalid pools must not open one per pool.
const EVENTS_IN_FLIGHT: usize = 8;
/// How many accepted skeletons are remembered at most.
const SKELETONS_KEPT: usize = 4096;
/// How soon a pool is looked at again when a cache was behind a write.
const CACHE_BEHIND_RETRY: Duration = Duration::from_secs(1);

/// Shared state of all reconciles.
pub struct Context {
    pub client: Client,
    pub renderer: Renderer,
    pub validator: Box<dyn Validator>,
    /// Who the Events come from.
    pub reporter: Reporter,
    pub metrics: Metrics,
    /// What a reconcile reads instead of the API.
    pub caches: Caches,
    /// Bounds the Events in flight ([`EVENTS_IN_FLIGHT`]).
    events: Arc<tokio::sync::Semaphore>,
    /// Hashes of the skeletons `haproxy -c` accepted (built-in template;
    /// shared by every pool with the same settings). Bounded: emptied when
    /// it reaches [`SKELETONS_KEPT`], so memory does not follow how many
    /// settings were ever seen.
    skeletons: Mutex<HashSet<String>>,
    /// Per pool with a user template, the hash of the last config `haproxy
    /// -c` accepted: an unchanged one is not checked again.
    validated: Mutex<HashMap<String, String>>,
    /// Consecutive failures per pool, for backoff.
    failures: Mutex<HashMap<String, u32>>,
    /// When this process last rolled each pool, exactly (the status stores
    /// it rounded up to the second). The pool in the watch cache can lag
    /// behind the status this process just wrote; the rate limit must not
    /// (the later of the two counts).
    rollouts: Mutex<HashMap<String, Timestamp>>,
    /// What this process last said about each pool, for the same reason: a
    /// stale cached status must not repeat an Event or a log line.
    reported: Mutex<HashMap<String, Report>>,
}

impl Context {
    pub fn new(
        client: Client,
        validator: Box<dyn Validator>,
        reporter: Reporter,
        metrics: Metrics,
        caches: Caches,
    ) -> Self {
        Self {
            client,
            renderer: Renderer::new(),
            validator,
            reporter,
            metrics,
            caches,
            events: Arc::new(tokio::sync::Semaphore::new(EVENTS_IN_FLIGHT)),
            skeletons: Mutex::default(),
            validated: Mutex::default(),
            failures: Mutex::default(),
            rollouts: Mutex::default(),
            reported: Mutex::default(),
        }
    }

    fn namespace_terminating(&self, ns: &str) -> bool {
        self.caches
            .namespaces
            .get(&ObjectRef::new(ns))
            .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
    }

    /// Drops what this process remembers of a pool that is gone (`ns/name`),
    /// so memory follows the number of pools, not how many ever existed.
    pub fn forget(&self, pool_key: &str) {
        lock(&self.validated).remove(pool_key);
        lock(&self.failures).remove(pool_key);
        lock(&self.rollouts).remove(pool_key);
        lock(&self.reported).remove(pool_key);
        self.count_remembered();
    }

    /// How many pools this process remembers something of (the largest of
    /// its per-pool maps; 0 when it remembers nothing).
    fn remembered(&self) -> usize {
        [
            lock(&self.validated).len(),
            lock(&self.failures).len(),
            lock(&self.rollouts).len(),
            lock(&self.reported).len(),
        ]
        .into_iter()
        .max()
        .unwrap_or_default()
    }

    fn count_remembered(&self) {
        let n = i64::try_from(self.remembered()).unwrap_or(i64::MAX);
        self.metrics.remembered_pools.set(n);
    }
}

/// The last word on a pool's validity.
#[derive(Clone, Debug, PartialEq, Eq)]
enum Report {
    /// Invalid, with this reason and message.
    Invalid(&'static str, String),
    /// Valid again, or valid since this process first saw it.
    Valid,
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("validator", &self.validator)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

fn key(pool: &LoadBalancerPool) -> String {
    pool_key(&pool.namespace().unwrap_or_default(), &pool.name_any())
}

/// How the per-pool memories name a pool: `namespace/name`.
pub fn pool_key(namespace: &str, name: &str) -> String {
    format!("{namespace}/{name}")
}

/// Reconciles one pool; see the module docs.
pub async fn reconcile(pool: Arc<LoadBalancerPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = match reconcile_pool(&pool, &ctx).await {
        // The namespace went into deletion after this reconcile looked:
        // the end of the pool, like its own deletion.
        Err(e) if e.namespace_terminating() => {
            debug!(pool = %key(&pool), "namespace is being deleted");
            ctx.forget(&key(&pool));
            Ok(Action::await_change())
        }
        other => other,
    };
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.as_ref().err().map(Error::reason));
    if result.is_ok() {
        lock(&ctx.failures).remove(&key(&pool));
    }
    ctx.count_remembered();
    result
}

/// Requeues a failed pool with exponential backoff: 0.5 s, 1 s, 2 s … 5 min.
pub fn error_policy(pool: Arc<LoadBalancerPool>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempt = {
        let mut failures = lock(&ctx.failures);
        let n = failures.entry(key(&pool)).or_insert(0);
        *n = n.saturating_add(1);
        *n
    };
    let delay = backoff(attempt);
    warn!(pool = %key(&pool), attempt, retry_in = ?delay, error = %error_chain(error), "reconcile failed");
    Action::requeue(delay)
}

fn backoff(attempt: u32) -> Duration {
    let exp = attempt.saturating_sub(1).min(10);
    Duration::from_millis(500 * (1u64 << exp)).min(Duration::from_secs(300))
}

fn error_chain(error: &dyn std::error::Error) -> String {
    let mut out = error.to_string();
    let mut source = error.source();
    while let Some(s) = source {
        out.push_str(": ");
        out.push_str(&s.to_string());
        source = s.source();
    }
    out
}

/// `t` without its fraction of a second. The API server stores times in
/// whole seconds; a time this process keeps must compare equal to the one
/// it reads back, or every reconcile would see a status to write.
fn whole_second_before(t: Timestamp) -> Timestamp {
    let second = t.as_second() - i64::from(t.subsec_nanosecond() < 0);
    Timestamp::from_second(second).unwrap_or(t)
}

/// The latest rollout: the later of the one this process remembers (exact)
/// and the one the status records (rounded up to the second). When the
/// status holds this process's own rollout, the exact time counts, or a
/// short `rollout.minInterval` would wait for the next whole second.
fn last_rollout(remembered: Option<Timestamp>, recorded: Option<Timestamp>) -> Option<Timestamp> {
    match (remembered, recorded) {
        (Some(exact), Some(stored)) if whole_second_after(exact) >= stored => Some(exact),
        (remembered, recorded) => remembered.max(recorded),
    }
}

/// The first whole second at or after `t`.
fn whole_second_after(t: Timestamp) -> Timestamp {
    let floor = whole_second_before(t);
    if floor == t {
        t
    } else {
        Timestamp::from_second(floor.as_second() + 1).unwrap_or(t)
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding one of these maps leaves it usable: it is a cache.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Why a reconcile stopped before publishing.
enum Halt {
    Invalid(InvalidPool),
    Failed(Error),
}

impl From<InvalidPool> for Halt {
    fn from(e: InvalidPool) -> Self {
        Halt::Invalid(e)
    }
}

impl From<Error> for Halt {
    fn from(e: Error) -> Self {
        Halt::Failed(e)
    }
}

/// The namespaced APIs one pool writes (and reads its template from).
struct Apis {
    ns: String,
    pools: Api<LoadBalancerPool>,
    config_maps: Api<ConfigMap>,
    deployments: Api<Deployment>,
}

impl Apis {
    fn new(client: &Client, ns: &str) -> Self {
        Self {
            ns: ns.to_owned(),
            pools: Api::namespaced(client.clone(), ns),
            config_maps: Api::namespaced(client.clone(), ns),
            deployments: Api::namespaced(client.clone(), ns),
        }
    }
}

async fn reconcile_pool(pool: &LoadBalancerPool, ctx: &Context) -> Result<Action, Error> {
    let ns = pool
        .namespace()
        .ok_or_else(|| Error::MissingNamespace(pool.name_any()))?;
    let deleted = pool.metadata.deletion_timestamp.is_some();
    if !deleted {
        // Before every list is complete, a Service not listed yet would look deleted.
        ctx.caches.synced().await;
    }
    if deleted || ctx.namespace_terminating(&ns) {
        // The ConfigMap is garbage-collected through its ownerReference.
        // Nothing is written into a namespace being deleted: its objects
        // go away in any order, and a missing Service then is no news.
        ctx.forget(&key(pool));
        return Ok(Action::await_change());
    }
    let apis = Apis::new(&ctx.client, &ns);
    match prepare(pool, ctx, &apis).await {
        Ok(prepared) => publish(pool, ctx, &apis, prepared).await,
        Err(Halt::Invalid(invalid)) => {
            report_invalid(pool, ctx, &apis, &invalid).await?;
            // What costs a render's whole budget is tried again only when
            // an input changes (the pool, its template, its endpoints).
            Ok(match invalid.reason {
                reason::TEMPLATE_TOO_SLOW | reason::CONFIG_TOO_LARGE => Action::await_change(),
                _ => Action::requeue(INVALID_RETRY),
            })
        }
        Err(Halt::Failed(e)) => Err(e),
    }
}

/// The pool's ConfigMap, as the caches know it.
enum Cached {
    /// No ConfigMap of that name: it is created.
    Missing,
    /// This pool's, as cached (no data; see [`crate::cache::slim_config_map`]).
    Generated(Arc<ConfigMap>),
    /// This pool's by its ownerReference, but not among the generated
    /// ConfigMaps (its label was removed): it is applied again.
    Unlabelled,
}

/// A config ready to publish.
struct Prepared {
    model: Model,
    config: RenderedConfig,
    min_interval: Duration,
    config_map: Cached,
    strategy: Strategy,
    /// The HAProxy Deployment, if it exists (not claimed by another pool).
    deployment: Option<Arc<Deployment>>,
}

/// Steps 1-4 of the flow: inputs looked up, model built, config rendered and validated.
async fn prepare(pool: &LoadBalancerPool, ctx: &Context, apis: &Apis) -> Result<Prepared, Halt> {
    let spec = &pool.spec;
    let ns = &apis.ns;
    let caches = &ctx.caches;
    let svc = &spec.backend.service;
    let min_interval = model::min_rollout_interval(spec)?;

    let service = caches
        .services
        .get(&ObjectRef::new(svc).within(ns))
        .ok_or_else(|| {
            InvalidPool::new(
                reason::SERVICE_NOT_FOUND,
                format!("spec.backend.service: Service {ns}/{svc} not found"),
            )
        })?;
    let port = model::resolve_port(spec, &service)?;
    let slices = caches.slices.of_service(ns, svc);
    let model = model::build(pool, &port, &slices)?;

    let user_template = match &spec.template {
        None => None,
        Some(t) => {
            let cm = apis
                .config_maps
                .get_opt(&t.config_map)
                .await
                .during(|| format!("get template ConfigMap {ns}/{}", t.config_map))?
                .ok_or_else(|| {
                    InvalidPool::new(
                        reason::TEMPLATE_NOT_FOUND,
                        format!(
                            "spec.template.configMap: ConfigMap {ns}/{} not found",
                            t.config_map
                        ),
                    )
                })?;
            let data = cm.data.unwrap_or_default();
            let source = data.get(&t.key).cloned().ok_or_else(|| {
                let keys: Vec<&str> = data.keys().map(String::as_str).collect();
                InvalidPool::new(
                    reason::TEMPLATE_NOT_FOUND,
                    format!(
                        "spec.template.key: ConfigMap {ns}/{} has no key {:?} (it has: {})",
                        t.config_map,
                        t.key,
                        keys.join(", ")
                    ),
                )
            })?;
            Some((source, format!("{}/{}", t.config_map, t.key)))
        }
    };
    let template = match &user_template {
        None => Template::BuiltIn,
        Some((source, origin)) => Template::User { source, origin },
    };
    let config = match &user_template {
        None => ctx.renderer.render(template, &model)?,
        Some((source, origin)) => render_user(source, origin, &model).await?,
    };

    validate(ctx, &key(pool), template, &model, &config).await?;

    // Last of the checks, right before the write: are the ConfigMap and
    // the Deployment this pool's?
    // The generated ConfigMaps first: they see lbpool's own writes as soon
    // as any watch does; then every ConfigMap's name and owners.
    let cm_name = pool.config_map_name();
    let config_map = match caches.config_maps.get(&ObjectRef::new(&cm_name).within(ns)) {
        Some(cached) => {
            desired::config_map_claim(pool, Some(&cached.metadata))?;
            Cached::Generated(cached)
        }
        None => match caches
            .config_map_names
            .get(&ObjectRef::new(&cm_name).within(ns))
        {
            Some(other) => {
                desired::config_map_claim(pool, Some(&other.metadata))?;
                Cached::Unlabelled
            }
            None => Cached::Missing,
        },
    };
    let deployment = caches
        .deployments
        .get(&ObjectRef::new(&spec.haproxy.deployment).within(ns));
    if let Some(d) = &deployment
        && let desired::DeploymentClaim::Pool(other) = desired::deployment_claim(pool, d)
        // A claim of a pool deleted since is void: the Deployment is free.
        && caches.pools.get(&ObjectRef::new(&other).within(ns)).is_some()
    {
        return Err(desired::deployment_conflict(pool, &other).into());
    }
    if let Some(d) = &deployment {
        desired::stats_secret_used(pool, d)?;
    }
    Ok(Prepared {
        model,
        config,
        min_interval,
        config_map,
        strategy: Strategy::from(spec.reload.strategy),
        deployment,
    })
}

/// Renders a user template off the async runtime, within [`RENDER_TIMEOUT`]
/// (the renderer also bounds its work and output, so a thread left behind
/// by a timeout ends soon).
async fn render_user(source: &str, origin: &str, model: &Model) -> Result<RenderedConfig, Halt> {
    let (source, origin_owned, model_owned) = (source.to_owned(), origin.to_owned(), model.clone());
    let task = tokio::task::spawn_blocking(move || {
        crate::render::render_user(&source, &origin_owned, &model_owned)
    });
    match tokio::time::timeout(RENDER_TIMEOUT, task).await {
        Ok(Ok(rendered)) => Ok(rendered?),
        Ok(Err(join)) => Err(InvalidPool::new(
            reason::TEMPLATE_INVALID,
            format!("template {origin}: rendering failed: {join}"),
        )
        .into()),
        Err(_) => Err(InvalidPool::new(
            reason::TEMPLATE_TOO_SLOW,
            format!("template {origin}: rendering took longer than {RENDER_TIMEOUT:?}"),
        )
        .into()),
    }
}

/// Runs the allowlist, then `haproxy -c` where it can fail. For the built-in template that is
/// the config's skeleton ([`Model::skeleton`]): server lines are built from
/// values the model has checked and the pool's name is a checked DNS name,
/// so a skeleton accepted once stands for every pool with those settings
/// and every server set: a change of endpoints alone is not checked again.
/// A user template may use the servers in any way; its whole config is
/// checked whenever it changes.
async fn validate(
    ctx: &Context,
    pool_key: &str,
    template: Template<'_>,
    model: &Model,
    config: &RenderedConfig,
) -> Result<(), Halt> {
    let skeleton;
    let checked = match template {
        Template::BuiltIn => {
            skeleton = ctx.renderer.render(template, &model.skeleton())?;
            if lock(&ctx.skeletons).contains(&skeleton.hash) {
                return Ok(());
            }
            &skeleton
        }
        Template::User { .. } => {
            if lock(&ctx.validated).get(pool_key) == Some(&config.hash) {
                return Ok(());
            }
            config
        }
    };
    // Before anything runs: the allowlist (the validator applies it again).
    let verdict = match lbpool_checker::check(&checked.text, &lbpool_checker::LBPOOL) {
        Ok(()) => ctx.validator.check(&checked.text).await,
        Err(refusal) => Err(ValidationError::Refused(refusal)),
    };
    match verdict {
        Ok(()) => {
            match template {
                Template::BuiltIn => {
                    let mut accepted = lock(&ctx.skeletons);
                    if accepted.len() >= SKELETONS_KEPT {
                        accepted.clear();
                    }
                    accepted.insert(checked.hash.clone());
                }
                Template::User { .. } => {
                    lock(&ctx.validated).insert(pool_key.to_owned(), checked.hash.clone());
                }
            }
            Ok(())
        }
        Err(ValidationError::Refused(refusal)) => Err(InvalidPool::new(
            reason::CONFIG_REFUSED,
            format!("config {} refused: {refusal}", config.revision()),
        )
        .into()),
        Err(ValidationError::Rejected(message)) => Err(InvalidPool::new(
            reason::HAPROXY_REJECTED,
            format!(
                "haproxy -c rejected config {}: {message}",
                config.revision()
            ),
        )
        .into()),
        Err(e @ ValidationError::Unavailable { .. }) => Err(Error::from(e).into()),
    }
}

/// Steps 5-7: what the reload strategy asks for (the ConfigMap, the
/// Deployment annotation), then the status.
///
/// The ConfigMap always holds the config the Deployment's annotation names:
/// a config that waits for `rollout.minInterval` is not written until its
/// rollout, so an HAProxy pod that restarts meanwhile loads the config its
/// ReplicaSet was rolled for. Nothing is sent when nothing differs.
async fn publish(
    pool: &LoadBalancerPool,
    ctx: &Context,
    apis: &Apis,
    p: Prepared,
) -> Result<Action, Error> {
    let ns = &apis.ns;
    let apply = PatchParams::apply(MANAGER).force();
    let now = Timestamp::now();
    // The time a rollout is recorded with, at the precision the API stores
    // (rounded up: the rate limit may wait a little longer, never less).
    let rolled_at = whole_second_after(now);
    let deployment_name = &pool.spec.haproxy.deployment;
    let pool_key = key(pool);
    let recorded = pool
        .status
        .as_ref()
        .and_then(|s| s.last_rollout_time.as_ref())
        .map(|t| t.0);
    let last_rollout = last_rollout(lock(&ctx.rollouts).get(&pool_key).copied(), recorded);
    let wanted = desired::config_map(pool, &p.config);
    let step = p.strategy.step(&Found {
        config_map: match &p.config_map {
            Cached::Missing => ConfigMapNow::Missing,
            Cached::Generated(existing) if desired::config_map_current(existing, &wanted) => {
                ConfigMapNow::Current
            }
            Cached::Generated(_) | Cached::Unlabelled => ConfigMapNow::Stale,
        },
        deployed: p.deployment.as_deref().map(desired::deployed_hash),
        wanted: &p.config.hash,
        last_rollout,
        now,
        stamp: rolled_at,
        min_interval: p.min_interval,
    });
    let cm_name = pool.config_map_name();
    match step.config_map {
        ConfigMapWrite::Keep => {}
        ConfigMapWrite::Create => {
            let created = apis
                .config_maps
                .create(
                    &PostParams {
                        field_manager: Some(MANAGER.to_owned()),
                        ..PostParams::default()
                    },
                    &wanted,
                )
                .await;
            match created {
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    debug!(pool = %pool_key, config_map = %cm_name, "ConfigMap exists, the cache is behind; looking again");
                    return Ok(Action::requeue(CACHE_BEHIND_RETRY));
                }
                other => other.during(|| format!("create ConfigMap {ns}/{cm_name}"))?,
            };
        }
        ConfigMapWrite::Apply => {
            apis.config_maps
                .patch(&cm_name, &apply, &Patch::Apply(wanted))
                .await
                .during(|| format!("apply ConfigMap {ns}/{cm_name}"))?;
        }
    }
    let write_config_map = step.config_map != ConfigMapWrite::Keep;

    // What HAProxy serves, for the status: the Deployment as read, or as the
    // rollout patch returned it; InPlace: what the agents report.
    let mut served = p.deployment.as_deref().map(|d| match p.strategy {
        Strategy::RollingUpdate => desired::served(d),
        Strategy::InPlace => {
            let pods = ctx.caches.agents_of(ns, &pool.name_any());
            let reports: Vec<_> = pods.iter().map(|p| agents::Report::of(p)).collect();
            agents::in_place(d, &reports, &p.config.hash)
        }
    });
    let state = match (&p.deployment, step.roll) {
        (Some(d), true) => {
            let deployed = desired::deployed_hash(d).map(str::to_owned);
            let patched = apis
                .deployments
                .patch(
                    deployment_name,
                    &apply,
                    &Patch::Apply(desired::deployment_patch(
                        deployment_name,
                        &pool.name_any(),
                        &p.config.hash,
                    )),
                )
                .await
                .during(|| format!("patch Deployment {ns}/{deployment_name}"))?;
            ctx.metrics.rollouts.inc();
            info!(pool = %pool_key, deployment = %deployment_name, config = p.config.revision(), backends = p.model.servers.len(), "rolling HAProxy for a new config");
            let note = format!(
                "Deployment {deployment_name} rolls for config {} ({} backends, was {})",
                p.config.revision(),
                p.model.servers.len(),
                deployed.as_deref().map_or("none", lbpool_wire::revision)
            );
            // The Deployment at its new version is the related object, so
            // each rollout is an Event of its own, not a repeat in a series.
            let mut ev = event(EventType::Normal, "RolloutTriggered", "Rollout", note);
            ev.secondary = Some(ObjectReference {
                resource_version: patched.resource_version(),
                ..patched.object_ref(&())
            });
            publish_event(ctx, pool, ev);
            served = Some(desired::served(&patched));
            DeploymentState::Rolled { at: rolled_at }
        }
        _ => step.state,
    };
    if let DeploymentState::Rolled { .. } = state {
        lock(&ctx.rollouts).insert(pool_key.clone(), now);
        if !step.roll {
            info!(pool = %pool_key, config_map = %cm_name, config = p.config.revision(), backends = p.model.servers.len(), "config published to the agents");
        }
    }
    ctx.metrics.update(match (step.roll, write_config_map) {
        (true, _) => UpdateKind::Rolled,
        (false, true) => UpdateKind::Published,
        (false, false) => UpdateKind::Noop,
    });

    let before = lock(&ctx.reported).insert(pool_key.clone(), Report::Valid);
    let was_invalid = match before {
        Some(Report::Invalid(reason, _)) => Some(reason.to_owned()),
        Some(Report::Valid) => None,
        // First look at this pool in this process: the status is all there is.
        None => desired::invalid_reason(pool.status.as_ref()).map(|(r, _)| r.to_owned()),
    };
    if let Some(reason) = was_invalid {
        let note = format!(
            "config {} is valid again (was {reason})",
            p.config.revision()
        );
        publish_event(
            ctx,
            pool,
            event(EventType::Normal, "ConfigValid", "Render", note),
        );
    }
    let status = desired::published_status(
        pool,
        &p.model,
        &p.config,
        &state,
        served.as_ref(),
        last_rollout.map(whole_second_after),
        &Time(whole_second_before(now)),
    );
    // While the new config waits, the status repeats what the ConfigMap
    // holds: taken from a cached pool that is behind the ConfigMap, it would
    // say something older. The fresh pool's watch event comes soon.
    let cached_is_behind = matches!(state, DeploymentState::Pending { .. })
        && (write_config_map
            || cached_hash(&p.config_map)
                != pool.status.as_ref().and_then(|s| s.config_hash.as_deref()));
    if !cached_is_behind {
        write_status(pool, apis, status).await?;
    }
    Ok(match state {
        // Wake up just after the interval ends; a little slack avoids waking early.
        DeploymentState::Pending { wait } => Action::requeue(wait + Duration::from_millis(50)),
        _ => Action::requeue(RESYNC),
    })
}

fn cached_hash(cm: &Cached) -> Option<&str> {
    match cm {
        Cached::Generated(cm) => desired::published_hash(cm),
        Cached::Missing | Cached::Unlabelled => None,
    }
}

/// Leaves the ConfigMap and the Deployment as they are; says why in the
/// status, an Event (once per new reason) and a log line.
async fn report_invalid(
    pool: &LoadBalancerPool,
    ctx: &Context,
    apis: &Apis,
    invalid: &InvalidPool,
) -> Result<(), Error> {
    let current = Report::Invalid(invalid.reason, invalid.message.clone());
    let before = lock(&ctx.reported).insert(key(pool), current.clone());
    let already_said = match before {
        Some(previous) => previous == current,
        None => {
            desired::invalid_reason(pool.status.as_ref())
                == Some((invalid.reason, invalid.message.as_str()))
        }
    };
    if !already_said {
        warn!(pool = %key(pool), reason = invalid.reason, message = %invalid.message, "pool cannot be served; the last good config stays");
        ctx.metrics.invalid.inc();
        if matches!(
            invalid.reason,
            reason::CONFIG_MAP_CONFLICT | reason::DEPLOYMENT_CONFLICT
        ) {
            ctx.metrics.conflict(invalid.reason);
        }
        let ev = event(
            EventType::Warning,
            invalid.reason,
            "Render",
            invalid.message.clone(),
        );
        publish_event(ctx, pool, ev);
    }
    let status =
        desired::invalid_status(pool, invalid, &Time(whole_second_before(Timestamp::now())));
    write_status(pool, apis, status).await
}

async fn write_status(
    pool: &LoadBalancerPool,
    apis: &Apis,
    status: LoadBalancerPoolStatus,
) -> Result<(), Error> {
    if pool.status.as_ref() == Some(&status) {
        return Ok(());
    }
    let name = pool.name_any();
    let patch = json!({
        "apiVersion": LoadBalancerPool::api_version(&()),
        "kind": LoadBalancerPool::kind(&()),
        "status": status,
    });
    match apis
        .pools
        .patch_status(
            &name,
            &PatchParams::apply(MANAGER).force(),
            &Patch::Apply(patch),
        )
        .await
    {
        // Deleted while this reconcile ran: nothing to report on, no error.
        Err(kube::Error::Api(e)) if e.code == 404 => Ok(()),
        other => other
            .map(drop)
            .during(|| format!("apply status of LoadBalancerPool {}/{name}", apis.ns)),
    }
}

/// The longest Event note the API server takes (`events.k8s.io/v1`: 1 KiB).
const NOTE_MAX: usize = 1024;

fn event(type_: EventType, reason: &str, action: &str, mut note: String) -> Event {
    if note.len() > NOTE_MAX {
        let mut end = NOTE_MAX - '…'.len_utf8();
        while !note.is_char_boundary(end) {
            end -= 1;
        }
        note.truncate(end);
        note.push('…');
    }
    Event {
        type_,
        reason: reason.to_owned(),
        note: Some(note),
        action: action.to_owned(),
        secondary: None,
    }
}

/// Events are best effort: sent beside the reconcile, which does not wait
/// for them (a rollout's Event would otherwise add a round trip to every
/// change); a failure to record one is logged, not retried.
fn publish_event(ctx: &Context, pool: &LoadBalancerPool, ev: Event) {
    // A recorder per Event: kube's keeps every Event it sent for 6 minutes
    // to count repeats, and lbpool says each thing once (a new reason, a
    // rollout of a new Deployment version), so there is nothing to count,
    // and memory must not hold the Events of pools long deleted.
    let recorder = Recorder::new(ctx.client.clone(), ctx.reporter.clone());
    let (reference, pool) = (pool.object_ref(&()), key(pool));
    let in_flight = ctx.events.clone();
    tokio::spawn(async move {
        // Never closed: the permit always comes.
        let _permit = in_flight.acquire_owned().await;
        match recorder.publish(&ev, &reference).await {
            Ok(()) => {}
            Err(e) if crate::error::namespace_terminating(&e) => {
                debug!(pool = %pool, "no Event: the namespace is being deleted");
            }
            Err(e) => warn!(pool = %pool, error = %e, "could not record an Event"),
        }
    });
}

#[cfg(test)]
mod tests {
    use super::*;
    use futures::future::BoxFuture;
    use kube::runtime::events::Reporter;
    use lbpool_checker::ValidationError;

    #[derive(Debug)]
    struct NoValidator;

    impl Validator for NoValidator {
        fn check<'a>(&'a self, _: &'a str) -> BoxFuture<'a, Result<(), ValidationError>> {
            Box::pin(async { Ok(()) })
        }
    }

    #[test]
    fn the_exact_time_of_an_own_rollout_counts() {
        let exact = Timestamp::from_second(100)
            .and_then(|t| t.checked_add(jiff::SignedDuration::from_millis(200)))
            .expect("time");
        let stored = Timestamp::from_second(101).expect("time");
        // The status holds this rollout, rounded up.
        assert_eq!(last_rollout(Some(exact), Some(stored)), Some(exact));
        // A newer rollout of another process (a new leader) counts.
        let newer = Timestamp::from_second(105).expect("time");
        assert_eq!(last_rollout(Some(exact), Some(newer)), Some(newer));
        assert_eq!(last_rollout(None, Some(stored)), Some(stored));
        assert_eq!(last_rollout(Some(exact), None), Some(exact));
    }

    #[tokio::test]
    async fn a_deleted_pool_is_forgotten_without_an_api_call() {
        // A client whose API is never answered: any request would hang the test.
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = Client::new(service, "demo");
        let reporter = Reporter {
            controller: MANAGER.into(),
            instance: None,
        };
        let ctx = Arc::new(Context::new(
            client,
            Box::new(NoValidator),
            reporter,
            Metrics::default(),
            crate::cache::Caches::new().0,
        ));
        for other in ["demo/webapp", "demo/other"] {
            lock(&ctx.validated).insert(other.into(), "sha256:x".into());
            lock(&ctx.rollouts).insert(other.into(), Timestamp::now());
            lock(&ctx.reported).insert(other.into(), Report::Valid);
        }
        lock(&ctx.failures).insert("demo/webapp".into(), 3);
        assert_eq!(ctx.remembered(), 2);

        let mut pool = crate::testing::pool();
        pool.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let action = reconcile(Arc::new(pool), ctx.clone())
            .await
            .expect("no error");
        assert_eq!(action, Action::await_change());
        assert_eq!(ctx.remembered(), 1, "only demo/other is left");
        ctx.forget("demo/other");
        assert_eq!(ctx.remembered(), 0);
    }

    #[test]
    fn times_are_kept_at_the_precision_the_api_stores() {
        let t = Timestamp::from_second(1_700_000_000).unwrap();
        let later = t + jiff::SignedDuration::from_millis(250);
        assert_eq!(whole_second_before(later), t);
        assert_eq!(
            whole_second_after(later),
            Timestamp::from_second(1_700_000_001).unwrap()
        );
        assert_eq!(whole_second_after(t), t);
        // Negative seconds (before 1970) floor the same way.
        let early = Timestamp::from_second(-5).unwrap() - jiff::SignedDuration::from_millis(1);
        assert_eq!(whole_second_before(early).as_second(), -6);
    }

    #[test]
    fn an_event_note_fits_what_the_api_takes() {
        let long = "é".repeat(2000);
        let note = event(EventType::Warning, "R", "A", long)
            .note
            .expect("note");
        assert!(note.len() <= NOTE_MAX, "{}", note.len());
        assert!(note.ends_with('…'));
        let short = event(EventType::Normal, "R", "A", "fine".into());
        assert_eq!(short.note.as_deref(), Some("fine"));
    }

    #[test]
    fn backoff_doubles_up_to_five_minutes() {
        assert_eq!(backoff(1), Duration::from_millis(500));
        assert_eq!(backoff(2), Duration::from_secs(1));
        assert_eq!(backoff(4), Duration::from_secs(4));
        assert_eq!(backoff(30), Duration::from_secs(300));
    }
}
