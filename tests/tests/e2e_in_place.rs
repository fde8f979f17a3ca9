//! End to end, `InPlace`: the demo with `manifests/components/in-place` on a
//! node that runs real containers, the lbpool agent beside each HAProxy,
//! real traffic through the HAProxy Service. What is counted: failed
//! requests (the load generator), HAProxy pod restarts and identities
//! (the API), reloads and Runtime API changes (each agent's metrics).
//! `hack/test.sh` runs this tier after `e2e.rs`; `hack/kind.sh` too.

use std::collections::BTreeMap;
use std::time::Duration;

use kube::api::{Patch, PatchParams};
use lbpool_tests::e2e::{HaproxyPod, Load, demo_in_place, patch_pool, serial};
use lbpool_tests::{eventually, http};
use lbpool_wire::{CONFIG_HASH_ANNOTATION, CONFIG_KEY};

/// Each pod's name, UID and restart count: the same means not replaced
/// and not restarted.
fn identities(pods: &BTreeMap<String, HaproxyPod>) -> Vec<(String, String, i32)> {
    pods.iter()
        .map(|(n, p)| (n.clone(), p.uid.clone(), p.restarts))
        .collect()
}

fn changes(
    before: &BTreeMap<String, HaproxyPod>,
    after: &BTreeMap<String, HaproxyPod>,
    what: fn(&HaproxyPod) -> f64,
) -> BTreeMap<String, f64> {
    after
        .iter()
        .map(|(name, a)| {
            let b = before.get(name).map_or(0.0, what);
            (name.clone(), what(a) - b)
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_in_place_scaling_under_load_reloads_and_restarts_nothing() {
    let _turn = serial().await;
    let demo = demo_in_place().await;
    demo.env.set_replicas(2).await;
    demo.served_in_place(2).await;
    let before = demo.haproxy_pods().await;
    let generation = demo.haproxy_generation().await;

    let frontend = demo.frontend;
    let held = tokio::spawn(async move {
        http::get(frontend, "/slow?ms=20000", Duration::from_secs(60)).await
    });
    let load = Load::start(demo.frontend, 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in [6, 2] {
        println!("InPlace: +{:.1?} scaling to {n}", load.elapsed());
        demo.env.set_replicas(n as i32).await;
        demo.served_in_place(n).await;
        println!(
            "InPlace: +{:.1?} HAProxy serves {n} webapp pods",
            load.elapsed()
        );
    }
    demo.webapp_pods_left(2).await;
    let report = load.stop().await;
    let held = held.await.expect("the held request");
    let after = demo.haproxy_pods().await;
    println!("InPlace 2 -> 6 -> 2 under load: {report}");
    println!("HAProxy pods before: {before:#?}\nafter: {after:#?}");

    assert!(report.sent > 100, "the load ran: {report}");
    assert_eq!(report.failed, 0, "no request fails: {report}");
    let held = held.expect("a request held open for 20 s across the scaling completes");
    assert_eq!(held.status, 200, "{held:?}");
    assert!(held.took >= Duration::from_secs(20), "{held:?}");
    println!(
        "a request held open across 2 -> 6 -> 2: HTTP {} after {:.1?}",
        held.status, held.took
    );

    assert_eq!(
        identities(&before),
        identities(&after),
        "the same HAProxy pods, not restarted"
    );
    assert_eq!(
        demo.haproxy_generation().await,
        generation,
        "the HAProxy Deployment was not rolled"
    );
    let reloads = changes(&before, &after, |p| p.reloads);
    assert!(
        reloads.values().all(|r| *r == 0.0),
        "no reload for endpoint changes: {reloads:?}"
    );
    let runtime = changes(&before, &after, |p| p.runtime);
    assert!(
        runtime.values().all(|r| *r >= 2.0),
        "each agent applied the scale-up and the scale-down through the Runtime API: {runtime:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_in_place_an_option_change_is_one_seamless_reload() {
    let _turn = serial().await;
    let demo = demo_in_place().await;
    demo.env.set_replicas(2).await;
    let old = demo.served_in_place(2).await;
    let before = demo.haproxy_pods().await;
    let load = Load::start(demo.frontend, 4);
    tokio::time::sleep(Duration::from_secs(1)).await;

    patch_pool(r#"{"spec":{"timeouts":{"server":"51s"}}}"#);
    let new = eventually(
        "the new config served",
        Duration::from_secs(120),
        || async {
            match demo.in_place_now(2).await {
                Ok(hash) if hash != old => Ok(hash),
                Ok(_) => Err("still the old config".to_owned()),
                Err(e) => Err(e),
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.stop().await;
    let after = demo.haproxy_pods().await;
    let text = demo.env.config_text().await.expect("config");
    patch_pool(r#"{"spec":{"timeouts":{"server":"50s"}}}"#);

    println!("InPlace option change {old} -> {new} under load: {report}");
    assert!(text.contains("timeout server 51s"), "{text}");
    assert!(report.sent > 50, "the load ran: {report}");
    assert_eq!(
        report.failed, 0,
        "a seamless reload fails no request: {report}"
    );
    let reloads = changes(&before, &after, |p| p.reloads);
    assert!(
        reloads.values().all(|r| *r == 1.0),
        "exactly one reload per HAProxy: {reloads:?}"
    );
    assert_eq!(
        identities(&before),
        identities(&after),
        "the same HAProxy pods, not restarted"
    );
}

/// The pool's ConfigMap edited by hand into a config that runs a program
/// (its hash annotation made to match, so only the allowlist stands in the
/// way): no agent applies it, HAProxy keeps serving with no failed request,
/// and the controller, told by the agents, restores its config.
/// Also: the HAProxy container holds no ServiceAccount token.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_in_place_a_config_edited_by_hand_is_applied_by_no_agent() {
    let _turn = serial().await;
    let demo = demo_in_place().await;
    demo.env.set_replicas(2).await;
    let good = demo.served_in_place(2).await;
    let before = demo.haproxy_pods().await;
    for pod in demo.pods("app.kubernetes.io/name=haproxy").await {
        let spec = pod.spec.clone().unwrap_or_default();
        assert_eq!(
            spec.automount_service_account_token,
            Some(false),
            "no token mounted by default"
        );
        let haproxy = spec
            .containers
            .iter()
            .find(|c| c.name == "haproxy")
            .expect("haproxy container");
        let mounts: Vec<_> = haproxy
            .volume_mounts
            .iter()
            .flatten()
            .map(|m| m.mount_path.clone())
            .collect();
        assert!(
            !mounts.iter().any(|m| m.starts_with("/var/run/secrets")),
            "the HAProxy container mounts no credential: {mounts:?}"
        );
    }

    let load = Load::start(demo.frontend, 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    let text = demo.env.config_text().await.expect("the published config");
    let hostile =
        format!("{text}\nprogram evil\n    command /bin/sh -c 'touch /tmp/lbpool-pwned'\n");
    let hostile_hash = lbpool_wire::config_hash(&hostile);
    let edit = serde_json::json!({
        "metadata": {"annotations": {CONFIG_HASH_ANNOTATION: hostile_hash}},
        "data": {CONFIG_KEY: hostile},
    });
    demo.env
        .config_maps
        .patch(
            "webapp-haproxy",
            &PatchParams::default(),
            &Patch::Merge(edit),
        )
        .await
        .expect("edit the ConfigMap by hand");

    let refused = eventually(
        "every agent refused the edit",
        Duration::from_secs(60),
        || async {
            let now = demo.haproxy_pods().await;
            let refused = changes(&before, &now, |p| p.refused);
            if refused.len() == 2 && refused.values().all(|r| *r >= 1.0) {
                Ok(refused)
            } else {
                Err(format!("{refused:?}"))
            }
        },
    )
    .await;
    // The controller puts its own config back (it saw the agents' reports).
    let restored = eventually(
        "the ConfigMap restored",
        Duration::from_secs(60),
        || async {
            match demo.env.published().await {
                Ok((hash, _)) if hash == good => Ok(hash),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    let report = load.stop().await;
    let after = demo.haproxy_pods().await;
    println!(
        "a hand-edited program section: refused {refused:?}, restored {restored}, under load: {report}"
    );
    assert!(
        after.values().all(|p| p.served == good),
        "every HAProxy serves the good config: {after:#?}"
    );
    let reloads = changes(&before, &after, |p| p.reloads);
    assert!(
        reloads.values().all(|r| *r == 0.0),
        "nothing was reloaded: {reloads:?}"
    );
    assert_eq!(
        identities(&before),
        identities(&after),
        "the same pods, not restarted"
    );
    assert!(report.sent > 50, "the load ran: {report}");
    assert_eq!(report.failed, 0, "no request failed: {report}");
    let hosts = demo.hosts_through_service(10).await;
    assert_eq!(hosts.len(), 2, "still served: {hosts:?}");
}
