//! Flow tier: the user's flow on the local control plane with simulated
//! nodes. The controller runs as a local process with its ServiceAccount's
//! token under the manifests' RBAC.

use std::collections::BTreeSet;
use std::time::Duration;

use k8s_openapi::api::apps::v1::{Deployment, ReplicaSet};
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Api;
use kube::api::ListParams;
use lbpool_crds::LoadBalancerPool;
use lbpool_tests::{
    ControllerProcess, TestNamespace, admin_client, apply_yaml, eventually, kubectl, repo,
    scratch_dir,
};

const WAIT: Duration = Duration::from_secs(60);
const HASH: &str = "lbpool.dev/config-hash";

struct Env {
    pools: Api<LoadBalancerPool>,
    pods: Api<Pod>,
    config_maps: Api<ConfigMap>,
    deployments: Api<Deployment>,
    replica_sets: Api<ReplicaSet>,
}

impl Env {
    async fn new(ns: &str) -> Self {
        let c = admin_client().await;
        Self {
            pools: Api::namespaced(c.clone(), ns),
            pods: Api::namespaced(c.clone(), ns),
            config_maps: Api::namespaced(c.clone(), ns),
            deployments: Api::namespaced(c.clone(), ns),
            replica_sets: Api::namespaced(c, ns),
        }
    }

    /// Addresses of the `server` lines in the published haproxy.cfg.
    async fn config_addresses(&self) -> Result<BTreeSet<String>, String> {
        let cm = self
            .config_maps
            .get("webapp-haproxy")
            .await
            .map_err(|e| e.to_string())?;
        let cfg = cm
            .data
            .unwrap_or_default()
            .remove("haproxy.cfg")
            .unwrap_or_default();
        Ok(cfg
            .lines()
            .filter_map(|l| l.trim().strip_prefix("server "))
            .filter_map(|l| l.split_whitespace().nth(1))
            .filter_map(|a| a.rsplit_once(':').map(|(ip, _)| ip.to_owned()))
            .collect())
    }

