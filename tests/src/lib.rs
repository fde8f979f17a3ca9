//! Harness for tests against a real kube-apiserver: the local control plane
//! (`hack/local-cluster.sh`) or a kind cluster.
//!
//! The environment names the cluster; a test without one fails and says so:
//! - `LBPOOL_KUBECONFIG`: an admin kubeconfig (the tests' own identity);
//! - `LBPOOL_CONTROLLER_BIN`: the controller binary, run as a local process
//!   with a token of its ServiceAccount, never with admin credentials;
//! - `LBPOOL_KUBECTL`: kubectl (default `kubectl`).
//!
//! Each test works in its own namespace, deleted afterwards; when a test
//! fails, the namespace's objects and the controller's log are printed.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::future::Future;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use anyhow::{Context as _, bail};

pub mod dataplane;
pub mod demo;
pub mod e2e;
pub mod http;
pub mod monitoring;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config};

/// The repository root.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("..")
}

pub fn required_env(name: &str, what: &str) -> String {
    std::env::var(name).unwrap_or_else(|_| {
        panic!("{name} is not set: this test needs {what}. Run hack/test.sh, which starts the local control plane and sets it.")
    })
}

/// Path of the admin kubeconfig.
pub fn admin_kubeconfig() -> PathBuf {
    required_env(
        "LBPOOL_KUBECONFIG",
        "a Kubernetes cluster (an admin kubeconfig)",
    )
    .into()
}

/// A client with the admin identity.
pub async fn admin_client() -> Client {
    client_from(&admin_kubeconfig()).await
}

/// A client from a kubeconfig file.
pub async fn client_from(path: &Path) -> Client {
    let kubeconfig =
        Kubeconfig::read_from(path).unwrap_or_else(|e| panic!("read {}: {e}", path.display()));
    let config = Config::from_custom_kubeconfig(kubeconfig, &KubeConfigOptions::default())
        .await
        .unwrap_or_else(|e| panic!("kubeconfig {}: {e}", path.display()));
    Client::try_from(config).expect("client from kubeconfig")
}

/// Runs kubectl with the admin identity; `Err` carries its stderr.
pub fn kubectl(args: &[&str]) -> anyhow::Result<String> {
    kubectl_as(&admin_kubeconfig(), args, None)
}

/// Runs kubectl with `kubeconfig`, optionally feeding `stdin`.
pub fn kubectl_as(kubeconfig: &Path, args: &[&str], stdin: Option<&str>) -> anyhow::Result<String> {
    use std::io::Write as _;
    let bin = std::env::var("LBPOOL_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let mut child = Command::new(&bin)
        .args(args)
        .env("KUBECONFIG", kubeconfig)
        .stdin(if stdin.is_some() {
            Stdio::piped()
        } else {
            Stdio::null()
        })
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .with_context(|| format!("run {bin} (set LBPOOL_KUBECTL)"))?;
    if let Some(input) = stdin {
        child
            .stdin
            .take()
            .expect("piped stdin")
            .write_all(input.as_bytes())?;
    }
    let out = child.wait_with_output()?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {} {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr).trim(),
            String::from_utf8_lossy(&out.stdout).trim()
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).into_owned())
}

/// Applies `yaml` with the admin identity.
pub fn apply_yaml(namespace: &str, yaml: &str) -> anyhow::Result<String> {
    kubectl_as(
        &admin_kubeconfig(),
        &[
            "apply",
            "--server-side",
            "--force-conflicts",
            "-n",
            namespace,
            "-f",
            "-",
        ],
        Some(yaml),
    )
}

/// `kubectl apply --server-side --force-conflicts -k` of a directory of the repository.
pub fn apply_kustomization(dir: &str) {
    let path = repo().join(dir);
    kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "-k",
        &path.to_string_lossy(),
    ])
    .unwrap_or_else(|e| panic!("kubectl apply -k {dir}: {e}"));
}

/// Applies the CRD and waits until the API server serves it.
pub fn install_crd() {
    apply_kustomization("crds");
    kubectl(&[
        "wait",
        "--for=condition=Established",
        "crd/loadbalancerpools.lbpool.dev",
        "--timeout=60s",
    ])
    .expect("CRD established");
}

/// Installs the CRD and the controller's RBAC once per test process.
pub fn install() {
    static INSTALLED: OnceLock<()> = OnceLock::new();
    INSTALLED.get_or_init(|| {
        install_crd();
        apply_kustomization("manifests/controller");
    });
}

