//! I/O: one reconcile of one pool, in three parts: read, plan, write.
//!
//! `read` looks up the Service, its EndpointSlices, the ConfigMap, the
//! Deployment and the agents' pods in the watch caches
//! ([`crate::cache`]), reads a user template, and builds, renders and
//! checks the config (the allowlist, then `haproxy -c` where a check can
//! fail) into a [`plan::Input`]. [`plan::plan`] (pure) decides what to
//! write; `write` carries it out: the ConfigMap, the Deployment's
//! pod-template annotation, the Events, then the status, each only when
//! it differs. A pool that cannot be served keeps its last good ConfigMap
//! and says why in its status. The leader Lease ([`crate::leader`]) is the
//! only other writer.

use std::collections::HashSet;
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
use lbpool_checker::{ValidationError, Validator};
use lbpool_crds::{LoadBalancerPool, LoadBalancerPoolStatus};
use lbpool_wire::FIELD_MANAGER;
use serde_json::json;
use tracing::{debug, info, warn};

use crate::agents;
use crate::cache::Caches;
use crate::conditions::reason;
use crate::desired::rollout::{self, whole_second_before};
use crate::desired::served::{Served, served};
use crate::desired::{config_map, deployment, status};
use crate::error::{During as _, Error};
use crate::memory::{Memories, Verdict};
use crate::metrics::Metrics;
use crate::model::{self, InvalidPool, Model};
use crate::plan::{self, INVALID_RETRY, Input, Plan};
use crate::render::{RenderedConfig, Renderer, Template};
use crate::strategy::{ConfigMapWrite, Strategy};

/// How long a user template may take to render.
const RENDER_TIMEOUT: Duration = Duration::from_secs(2);
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
    /// What this process remembers of each pool.
    pub memory: Memories,
    /// Bounds the Events in flight ([`EVENTS_IN_FLIGHT`]).
    events: Arc<tokio::sync::Semaphore>,
    /// Hashes of the skeletons `haproxy -c` accepted (built-in template;
    /// shared by every pool with the same settings). Bounded: emptied when
    /// it reaches [`SKELETONS_KEPT`], so memory does not follow how many
    /// settings were ever seen.
    skeletons: Mutex<HashSet<String>>,
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
            memory: Memories::default(),
            events: Arc::new(tokio::sync::Semaphore::new(EVENTS_IN_FLIGHT)),
            skeletons: Mutex::default(),
        }
    }

    fn namespace_terminating(&self, ns: &str) -> bool {
        self.caches
            .namespaces
            .get(&ObjectRef::new(ns))
            .is_some_and(|n| n.metadata.deletion_timestamp.is_some())
    }

    /// Drops what this process remembers of a pool that is gone.
    pub fn forget(&self, pool: &ObjectRef<LoadBalancerPool>) {
        self.memory.forget(pool);
        self.metrics
            .forget_pool(pool.namespace.as_deref().unwrap_or_default(), &pool.name);
        self.count_remembered();
    }

    fn count_remembered(&self) {
        let n = i64::try_from(self.memory.len()).unwrap_or(i64::MAX);
        self.metrics.remembered_pools.set(n);
    }
}

impl std::fmt::Debug for Context {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Context")
            .field("validator", &self.validator)
            .field("metrics", &self.metrics)
            .finish_non_exhaustive()
    }
}

/// How log lines name a pool: `namespace/name`.
fn key(pool: &LoadBalancerPool) -> String {
    format!(
        "{}/{}",
        pool.namespace().unwrap_or_default(),
        pool.name_any()
    )
}

fn pool_ref(pool: &LoadBalancerPool) -> ObjectRef<LoadBalancerPool> {
    ObjectRef::from_obj(pool)
}

/// Reconciles one pool; see the module docs.
pub async fn reconcile(pool: Arc<LoadBalancerPool>, ctx: Arc<Context>) -> Result<Action, Error> {
    let started = std::time::Instant::now();
    let result = match reconcile_pool(&pool, &ctx).await {
        // The namespace went into deletion after this reconcile looked:
        // the end of the pool, like its own deletion.
        Err(e) if e.namespace_terminating() => {
            debug!(pool = %key(&pool), "namespace is being deleted");
            ctx.forget(&pool_ref(&pool));
            Ok(Action::await_change())
        }
        other => other,
    };
    ctx.metrics
        .observe_reconcile(started.elapsed(), result.as_ref().err().map(Error::reason));
    if result.is_ok() {
        ctx.memory.update(&pool_ref(&pool), |m| m.failures = 0);
    }
    ctx.count_remembered();
    result
}

