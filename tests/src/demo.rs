//! The demo workload of `manifests/demo/` in a test namespace, and what the
//! tests observe of it: pods, the published config, the pool's status, the
//! HAProxy Deployment and its ReplicaSets.

use std::collections::BTreeSet;
use std::path::PathBuf;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::Api;
use kube::api::ListParams;
use kube::api::{Patch, PatchParams};
use lbpool_crds::{LoadBalancerPool, LoadBalancerPoolSpec, LoadBalancerPoolStatus, TemplateRef};
use lbpool_wire::{CONFIG_HASH_ANNOTATION, CONFIG_KEY};

use crate::{
    ControllerProcess, TestNamespace, admin_client, apply_yaml, eventually, kubectl, repo,
    scratch_dir,
};

pub const WAIT: Duration = Duration::from_secs(60);

/// The demo's objects: the webapp, the HAProxy Deployment, the example pool.
pub const DEMO: [&str; 3] = ["webapp.yaml", "haproxy.yaml", "pool.yaml"];

/// The setup of the tier tests: a namespace holding demo objects, a
/// controller watching it whose log is printed if the test fails, and
/// typed access to the namespace.
#[derive(Debug)]
pub struct Demo {
    /// Dropped first: stopped before its namespace goes.
    pub controller: ControllerProcess,
    pub env: Env,
    pub ns: TestNamespace,
    /// The test's scratch directory (the controller's kubeconfig and log).
    pub dir: PathBuf,
}

impl Demo {
    /// `files` of `manifests/demo/` in a new namespace `lbpool-<prefix>-…`,
    /// and a controller for it (the in-cluster one, against kind).
    pub async fn start(prefix: &str, files: &[&str]) -> Self {
        Self::start_with(prefix, files, |_| {}, ControllerProcess::start).await
    }

    /// The same with a local controller given `args` (which include
    /// `--admin-addr`); `before` runs once the demo objects exist, before
    /// the controller starts.
    pub async fn start_with(
        prefix: &str,
        files: &[&str],
        before: impl FnOnce(&str),
        controller: impl FnOnce(&str, &std::path::Path) -> ControllerProcess,
    ) -> Self {
        let mut ns = TestNamespace::create(prefix);
        apply_demo(&ns.name, files);
        before(&ns.name);
        let dir = scratch_dir(&ns.name);
        let controller = controller(&ns.name, &dir);
        ns.keep_log(controller.log_path());
        let env = Env::new(&ns.name).await;
        Self {
            ns,
            env,
            controller,
            dir,
        }
    }
}

/// Typed access to one test namespace.
#[derive(Debug)]
pub struct Env {
    pub ns: String,
    pub pools: Api<LoadBalancerPool>,
    pub pods: Api<Pod>,
    pub config_maps: Api<ConfigMap>,
    pub deployments: Api<Deployment>,
    pub replica_sets: Api<ReplicaSet>,
}

impl Env {
    pub async fn new(ns: &str) -> Self {
        let c = admin_client().await;
        Self {
            ns: ns.to_owned(),
            pools: Api::namespaced(c.clone(), ns),
            pods: Api::namespaced(c.clone(), ns),
            config_maps: Api::namespaced(c.clone(), ns),
            deployments: Api::namespaced(c.clone(), ns),
            replica_sets: Api::namespaced(c, ns),
        }
    }

    /// The published haproxy.cfg (ConfigMap `webapp-haproxy`).
    pub async fn config_text(&self) -> Result<String, String> {
        Ok(self.published().await?.1)
    }

    /// The published config's hash annotation and text, from one read.
    pub async fn published(&self) -> Result<(String, String), String> {
        let cm = self
            .config_maps
            .get("webapp-haproxy")
            .await
            .map_err(|e| e.to_string())?;
        let hash = cm
            .metadata
            .annotations
            .unwrap_or_default()
            .remove(CONFIG_HASH_ANNOTATION)
            .unwrap_or_default();
        let text = cm
            .data
            .unwrap_or_default()
            .remove(CONFIG_KEY)
            .unwrap_or_default();
        Ok((hash, text))
    }

    /// Addresses of the `server` lines in the published haproxy.cfg.
    pub async fn config_addresses(&self) -> Result<BTreeSet<String>, String> {
        Ok(addresses(&self.config_text().await?))
    }

