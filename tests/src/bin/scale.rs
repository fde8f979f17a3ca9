//! Scale benchmark (run by `hack/scale-bench.sh`, which starts a local control
//! plane with simulated nodes): N pools, each with a Service without selector,
//! one EndpointSlice of 10 endpoints written directly, and an HAProxy
//! Deployment at 0 replicas. Starts the controller (`LBPOOL_CONTROLLER_BIN`,
//! with its ServiceAccount's token) once everything exists and prints:
//!
//! - initial sync: time until every pool's ConfigMap is written (and its
//!   Deployment patched: both are written together), the controller's own
//!   work; and to the first and the last pool `Ready`, which also waits for
//!   kube-controller-manager to roll every Deployment;
//! - the controller's RSS and CPU seconds (its own, and its `haproxy -c`
//!   children's);
//! - idle: API requests and reconciles in the minute after all are Ready;
//! - API requests per endpoint change, and the latency of one change until
//!   the pool's ConfigMap holds it (p50/p99 over `--changes` changes, one
//!   pool at a time, with N pools present);
//! - a burst: every EndpointSlice changed at once, time until every
//!   ConfigMap holds its change.
//!
//! Usage: `scale --pools N [--changes K] [--namespace NS]`.

use std::collections::{BTreeMap, HashMap};
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use futures::{StreamExt, TryStreamExt};
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::runtime::watcher;
use lbpool_crds::LoadBalancerPool;
use lbpool_tests::{
    ControllerProcess, admin_client, free_local_addr, metric, percentile, scratch_dir,
};
use lbpool_wire::{CONFIG_KEY, POOL_LABEL};
use serde_json::json;

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

/// Endpoint `k` of pool `i`, generation `g`: distinct addresses in 10.0.0.0/8.
fn address(i: usize, k: usize, g: usize) -> String {
    let n = (i * 10 + k) + g * 200_000;
    format!("10.{}.{}.{}", (n >> 16) & 0xff, (n >> 8) & 0xff, n & 0xff)
}

fn slice(i: usize, generation: usize) -> serde_json::Value {
    // Generation g replaces endpoint 0 with a new address.
    let endpoints: Vec<_> = (0..10)
        .map(|k| {
            let g = if k == 0 { generation } else { 0 };
            json!({"addresses": [address(i, k, g)], "conditions": {"ready": true},
                   "targetRef": {"kind": "Pod", "name": format!("w{i}-{k}")}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("s{i}-1"), "labels": {"kubernetes.io/service-name": format!("s{i}")}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 3000, "protocol": "TCP"}],
           "endpoints": endpoints})
}

struct Objects {
    services: Api<Service>,
    slices: Api<EndpointSlice>,
    deployments: Api<Deployment>,
    pools: Api<LoadBalancerPool>,
    config_maps: Api<ConfigMap>,
}

async fn create_all(o: &Objects, n: usize) {
    let post = PostParams::default();
    let started = Instant::now();
    let post = &post;
    futures::stream::iter(0..n)
        .map(|i| async move {
            let svc: Service = serde_json::from_value(json!({
                "metadata": {"name": format!("s{i}")},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 3000}]}}))
            .expect("service");
            let d: Deployment = serde_json::from_value(json!({
                "metadata": {"name": format!("h{i}")},
                "spec": {"replicas": 0, "selector": {"matchLabels": {"app": format!("h{i}")}},
                         "template": {"metadata": {"labels": {"app": format!("h{i}")}},
                                      "spec": {"containers": [{"name": "haproxy", "image": "haproxy"}]}}}}))
            .expect("deployment");
            let p: LoadBalancerPool = serde_json::from_value(json!({
                "apiVersion": "lbpool.dev/v1alpha1", "kind": "LoadBalancerPool",
                "metadata": {"name": format!("p{i}")},
                "spec": {"backend": {"service": format!("s{i}"), "port": "http"},
                         "haproxy": {"deployment": format!("h{i}"), "configMap": format!("p{i}-haproxy")}}}))
            .expect("pool");
            let s: EndpointSlice = serde_json::from_value(slice(i, 0)).expect("slice");
            o.services.create(post, &svc).await.map(drop)?;
            o.slices.create(post, &s).await.map(drop)?;
            o.deployments.create(post, &d).await.map(drop)?;
            o.pools.create(post, &p).await.map(drop)
        })
        .buffer_unordered(32)
        .try_collect::<Vec<()>>()
        .await
        .expect("create the objects");
    println!(
        "created {n} Services, EndpointSlices (10 endpoints each), Deployments (0 replicas) and pools in {:.1}s",
        started.elapsed().as_secs_f64()
    );
}

/// What the watches saw: per pool, when it was first Ready; per ConfigMap, its config.
#[derive(Default)]
struct Seen {
    ready: HashMap<String, Instant>,
    configs: HashMap<String, String>,
}

