//! The end-to-end tier: the shipped manifests on a cluster whose pods really
//! run (the local real node of `hack/local-cluster.sh`, or kind), used the
//! way a user uses them, with traffic through the HAProxy Service.
//!
//! - `LBPOOL_E2E_MANIFESTS`: the kustomization to install (default
//!   `manifests/overlays/local`, the images of `hack/images.sh`; kind uses
//!   `manifests`, with the images `hack/kind.sh` loads).
//! - `LBPOOL_E2E_FRONTEND` / `LBPOOL_E2E_STATS`: where the HAProxy Service
//!   answers (default: its ClusterIP on ports 80 and 1936, which kube-proxy
//!   routes on this machine; kind maps node ports to 127.0.0.1:8080/:1936).
//!
//! Every test works on the one installation in namespaces `lbpool-system`
//! and `demo`, so they take turns ([`serial`]); each starts by setting the
//! replica count it needs and waiting until HAProxy serves it.

use std::collections::{BTreeMap, BTreeSet};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Pod;
use kube::api::ListParams;

use crate::demo::Env;
use crate::{apply_kustomization, eventually, http, install_crd, kubectl};
use lbpool_wire::{CONFIG_HASH_ANNOTATION as HASH, SERVED_ANNOTATION as SERVED};

/// Namespace of the shipped demo.
pub const NS: &str = "demo";
/// Long enough for a webapp scale-up, `rollout.minInterval` and a rolling
/// update of the two HAProxy pods (each: start, ready, 5 s preStop, drain)
/// on a busy machine.
pub const ROLLOUT_WAIT: Duration = Duration::from_secs(240);

/// One test at a time on the shared installation (an async lock: each test
/// holds it across its awaits; a failed test releases it).
pub async fn serial() -> tokio::sync::MutexGuard<'static, ()> {
    static LOCK: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());
    LOCK.lock().await
}

/// The installation under test and where its Service answers.
#[derive(Debug)]
pub struct Demo {
    pub env: Env,
    pub frontend: SocketAddr,
    pub stats: SocketAddr,
    _dump: DumpOnPanic,
}

/// Installs the CRD and the manifests once per test process, waits for the
/// controller and the example pool, and finds the Service's address.
pub async fn demo() -> Demo {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        install(
            &std::env::var("LBPOOL_E2E_MANIFESTS")
                .unwrap_or_else(|_| "manifests/overlays/local".into()),
        )
    });
    found().await
}

/// [`demo`] with its HAProxy `InPlace` (`manifests/components/in-place`):
/// `LBPOOL_E2E_IN_PLACE_MANIFESTS`, by default
/// `manifests/overlays/local-in-place` (kind: `manifests/overlays/in-place`).
/// Applied over the plain demo, it switches the pool and the HAProxy
/// Deployment; [`demo`] in a later process switches them back.
pub async fn demo_in_place() -> Demo {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        install(
            &std::env::var("LBPOOL_E2E_IN_PLACE_MANIFESTS")
                .unwrap_or_else(|_| "manifests/overlays/local-in-place".into()),
        );
        if let Err(e) = kubectl(&[
            "rollout",
            "status",
            "deployment/haproxy",
            "-n",
            NS,
            "--timeout=240s",
        ]) {
            dump();
            panic!("the InPlace HAProxy Deployment: {e}");
        }
    });
    found().await
}

async fn found() -> Demo {
    let service_ip = || {
        kubectl(&[
            "get",
            "service",
            "haproxy",
            "-n",
            NS,
            "-o",
            "jsonpath={.spec.clusterIP}",
        ])
        .expect("the HAProxy Service")
        .trim()
        .to_owned()
    };
    let address = |var: &str, port: u16| -> SocketAddr {
        match std::env::var(var) {
            Ok(a) => a.parse().unwrap_or_else(|e| panic!("{var}={a}: {e}")),
            Err(_) => format!("{}:{port}", service_ip())
                .parse()
                .expect("ClusterIP:port"),
        }
    };
    Demo {
        env: Env::new(NS).await,
        frontend: address("LBPOOL_E2E_FRONTEND", 80),
        stats: address("LBPOOL_E2E_STATS", 1936),
        _dump: DumpOnPanic,
    }
}

