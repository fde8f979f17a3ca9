//! The agent process: watches its pool's ConfigMap, applies each new config
//! to the HAProxy beside it ([`Applier`]) and says on its own pod which
//! config HAProxy serves (the keys of [`lbpool_wire`]).
//!
//! It runs as a native sidecar (an init container with `restartPolicy:
//! Always`), so it starts before HAProxy: it writes the first config to
//! the file HAProxy loads, and only then reports itself started. After
//! that, every config HAProxy could load goes through the [`Applier`]. The
//! watch keeps only the latest config: a burst of changes is applied as
//! one.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use anyhow::Context as _;
use axum::Router;
use axum::http::{StatusCode, header};
use axum::routing::get;
use futures::{StreamExt as _, TryStreamExt as _};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::api::{Patch, PatchParams};
use kube::runtime::{WatchStreamExt as _, watcher};
use kube::{Api, Client, ResourceExt as _};
use lbpool_checker::{HaproxyValidator, ValidationError, Validator as _};
use lbpool_process::{LogFormat, init_logging, termination};
use lbpool_wire::{
    CONFIG_FILE, CONFIG_HASH_ANNOTATION, CONFIG_KEY, HAPROXY_VERSION_ANNOTATION, MASTER_SOCKET,
    POOL_LABEL, REJECTED_ANNOTATION, RUNTIME_API_SOCKET, Rejection, SERVED_ANNOTATION, config_hash,
    revision,
};
use serde_json::json;
use tokio::sync::watch;
use tracing::{debug, info, warn};

use crate::apply::{Applier, ApplyError, Outcome, Resumed, prepare_stats_file, write_whole};
use crate::config;
use crate::metrics::Metrics;
use crate::runtime::{self, Socket};

/// How often the agent looks again while something is left to do
/// (servers draining, a report or an apply to retry).
const TICK: Duration = Duration::from_secs(1);

/// Command-line arguments (each also read from the environment).
#[derive(Debug, clap::Parser)]
#[command(name = "lbpool-agent", version, about)]
pub struct Args {
    /// The pool's generated ConfigMap (`spec.haproxy.configMap`).
    #[arg(long, env = "LBPOOL_CONFIG_MAP")]
    pub config_map: String,
    /// The pod's namespace (downward API).
    #[arg(long, env = "POD_NAMESPACE")]
    pub namespace: String,
    /// The pod's name (downward API): the agent reports on it.
    #[arg(long, env = "POD_NAME")]
    pub pod: String,
    /// The file HAProxy loads (`haproxy -f`), in a volume both share.
    #[arg(long, env = "LBPOOL_CONFIG_FILE", default_value = CONFIG_FILE)]
    pub file: PathBuf,
    /// HAProxy's Runtime API (the `stats socket` the InPlace config declares).
    #[arg(long, env = "LBPOOL_ADMIN_SOCKET", default_value = RUNTIME_API_SOCKET)]
    pub admin_socket: PathBuf,
    /// HAProxy's master CLI (`haproxy -W -S <path>`).
    #[arg(long, env = "LBPOOL_MASTER_SOCKET", default_value = MASTER_SOCKET)]
    pub master_socket: PathBuf,
    /// The haproxy binary that checks each config (`haproxy -c`).
    #[arg(long, env = "LBPOOL_HAPROXY_BIN", default_value = "haproxy")]
    pub haproxy_bin: PathBuf,
    /// `/started`, `/ready`, `/live` and `/metrics`.
    #[arg(long, env = "LBPOOL_AGENT_ADDR", default_value = "0.0.0.0:9101")]
    pub listen: SocketAddr,
    /// Log format.
    #[arg(long, env = "LBPOOL_LOG_FORMAT", value_enum, default_value = "text")]
    pub log_format: LogFormat,
}

/// A config from the ConfigMap.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Wanted {
    text: String,
    hash: String,
    /// The pool, from the ConfigMap's label.
    pool: Option<String>,
    /// Why lbpool did not publish it, if it did not ([`published`]).
    unpublished: Option<String>,
}

