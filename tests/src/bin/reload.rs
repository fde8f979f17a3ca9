//! Reload benchmark (run by `hack/reload-bench.sh` on the local real node):
//! how long an EndpointSlice change takes to reach HAProxy, `InPlace` and
//! `RollingUpdate` side by side, at the interval the manifests give each
//! pool (or `--min-interval`).
//!
//! The demo's pool is pointed at a headless Service without selector whose
//! EndpointSlices this benchmark writes, of at most 100 endpoints each (the
//! EndpointSlice controller's default): a fixed set of servers, plus one
//! more, a different one at each change. The servers are real webapp pods
//! (two fixed, the other ready ones in turn) or, with `--servers N`, N + 16
//! addresses of a network namespace of the benchmark's own, all answered by
//! one webapp process there (`Backends`).
//!
//! A change is timed from the moment the API server accepted the slice
//! until every ready HAProxy pod has the new server in its config
//! ("configured": `InPlace` asks each pod's Runtime API socket, `get
//! weight`, polled every 10 ms; `RollingUpdate` pods have no socket, so their
//! stats page's CSV export is read instead), and until every one has it `UP`
//! with a passed health check (`check_status` `L7OK`, from the CSV, read
//! every 10 ms per 1 000 servers). Before the next change the previous
//! server must have left every HAProxy, so each change starts from a
//! settled state.
//!
//! Usage: `reload [--changes N] [--rolling-changes M] [--min-interval D]
//! [--servers S]` (defaults 200 and 20: a rolling update takes seconds per
//! change; `--rolling-changes 0` leaves `RollingUpdate` out).

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, ListParams, Patch, PatchParams};
use lbpool_tests::dataplane::ip;
use lbpool_tests::e2e::{NS, patch_pool, ready};
use lbpool_tests::{
    admin_client, apply_kustomization, apply_yaml, http, install_crd, kubectl, percentile,
};
use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SERVICE: &str = "reload-bench";
/// The pool's backend section (`be_<pool>`; the demo's pool is `webapp`).
const BACKEND: &str = "be_webapp";
/// The longest a change may take before it counts as lost.
const LIMIT: Duration = Duration::from_secs(180);
/// Endpoints per EndpointSlice, as kube-controller-manager writes them by
/// default (`--max-endpoints-per-slice`).
const SLICE_MAX: usize = 100;
/// How many changing servers a `--servers` run cycles through.
const EXTRAS: usize = 16;

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

/// One server of the benchmark's Service: a pod name and its address.
#[derive(Clone, Debug)]
struct Server {
    name: String,
    ip: String,
}

/// The addresses of `--servers`: a network namespace of the benchmark's own
/// whose loopback answers for all of 10.249.0.0/16 (a `local` route), one
/// webapp process on `0.0.0.0:3000` there, and a veth pair to this host,
/// which routes the range into it, so the HAProxy pods reach every address
/// and their health checks pass. All of it is removed on drop.
struct Backends {
    webapp: Child,
}

const BACKENDS_NS: &str = "lbpool-bench";
const BACKENDS_LINK: &str = "lbpool-bench0";
const BACKENDS_RANGE: &str = "10.249.0.0/16";

impl Backends {
    fn create() -> Self {
        Self::remove();
        ip(&["netns", "add", BACKENDS_NS]);
        ip(&[
            "link",
            "add",
            BACKENDS_LINK,
            "type",
            "veth",
            "peer",
            "name",
            "eth0",
            "netns",
            BACKENDS_NS,
        ]);
        ip(&["addr", "add", "10.248.0.1/30", "dev", BACKENDS_LINK]);
        ip(&["link", "set", BACKENDS_LINK, "up"]);
        for args in [
            &["addr", "add", "10.248.0.2/30", "dev", "eth0"][..],
            &["link", "set", "eth0", "up"],
            &["link", "set", "lo", "up"],
            &["route", "add", "local", BACKENDS_RANGE, "dev", "lo"],
            &["route", "add", "default", "via", "10.248.0.1"],
        ] {
            ip(&[&["-n", BACKENDS_NS][..], args].concat());
        }
        ip(&["route", "add", BACKENDS_RANGE, "via", "10.248.0.2"]);
        let bin = std::env::var("LBPOOL_WEBAPP_BIN")
            .expect("LBPOOL_WEBAPP_BIN is not set: --servers needs the webapp binary (hack/reload-bench.sh sets it)");
        let webapp = Command::new("ip")
            .args(["netns", "exec", BACKENDS_NS, &bin])
            .args(["--listen", "0.0.0.0:3000", "--name", "reload-bench"])
            .stdout(Stdio::null())
            .spawn()
            .expect("start the webapp");
        Self { webapp }
    }