fn install(manifests: &str) {
    let nodes =
        kubectl(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"]).expect("list nodes");
    let real = kubectl(&["get", "nodes", "-l", "type!=kwok", "-o", "name"]).unwrap_or_default();
    assert!(
        !real.trim().is_empty(),
        "the end-to-end tier needs a node that runs pods, and this cluster has only simulated ones ({nodes}); \
         start one with LBPOOL_NODE=real hack/local-cluster.sh up (root), or use kind (hack/kind.sh)"
    );
    install_crd();
    apply_kustomization(manifests);
    for (what, args) in [
        (
            "the controller Deployment",
            &[
                "rollout",
                "status",
                "deployment/lbpool-controller",
                "-n",
                "lbpool-system",
                "--timeout=240s",
            ][..],
        ),
        (
            "the example pool Ready",
            &[
                "wait",
                "--for=condition=Ready",
                "lbp/webapp",
                "-n",
                NS,
                "--timeout=240s",
            ][..],
        ),
    ] {
        if let Err(e) = kubectl(args) {
            dump();
            panic!("{what}: {e}");
        }
    }
}

/// On a failing test: the state of both namespaces and the controller's log.
#[derive(Debug)]
struct DumpOnPanic;

impl Drop for DumpOnPanic {
    fn drop(&mut self) {
        if std::thread::panicking() {
            dump();
        }
    }
}

fn dump() {
    for args in [
        &[
            "get",
            "lbp,deploy,rs,pods,endpointslices,cm",
            "-n",
            NS,
            "-o",
            "wide",
        ][..],
        &["get", "deploy,pods", "-n", "lbpool-system", "-o", "wide"][..],
        &["get", "events", "-n", NS, "--sort-by=.lastTimestamp"][..],
        &["get", "lbp", "webapp", "-n", NS, "-o", "yaml"][..],
        &[
            "logs",
            "--tail=200",
            "-n",
            "lbpool-system",
            "deployment/lbpool-controller",
        ][..],
        &[
            "logs",
            "--tail=100",
            "--prefix",
            "-n",
            NS,
            "-l",
            "app.kubernetes.io/name=haproxy",
            "--all-containers",
        ][..],
    ] {
        match kubectl(args) {
            Ok(out) => eprintln!("$ kubectl {}\n{out}", args.join(" ")),
            Err(e) => eprintln!("{e}"),
        }
    }
}

impl Demo {
    /// Scales the webapp to `n` and waits until HAProxy serves exactly its
    /// ready pods: config, status and Deployment agree, the rollout of that
    /// config is complete, and every HAProxy pod left runs it.
    pub async fn serve(&self, n: usize) -> String {
        self.env.set_replicas(n as i32).await;
        self.served(n).await
    }

    /// Waits until the pool's `Ready` condition has `reason` (at most
    /// `within`); its message.
    pub async fn ready_reason(&self, reason: &str, within: Duration) -> String {
        eventually(&format!("Ready/{reason}"), within, || async {
            let status = self.env.status().await;
            match status.conditions.iter().find(|c| c.type_ == "Ready") {
                Some(c) if c.reason == reason => Ok(c.message.clone()),
                other => Err(format!("{other:?}")),
            }
        })
        .await
    }

    /// Waits (without scaling) until HAProxy serves `n` ready pods.
    pub async fn served(&self, n: usize) -> String {
        let hash = eventually(
            &format!("config, status and Deployment for {n} ready pods"),
            ROLLOUT_WAIT,
            || async { self.env.converged_now(n).await },
        )
        .await;
        eventually(
            "the HAProxy pods to run that config",
            ROLLOUT_WAIT,
            || async { self.haproxy_serves(&hash).await },
        )
        .await;
        hash
    }

    /// Whether the HAProxy Deployment's rollout of `hash` is complete: every
    /// pod runs it and is ready, no old pod is left, not even a draining one.
    pub async fn haproxy_serves(&self, hash: &str) -> Result<(), String> {
        let d = self.haproxy().await;
        let want = d.spec.replicas.unwrap_or(1);
        let st = d.status.clone().unwrap_or_default();
        let generation = d.metadata.generation.unwrap_or_default();
        // Every HAProxy pod, also one still draining: until it is gone, a
        // client may reach the previous config through it.
        let pods = self
            .env
            .pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=haproxy"))
            .await
            .expect("list pods")
            .items;
        let hashes: Vec<_> = pods
            .iter()
            .map(|p| {
                p.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(HASH))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        let complete = st.observed_generation.unwrap_or_default() >= generation
            && st.updated_replicas.unwrap_or_default() == want
            && st.ready_replicas.unwrap_or_default() == want
            && st.replicas.unwrap_or_default() == want;
        if complete
            && pods.len() == want as usize
            && hashes.iter().all(|h| h == hash)
            && pods.iter().all(ready)
        {
            Ok(())
        } else {
            Err(format!(
                "generation {generation} (observed {:?}), updated {:?}/{want}, ready {:?}, pods' hashes {hashes:?}",
                st.observed_generation, st.updated_replicas, st.ready_replicas
            ))
        }
    }

    pub async fn haproxy(&self) -> Deployment {
        self.env
            .deployments
            .get("haproxy")
            .await
            .expect("the HAProxy Deployment")
    }

    /// Pods with `selector` that are not being deleted.
    pub async fn pods(&self, selector: &str) -> Vec<Pod> {
        self.env
            .pods
            .list(&ListParams::default().labels(selector))
            .await
            .expect("list pods")
            .items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .collect()
    }

    /// Names of the ready webapp pods.
    pub async fn webapp_pod_names(&self) -> BTreeSet<String> {
        self.pods("app.kubernetes.io/name=webapp")
            .await
            .into_iter()
            .filter(ready)
            .filter_map(|p| p.metadata.name)
            .collect()
    }

    /// The webapp hosts that answer `n` requests through the Service.
    pub async fn hosts_through_service(&self, n: usize) -> BTreeMap<String, usize> {
        let mut hosts = BTreeMap::new();
        for _ in 0..n {
            let answer = http::get(self.frontend, "/", Duration::from_secs(10))
                .await
                .unwrap_or_else(|e| panic!("GET / through the Service {}: {e}", self.frontend));
            assert_eq!(answer.status, 200, "GET / through the Service: {answer:?}");
            let host = answer.webapp_host().expect("the webapp names its host");
            *hosts.entry(host).or_insert(0) += 1;
        }
        hosts
    }

    /// The Deployment's generation: one more per rollout (and per spec edit).
    pub async fn haproxy_generation(&self) -> i64 {
        self.haproxy().await.metadata.generation.unwrap_or_default()
    }
}

/// One InPlace HAProxy pod, to compare before and after.
#[derive(Clone, Debug, PartialEq)]
pub struct HaproxyPod {
    pub uid: String,
    /// Restarts of its containers, all together.
    pub restarts: i32,
    /// Its agent's `lbpool_agent_updates_total`: seamless reloads…
    pub reloads: f64,
    /// …and changes through the Runtime API.
    pub runtime: f64,
    /// Configs its agent's `haproxy -c` refused.
    pub refused: f64,
    /// HAProxy workers of earlier configs still finishing connections.
    pub old_workers: f64,
    pub served: String,
}

/// The metrics of the agent in `pod`, through the API server's pod proxy
/// (which reaches pod IPs on the local node and in kind alike).
pub fn agent_metrics(pod: &str) -> Result<String, String> {
    kubectl(&[
        "get",
        "--raw",
        &format!("/api/v1/namespaces/{NS}/pods/{pod}:9101/proxy/metrics"),
    ])
    .map_err(|e| e.to_string())
}

impl Demo {
    /// Waits until only `n` webapp pods are left: removed ones keep serving
    /// through their preStop, and a test under load waits for their exit
    /// so that it is under load too.
    pub async fn webapp_pods_left(&self, n: usize) {
        eventually(
            "the removed webapp pods to exit",
            Duration::from_secs(120),
            || async {
                let all = self
                    .env
                    .pods
                    .list(&ListParams::default().labels("app.kubernetes.io/name=webapp"))
                    .await
                    .map_err(|e| e.to_string())?;
                if all.items.len() == n {
                    Ok(())
                } else {
                    Err(format!("{} webapp pods", all.items.len()))
                }
            },
        )
        .await;
    }

    /// InPlace: waits until the agents serve exactly the `n` ready webapp
    /// pods ([`Demo::in_place_now`]); returns the config hash.
    pub async fn served_in_place(&self, n: usize) -> String {
        eventually(
            &format!("the agents to serve {n} ready pods"),
            ROLLOUT_WAIT,
            || async { self.in_place_now(n).await },
        )
        .await
    }

    /// Whether, now, the ConfigMap and the status name the `n` ready webapp
    /// pods, the pool is Ready, and every HAProxy pod's agent reports it
    /// serves that config.
    pub async fn in_place_now(&self, n: usize) -> Result<String, String> {
        let pods = self.env.ready_pod_ips().await;
        let (published, text) = self.env.published().await?;
        let config = crate::demo::addresses(&text);
        let status = self.env.status().await;
        let hash = status.config_hash.clone().unwrap_or_default();
        let ready = status
            .conditions
            .iter()
            .any(|c| c.type_ == "Ready" && c.status == "True");
        let want = usize::try_from(self.haproxy().await.spec.replicas.unwrap_or(1)).unwrap_or(0);
        let haproxy = self.pods("app.kubernetes.io/name=haproxy").await;
        let served: Vec<String> = haproxy
            .iter()
            .map(|p| {
                p.metadata
                    .annotations
                    .as_ref()
                    .and_then(|a| a.get(SERVED))
                    .cloned()
                    .unwrap_or_default()
            })
            .collect();
        if pods.len() == n
            && config == pods
            && published == hash
            && status.ready_backends as usize == n
            && ready
            && haproxy.len() == want
            && served.iter().all(|s| *s == hash)
        {
            Ok(hash)
        } else {
            Err(format!(
                "pods {pods:?}, config {config:?}, ready backends {}, Ready {ready}, status hash {hash}, ConfigMap hash {published}, HAProxy pods serve {served:?}",
                status.ready_backends
            ))
        }
    }

    /// Every HAProxy pod not being deleted, by name.
    pub async fn haproxy_pods(&self) -> BTreeMap<String, HaproxyPod> {
        let mut out = BTreeMap::new();
        for p in self.pods("app.kubernetes.io/name=haproxy").await {
            let name = p.metadata.name.clone().unwrap_or_default();
            let metrics = agent_metrics(&name)
                .unwrap_or_else(|e| panic!("the agent's metrics in pod {name}: {e}"));
            let st = p.status.clone().unwrap_or_default();
            let restarts = st
                .container_statuses
                .iter()
                .chain(st.init_container_statuses.iter())
                .flatten()
                .map(|c| c.restart_count)
                .sum();
            let counter = |series: &str| crate::metric(&metrics, series);
            out.insert(
                name,
                HaproxyPod {
                    uid: p.metadata.uid.clone().unwrap_or_default(),
                    restarts,
                    reloads: counter(r#"lbpool_agent_updates_total{kind="reload"}"#),
                    runtime: counter(r#"lbpool_agent_updates_total{kind="runtime"}"#),
                    refused: counter(r#"lbpool_agent_failures_total{reason="rejected"}"#),
                    old_workers: counter("lbpool_agent_haproxy_old_workers"),
                    served: p
                        .metadata
                        .annotations
                        .as_ref()
                        .and_then(|a| a.get(SERVED))
                        .cloned()
                        .unwrap_or_default(),
                },
            );
        }
        out
    }
}

/// A merge patch of the example pool.
pub fn patch_pool(patch: &str) {
    patch_pool_as("merge", patch);
}

/// A patch of the example pool of `kind` (`merge`, `json`).
pub fn patch_pool_as(kind: &str, patch: &str) {
    kubectl(&[
        "patch",
        "lbp",
        "webapp",
        "-n",
        NS,
        &format!("--type={kind}"),
        "-p",
        patch,
    ])
    .unwrap_or_else(|e| panic!("patch the pool with {patch}: {e}"));
}

/// Whether the pod's `Ready` condition is true.
pub fn ready(p: &Pod) -> bool {
    p.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Each rollout of the HAProxy Deployment seen while waiting: its generation
/// and how long from the moment it was seen until it was complete.
#[derive(Debug, Default)]
pub struct Rollouts(pub Vec<(i64, Duration)>);

impl Rollouts {
    /// Polls the Deployment until `done` holds, timing every generation.
    pub async fn record_until<F, Fut>(demo: &Demo, from_generation: i64, mut done: F) -> Self
    where
        F: FnMut() -> Fut,
        Fut: std::future::Future<Output = bool>,
    {
        let deadline = Instant::now() + ROLLOUT_WAIT;
        let mut seen = from_generation;
        let mut started: Option<(i64, Instant)> = None;
        let mut out = Vec::new();
        loop {
            let d = demo.haproxy().await;
            let generation = d.metadata.generation.unwrap_or_default();
            if generation > seen {
                if let Some((g, t)) = started.take() {
                    // Superseded before it completed.
                    out.push((g, t.elapsed()));
                }
                started = Some((generation, Instant::now()));
                seen = generation;
            }
            if let Some((g, t)) = started {
                let hash = d
                    .spec
                    .template
                    .metadata
                    .as_ref()
                    .and_then(|m| m.annotations.as_ref())
                    .and_then(|a| a.get(HASH))
                    .cloned()
                    .unwrap_or_default();
                if demo.haproxy_serves(&hash).await.is_ok() {
                    out.push((g, t.elapsed()));
                    started = None;
                }
            }
            // Done, and no rollout began since the generation was read.
            if started.is_none() && done().await && demo.haproxy_generation().await == seen {
                return Self(out);
            }
            assert!(
                Instant::now() < deadline,
                "rollouts did not settle in {ROLLOUT_WAIT:?}: {out:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }
}

/// Steady load through the Service: `concurrency` clients, each sending
/// `GET /` on a new connection after the last answer, bounded in count and
/// time so it stops by itself.
#[derive(Debug)]
pub struct Load {
    stop: Arc<AtomicBool>,
    workers: Vec<tokio::task::JoinHandle<Tally>>,
    started: Instant,
}

#[derive(Debug, Default)]
struct Tally {
    latencies: Vec<Duration>,
    errors: BTreeMap<String, u64>,
    slowest: Vec<Slow>,
    /// The longest time from connected to answered.
    served_max: Duration,
    /// Connections that took a SYN retransmission (1 s or more).
    retransmitted: u64,
}

/// Linux's initial retransmission timeout: a connect that took this long
/// waited for its SYN to be sent again.
const SYN_RETRANSMISSION: Duration = Duration::from_secs(1);

/// One of the slowest requests of a [`Load`]: when it started, how long
/// its TCP handshake and the whole request took, and who answered.
#[derive(Clone, Debug)]
pub struct Slow {
    pub at: Duration,
    pub connected: Duration,
    pub took: Duration,
    pub answer: String,
}

impl std::fmt::Display for Slow {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "at +{:.1?}: {:.1?} ({:.1?} to connect), {}",
            self.at, self.took, self.connected, self.answer
        )
    }
}

impl Tally {
    /// How many slow requests a report names.
    const SLOWEST: usize = 5;

    fn record(&mut self, slow: Slow) {
        self.latencies.push(slow.took);
        self.served_max = self
            .served_max
            .max(slow.took.saturating_sub(slow.connected));
        if slow.connected >= SYN_RETRANSMISSION {
            self.retransmitted += 1;
        }
        if self.slowest.len() < Self::SLOWEST || self.slowest.iter().any(|s| s.took < slow.took) {
            self.slowest.push(slow);
            self.slowest.sort_by_key(|s| std::cmp::Reverse(s.took));
            self.slowest.truncate(Self::SLOWEST);
        }
    }
}

/// What a [`Load`] saw.
#[derive(Debug)]
pub struct LoadReport {
    pub sent: usize,
    pub failed: u64,
    pub errors: BTreeMap<String, u64>,
    pub p50: Duration,
    pub p99: Duration,
    pub max: Duration,
    pub took: Duration,
    /// The slowest requests, slowest first.
    pub slowest: Vec<Slow>,
    /// The longest time from connection established to last byte: what
    /// HAProxy, the agent and the controller account for, without the TCP
    /// handshake through kube-proxy's NAT.
    pub served_max: Duration,
    /// Connections whose SYN was sent again (the handshake took 1 s or more).
    pub retransmitted: u64,
}

impl std::fmt::Display for LoadReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{} requests in {:.1?}, {} failed, latency p50 {:.1?} p99 {:.1?} max {:.1?}; \
             once connected max {:.1?}; {} connection(s) waited for a SYN retransmission",
            self.sent,
            self.took,
            self.failed,
            self.p50,
            self.p99,
            self.max,
            self.served_max,
            self.retransmitted
        )?;
        for (e, n) in self.errors.iter().take(10) {
            write!(f, "\n  {n}x {e}")?;
        }
        for s in &self.slowest {
            write!(f, "\n  slow: {s}")?;
        }
        Ok(())
    }
}

impl Load {
    pub const MAX_TIME: Duration = Duration::from_secs(600);
    pub const MAX_REQUESTS: usize = 500_000;

    pub fn start(target: SocketAddr, concurrency: usize) -> Self {
        let stop = Arc::new(AtomicBool::new(false));
        let started = Instant::now();
        let per_worker = Self::MAX_REQUESTS / concurrency.max(1);
        let workers = (0..concurrency)
            .map(|_| {
                let stop = stop.clone();
                tokio::spawn(async move {
                    let mut tally = Tally::default();
                    while !stop.load(Ordering::Relaxed)
                        && started.elapsed() < Self::MAX_TIME
                        && tally.latencies.len() < per_worker
                    {
                        let t = Instant::now();
                        let at = started.elapsed();
                        let (connected, answer) =
                            match http::get(target, "/", Duration::from_secs(10)).await {
                                Ok(r) => {
                                    if r.status != 200 {
                                        *tally
                                            .errors
                                            .entry(format!("HTTP {}", r.status))
                                            .or_default() += 1;
                                    }
                                    let host = r.webapp_host().unwrap_or_default();
                                    (r.connected, format!("HTTP {} from {host}", r.status))
                                }
                                Err(e) => {
                                    *tally.errors.entry(e.clone()).or_default() += 1;
                                    (Duration::ZERO, e)
                                }
                            };
                        tally.record(Slow {
                            at,
                            connected,
                            took: t.elapsed(),
                            answer,
                        });
                    }
                    tally
                })
            })
            .collect();
        Self {
            stop,
            workers,
            started,
        }
    }

    /// Time since the load started (the time base of [`Slow::at`]).
    pub fn elapsed(&self) -> Duration {
        self.started.elapsed()
    }

    pub async fn stop(self) -> LoadReport {
        self.stop.store(true, Ordering::Relaxed);
        let mut latencies = Vec::new();
        let mut errors = BTreeMap::new();
        let mut slowest = Vec::new();
        let (mut served_max, mut retransmitted) = (Duration::ZERO, 0);
        for w in self.workers {
            let tally = w.await.expect("load worker");
            latencies.extend(tally.latencies);
            slowest.extend(tally.slowest);
            served_max = served_max.max(tally.served_max);
            retransmitted += tally.retransmitted;
            for (e, n) in tally.errors {
                *errors.entry(e).or_default() += n;
            }
        }
        latencies.sort();
        let at = |q: f64| {
            latencies
                .get(((latencies.len() as f64 * q) as usize).min(latencies.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        LoadReport {
            sent: latencies.len(),
            failed: errors.values().sum(),
            p50: at(0.50),
            p99: at(0.99),
            max: latencies.last().copied().unwrap_or_default(),
            took: self.started.elapsed(),
            errors,
            slowest: {
                slowest.sort_by_key(|s| std::cmp::Reverse(s.took));
                slowest.truncate(Tally::SLOWEST);
                slowest
            },
            served_max,
            retransmitted,
        }
    }
}
