//! Reload benchmark (run by `hack/reload-bench.sh` on the local real node):
//! how long an EndpointSlice change takes to reach HAProxy, `InPlace` and
//! `RollingUpdate` side by side, at the interval the manifests give each
//! pool (or `--min-interval`).
//!
//! The demo's pool is pointed at a Service without selector whose one
//! EndpointSlice this benchmark writes: two webapp pods always, plus one of
//! the other ready webapp pods, a different one at each change. A change is
//! timed from the moment the API server accepted the slice until every
//! ready HAProxy pod lists the new server on its stats page (the CSV
//! export, HAProxy's own view; "configured"), and until every one has it
//! `UP` with a passed health check (`check_status` `L7OK`; "UP"), polled
//! every 10 ms. Before the next change the previous server must have left every
//! HAProxy, so each change starts from a settled state.
//!
//! Usage: `reload [--changes N] [--rolling-changes M] [--min-interval D]`
//! (defaults 200 and 20: a rolling update takes seconds per change).

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

/// How far one HAProxy has a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum Stage {
    /// Not in its config.
    Absent,
    /// In its config (the stats CSV lists it), not yet passed a check.
    Configured,
    /// `UP`, and its last health check passed (`L4OK`, `L6OK`, `L7OK`).
    Up,
}

/// Each server of one HAProxy (by name: the pod's) and how far it is, from
/// the CSV export of its stats page.
async fn servers(stats: SocketAddr) -> Result<BTreeMap<String, Stage>, String> {
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
    let (Some(sv), Some(status), Some(check)) = (col("svname"), col("status"), col("check_status"))
    else {
        return Err(format!("unexpected CSV header {header:?}"));
    };
    Ok(lines
        .filter_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            let name = *f.get(sv)?;
            if name == "FRONTEND" || name == "BACKEND" {
                return None;
            }
            let up = f.get(status)?.starts_with("UP") && f.get(check)?.ends_with("OK");
            Some((
                name.to_owned(),
                if up { Stage::Up } else { Stage::Configured },
            ))
        })
        .collect())
}

/// How far server `name` is in the HAProxy pod that has it least far
/// (`None` while no HAProxy pod is ready or one does not answer).
async fn least(pods: &Api<Pod>, name: &str) -> Option<Stage> {
    let haproxy = ready_pods(pods, "app.kubernetes.io/name=haproxy").await;
    let mut least = None;
    for p in haproxy {
        let pod_ip = p.status.and_then(|s| s.pod_ip)?;
        let stats: SocketAddr = format!("{pod_ip}:1936").parse().expect("address");
        let stage = servers(stats)
            .await
            .ok()?
            .get(name)
            .copied()
            .unwrap_or(Stage::Absent);
        least = Some(least.map_or(stage, |l: Stage| l.min(stage)));
    }
    least
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
/// benchmark's Service; with `min_interval`, at that interval, else at the
/// one the manifests give.
fn prepare(manifests: &str, min_interval: Option<&str>) {
    apply_kustomization(manifests);
    let rollout = min_interval
        .map(|i| format!(r#","rollout":{{"minInterval":"{i}"}}"#))
        .unwrap_or_default();
    patch_pool(&format!(
        r#"{{"spec":{{"backend":{{"service":"{SERVICE}","port":"http"}}{rollout}}}}}"#
    ));
    for target in ["deployment/haproxy", "deployment/webapp"] {
        kubectl(&["rollout", "status", target, "-n", NS, "--timeout=300s"])
            .unwrap_or_else(|e| panic!("{target}: {e}"));
    }
}

/// The times of the changes of a run: until the new server was in every
/// HAProxy's config, and until it was `UP` by its health check in all.
#[derive(Debug, Default)]
struct Times {
    configured: Vec<Duration>,
    up: Vec<Duration>,
    lost: usize,
}

/// `n` changes, each timed until the new server is configured and until it
/// is `UP` everywhere.
async fn measure(
    slices: &Api<EndpointSlice>,
    pods: &Api<Pod>,
    webapps: &[(String, String)],
    n: usize,
) -> Times {
    let (base, extras) = webapps.split_at(2);
    let mut times = Times::default();
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
        let (mut configured, mut up) = (None, None);
        while written.elapsed() < LIMIT && up.is_none() {
            match least(pods, &extra.0).await {
                Some(Stage::Up) => {
                    configured.get_or_insert(written.elapsed());
                    up = Some(written.elapsed());
                }
                Some(Stage::Configured) => {
                    configured.get_or_insert(written.elapsed());
                }
                _ => {}
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        // Change 0 only settles the first state.
        if i > 0 {
            match (configured, up) {
                (Some(c), Some(u)) => {
                    times.configured.push(c);
                    times.up.push(u);
                }
                _ => times.lost += 1,
            }
        }
        if let Some(gone) = previous {
            let settled = Instant::now();
            while settled.elapsed() < LIMIT && least(pods, gone).await != Some(Stage::Absent) {
                tokio::time::sleep(Duration::from_millis(10)).await;
            }
        }
        previous = Some(&extra.0);
        if i > 0 && i % 20 == 0 {
            eprintln!("  {i}/{n} changes");
        }
    }
    times.configured.sort();
    times.up.sort();
    times
}

fn summary(name: &str, times: &Times) -> String {
    let line = |what: &str, t: &[Duration]| {
        format!(
            "{name:<14} {what:<10} {:>5} changes  p50 {:>8.1?}  p99 {:>8.1?}  max {:>8.1?}",
            t.len(),
            percentile(t, 0.5),
            percentile(t, 0.99),
            t.last().copied().unwrap_or_default(),
        )
    };
    format!(
        "{}\n{}  lost {}",
        line("configured", &times.configured),
        line("UP", &times.up),
        times.lost
    )
}

#[tokio::main]
async fn main() {
    let changes = arg("--changes", 200);
    let rolling_changes = arg("--rolling-changes", 20);
    // `--min-interval 1ms` times lbpool's path alone; by default each pool
    // keeps the interval its manifests give (what a user gets).
    let args: Vec<String> = std::env::args().collect();
    let min_interval = args
        .iter()
        .position(|a| a == "--min-interval")
        .and_then(|i| args.get(i + 1).cloned());
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
        prepare(manifests, min_interval.as_deref());
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
        "EndpointSlice change -> new server configured, and UP by its health check, in every ready HAProxy pod (rollout.minInterval {}):",
        min_interval
            .as_deref()
            .unwrap_or("as the manifests give it")
    );
    for (name, r) in &results {
        println!("{}", summary(name, r));
    }
}