impl Wanted {
    fn of(cm: &ConfigMap) -> Option<Self> {
        let text = cm.data.as_ref()?.get(CONFIG_KEY)?.clone();
        Some(Self {
            hash: config_hash(&text),
            pool: cm.labels().get(POOL_LABEL).cloned(),
            unpublished: published(cm, &text).err(),
            text,
        })
    }
}

/// PURE: whether the controller published this ConfigMap's config: it is
/// owned by the pool its label names (the pool's controller
/// ownerReference) and its hash annotation is the hash of its data. A
/// ConfigMap edited by hand, or written by anyone else, is not applied.
fn published(cm: &ConfigMap, text: &str) -> Result<(), String> {
    let pool = cm.labels().get(POOL_LABEL);
    let owned = cm.owner_references().iter().any(|o| {
        o.controller == Some(true)
            && o.kind == "LoadBalancerPool"
            && o.api_version.starts_with("lbpool.dev/")
            && Some(&o.name) == pool
    });
    if !owned {
        return Err(format!(
            "not published by lbpool: the ConfigMap has no LoadBalancerPool controller ownerReference matching its {POOL_LABEL} label"
        ));
    }
    match cm.annotations().get(CONFIG_HASH_ANNOTATION) {
        Some(hash) if *hash == config_hash(text) => Ok(()),
        _ => Err(format!(
            "not published by lbpool: the ConfigMap's {CONFIG_HASH_ANNOTATION} annotation is not the hash of its data (edited by hand?)"
        )),
    }
}

/// What the agent tells the API about its pod.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
struct Said {
    pool: Option<String>,
    served: Option<String>,
    /// A [`Rejection`], as written.
    rejected: Option<String>,
    /// The version of the HAProxy it runs.
    version: Option<String>,
}

#[derive(Clone, Debug, Default)]
struct Health {
    /// The first config is in the file: HAProxy may start.
    started: Arc<AtomicBool>,
    /// HAProxy serves a config this agent applied and reported.
    ready: Arc<AtomicBool>,
}

pub async fn run(args: Args) -> anyhow::Result<()> {
    init_logging(args.log_format, "info,kube=warn");
    let client = Client::try_default()
        .await
        .context("no Kubernetes client configuration (in-cluster or kubeconfig)")?;
    let metrics = Metrics::default();
    let health = Health::default();
    let admin = tokio::net::TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("listen on {}", args.listen))?;
    tokio::spawn(serve(admin, health.clone(), metrics.clone()));

    let (wanted_tx, wanted) = watch::channel(None);
    tokio::spawn(watch_config_map(
        Api::namespaced(client.clone(), &args.namespace),
        args.config_map.clone(),
        wanted_tx,
    ));
    info!(config_map = %args.config_map, pod = %args.pod, file = %args.file.display(), "lbpool-agent started");
    let agent = Agent {
        pods: Api::namespaced(client, &args.namespace),
        pod: args.pod.clone(),
        metrics,
        health,
        said: Said::default(),
        told: Said::default(),
    };
    tokio::select! {
        result = agent.serve(&args, wanted) => result,
        () = termination() => {
            info!("shutting down");
            Ok(())
        }
    }
}

struct Agent {
    pods: Api<Pod>,
    pod: String,
    metrics: Metrics,
    health: Health,
    /// What the pod should say.
    said: Said,
    /// What the API last accepted.
    told: Said,
}