fn watch(o: &Objects, seen: Arc<Mutex<Seen>>) {
    let pools = watcher(o.pools.clone(), watcher::Config::default());
    let s = seen.clone();
    tokio::spawn(async move {
        let mut events = std::pin::pin!(pools);
        while let Some(ev) = events.next().await {
            let (watcher::Event::Apply(p) | watcher::Event::InitApply(p)) =
                ev.unwrap_or(watcher::Event::Init)
            else {
                continue;
            };
            let ready = p
                .status
                .iter()
                .flat_map(|s| &s.conditions)
                .any(|c| c.type_ == "Ready" && c.status == "True");
            if ready {
                let name = p.metadata.name.unwrap_or_default();
                s.lock()
                    .expect("seen")
                    .ready
                    .entry(name)
                    .or_insert_with(Instant::now);
            }
        }
    });
    let cms = watcher(
        o.config_maps.clone(),
        watcher::Config::default().labels(POOL_LABEL),
    );
    tokio::spawn(async move {
        let mut events = std::pin::pin!(cms);
        while let Some(ev) = events.next().await {
            let (watcher::Event::Apply(cm) | watcher::Event::InitApply(cm)) =
                ev.unwrap_or(watcher::Event::Init)
            else {
                continue;
            };
            let name = cm.metadata.name.unwrap_or_default();
            let text = cm
                .data
                .unwrap_or_default()
                .remove(CONFIG_KEY)
                .unwrap_or_default();
            seen.lock().expect("seen").configs.insert(name, text);
        }
    });
}

/// Seconds of CPU a process used, its own and its waited-for children's.
fn cpu_seconds(pid: u32) -> (f64, f64) {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).unwrap_or_default();
    let after = stat.rsplit_once(')').map(|(_, r)| r).unwrap_or_default();
    let f: Vec<f64> = after
        .split_whitespace()
        .map(|v| v.parse().unwrap_or(0.0))
        .collect();
    // Fields after the command: state is 0, utime 11, stime 12, cutime 13, cstime 14.
    let tick = 100.0;
    let get = |i: usize| f.get(i).copied().unwrap_or(0.0) / tick;
    (get(11) + get(12), get(13) + get(14))
}

fn rss_mib(pid: u32) -> f64 {
    lbpool_tests::rss_kib(pid).unwrap_or(0) as f64 / 1024.0
}

/// Sum of a metric's series (all labels).
fn total(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| l.starts_with(name) && !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' ')?.1.parse::<f64>().ok())
        .sum()
}

async fn metrics(admin: SocketAddr) -> String {
    lbpool_tests::metrics_text(admin).await.unwrap_or_default()
}

async fn wait_config(
    seen: &Mutex<Seen>,
    pool: usize,
    address: &str,
    limit: Duration,
) -> Option<Duration> {
    let started = Instant::now();
    let name = format!("p{pool}-haproxy");
    while started.elapsed() < limit {
        if seen
            .lock()
            .expect("seen")
            .configs
            .get(&name)
            .is_some_and(|c| c.contains(address))
        {
            return Some(started.elapsed());
        }
        tokio::time::sleep(Duration::from_millis(2)).await;
    }
    None
}

