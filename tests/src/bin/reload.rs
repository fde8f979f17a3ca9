//! Reload benchmark (run by `hack/reload-bench.sh` on the local real node):
//! how long an EndpointSlice change takes to reach HAProxy, `InPlace` and
//! `RollingUpdate` side by side, with `rollout.minInterval` at its minimum
//! (`1ms`).
//!
//! The demo's pool is pointed at a Service without selector whose one
//! EndpointSlice this benchmark writes: two webapp pods always, plus one of
//! the other ready webapp pods, a different one at each change. A change is
//! timed from the moment the API server accepted the slice until every
//! ready HAProxy pod lists the new server as `UP` on its stats page (the
//! CSV export, HAProxy's own view, as `show servers state`), polled every
//! 10 ms. Before the next change the previous server must have left every
//! HAProxy, so each change starts from a settled state.
//!
//! Usage: `reload [--changes N] [--rolling-changes M]` (defaults 200 and 20:
//! a rolling update takes seconds per change).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};
use lbpool_tests::e2e::{NS, patch_pool, ready};
use lbpool_tests::{
    admin_client, apply_kustomization, apply_yaml, http, install_crd, kubectl, percentile,
};
use serde_json::json;

const SERVICE: &str = "reload-bench";
/// The longest a change may take before it counts as lost.
const LIMIT: Duration = Duration::from_secs(180);

fn arg(name: &str, default: usize) -> usize {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1))
        .map(|v| v.parse().unwrap_or_else(|e| panic!("{name} {v}: {e}")))
        .unwrap_or(default)
}

async fn ready_pods(pods: &Api<Pod>, selector: &str) -> Vec<Pod> {
    pods.list(&ListParams::default().labels(selector))
        .await
        .expect("list pods")
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none() && ready(p))
        .collect()
}

/// The servers one HAProxy reports `UP` (by name: the pod's), from the CSV
/// export of its stats page.
async fn up_servers(stats: SocketAddr) -> Result<Vec<String>, String> {
    let csv = http::get(stats, "/;csv", Duration::from_secs(5))
        .await?
        .body;
    let mut lines = csv.lines();
    let header: Vec<&str> = lines
        .next()
        .ok_or("empty CSV")?
        .trim_start_matches("# ")
        .split(',')
        .collect();
    let col = |name: &str| header.iter().position(|h| *h == name);
    let (Some(sv), Some(status)) = (col("svname"), col("status")) else {
        return Err(format!("unexpected CSV header {header:?}"));
    };
    Ok(lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let name = *f.get(sv)?;
            if name == "FRONTEND" || name == "BACKEND" || !f.get(status)?.starts_with("UP") {
                return None;
            }
            Some(name.to_owned())
        })
        .collect())
}

/// Whether every ready HAProxy pod lists server `name` as UP (`want`) or
/// does not (`!want`).
async fn everywhere(pods: &Api<Pod>, name: &str, want: bool) -> bool {
    let haproxy = ready_pods(pods, "app.kubernetes.io/name=haproxy").await;
    if haproxy.is_empty() {
        return false;
    }
    for p in haproxy {
        let Some(pod_ip) = p.status.and_then(|s| s.pod_ip) else {
            return false;
        };
        let stats: SocketAddr = format!("{pod_ip}:1936").parse().expect("address");
        match up_servers(stats).await {
            Ok(up) if up.iter().any(|s| s == name) == want => {}
            _ => return false,
        }
    }
    true
}

fn slice(backends: &[(String, String)]) -> serde_json::Value {
    let endpoints: Vec<_> = backends
        .iter()
        .map(|(name, ip)| {
            json!({"addresses": [ip], "conditions": {"ready": true},
                   "targetRef": {"kind": "Pod", "name": name, "namespace": NS}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": format!("{SERVICE}-1"), "namespace": NS,
                        "labels": {"kubernetes.io/service-name": SERVICE,
                                   "endpointslice.kubernetes.io/managed-by": "reload-bench"}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 3000, "protocol": "TCP"}],
           "endpoints": endpoints})
}