    /// `n` fixed servers and [`EXTRAS`] changing ones, named like a
    /// Deployment's pods (so the config is as long as a real one).
    fn servers(n: usize) -> (Vec<Server>, Vec<Server>) {
        let mut all = (0..n + EXTRAS).map(|i| Server {
            name: format!("webapp-6f7c9d8b54-{i:05}"),
            ip: format!("10.249.{}.{}", i / 250, i % 250 + 1),
        });
        let base = all.by_ref().take(n).collect();
        (base, all.collect())
    }

    /// Removes what a run left, also one that was killed: the processes in
    /// the namespace (which keep it alive), the namespace, the host's end
    /// of the veth pair.
    fn remove() {
        let quiet = |args: &[&str]| {
            Command::new(args[0])
                .args(&args[1..])
                .stderr(Stdio::null())
                .output()
        };
        if let Ok(out) = quiet(&["ip", "netns", "pids", BACKENDS_NS]) {
            for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                let _ = quiet(&["kill", "-KILL", pid]);
            }
        }
        let _ = quiet(&["ip", "netns", "del", BACKENDS_NS]);
        let _ = quiet(&["ip", "link", "del", BACKENDS_LINK]);
    }
}

impl Drop for Backends {
    fn drop(&mut self) {
        let _ = self.webapp.kill();
        let _ = self.webapp.wait();
        Self::remove();
    }
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

/// How far server `name` is in one HAProxy, from the CSV export of its
/// stats page.
async fn csv_stage(stats: SocketAddr, name: &str) -> Result<Stage, String> {
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
        .find_map(|l| {
            let f: Vec<&str> = l.split(',').collect();
            if *f.get(sv)? != name {
                return None;
            }
            let up = f.get(status)?.starts_with("UP") && f.get(check)?.ends_with("OK");
            Some(if up { Stage::Up } else { Stage::Configured })
        })
        .unwrap_or(Stage::Absent))
}

/// Whether one `InPlace` HAProxy has server `name`, from its Runtime API
/// socket (`get weight` answers "No such server." for one it lacks): one
/// line, where the CSV is 300 bytes per server.
async fn socket_has(socket: &PathBuf, name: &str) -> Result<bool, String> {
    let mut s = tokio::net::UnixStream::connect(socket)
        .await
        .map_err(|e| format!("{}: {e}", socket.display()))?;
    s.write_all(format!("get weight {BACKEND}/{name}\n").as_bytes())
        .await
        .map_err(|e| e.to_string())?;
    let mut answer = String::new();
    s.read_to_string(&mut answer)
        .await
        .map_err(|e| e.to_string())?;
    Ok(answer.contains("(initial"))
}

/// The Runtime API socket of an `InPlace` HAProxy pod on the local real
/// node, as this host sees it: in the pod's memory-backed `run` volume
/// under kubelet's root directory. That path is longer than a socket
/// address may be (108 bytes), so this returns a symlink to it in a
/// directory of the benchmark's own.
fn pod_socket(pod: &Pod) -> Option<PathBuf> {
    let dir = std::env::var("LBPOOL_CLUSTER_DIR").ok()?;
    let socket = std::path::Path::new(lbpool_wire::RUNTIME_API_SOCKET).file_name()?;
    let uid = pod.metadata.uid.as_deref()?;
    let path = PathBuf::from(dir)
        .join("kubelet/root/pods")
        .join(uid)
        .join("volumes/kubernetes.io~empty-dir/run")
        .join(socket);
    if !path.exists() {
        return None;
    }
    let links = std::env::temp_dir().join("lbpool-reload-bench");
    let link = links.join(uid);
    if std::fs::symlink_metadata(&link).is_err() {
        std::fs::create_dir_all(&links).expect("a directory for the socket links");
        std::os::unix::fs::symlink(&path, &link).expect("link the Runtime API socket");
    }
    Some(link)
}

/// The ready HAProxy pods. `InPlace` keeps its pods, so they are listed
/// once a change (`fresh` false after the first poll) rather than at every
/// poll, which would be a hundred list requests a second to the API server
/// whose latency is being measured.
async fn haproxy_pods(pods: &Api<Pod>, cached: &mut Vec<Pod>, fresh: bool) -> Vec<Pod> {
    if fresh || cached.is_empty() {
        *cached = ready_pods(pods, "app.kubernetes.io/name=haproxy").await;
    }
    cached.clone()
}