/// Polls `check` every 200 ms until it returns `Some`, or fails after `timeout`
/// with the last observation.
pub async fn eventually<T, F, Fut>(what: &str, timeout: Duration, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Result<T, String>>,
{
    let deadline = Instant::now() + timeout;
    loop {
        match check().await {
            Ok(v) => return v,
            Err(last) if Instant::now() >= deadline => {
                panic!("timed out after {timeout:?} waiting for {what}; last seen: {last}")
            }
            Err(_) => tokio::time::sleep(Duration::from_millis(200)).await,
        }
    }
}

/// A namespace of one test, deleted when dropped; on a failing test its
/// objects, Events and the given logs are printed first.
#[derive(Debug)]
pub struct TestNamespace {
    pub name: String,
    logs: Vec<PathBuf>,
}

impl TestNamespace {
    /// Creates `lbpool-<prefix>-<random>` under the restricted Pod Security Standard.
    pub fn create(prefix: &str) -> Self {
        install();
        let name = format!("lbpool-{prefix}-{:06x}", random() & 0xff_ffff);
        let yaml = format!(
            "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: {name}\n  labels:\n    pod-security.kubernetes.io/enforce: restricted\n"
        );
        kubectl_as(&admin_kubeconfig(), &["apply", "-f", "-"], Some(&yaml))
            .expect("create namespace");
        Self {
            name,
            logs: Vec::new(),
        }
    }

    /// A log file to print if the test fails.
    pub fn keep_log(&mut self, path: Option<PathBuf>) {
        self.logs.extend(path);
    }

    fn dump(&self) {
        eprintln!("===== state of namespace {} =====", self.name);
        for what in [
            "loadbalancerpools,deployments,replicasets,pods,endpointslices,configmaps -o wide",
            "events --sort-by=.lastTimestamp",
        ] {
            let mut args = vec!["get", "-n", &self.name];
            args.extend(what.split(' '));
            match kubectl(&args) {
                Ok(out) => eprintln!("$ kubectl get {what}\n{out}"),
                Err(e) => eprintln!("{e}"),
            }
        }
        if let Ok(out) = kubectl(&["get", "lbp", "-n", &self.name, "-o", "yaml"]) {
            eprintln!("$ kubectl get lbp -o yaml\n{out}");
        }
        for log in &self.logs {
            eprintln!("===== {} =====", log.display());
            eprintln!("{}", std::fs::read_to_string(log).unwrap_or_default());
        }
    }
}

impl Drop for TestNamespace {
    fn drop(&mut self) {
        if std::thread::panicking() {
            self.dump();
        }
        let _ = kubectl(&["delete", "namespace", &self.name, "--wait=false"]);
    }
}

fn random() -> u64 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos());
    h.finish()
}

/// A kubeconfig holding a fresh token of the controller's ServiceAccount.
pub fn controller_kubeconfig(dir: &Path) -> PathBuf {
    service_account_kubeconfig(dir, "lbpool-system", "lbpool-controller", &[])
}

/// A kubeconfig holding a fresh token of ServiceAccount `namespace/account`;
/// `token_args` go to `kubectl create token` (e.g. `--bound-object-kind Pod`).
pub fn service_account_kubeconfig(
    dir: &Path,
    namespace: &str,
    account: &str,
    token_args: &[&str],
) -> PathBuf {
    let mut args = vec!["create", "token", account, "-n", namespace, "--duration=2h"];
    args.extend_from_slice(token_args);
    let token = kubectl(&args).unwrap_or_else(|e| panic!("token of {namespace}/{account}: {e}"));
    let admin =
        kubectl(&["config", "view", "--raw", "--minify", "-o", "json"]).expect("admin kubeconfig");
    let admin: serde_json::Value = serde_json::from_str(&admin).expect("kubeconfig json");
    let cluster = &admin["clusters"][0]["cluster"];
    let config = serde_json::json!({
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "c", "cluster": cluster}],
        "users": [{"name": account, "user": {"token": token.trim()}}],
        "contexts": [{"name": "c", "context": {"cluster": "c", "user": account}}],
        "current-context": "c",
    });
    let path = dir.join(format!("{account}-{}.kubeconfig", random() & 0xffff));
    std::fs::write(&path, serde_json::to_vec_pretty(&config).expect("json"))
        .expect("write kubeconfig");
    path
}

/// The controller under test: a local process watching one namespace with
/// its ServiceAccount's token, or (with `LBPOOL_CONTROLLER=in-cluster`, the
/// kind path) the Deployment in `lbpool-system`.
#[derive(Debug)]
pub enum ControllerProcess {
    Local { child: Child, log: PathBuf },
    InCluster,
}

const IN_CLUSTER_SELECTOR: [&str; 4] = [
    "-n",
    "lbpool-system",
    "-l",
    "app.kubernetes.io/name=lbpool-controller",
];

impl ControllerProcess {
    pub fn start(namespace: &str, dir: &Path) -> Self {
        if Self::in_cluster() {
            return Self::InCluster;
        }
        Self::local(namespace, dir, &["--admin-addr", "127.0.0.1:0"])
    }