    /// IPs of the webapp pods that are Ready and not terminating.
    async fn ready_pod_ips(&self) -> BTreeSet<String> {
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

    async fn deployed_hash(&self) -> Option<String> {
        let d = self
            .deployments
            .get("haproxy")
            .await
            .expect("haproxy deployment");
        d.spec.template.metadata?.annotations?.remove(HASH)
    }

    async fn haproxy_replica_set_hashes(&self) -> BTreeSet<String> {
        let rs = self
            .replica_sets
            .list(&ListParams::default().labels("app.kubernetes.io/name=haproxy"))
            .await
            .expect("list replicasets");
        rs.items
            .into_iter()
            .filter_map(|r| r.spec.template?.metadata?.annotations?.remove(HASH))
            .collect()
    }

    /// Waits until the config, the status and the Deployment all describe
    /// exactly `n` ready pods; returns the config hash.
    async fn converged(&self, n: usize) -> String {
        eventually(&format!("config, status and rollout for {n} ready pods"), WAIT, || async {
            let pods = self.ready_pod_ips().await;
            let config = self.config_addresses().await?;
            let pool = self.pools.get("webapp").await.map_err(|e| e.to_string())?;
            let status = pool.status.unwrap_or_default();
            let hash = status.config_hash.clone().unwrap_or_default();
            let deployed = self.deployed_hash().await;
            let rolled = self.haproxy_replica_set_hashes().await.contains(&hash);
            if pods.len() == n && config == pods && status.ready_backends as usize == n && deployed.as_ref() == Some(&hash) && rolled {
                Ok(hash)
            } else {
                Err(format!(
                    "pods {pods:?}, config {config:?}, ready {} , status hash {hash}, deployed {deployed:?}, replica set for it: {rolled}",
                    status.ready_backends
                ))
            }
        })
        .await
    }
}

fn scale(ns: &str, replicas: u32) {
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

#[tokio::test]
async fn scaling_the_webapp_keeps_haproxy_in_step() {
    let mut ns = TestNamespace::create("flow");
    let n = ns.name.clone();
    for file in ["webapp.yaml", "haproxy.yaml", "pool.yaml"] {
        let yaml = std::fs::read_to_string(repo().join("manifests/demo").join(file)).expect(file);
        apply_yaml(&n, &yaml).unwrap_or_else(|e| panic!("apply {file}: {e}"));
    }
    let dir = scratch_dir(&n);
    let controller = ControllerProcess::start(&n, &dir);
    ns.keep_log(controller.log_path());
    let env = Env::new(&n).await;

    // The example webapp starts with 2 replicas; `kubectl wait` works on pools.
    let first = env.converged(2).await;
    kubectl(&[
        "wait",
        "--for=condition=Ready",
        "lbp/webapp",
        "-n",
        &n,
        "--timeout=30s",
    ])
    .expect("kubectl wait Ready");

    scale(&n, 5);
    let five = env.converged(5).await;
    assert_ne!(five, first, "5 pods render a different config");
    let table = kubectl(&["get", "lbp", "webapp", "-n", &n]).expect("kubectl get lbp");
    let row: Vec<&str> = table
        .lines()
        .nth(1)
        .unwrap_or_default()
        .split_whitespace()
        .collect();
    assert_eq!(
        row.get(1..4),
        Some(&["webapp", "5", "Serving"][..]),
        "{table}"
    );
    assert_eq!(
        row.get(4).copied(),
        Some(&five["sha256:".len()..][..10]),
        "{table}"
    );

    scale(&n, 2);
    env.converged(2).await;

    // A pod that stops being ready leaves the config. Its Ready condition is
    // set by hand, which simulated nodes keep; a real kubelet (kind) would
    // set it back at the next probe, so there the step scales to 1 instead.
    if ControllerProcess::in_cluster() {
        eprintln!("in-cluster run: the not-ready step is replaced by scaling to 1");
        scale(&n, 1);
    } else {
        make_one_pod_not_ready(&env, &n).await;
    }
    let one = env.converged(1).await;

    // A restarted controller with nothing changed rolls nothing.
    let before = env
        .pools
        .get("webapp")
        .await
        .expect("pool")
        .status
        .unwrap_or_default();
    let replica_sets = env.haproxy_replica_set_hashes().await;
    controller.kill();
    let restarted = ControllerProcess::start(&n, &dir);
    ns.keep_log(restarted.log_path());
    eventually("the new controller to start reconciling", WAIT, || async {
        let log = restarted.log_text();
        if log.contains("pool cache synced") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
    // Longer than rollout.minInterval (5s): a pending rollout would have happened.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = env
        .pools
        .get("webapp")
        .await
        .expect("pool")
        .status
        .unwrap_or_default();
    assert_eq!(env.deployed_hash().await.as_deref(), Some(one.as_str()));
    assert_eq!(
        env.haproxy_replica_set_hashes().await,
        replica_sets,
        "no new ReplicaSet"
    );
    assert_eq!(
        after.last_rollout_time, before.last_rollout_time,
        "no new rollout"
    );
    assert_eq!(after.config_hash, before.config_hash);
    let log = restarted.log_text();
    let rolled: Vec<&str> = log
        .lines()
        .filter(|l| l.contains("rolling HAProxy") && l.contains(n.as_str()))
        .collect();
    assert!(
        rolled.is_empty(),
        "the restarted controller rolled: {rolled:#?}"
    );

    // Deleting the pool garbage-collects its ConfigMap.
    kubectl(&["delete", "lbp", "webapp", "-n", &n]).expect("delete pool");
    eventually("the ConfigMap to be garbage-collected", WAIT, || async {
        match env.config_maps.get_opt("webapp-haproxy").await {
            Ok(None) => Ok(()),
            other => Err(format!("{other:?}")),
        }
    })
    .await;
}

async fn make_one_pod_not_ready(env: &Env, ns: &str) {
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