#[tokio::main]
async fn main() {
    let n: usize = arg("--pools").and_then(|v| v.parse().ok()).unwrap_or(1000);
    let changes: usize = arg("--changes").and_then(|v| v.parse().ok()).unwrap_or(100);
    let ns = arg("--namespace").unwrap_or_else(|| "lbpool-scale".into());
    lbpool_tests::kubectl(&["create", "namespace", &ns]).expect("namespace");
    let c = admin_client().await;
    let o = Objects {
        services: Api::namespaced(c.clone(), &ns),
        slices: Api::namespaced(c.clone(), &ns),
        deployments: Api::namespaced(c.clone(), &ns),
        pools: Api::namespaced(c.clone(), &ns),
        config_maps: Api::namespaced(c, &ns),
    };
    create_all(&o, n).await;
    let seen = Arc::new(Mutex::new(Seen::default()));
    watch(&o, seen.clone());

    // 1. Initial sync.
    let admin = free_local_addr();
    let controller = ControllerProcess::local(
        &ns,
        &scratch_dir(&ns),
        &["--admin-addr", &admin.to_string()],
    );
    let pid = controller.pid().expect("local controller");
    let started = Instant::now();
    let mut first = None;
    let mut written = None;
    loop {
        let (count, earliest, configs) = {
            let s = seen.lock().expect("seen");
            (
                s.ready.len(),
                s.ready.values().min().copied(),
                s.configs.len(),
            )
        };
        if first.is_none() {
            first = earliest.map(|t| t.saturating_duration_since(started));
        }
        if written.is_none() && configs >= n {
            written = Some(started.elapsed());
        }
        if count >= n {
            break;
        }
        if started.elapsed() > Duration::from_secs(900) {
            panic!("only {count} of {n} pools Ready after 15 min");
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let sync = started.elapsed();
    let (cpu, children) = cpu_seconds(pid);
    println!(
        "initial sync: every ConfigMap written after {:.1}s; first pool Ready after {:.1}s, all {n} after {:.1}s; controller CPU {cpu:.1}s, haproxy -c children {children:.1}s; RSS {:.0} MiB",
        written.unwrap_or_default().as_secs_f64(),
        first.unwrap_or_default().as_secs_f64(),
        sync.as_secs_f64(),
        rss_mib(pid)
    );

    // 2. Idle: the minute after every pool is Ready (10 s to settle first).
    tokio::time::sleep(Duration::from_secs(10)).await;
    let m0 = metrics(admin).await;
    let (cpu0, _) = cpu_seconds(pid);
    tokio::time::sleep(Duration::from_secs(60)).await;
    let m1 = metrics(admin).await;
    let (cpu1, _) = cpu_seconds(pid);
    let requests =
        total(&m1, "lbpool_api_requests_total") - total(&m0, "lbpool_api_requests_total");
    let reconciles = total(&m1, "lbpool_reconciles_total") - total(&m0, "lbpool_reconciles_total");
    println!(
        "idle minute: {requests} API requests ({:.2}/s), {reconciles} reconciles, {:.2}s CPU; RSS {:.0} MiB",
        requests / 60.0,
        cpu1 - cpu0,
        rss_mib(pid)
    );

    // 3. One change at a time, each on another pool.
    let apply = PatchParams::apply("lbpool-scale-bench").force();
    let before = metrics(admin).await;
    let mut latencies = Vec::new();
    for k in 0..changes {
        let i = (k * 7919) % n;
        let s = slice(i, 1);
        let want = address(i, 0, 1);
        o.slices
            .patch(&format!("s{i}-1"), &apply, &Patch::Apply(&s))
            .await
            .expect("change a slice");
        match wait_config(&seen, i, &want, Duration::from_secs(30)).await {
            Some(t) => latencies.push(t),
            None => println!("change {k}: pool p{i} did not publish within 30 s"),
        }
    }
    // Let the requeued status writes of the last changes land.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let after = metrics(admin).await;
    latencies.sort();
    let per_change = (total(&after, "lbpool_api_requests_total")
        - total(&before, "lbpool_api_requests_total"))
        / changes as f64;
    let by_verb: BTreeMap<&str, f64> = ["get", "list", "create", "patch", "watch"]
        .into_iter()
        .map(|v| {
            let series = format!("lbpool_api_requests_total{{verb=\"{v}\"}}");
            (
                v,
                (metric(&after, &series) - metric(&before, &series)) / changes as f64,
            )
        })
        .collect();
    println!(
        "single change with {n} pools: ConfigMap updated after p50 {:.0} ms, p99 {:.0} ms, max {:.0} ms ({} changes); {per_change:.1} API requests per change {by_verb:?}",
        percentile(&latencies, 0.5).as_secs_f64() * 1000.0,
        percentile(&latencies, 0.99).as_secs_f64() * 1000.0,
        latencies.last().copied().unwrap_or_default().as_secs_f64() * 1000.0,
        latencies.len()
    );

    // 4. A burst: every slice at once (after the rollout interval of the
    // pools just changed has passed).
    tokio::time::sleep(Duration::from_secs(6)).await;
    let (cpu0, children0) = cpu_seconds(pid);
    let started = Instant::now();
    futures::stream::iter(0..n)
        .map(|i| {
            let (slices, apply) = (&o.slices, &apply);
            async move {
                slices
                    .patch(&format!("s{i}-1"), apply, &Patch::Apply(&slice(i, 2)))
                    .await
                    .map(drop)
            }
        })
        .buffer_unordered(64)
        .try_collect::<Vec<()>>()
        .await
        .expect("burst");
    let written = started.elapsed();
    let mut done: Vec<Duration> = Vec::with_capacity(n);
    let mut pending: Vec<usize> = (0..n).collect();
    while !pending.is_empty() && started.elapsed() < Duration::from_secs(600) {
        {
            let s = seen.lock().expect("seen");
            pending.retain(|&i| {
                let ok = s
                    .configs
                    .get(&format!("p{i}-haproxy"))
                    .is_some_and(|c| c.contains(&address(i, 0, 2)));
                if ok {
                    done.push(started.elapsed());
                }
                !ok
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    done.sort();
    let (cpu1, children1) = cpu_seconds(pid);
    println!(
        "burst of {n} changes (written in {:.1}s): every ConfigMap updated after {:.1}s (p50 {:.1}s), {} missing; controller CPU {:.1}s, haproxy -c {:.1}s; RSS {:.0} MiB",
        written.as_secs_f64(),
        done.last().copied().unwrap_or_default().as_secs_f64(),
        percentile(&done, 0.5).as_secs_f64(),
        pending.len(),
        cpu1 - cpu0,
        children1 - children0,
        rss_mib(pid)
    );
    drop(controller);
}