    /// IPs of the webapp pods that are Ready and not terminating.
    pub async fn ready_pod_ips(&self) -> BTreeSet<String> {
        let pods = self
            .pods
            .list(&ListParams::default().labels("app.kubernetes.io/name=webapp"))
            .await
            .expect("list pods");
        pods.items
            .into_iter()
            .filter(|p| p.metadata.deletion_timestamp.is_none())
            .filter(|p| {
                p.status
                    .as_ref()
                    .and_then(|s| s.conditions.as_ref())
                    .is_some_and(|cs| cs.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
            })
            .filter_map(|p| p.status.and_then(|s| s.pod_ip))
            .collect()
    }

    /// The pool's status (empty before the controller wrote one).
    pub async fn status(&self) -> LoadBalancerPoolStatus {
        let pool = self.pools.get("webapp").await.expect("pool webapp");
        pool.status.unwrap_or_default()
    }

    /// Sets the webapp's replicas through the API: fast enough for a burst of
    /// one-replica steps (kubectl takes ~0.1 s a call).
    pub async fn set_replicas(&self, replicas: i32) {
        let patch = serde_json::json!({"spec": {"replicas": replicas}});
        self.deployments
            .patch("webapp", &PatchParams::default(), &Patch::Merge(patch))
            .await
            .expect("scale webapp");
    }

    pub async fn deployed_hash(&self) -> Option<String> {
        let d = self
            .deployments
            .get("haproxy")
            .await
            .expect("haproxy deployment");
        d.spec
            .template
            .metadata?
            .annotations?
            .remove(CONFIG_HASH_ANNOTATION)
    }

    pub async fn haproxy_replica_set_hashes(&self) -> BTreeSet<String> {
        let rs = self
            .replica_sets
            .list(&ListParams::default().labels("app.kubernetes.io/name=haproxy"))
            .await
            .expect("list replicasets");
        rs.items
            .into_iter()
            .filter_map(|r| {
                r.spec
                    .template?
                    .metadata?
                    .annotations?
                    .remove(CONFIG_HASH_ANNOTATION)
            })
            .collect()
    }

    /// Waits until the config, the status and the Deployment all describe
    /// exactly `n` ready pods; returns the config hash.
    pub async fn converged(&self, n: usize) -> String {
        eventually(
            &format!("config, status and rollout for {n} ready pods"),
            WAIT,
            || async { self.converged_now(n).await },
        )
        .await
    }

    /// Whether the config, the status and the Deployment describe exactly
    /// `n` ready pods now: `Ok(hash)`, or what differs.
    pub async fn converged_now(&self, n: usize) -> Result<String, String> {
        let pods = self.ready_pod_ips().await;
        let (published, text) = self.published().await?;
        let config = addresses(&text);
        let pool = self.pools.get("webapp").await.map_err(|e| e.to_string())?;
        let status = pool.status.unwrap_or_default();
        let hash = status.config_hash.clone().unwrap_or_default();
        let deployed = self.deployed_hash().await;
        let rolled = self.haproxy_replica_set_hashes().await.contains(&hash);
        // The ConfigMap's own hash too: between the controller's ConfigMap
        // write and its Deployment patch, the ConfigMap is one config ahead.
        if pods.len() == n
            && published == hash
            && config == pods
            && status.ready_backends as usize == n
            && deployed.as_ref() == Some(&hash)
            && rolled
        {
            Ok(hash)
        } else {
            Err(format!(
                "pods {pods:?}, config {config:?}, ready {}, status hash {hash}, deployed {deployed:?}, replica set for it: {rolled}",
                status.ready_backends
            ))
        }
    }
}

pub fn scale(ns: &str, replicas: u32) {
    kubectl(&[
        "scale",
        "deployment",
        "webapp",
        "-n",
        ns,
        &format!("--replicas={replicas}"),
    ])
    .expect("kubectl scale");
}

/// Sets one ready pod's Ready condition to False, as a failing probe would.
pub async fn make_one_pod_not_ready(env: &Env, ns: &str) {
    let ready = env.ready_pod_ips().await;
    let pods = env
        .pods
        .list(&ListParams::default().labels("app.kubernetes.io/name=webapp"))
        .await
        .expect("pods");
    let victim = pods
        .items
        .iter()
        .find(|p| {
            p.metadata.deletion_timestamp.is_none()
                && p.status
                    .as_ref()
                    .and_then(|s| s.pod_ip.as_ref())
                    .is_some_and(|ip| ready.contains(ip))
        })
        .and_then(|p| p.metadata.name.clone())
        .expect("a ready pod");
    let patch =
        r#"{"status":{"conditions":[{"type":"Ready","status":"False","reason":"TestNotReady"}]}}"#;
    kubectl(&[
        "patch",
        "pod",
        &victim,
        "-n",
        ns,
        "--subresource=status",
        "--type=strategic",
        "-p",
        patch,
    ])
    .expect("make a pod not ready");
}

/// A pool as a user writes one: `name`, the backends of Service `service`,
/// served by Deployment `deployment`; every other field at its default.
pub fn pool(name: &str, service: &str, deployment: &str) -> LoadBalancerPool {
    let spec: LoadBalancerPoolSpec = serde_json::from_value(serde_json::json!({
        "backend": {"service": service},
        "haproxy": {"deployment": deployment},
    }))
    .expect("a minimal spec takes its defaults");
    LoadBalancerPool::new(name, spec)
}

/// [`pool`] on the Service's port named `port`.
pub fn with_port(mut pool: LoadBalancerPool, port: &str) -> LoadBalancerPool {
    pool.spec.backend.port = Some(IntOrString::String(port.into()));
    pool
}

/// [`pool`] writing its config to ConfigMap `config_map`.
pub fn writing(mut pool: LoadBalancerPool, config_map: &str) -> LoadBalancerPool {
    pool.spec.haproxy.config_map = Some(config_map.into());
    pool
}

/// [`pool`] rendered from the template in ConfigMap `config_map`, key `key`.
pub fn templated(mut pool: LoadBalancerPool, config_map: &str, key: &str) -> LoadBalancerPool {
    pool.spec.template = Some(TemplateRef {
        config_map: config_map.into(),
        key: key.into(),
    });
    pool
}

/// A pool as `kubectl apply` takes it.
pub fn yaml(pool: &LoadBalancerPool) -> String {
    serde_yaml_ng::to_string(pool).expect("a pool serializes")
}

/// Applies files of `manifests/demo/` to `ns`.
pub fn apply_demo(ns: &str, files: &[&str]) {
    for file in files {
        let yaml = std::fs::read_to_string(repo().join("manifests/demo").join(file))
            .expect("demo manifest");
        apply_yaml(ns, &yaml).unwrap_or_else(|e| panic!("apply {file}: {e}"));
    }
}

/// Addresses of the `server` lines of a haproxy.cfg.
pub fn addresses(cfg: &str) -> BTreeSet<String> {
    cfg.lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .filter_map(|l| l.split_whitespace().nth(1))
        .filter_map(|a| a.rsplit_once(':').map(|(ip, _)| ip.to_owned()))
        .collect()
}