impl Agent {
    async fn serve(
        mut self,
        args: &Args,
        mut wanted: watch::Receiver<Option<Wanted>>,
    ) -> anyhow::Result<()> {
        let master = Socket::new(&args.master_socket);
        let admin = Socket::new(&args.admin_socket);
        let validator = || {
            Box::new(
                HaproxyValidator::new(&args.haproxy_bin)
                    .with_runtime_api(args.admin_socket.to_string_lossy().into_owned()),
            )
        };
        let mut applier = if runtime::processes(&master).await.is_ok() {
            // This agent restarted beside a running HAProxy.
            self.health.started.store(true, Ordering::Release);
            let (applier, how) = Applier::resume(args.file.clone(), admin, master, validator())
                .await
                .context("take over the running HAProxy")?;
            match how {
                Resumed::Verified => info!(
                    config = revision(&applier.running_hash()),
                    "HAProxy runs already; it serves the recorded config"
                ),
                Resumed::Reloaded(why) => info!(
                    config = revision(&applier.running_hash()),
                    %why,
                    "HAProxy runs already; reloaded with the recorded config"
                ),
            }
            applier
        } else {
            let first = self
                .first_config(&args.file, validator().as_ref(), &mut wanted)
                .await?;
            self.health.started.store(true, Ordering::Release);
            wait_for_haproxy(&master).await;
            let applier = Applier::started(args.file.clone(), admin, master, validator(), &first)
                .await
                .context("record the first config")?;
            info!(
                config = revision(&applier.running_hash()),
                "HAProxy serves its first config"
            );
            applier
        };
        self.said = Said {
            pool: wanted.borrow().as_ref().and_then(|w| w.pool.clone()),
            served: Some(applier.running_hash()),
            rejected: None,
            version: None,
        };
        self.said.version = haproxy_version(&args.admin_socket).await;
        // A config left to apply after a failure, retried at the next tick.
        let mut retry = false;
        // Old workers still finishing connections: counted at each tick
        // until they are gone, so the gauge does not go stale.
        let mut old_workers = 0;
        loop {
            self.report().await;
            let idle = !retry
                && applier.draining().is_empty()
                && old_workers == 0
                && self.said == self.told;
            if idle {
                if wanted.changed().await.is_err() {
                    anyhow::bail!("the ConfigMap watch ended");
                }
            } else {
                let _ = tokio::time::timeout(TICK, wanted.changed()).await;
            }
            let next = wanted.borrow_and_update().clone();
            if let Some(next) = next {
                retry = !self.apply(&mut applier, next).await;
            }
            if !applier.draining().is_empty() {
                match applier.delete_drained().await {
                    Ok(left) => debug!(left, "drained servers deleted"),
                    Err(e) => warn!(error = %e, "deleting drained servers failed; retrying"),
                }
            }
            self.metrics
                .draining
                .set(i64::try_from(applier.draining().len()).unwrap_or(i64::MAX));
            if let Ok(p) = runtime::processes(applier.master()).await {
                old_workers = p.old_workers.len();
                self.metrics
                    .old_workers
                    .set(i64::try_from(old_workers).unwrap_or(i64::MAX));
            }
        }
    }

    /// The config HAProxy starts with: the first from the ConfigMap that
    /// `haproxy -c` accepts, written to the file. Returns its text.
    async fn first_config(
        &mut self,
        file: &Path,
        validator: &HaproxyValidator,
        wanted: &mut watch::Receiver<Option<Wanted>>,
    ) -> anyhow::Result<String> {
        loop {
            let next = wanted.borrow_and_update().clone();
            if let Some(next) = next {
                if let Some(why) = &next.unpublished {
                    self.metrics.failed("unpublished");
                    self.refused(&next, why);
                    self.report().await;
                } else {
                    match validator
                        .check(&config::sample(
                            &next.text,
                            &config::Config::parse(&next.text),
                        ))
                        .await
                    {
                        Ok(()) => {
                            prepare_stats_file(&next.text)
                                .await
                                .context("prepare the stats-file")?;
                            write_whole(file, &next.text)
                                .await
                                .context("write the first config")?;
                            info!(
                                config = revision(&next.hash),
                                "first config written; HAProxy may start"
                            );
                            return Ok(next.text);
                        }
                        Err(ValidationError::Rejected(message)) => {
                            self.refused(&next, &message);
                            self.report().await;
                        }
                        Err(ValidationError::Refused(refusal)) => {
                            self.refused(&next, &format!("refused: {refusal}"));
                            self.report().await;
                        }
                        Err(e) => return Err(e).context("haproxy -c"),
                    }
                }
            }
            wanted
                .changed()
                .await
                .context("the ConfigMap watch ended before a first config")?;
        }
    }