/// Installs `manifests`, waits for HAProxy, points the pool at the
/// benchmark's Service with the shortest interval.
fn prepare(manifests: &str) {
    apply_kustomization(manifests);
    patch_pool(&format!(
        r#"{{"spec":{{"backend":{{"service":"{SERVICE}","port":"http"}},"rollout":{{"minInterval":"1ms"}}}}}}"#
    ));
    for target in ["deployment/haproxy", "deployment/webapp"] {
        kubectl(&["rollout", "status", target, "-n", NS, "--timeout=300s"])
            .unwrap_or_else(|e| panic!("{target}: {e}"));
    }
}

/// `n` changes; the time of each until the new server is UP everywhere.
async fn measure(
    slices: &Api<EndpointSlice>,
    pods: &Api<Pod>,
    webapps: &[(String, String)],
    n: usize,
) -> (Vec<Duration>, usize) {
    let (base, extras) = webapps.split_at(2);
    let mut times = Vec::new();
    let mut lost = 0;
    let mut previous: Option<&str> = None;
    for i in 0..=n {
        let extra = &extras[i % extras.len()];
        let mut backends = base.to_vec();
        backends.push(extra.clone());
        slices
            .patch(
                &format!("{SERVICE}-1"),
                &PatchParams::apply("reload-bench").force(),
                &Patch::Apply(slice(&backends)),
            )
            .await
            .expect("write the EndpointSlice");
        let written = Instant::now();
        let mut live = None;
        while written.elapsed() < LIMIT {
            if everywhere(pods, &extra.0, true).await {
                live = Some(written.elapsed());
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Change 0 only settles the first state.
        if i > 0 {
            match live {
                Some(t) => times.push(t),
                None => lost += 1,
            }
        }
        if let Some(gone) = previous {
            let settled = Instant::now();
            while settled.elapsed() < LIMIT && !everywhere(pods, gone, false).await {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        previous = Some(&extra.0);
        if i > 0 && i % 20 == 0 {
            eprintln!("  {i}/{n} changes");
        }
    }
    times.sort();
    (times, lost)
}

fn summary(name: &str, (times, lost): &(Vec<Duration>, usize)) -> String {
    format!(
        "{name:<14} {:>5} changes  p50 {:>8.1?}  p99 {:>8.1?}  max {:>8.1?}  lost {lost}",
        times.len(),
        percentile(times, 0.5),
        percentile(times, 0.99),
        times.last().copied().unwrap_or_default(),
    )
}

#[tokio::main]
async fn main() {
    let changes = arg("--changes", 200);
    let rolling_changes = arg("--rolling-changes", 20);
    let client = admin_client().await;
    let pods: Api<Pod> = Api::namespaced(client.clone(), NS);
    let slices: Api<EndpointSlice> = Api::namespaced(client, NS);

    install_crd();
    apply_kustomization("manifests/overlays/local-in-place");
    kubectl(&["scale", "deployment/webapp", "-n", NS, "--replicas=6"]).expect("scale the webapp");
    apply_yaml(
        NS,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NS},
                "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 3000}]}})
        .to_string(),
    )
    .expect("the benchmark's Service");

    let mut results = BTreeMap::new();
    for (name, manifests, n) in [
        ("InPlace", "manifests/overlays/local-in-place", changes),
        ("RollingUpdate", "manifests/overlays/local", rolling_changes),
    ] {
        eprintln!("{name}: {n} changes");
        prepare(manifests);
        kubectl(&["scale", "deployment/webapp", "-n", NS, "--replicas=6"]).expect("scale");
        kubectl(&[
            "rollout",
            "status",
            "deployment/webapp",
            "-n",
            NS,
            "--timeout=300s",
        ])
        .expect("6 webapp pods");
        let webapps: Vec<(String, String)> = ready_pods(&pods, "app.kubernetes.io/name=webapp")
            .await
            .into_iter()
            .filter_map(|p| Some((p.metadata.name?, p.status?.pod_ip?)))
            .collect();
        assert!(webapps.len() >= 4, "ready webapp pods: {webapps:?}");
        results.insert(name, measure(&slices, &pods, &webapps, n).await);
    }
    println!(
        "EndpointSlice change -> new server UP in every ready HAProxy pod (rollout.minInterval 1ms):"
    );
    for (name, r) in &results {
        println!("{}", summary(name, r));
    }
}