/// How one HAProxy is asked about a server.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Probe {
    /// Its Runtime API (`InPlace`): in its config or not, one line.
    Socket,
    /// Its stats page's CSV: also whether the server is `UP`.
    Csv,
}

/// How far server `name` is in the HAProxy pod of `haproxy` that has it
/// least far (`None` while no HAProxy pod is ready or one does not answer);
/// [`Probe::Socket`] tells `Absent` from `Configured` only.
async fn least(haproxy: Vec<Pod>, name: &str, probe: Probe) -> Option<Stage> {
    if haproxy.is_empty() {
        return None;
    }
    let mut least = None;
    for p in haproxy {
        let stage = match probe {
            Probe::Socket => {
                let path = pod_socket(&p).unwrap_or_else(|| {
                    panic!(
                        "no Runtime API socket of pod {:?} under LBPOOL_CLUSTER_DIR's kubelet",
                        p.metadata.name
                    )
                });
                let has = socket_has(&path, name)
                    .await
                    .unwrap_or_else(|e| panic!("Runtime API of {:?}: {e}", p.metadata.name));
                if has {
                    Stage::Configured
                } else {
                    Stage::Absent
                }
            }
            Probe::Csv => {
                let pod_ip = p.status.and_then(|s| s.pod_ip)?;
                let stats: SocketAddr = format!("{pod_ip}:1936").parse().expect("address");
                csv_stage(stats, name).await.ok()?
            }
        };
        least = Some(least.map_or(stage, |l: Stage| l.min(stage)));
    }
    least
}

fn slice(name: &str, servers: &[Server]) -> serde_json::Value {
    let endpoints: Vec<_> = servers
        .iter()
        .map(|s| {
            json!({"addresses": [s.ip], "conditions": {"ready": true},
                   "targetRef": {"kind": "Pod", "name": s.name, "namespace": NS}})
        })
        .collect();
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
           "metadata": {"name": name, "namespace": NS,
                        "labels": {"kubernetes.io/service-name": SERVICE,
                                   "endpointslice.kubernetes.io/managed-by": "reload-bench"}},
           "addressType": "IPv4", "ports": [{"name": "http", "port": 3000, "protocol": "TCP"}],
           "endpoints": endpoints})
}

async fn write_slice(slices: &Api<EndpointSlice>, name: &str, servers: &[Server]) {
    slices
        .patch(
            name,
            &PatchParams::apply("reload-bench").force(),
            &Patch::Apply(slice(name, servers)),
        )
        .await
        .unwrap_or_else(|e| panic!("write EndpointSlice {name}: {e}"));
}

/// The fixed servers, in slices of [`SLICE_MAX`]; the changing one has a
/// slice of its own, the only object a change writes.
async fn write_fixed(slices: &Api<EndpointSlice>, fixed: &[Server]) {
    for (k, chunk) in fixed.chunks(SLICE_MAX).enumerate() {
        write_slice(slices, &format!("{SERVICE}-{k}"), chunk).await;
    }
}

