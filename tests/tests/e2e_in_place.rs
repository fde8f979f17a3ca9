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

/// Between `before` and `after` a scale-up and a scale-down: no HAProxy
/// reloaded, each agent applied both through the Runtime API.
fn scaled_without_a_reload(
    before: &BTreeMap<String, HaproxyPod>,
    after: &BTreeMap<String, HaproxyPod>,
    what: &str,
) {
    let reloads = changes(before, after, |p| p.reloads);
    assert!(
        reloads.values().all(|r| *r == 0.0),
        "{what}: no reload to scale: {reloads:?}"
    );
    let runtime = changes(before, after, |p| p.runtime);
    assert!(
        runtime.values().all(|r| *r >= 2.0),
        "{what}: each agent applied the scale-up and the scale-down through the Runtime API: {runtime:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_in_place_scaling_under_load_reloads_and_restarts_nothing() {
    let _turn = serial().await;
    let demo = demo_in_place().await;
    demo.env.set_replicas(2).await;
    demo.served_in_place(2).await;
    let generation = demo.haproxy_generation().await;

    let frontend = demo.frontend;
    let held = tokio::spawn(async move {
        http::get(frontend, "/slow?ms=20000", Duration::from_secs(60)).await
    });
    let (report, before, after) = scale_under_load(&demo, "InPlace").await;
    let held = held.await.expect("the held request");
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
    scaled_without_a_reload(&before, &after, "InPlace");
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
    let new = new_config_served(&demo, &old).await;
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

/// Scales the webapp 2→6→2 under load, the pool's current config served
/// first; what the load saw, and the HAProxy pods before and after.
async fn scale_under_load(
    demo: &lbpool_tests::e2e::Demo,
    what: &str,
) -> (
    lbpool_tests::e2e::LoadReport,
    BTreeMap<String, HaproxyPod>,
    BTreeMap<String, HaproxyPod>,
) {
    let before = demo.haproxy_pods().await;
    let load = Load::start(demo.frontend, 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in [6, 2] {
        demo.env.set_replicas(n as i32).await;
        demo.served_in_place(n).await;
        println!(
            "{what}: +{:.1?} HAProxy serves {n} webapp pods",
            load.elapsed()
        );
    }
    demo.webapp_pods_left(2).await;
    let report = load.stop().await;
    (report, before, demo.haproxy_pods().await)
}

/// Waits until every HAProxy pod serves a config other than `old`.
async fn new_config_served(demo: &lbpool_tests::e2e::Demo, old: &str) -> String {
    eventually(
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
    .await
}

/// HAProxy 3.0 takes `cookie` on a server added at runtime, and `balance
/// source` with consistent hashing lets servers come and go: neither pool
/// reloads to scale, and a session pinned by its cookie stays on its pod.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_in_place_sticky_and_source_pools_scale_without_a_reload() {
    let _turn = serial().await;
    let demo = demo_in_place().await;
    demo.env.set_replicas(2).await;
    let mut served = demo.served_in_place(2).await;
    for (what, patch) in [
        (
            "sticky",
            r#"{"spec":{"stickySession":{"cookie":"SERVERID"}}}"#,
        ),
        (
            "balance source",
            r#"{"spec":{"stickySession":null,"balance":"source"}}"#,
        ),
    ] {
        patch_pool(patch);
        served = new_config_served(&demo, &served).await;
        let sticky = what == "sticky";
        // A session pinned to one of the two pods that stay.
        let pinned = if sticky {
            let r = http::get(demo.frontend, "/", Duration::from_secs(10))
                .await
                .expect("a first request");
            Some(r.webapp_host().expect("the webapp names its pod"))
        } else {
            None
        };
        let stop = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let session = pinned.clone().map(|host| {
            let (frontend, stop) = (demo.frontend, stop.clone());
            tokio::spawn(async move {
                let cookie = format!("Cookie: SERVERID={host}\r\n");
                let mut answers = BTreeMap::<String, usize>::new();
                while !stop.load(std::sync::atomic::Ordering::Relaxed) {
                    let r =
                        http::request_with(frontend, "GET", "/", &cookie, Duration::from_secs(10))
                            .await
                            .map(|r| r.webapp_host().unwrap_or_default())
                            .unwrap_or_else(|e| e);
                    *answers.entry(r).or_default() += 1;
                    tokio::time::sleep(Duration::from_millis(50)).await;
                }
                answers
            })
        });
        let (report, before, after) = scale_under_load(&demo, what).await;
        stop.store(true, std::sync::atomic::Ordering::Relaxed);
        println!("InPlace {what} 2 -> 6 -> 2 under load: {report}");
        if let (Some(host), Some(session)) = (pinned, session) {
            let answers = session.await.expect("the pinned session");
            println!("a session pinned to {host}: answered by {answers:?}");
            assert_eq!(
                answers.keys().collect::<Vec<_>>(),
                [&host],
                "every request of the session went to its pod"
            );
        }
        assert!(report.sent > 100, "the load ran: {report}");
        assert_eq!(report.failed, 0, "no request fails: {report}");
        scaled_without_a_reload(&before, &after, what);
        assert_eq!(identities(&before), identities(&after), "the same pods");
    }
    patch_pool(r#"{"spec":{"balance":"roundrobin"}}"#);
    new_config_served(&demo, &served).await;
}

/// A config the checks accept but HAProxy cannot load: the frontend on the
/// agent's own port (`haproxy -c` binds nothing). Refused at the reload,
/// reported with HAProxy's reason, and every pod serves the old config on.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_in_place_a_config_haproxy_cannot_load_is_refused_and_the_last_one_serves() {
    let _turn = serial().await;
    let demo = demo_in_place().await;
    demo.env.set_replicas(2).await;
    let good = demo.served_in_place(2).await;
    let load = Load::start(demo.frontend, 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    patch_pool(r#"{"spec":{"frontend":{"port":9101}}}"#);
    let message = demo
        .ready_reason("AgentRejected", Duration::from_secs(120))
        .await;
    let pods = demo.haproxy_pods().await;
    let report = load.stop().await;
    println!("a frontend on the agent's port: {message}; under load: {report}");
    assert!(
        message.contains("cannot load") && message.contains("9101"),
        "HAProxy's reason: {message}"
    );
    assert!(
        pods.values().all(|p| p.served == good),
        "every pod serves the last good config: {pods:#?}"
    );
    assert_eq!(report.failed, 0, "no request failed: {report}");
    let hosts = demo.hosts_through_service(10).await;
    assert_eq!(hosts.len(), 2, "still served: {hosts:?}");
    patch_pool(r#"{"spec":{"frontend":{"port":80}}}"#);
    eventually(
        "the good config again",
        Duration::from_secs(120),
        || async {
            match demo.in_place_now(2).await {
                Ok(hash) if hash == good => Ok(()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
}

/// The memory of each HAProxy container (working set, MiB), from kubelet's
/// summary API through the API server.
fn haproxy_memory() -> BTreeMap<String, f64> {
    let nodes =
        lbpool_tests::kubectl(&["get", "nodes", "-o", "jsonpath={.items[*].metadata.name}"])
            .expect("nodes");
    let mut out = BTreeMap::new();
    for node in nodes.split_whitespace() {
        let summary = lbpool_tests::kubectl(&[
            "get",
            "--raw",
            &format!("/api/v1/nodes/{node}/proxy/stats/summary"),
        ])
        .expect("kubelet's summary");
        let summary: serde_json::Value = serde_json::from_str(&summary).expect("JSON");
        for pod in summary["pods"].as_array().into_iter().flatten() {
            let name = pod["podRef"]["name"].as_str().unwrap_or_default();
            for c in pod["containers"].as_array().into_iter().flatten() {
                if c["name"] == "haproxy" && name.starts_with("haproxy-") {
                    let bytes = c["memory"]["workingSetBytes"].as_f64().unwrap_or_default();
                    out.insert(name.to_owned(), bytes / 1024.0 / 1024.0);
                }
            }
        }
    }
    out
}

/// 20 option changes in a row with a long request open: each one seamless
/// reload, the old workers bounded by `mworker-max-reloads 3` (so the long
/// request ends with the worker that held it), memory printed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_in_place_twenty_option_changes_keep_old_workers_few() {
    let _turn = serial().await;
    let demo = demo_in_place().await;
    demo.env.set_replicas(2).await;
    let mut served = demo.served_in_place(2).await;
    let before = demo.haproxy_pods().await;
    let memory_before = haproxy_memory();
    let frontend = demo.frontend;
    let long = tokio::spawn(async move {
        http::get(frontend, "/slow?ms=120000", Duration::from_secs(180)).await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    let load = Load::start(demo.frontend, 2);
    let mut most_old = 0.0_f64;
    for i in 1..=20 {
        patch_pool(&format!(
            r#"{{"spec":{{"timeouts":{{"server":"{}s"}}}}}}"#,
            50 + i
        ));
        served = new_config_served(&demo, &served).await;
        let now = demo.haproxy_pods().await;
        most_old = now.values().map(|p| p.old_workers).fold(most_old, f64::max);
    }
    let report = load.stop().await;
    let after = demo.haproxy_pods().await;
    let memory_after = haproxy_memory();
    let long = tokio::time::timeout(Duration::from_secs(5), long).await;
    patch_pool(r#"{"spec":{"timeouts":{"server":"50s"}}}"#);
    new_config_served(&demo, &served).await;
    println!(
        "20 option changes with a 120 s request open: {report}; at most {most_old} old worker(s) per pod; \
         HAProxy memory (MiB) before {memory_before:.1?}, after {memory_after:.1?}; the long request: {long:?}"
    );
    let reloads = changes(&before, &after, |p| p.reloads);
    assert!(
        reloads.values().all(|r| *r == 20.0),
        "one reload per change: {reloads:?}"
    );
    assert!(most_old <= 3.0, "old workers bounded: {most_old}");
    assert_eq!(report.failed, 0, "no request of the load failed: {report}");
    assert_eq!(identities(&before), identities(&after), "the same pods");
    assert_eq!(
        memory_after.len(),
        2,
        "both pods' memory read: {memory_after:?}"
    );
}