/// Requeues a failed pool with exponential backoff: 0.5 s, 1 s, 2 s … 5 min.
pub fn error_policy(pool: Arc<LoadBalancerPool>, error: &Error, ctx: Arc<Context>) -> Action {
    let attempt = ctx.memory.update(&pool_ref(&pool), |m| {
        m.failures = m.failures.saturating_add(1);
        m.failures
    });
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
        ctx.forget(&pool_ref(pool));
        return Ok(Action::await_change());
    }
    let apis = Apis::new(&ctx.client, &ns);
    match read(pool, ctx, &apis).await {
        Ok(input) => write(pool, ctx, &apis, input).await,
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

/// Everything the plan needs: inputs looked up, model built, config
/// rendered and checked, the ConfigMap and the Deployment claimed.
async fn read(pool: &LoadBalancerPool, ctx: &Context, apis: &Apis) -> Result<Input, Halt> {
    let min_interval = model::min_rollout_interval(&pool.spec)?;
    let memory = ctx.memory.of(&pool_ref(pool));
    let model = model_of(pool, &ctx.caches, &apis.ns)?;
    let user_template = user_template(pool, apis).await?;
    let template = match &user_template {
        None => Template::BuiltIn,
        Some((source, origin)) => Template::User { source, origin },
    };
    let config = match template {
        Template::BuiltIn => ctx.renderer.render(template, &model)?,
        Template::User { source, origin } => render_user(source, origin, &model).await?,
    };
    let validated = memory.validated.as_deref();
    validate(ctx, pool, template, &model, &config, validated).await?;
    // Last of the checks, right before the write: are the ConfigMap and
    // the Deployment this pool's?
    let (config_map, config_map_unlabelled) = claim_config_map(pool, &ctx.caches, &apis.ns)?;
    let deployment = claim_deployment(pool, &ctx.caches, &apis.ns)?;
    let strategy = Strategy::from(pool.spec.reload.strategy);
    let recorded = pool
        .status
        .as_ref()
        .and_then(|s| s.last_rollout_time.as_ref())
        .map(|t| t.0);
    Ok(Input {
        served: served_now(ctx, pool, strategy, deployment.as_deref(), &config.hash),
        model,
        config,
        min_interval,
        strategy,
        config_map,
        config_map_unlabelled,
        deployment,
        last_rollout: rollout::last_rollout(memory.rolled, recorded),
        verdict: memory.verdict,
        now: Timestamp::now(),
    })
}

/// The backend model: the pool's Service, its port and its EndpointSlices.
fn model_of(pool: &LoadBalancerPool, caches: &Caches, ns: &str) -> Result<Model, InvalidPool> {
    let spec = &pool.spec;
    let svc = &spec.backend.service;
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
    model::build(pool, &port, &slices)
}

/// The pool's template and where it comes from (`configmap/key`), if it
/// names one: read from the API, not cached (template ConfigMaps are
/// watched by name only, [`crate::cache::slim_names`]).
async fn user_template(
    pool: &LoadBalancerPool,
    apis: &Apis,
) -> Result<Option<(String, String)>, Halt> {
    let Some(t) = &pool.spec.template else {
        return Ok(None);
    };
    let ns = &apis.ns;
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
    let mut data = cm.data.unwrap_or_default();
    let source = data.remove(&t.key).ok_or_else(|| {
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
    Ok(Some((source, format!("{}/{}", t.config_map, t.key))))
}

/// The pool's generated ConfigMap as cached, and whether one of that name
/// exists outside the generated ones; an error if it is not this pool's.
/// The generated ConfigMaps first: they see lbpool's own writes as soon as
/// any watch does; then every ConfigMap's name and owners.
fn claim_config_map(
    pool: &LoadBalancerPool,
    caches: &Caches,
    ns: &str,
) -> Result<(Option<Arc<ConfigMap>>, bool), InvalidPool> {
    let name = pool.config_map_name();
    if let Some(cached) = caches.config_maps.get(&ObjectRef::new(&name).within(ns)) {
        config_map::claim(pool, Some(&cached.metadata))?;
        return Ok((Some(cached), false));
    }
    match caches
        .config_map_names
        .get(&ObjectRef::new(&name).within(ns))
    {
        Some(other) => {
            config_map::claim(pool, Some(&other.metadata))?;
            Ok((None, true))
        }
        None => Ok((None, false)),
    }
}

/// The HAProxy Deployment, if it exists; an error if another pool rolls it
/// or it does not take the stats credentials from the pool's Secret.
fn claim_deployment(
    pool: &LoadBalancerPool,
    caches: &Caches,
    ns: &str,
) -> Result<Option<Arc<Deployment>>, InvalidPool> {
    let Some(d) = caches
        .deployments
        .get(&ObjectRef::new(&pool.spec.haproxy.deployment).within(ns))
    else {
        return Ok(None);
    };
    if let deployment::DeploymentClaim::Pool(other) = deployment::claim(pool, &d)
        // A claim of a pool deleted since is void: the Deployment is free.
        && caches.pools.get(&ObjectRef::new(&other).within(ns)).is_some()
    {
        return Err(deployment::conflict(pool, &other));
    }
    deployment::stats_secret_used(pool, &d)?;
    Ok(Some(d))
}

/// What HAProxy serves now: the Deployment's rollout, or `InPlace`, what
/// the agents report.
fn served_now(
    ctx: &Context,
    pool: &LoadBalancerPool,
    strategy: Strategy,
    deployment: Option<&Deployment>,
    wanted: &str,
) -> Option<Served> {
    let d = deployment?;
    Some(match strategy {
        Strategy::RollingUpdate => served(d),
        Strategy::InPlace => {
            let ns = pool.namespace().unwrap_or_default();
            let pods = ctx.caches.agents_of(&ns, &pool.name_any());
            let reports: Vec<_> = pods.iter().map(|p| agents::AgentReport::of(p)).collect();
            agents::in_place(d, &reports, wanted)
        }
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
/// checked whenever it changes (`validated`: the hash last accepted for
/// this pool).
async fn validate(
    ctx: &Context,
    pool: &LoadBalancerPool,
    template: Template<'_>,
    model: &Model,
    config: &RenderedConfig,
    validated: Option<&str>,
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
            if validated == Some(config.hash.as_str()) {
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
            remember_accepted(ctx, pool, template, &checked.hash);
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

/// Remembers a checked config as accepted: a skeleton for every pool, a
/// user template's config for its pool.
fn remember_accepted(ctx: &Context, pool: &LoadBalancerPool, template: Template<'_>, hash: &str) {
    match template {
        Template::BuiltIn => {
            let mut accepted = lock(&ctx.skeletons);
            if accepted.len() >= SKELETONS_KEPT {
                accepted.clear();
            }
            accepted.insert(hash.to_owned());
        }
        Template::User { .. } => {
            ctx.memory
                .update(&pool_ref(pool), |m| m.validated = Some(hash.to_owned()));
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    // A panic while holding the set leaves it usable: it is a cache.
    m.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Carries out the plan for a valid pool: the ConfigMap, the rollout, what
/// is remembered, the Events, the status.
async fn write(
    pool: &LoadBalancerPool,
    ctx: &Context,
    apis: &Apis,
    input: Input,
) -> Result<Action, Error> {
    let plan = plan::plan(pool, &input);
    if write_config_map(pool, apis, &plan).await? == Written::CacheBehind {
        return Ok(Action::requeue(CACHE_BEHIND_RETRY));
    }
    let served = match roll(pool, ctx, apis, &plan).await? {
        Some(patched) => Some(patched),
        None => input.served.clone(),
    };
    let changed_at = plan.deployment.changed_at();
    ctx.memory.update(&pool_ref(pool), |m| {
        if changed_at.is_some() {
            m.rolled = Some(input.now);
        }
        m.verdict = Some(Verdict::Valid);
    });
    if changed_at.is_some() && !plan.rolls() {
        info!(pool = %key(pool), config_map = %pool.config_map_name(), config = input.config.revision(), backends = input.model.servers.len(), "config published to the agents");
    }
    ctx.metrics.update(plan.update);
    if let Some(note) = &plan.valid_again {
        let ev = event(EventType::Normal, "ConfigValid", "Render", note.clone());
        publish_event(ctx, pool, ev);
    }
    let status = plan::status(pool, &input, &plan, served.as_ref());
    // The gauges also of a status that did not change (after a restart).
    if let Some(s) = status.as_ref().or(pool.status.as_ref()) {
        ctx.metrics.pool(&apis.ns, &pool.name_any(), s);
    }
    if let Some(status) = status {
        write_status(pool, apis, status).await?;
    }
    Ok(Action::requeue(plan.requeue))
}

/// What became of the ConfigMap write.
#[derive(Debug, PartialEq, Eq)]
enum Written {
    Done,
    /// It was to be created, and exists: the cache is behind.
    CacheBehind,
}

async fn write_config_map(
    pool: &LoadBalancerPool,
    apis: &Apis,
    plan: &Plan,
) -> Result<Written, Error> {
    let (ns, name) = (&apis.ns, pool.config_map_name());
    match plan.config_map_write {
        ConfigMapWrite::Keep => {}
        ConfigMapWrite::Create => {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.to_owned()),
                ..PostParams::default()
            };
            match apis.config_maps.create(&params, &plan.config_map).await {
                Err(kube::Error::Api(e)) if e.code == 409 => {
                    debug!(pool = %key(pool), config_map = %name, "ConfigMap exists, the cache is behind; looking again");
                    return Ok(Written::CacheBehind);
                }
                other => other.during(|| format!("create ConfigMap {ns}/{name}"))?,
            };
        }
        ConfigMapWrite::Apply => {
            let patch = Patch::Apply(&plan.config_map);
            apis.config_maps
                .patch(&name, &apply_params(), &patch)
                .await
                .during(|| format!("apply ConfigMap {ns}/{name}"))?;
        }
    }
    Ok(Written::Done)
}

/// Rolls the Deployment when the plan says so, with its Event; returns what
/// it serves as the patch returned it.
async fn roll(
    pool: &LoadBalancerPool,
    ctx: &Context,
    apis: &Apis,
    plan: &Plan,
) -> Result<Option<Served>, Error> {
    let (Some(patch), Some(note)) = (&plan.rollout_patch, &plan.rollout_note) else {
        return Ok(None);
    };
    let name = &pool.spec.haproxy.deployment;
    let patched = apis
        .deployments
        .patch(name, &apply_params(), &Patch::Apply(patch))
        .await
        .during(|| format!("patch Deployment {}/{name}", apis.ns))?;
    ctx.metrics.rollouts.inc();
    info!(pool = %key(pool), deployment = %name, %note, "rolling HAProxy for a new config");
    // The Deployment at its new version is the related object, so each
    // rollout is an Event of its own, not a repeat in a series.
    let mut ev = event(
        EventType::Normal,
        "RolloutTriggered",
        "Rollout",
        note.clone(),
    );
    ev.secondary = Some(ObjectReference {
        resource_version: patched.resource_version(),
        ..patched.object_ref(&())
    });
    publish_event(ctx, pool, ev);
    Ok(Some(served(&patched)))
}

fn apply_params() -> PatchParams {
    PatchParams::apply(FIELD_MANAGER).force()
}

/// Leaves the ConfigMap and the Deployment as they are; says why in the
/// status, an Event (once per new reason) and a log line.
async fn report_invalid(
    pool: &LoadBalancerPool,
    ctx: &Context,
    apis: &Apis,
    invalid: &InvalidPool,
) -> Result<(), Error> {
    let now = Verdict::Invalid(invalid.reason, invalid.message.clone());
    let before = ctx
        .memory
        .update(&pool_ref(pool), |m| m.verdict.replace(now));
    if !plan::already_said(pool, before.as_ref(), invalid) {
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
    let status = status::invalid(pool, invalid, &Time(whole_second_before(Timestamp::now())));
    ctx.metrics.pool(&apis.ns, &pool.name_any(), &status);
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
        .patch_status(&name, &apply_params(), &Patch::Apply(patch))
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

    #[tokio::test]
    async fn a_deleted_pool_is_forgotten_without_an_api_call() {
        // A client whose API is never answered: any request would hang the test.
        let (service, _handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let client = Client::new(service, "demo");
        let reporter = Reporter {
            controller: FIELD_MANAGER.into(),
            instance: None,
        };
        let ctx = Arc::new(Context::new(
            client,
            Box::new(NoValidator),
            reporter,
            Metrics::default(),
            crate::cache::Caches::new().0,
        ));
        let (webapp, other) = (
            ObjectRef::new("webapp").within("demo"),
            ObjectRef::new("other").within("demo"),
        );
        for pool in [&webapp, &other] {
            ctx.memory.update(pool, |m| {
                m.validated = Some("sha256:x".into());
                m.rolled = Some(Timestamp::now());
                m.verdict = Some(Verdict::Valid);
            });
        }
        ctx.memory.update(&webapp, |m| m.failures = 3);
        assert_eq!(ctx.memory.len(), 2);

        let mut pool = crate::testing::pool();
        pool.metadata.deletion_timestamp = Some(Time(Timestamp::now()));
        let action = reconcile(Arc::new(pool), ctx.clone())
            .await
            .expect("no error");
        assert_eq!(action, Action::await_change());
        assert_eq!(ctx.memory.len(), 1, "only demo/other is left");
        assert_eq!(ctx.metrics.remembered_pools.get(), 1);
        ctx.forget(&other);
        assert!(ctx.memory.is_empty());
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