/// Installs `manifests`, waits for HAProxy, points the pool at the
/// benchmark's Service; with `min_interval`, at that interval, else at the
/// one the manifests give; health checks every `check_interval`.
fn prepare(manifests: &str, min_interval: Option<&str>, check_interval: &str) {
    apply_kustomization(manifests);
    let rollout = min_interval
        .map(|i| format!(r#","rollout":{{"minInterval":"{i}"}}"#))
        .unwrap_or_default();
    patch_pool(&format!(
        r#"{{"spec":{{"backend":{{"service":"{SERVICE}","port":"http"}},"healthCheck":{{"interval":"{check_interval}"}}{rollout}}}}}"#
    ));
    // Applying the manifests gave the webapp their replica count back.
    kubectl(&["scale", "deployment/webapp", "-n", NS, "--replicas=6"]).expect("scale the webapp");
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
/// is `UP` everywhere (`socket`: configured as the Runtime API says).
async fn measure(
    slices: &Api<EndpointSlice>,
    pods: &Api<Pod>,
    extras: &[Server],
    n: usize,
    socket: bool,
    csv_every: Duration,
) -> Times {
    let mut times = Times::default();
    let mut previous: Option<&str> = None;
    let mut cached;
    let extra_slice = format!("{SERVICE}-change");
    for i in 0..=n {
        let extra = &extras[i % extras.len()];
        cached = ready_pods(pods, "app.kubernetes.io/name=haproxy").await;
        write_slice(slices, &extra_slice, std::slice::from_ref(extra)).await;
        let written = Instant::now();
        let (mut configured, mut up) = (None, None);
        while written.elapsed() < LIMIT && up.is_none() {
            // Until configured, the cheapest probe there is (and polled
            // often); then the CSV, for UP.
            let probe = if socket && configured.is_none() {
                Probe::Socket
            } else {
                Probe::Csv
            };
            let haproxy = haproxy_pods(pods, &mut cached, !socket).await;
            let stage = least(haproxy, &extra.name, probe).await;
            if stage >= Some(Stage::Configured) {
                configured.get_or_insert(written.elapsed());
            }
            if stage == Some(Stage::Up) {
                up = Some(written.elapsed());
            }
            let poll = match (configured, probe) {
                (Some(_), Probe::Csv) => csv_every,
                // Configured as the socket says: read the CSV right away.
                (Some(_), Probe::Socket) => Duration::ZERO,
                (None, _) => Duration::from_millis(10),
            };
            tokio::time::sleep(poll).await;
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
            while settled.elapsed() < LIMIT
                && least(
                    haproxy_pods(pods, &mut cached, !socket).await,
                    gone,
                    if socket { Probe::Socket } else { Probe::Csv },
                )
                .await
                    != Some(Stage::Absent)
            {
                tokio::time::sleep(csv_every).await;
            }
        }
        previous = Some(&extra.name);
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

async fn webapp_pods(pods: &Api<Pod>) -> Vec<Server> {
    let webapps: Vec<Server> = ready_pods(pods, "app.kubernetes.io/name=webapp")
        .await
        .into_iter()
        .filter_map(|p| {
            Some(Server {
                name: p.metadata.name?,
                ip: p.status?.pod_ip?,
            })
        })
        .collect();
    assert!(webapps.len() >= 4, "ready webapp pods: {webapps:?}");
    webapps
}

#[tokio::main]
async fn main() {
    let changes = arg("--changes", 200);
    let rolling_changes = arg("--rolling-changes", 20);
    let servers = arg("--servers", 0);
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
    // Headless: kube-proxy leaves it alone. Otherwise it rewrites its
    // iptables rules for every endpoint at each change (a whole core for
    // seconds at 10 000), on the machine whose latency is measured.
    apply_yaml(
        NS,
        &json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": SERVICE, "namespace": NS},
                "spec": {"clusterIP": "None",
                         "ports": [{"name": "http", "port": 80, "targetPort": 3000}]}})
        .to_string(),
    )
    .expect("the benchmark's Service");

    // Health checks at about 500 per second per HAProxy pod at most (every
    // 2 s, as the demo's pool, up to 1 000 servers), and the CSV, 300 bytes
    // a server, read every 10 ms per 1 000 servers.
    let check_secs = (servers / 500).max(2);
    let check_interval = format!("{check_secs}s");
    let csv_every = Duration::from_millis((servers as u64 / 20).max(10));
    let backends = (servers > 0).then(|| (Backends::create(), Backends::servers(servers)));
    let mut results = BTreeMap::new();
    let mut fixed_count = 0;
    for (name, manifests, n, socket) in [
        (
            "InPlace",
            "manifests/overlays/local-in-place",
            changes,
            true,
        ),
        (
            "RollingUpdate",
            "manifests/overlays/local",
            rolling_changes,
            false,
        ),
    ] {
        if n == 0 {
            continue;
        }
        eprintln!("{name}: {n} changes");
        prepare(manifests, min_interval.as_deref(), &check_interval);
        let (fixed, extras) = match &backends {
            Some((_, servers)) => servers.clone(),
            None => {
                let webapps = webapp_pods(&pods).await;
                let (fixed, extras) = webapps.split_at(2);
                (fixed.to_vec(), extras.to_vec())
            }
        };
        fixed_count = fixed.len();
        write_fixed(&slices, &fixed).await;
        let started = Instant::now();
        let times = measure(&slices, &pods, &extras, n, socket, csv_every).await;
        eprintln!("  {name} took {:.0?}", started.elapsed());
        results.insert(name, times);
    }
    println!(
        "EndpointSlice change -> new server configured, and UP by its health check, in every ready HAProxy pod; {} servers{}, health checks every {check_interval}, rollout.minInterval {}:",
        fixed_count + 1,
        if servers > 0 {
            " (addresses of the benchmark's network namespace)"
        } else {
            " (webapp pods)"
        },
        min_interval
            .as_deref()
            .unwrap_or("as the manifests give it")
    );
    for (name, r) in &results {
        println!("{}", summary(name, r));
    }
}
