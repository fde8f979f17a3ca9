//! Flow tier: the user's flow on the local control plane with simulated
//! nodes. The controller runs as a local process with its ServiceAccount's
//! token under the manifests' RBAC.

use std::time::Duration;

use lbpool_tests::demo::{DEMO, Demo, WAIT, make_one_pod_not_ready, scale};
use lbpool_tests::{ControllerProcess, eventually, kubectl};

#[tokio::test]
async fn scaling_the_webapp_keeps_haproxy_in_step() {
    let Demo {
        mut ns,
        env,
        controller,
        dir,
    } = Demo::start("flow", &DEMO).await;
    let n = ns.name.clone();

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
    // Ready (STATUS Serving) once the HAProxy pods run the new config;
    // SERVED names the revision they are rolled for.
    let revision = &five["sha256:".len()..][..10];
    let table = eventually(
        "kubectl get lbp to show the served config",
        WAIT,
        || async {
            let table = kubectl(&["get", "lbp", "webapp", "-n", &n]).map_err(|e| e.to_string())?;
            let row: Vec<String> = table
                .lines()
                .nth(1)
                .unwrap_or_default()
                .split_whitespace()
                .map(str::to_owned)
                .collect();
            let want = ["webapp", "5", "Serving", revision, revision];
            if row
                .get(1..6)
                .is_some_and(|r| r.iter().zip(want).all(|(a, b)| a == b))
            {
                Ok(table)
            } else {
                Err(table)
            }
        },
    )
    .await;
    assert!(
        table.lines().next().unwrap_or_default().contains("SERVED"),
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
    let before = env.status().await;
    let replica_sets = env.haproxy_replica_set_hashes().await;
    controller.kill();
    let restarted = ControllerProcess::start(&n, &dir);
    ns.keep_log(restarted.log_path());
    eventually("the new controller to start reconciling", WAIT, || async {
        let log = restarted.log_text();
        if log.contains("caches synced") {
            Ok(())
        } else {
            Err(log)
        }
    })
    .await;
    // Longer than rollout.minInterval (5s): a pending rollout would have happened.
    tokio::time::sleep(Duration::from_secs(7)).await;
    let after = env.status().await;
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