    /// Applies `next`; false if it should be tried again.
    async fn apply(&mut self, applier: &mut Applier, next: Wanted) -> bool {
        self.said.pool.clone_from(&next.pool);
        let rejected_already = self
            .said
            .rejected
            .as_deref()
            .is_some_and(|r| r.split(' ').next() == Some(next.hash.as_str()));
        if self.said.served.as_deref() == Some(next.hash.as_str()) {
            // Back to the config HAProxy serves: an earlier refusal is history.
            self.said.rejected = None;
            return true;
        }
        if rejected_already {
            return true;
        }
        if let Some(why) = &next.unpublished {
            self.metrics.failed("unpublished");
            self.refused(&next, why);
            return true;
        }
        let started = Instant::now();
        match applier.apply(&next.text).await {
            Ok(outcome) => {
                let kind = match &outcome {
                    Outcome::Noop => "noop",
                    Outcome::Runtime(_) => "runtime",
                    Outcome::Reload(_) => "reload",
                };
                self.metrics.applied(kind, started.elapsed());
                match outcome {
                    Outcome::Reload(why) => {
                        info!(config = revision(&next.hash), took = ?started.elapsed(), %why, "applied with a seamless reload");
                        // A new worker: of the same binary, unless the
                        // container was restarted on another image.
                        self.said.version = haproxy_version(applier.admin().path()).await;
                    }
                    Outcome::Runtime(changes) => {
                        info!(config = revision(&next.hash), took = ?started.elapsed(), changes, "applied through the Runtime API");
                    }
                    Outcome::Noop => {}
                }
                self.said.served = Some(next.hash);
                self.said.rejected = None;
                true
            }
            Err(ApplyError::Rejected(message)) => {
                self.metrics.failed("rejected");
                self.refused(&next, &message);
                true
            }
            Err(ApplyError::LoadFailed(message)) => {
                self.metrics.failed("load");
                self.refused(&next, &format!("HAProxy cannot load it: {message}"));
                true
            }
            Err(e) => {
                let reason = match &e {
                    ApplyError::Rejected(_) => "rejected",
                    ApplyError::LoadFailed(_) => "load",
                    ApplyError::Check(_) => "check",
                    ApplyError::Write { .. } | ApplyError::Read { .. } => "write",
                    ApplyError::Reload(_) | ApplyError::ReloadTimeout => "reload",
                };
                self.metrics.failed(reason);
                warn!(config = revision(&next.hash), error = %e, "applying the config failed; retrying");
                false
            }
        }
    }

    fn refused(&mut self, next: &Wanted, message: &str) {
        warn!(config = revision(&next.hash), %message, "config refused; HAProxy keeps its last one");
        self.said.pool.clone_from(&next.pool);
        self.said.rejected = Some(Rejection::new(&next.hash, message).to_string());
    }

    /// Puts [`Said`] on the pod, when it changed; a failure is retried at
    /// the next tick.
    async fn report(&mut self) {
        if self.said == self.told {
            return;
        }
        let mut patch = json!({
            "metadata": {
                "annotations": {
                    SERVED_ANNOTATION: self.said.served,
                    REJECTED_ANNOTATION: self.said.rejected,
                    HAPROXY_VERSION_ANNOTATION: self.said.version,
                },
            },
        });
        // Not known yet (the ConfigMap not seen yet): the label is left as
        // it is, not removed.
        if let Some(pool) = &self.said.pool {
            patch["metadata"]["labels"] = json!({ POOL_LABEL: pool });
        }
        match self
            .pods
            .patch(&self.pod, &PatchParams::default(), &Patch::Merge(patch))
            .await
        {
            Ok(_) => {
                self.told = self.said.clone();
                let serving = self.said.served.is_some();
                self.health.ready.store(serving, Ordering::Release);
            }
            Err(e) => {
                self.metrics.failed("report");
                warn!(pod = %self.pod, error = %e, "reporting on the pod failed; retrying");
            }
        }
    }
}