    /// A local process watching `namespace`, with more arguments (they
    /// include `--admin-addr`).
    pub fn local(namespace: &str, dir: &Path, args: &[&str]) -> Self {
        let bin = required_env("LBPOOL_CONTROLLER_BIN", "the lbpool-controller binary");
        let kubeconfig = controller_kubeconfig(dir);
        let log = dir.join(format!("controller-{}.log", random() & 0xffff));
        let out = std::fs::File::create(&log).expect("controller log");
        let child = Command::new(&bin)
            .args(["--namespace", namespace])
            .args(args)
            .env("KUBECONFIG", &kubeconfig)
            .env("RUST_LOG", "info,kube=warn")
            .env("NO_COLOR", "1")
            .stdout(out.try_clone().expect("log"))
            .stderr(out)
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        Self::Local { child, log }
    }

    /// The local process's id.
    pub fn pid(&self) -> Option<u32> {
        match self {
            Self::Local { child, .. } => Some(child.id()),
            Self::InCluster => None,
        }
    }

    /// Whether the tests drive the controller deployed in the cluster.
    pub fn in_cluster() -> bool {
        std::env::var("LBPOOL_CONTROLLER").as_deref() == Ok("in-cluster")
    }

    /// The local process's log file, to print when a test fails.
    pub fn log_path(&self) -> Option<PathBuf> {
        match self {
            Self::Local { log, .. } => Some(log.clone()),
            Self::InCluster => None,
        }
    }

    /// Everything the controller logged so far.
    pub fn log_text(&self) -> String {
        match self {
            Self::Local { log, .. } => std::fs::read_to_string(log).unwrap_or_default(),
            Self::InCluster => {
                let mut args = vec!["logs", "--tail=-1"];
                args.extend(IN_CLUSTER_SELECTOR);
                kubectl(&args).unwrap_or_else(|e| e.to_string())
            }
        }
    }

    /// Stops the controller the hard way (SIGKILL, or a pod deletion): what
    /// a crash or an eviction looks like.
    pub fn kill(mut self) {
        match &mut self {
            Self::Local { child, .. } => {
                let _ = child.kill();
                let _ = child.wait();
            }
            Self::InCluster => {
                let mut args = vec!["delete", "pod", "--grace-period=0", "--force"];
                args.extend(IN_CLUSTER_SELECTOR);
                kubectl(&args).expect("delete the controller pod");
                kubectl(&[
                    "rollout",
                    "status",
                    "deployment/lbpool-controller",
                    "-n",
                    "lbpool-system",
                    "--timeout=120s",
                ])
                .expect("controller back");
            }
        }
    }
}

impl Drop for ControllerProcess {
    fn drop(&mut self) {
        if let Self::Local { child, .. } = self {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

/// A scratch directory for kubeconfigs and logs, kept under the cluster's
/// state so `hack/test.sh` preserves it on failure.
pub fn scratch_dir(name: &str) -> PathBuf {
    let base = std::env::var_os("LBPOOL_TEST_ARTIFACTS")
        .map(PathBuf::from)
        .unwrap_or_else(std::env::temp_dir);
    let dir = base.join(name);
    std::fs::create_dir_all(&dir).expect("scratch dir");
    dir
}

/// A loopback address with a port free at the time of the call.
pub fn free_local_addr() -> std::net::SocketAddr {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("a free port");
    listener.local_addr().expect("address")
}

/// `GET http://{addr}{path}`: the status code and body, or why not.
pub async fn admin_get(addr: std::net::SocketAddr, path: &str) -> Result<(u16, String), String> {
    let r = http::get(addr, path, Duration::from_secs(5))
        .await
        .map_err(|e| e.to_string())?;
    Ok((r.status, r.body))
}

/// The controller's `/metrics` text, from its admin address.
pub async fn metrics_text(admin: std::net::SocketAddr) -> Result<String, String> {
    match admin_get(admin, "/metrics").await? {
        (200, body) => Ok(body),
        (code, _) => Err(format!("/metrics answered {code}")),
    }
}

/// Resident memory of a process, in KiB (`VmRSS` of `/proc/<pid>/status`).
pub fn rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next()?.parse().ok())
}

/// The value of an unlabelled sample (e.g. `lbpool_remembered_pools`) or a
/// labelled one (`lbpool_updates_total{kind="rolled"}`) in a metrics text;
/// 0 when the series is absent (a counter never incremented).
pub fn metric(text: &str, series: &str) -> f64 {
    text.lines()
        .find_map(|l| {
            l.strip_prefix(series)?
                .strip_prefix(' ')?
                .trim()
                .parse()
                .ok()
        })
        .unwrap_or(0.0)
}

/// The `p` quantile (0..=1) of durations sorted ascending; zero for none.
pub fn percentile(sorted: &[Duration], p: f64) -> Duration {
    if sorted.is_empty() {
        return Duration::ZERO;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i.min(sorted.len() - 1)]
}