/// Feeds the latest config of ConfigMap `name` into `tx`.
async fn watch_config_map(api: Api<ConfigMap>, name: String, tx: watch::Sender<Option<Wanted>>) {
    let config = watcher::Config::default().fields(&format!("metadata.name={name}"));
    let mut configs = watcher(api, config)
        .default_backoff()
        .applied_objects()
        .boxed();
    loop {
        match configs.try_next().await {
            Ok(Some(cm)) => match Wanted::of(&cm) {
                Some(w) => {
                    tx.send_if_modified(|current| {
                        let changed = current.as_ref() != Some(&w);
                        *current = Some(w);
                        changed
                    });
                }
                None => warn!(config_map = %name, key = CONFIG_KEY, "ConfigMap has no config"),
            },
            Ok(None) => return,
            Err(e) => warn!(config_map = %name, error = %e, "ConfigMap watch failed; retrying"),
        }
    }
}

/// The version of the HAProxy behind the Runtime API at `socket`, for the
/// pod's report; `None` (logged) if it does not say.
async fn haproxy_version(socket: &Path) -> Option<String> {
    match runtime::version(&Socket::new(socket)).await {
        Ok(v) => Some(v),
        Err(e) => {
            warn!(error = %e, "reading HAProxy's version failed");
            None
        }
    }
}

/// Waits until HAProxy's master answers and has a worker.
async fn wait_for_haproxy(master: &Socket) {
    let started = Instant::now();
    let mut said = Duration::ZERO;
    loop {
        match runtime::processes(master).await {
            Ok(p) if !p.workers.is_empty() => return,
            other => {
                if started.elapsed() >= said + Duration::from_secs(10) {
                    said = started.elapsed();
                    info!(waited = ?said, state = ?other.map(|p| p.workers), "waiting for HAProxy");
                }
            }
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

async fn serve(listener: tokio::net::TcpListener, health: Health, metrics: Metrics) {
    let flag = |f: &Arc<AtomicBool>| {
        if f.load(Ordering::Acquire) {
            (StatusCode::OK, "ok")
        } else {
            (StatusCode::SERVICE_UNAVAILABLE, "not yet")
        }
    };
    let (started, ready) = (health.started.clone(), health.ready.clone());
    let app = Router::new()
        .route("/live", get(|| async { "ok" }))
        .route("/started", get(move || async move { flag(&started) }))
        .route("/ready", get(move || async move { flag(&ready) }))
        .route(
            "/metrics",
            get(move || async move {
                (
                    [(
                        header::CONTENT_TYPE,
                        "application/openmetrics-text; version=1.0.0; charset=utf-8",
                    )],
                    metrics.encode(),
                )
            }),
        );
    if let Err(e) = axum::serve(listener, app).await {
        warn!(error = %e, "admin server failed");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn config_map(owner: Option<(&str, &str, bool)>, hash_of: &str) -> ConfigMap {
        let owners: Vec<_> = owner
            .into_iter()
            .map(|(kind, name, controller)| {
                json!({"apiVersion": "lbpool.dev/v1alpha1", "kind": kind, "name": name,
                       "uid": "u", "controller": controller})
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {
                "name": "webapp-haproxy",
                "labels": {POOL_LABEL: "webapp"},
                "annotations": {CONFIG_HASH_ANNOTATION: config_hash(hash_of)},
                "ownerReferences": owners,
            },
            "data": {CONFIG_KEY: "global\n"},
        }))
        .expect("a ConfigMap")
    }

    #[test]
    fn only_what_the_controller_published_is_applied() {
        let good = config_map(Some(("LoadBalancerPool", "webapp", true)), "global\n");
        assert_eq!(Wanted::of(&good).and_then(|w| w.unpublished), None);
        for (cm, says) in [
            (
                config_map(Some(("LoadBalancerPool", "webapp", true)), "other"),
                "annotation",
            ),
            (config_map(None, "global\n"), "ownerReference"),
            (
                config_map(Some(("LoadBalancerPool", "other", true)), "global\n"),
                "ownerReference",
            ),
            (
                config_map(Some(("LoadBalancerPool", "webapp", false)), "global\n"),
                "ownerReference",
            ),
            (
                config_map(Some(("Deployment", "webapp", true)), "global\n"),
                "ownerReference",
            ),
        ] {
            let why = Wanted::of(&cm)
                .and_then(|w| w.unpublished)
                .expect("refused");
            assert!(why.contains(says), "{why}");
        }
    }
}
