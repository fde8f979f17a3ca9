//! End to end, `InPlace`: the demo with `manifests/components/in-place` on a
//! node that runs real containers, the lbpool agent beside each HAProxy,
//! real traffic through the HAProxy Service. What is counted: failed
//! requests (the load generator), HAProxy pod restarts and identities
//! (the API), reloads and Runtime API changes (each agent's metrics).
//! `hack/test.sh` runs this tier after `e2e.rs`; `hack/kind.sh` too.

use std::collections::BTreeMap;
use std::time::Duration;

use lbpool_tests::e2e::{HaproxyPod, Load, NS, demo_in_place, patch_pool, patch_pool_as, serial};
use lbpool_tests::{eventually, http, kubectl};

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
        demo.env.set_replicas(n as i32).await;
        demo.served_in_place(n).await;
        println!("InPlace: HAProxy serves {n} webapp pods");
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

/// A user template with a fault only the agent's `haproxy -c` sees: a
/// `.if defined(...)` block on a variable set in the agent's container
/// (LBPOOL_CONFIG_MAP), not in the controller's. It stands for any
/// difference between the two checks (another HAProxy build, a file only
/// one of them has).
const AGENT_REJECTS: &str = r#"global
    stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners
defaults
    mode http
    timeout connect 5s
    timeout client 50s
    timeout server 50s
frontend fe_http
    bind :80
    default_backend be_webapp
backend be_webapp
{{#each servers}}
    server {{name}} {{address}}:{{port}} check
{{/each}}
.if defined(LBPOOL_CONFIG_MAP)
    no-such-keyword-for-the-agent
.endif
"#;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_in_place_a_config_the_agent_rejects_is_never_applied() {
    let _turn = serial().await;
    let demo = demo_in_place().await;
    demo.env.set_replicas(2).await;
    let good = demo.served_in_place(2).await;
    let before = demo.haproxy_pods().await;

    let cm = serde_json::json!({
        "apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "agent-rejects", "namespace": NS},
        "data": {"haproxy.cfg.hbs": AGENT_REJECTS},
    });
    lbpool_tests::apply_yaml(NS, &cm.to_string()).expect("the template ConfigMap");
    patch_pool(r#"{"spec":{"template":{"configMap":"agent-rejects"}}}"#);

    let message = eventually(
        "Ready=False AgentRejected",
        Duration::from_secs(120),
        || async {
            let status = demo.env.status().await;
            let ready = status.conditions.iter().find(|c| c.type_ == "Ready");
            match ready {
                Some(c) if c.reason == "AgentRejected" => Ok(c.message.clone()),
                other => Err(format!("{other:?}")),
            }
        },
    )
    .await;
    println!("status: {message}");
    assert!(
        message.contains("no-such-keyword-for-the-agent"),
        "{message}"
    );
    // The controller's haproxy -c accepted it: it is published…
    let published = demo.env.config_text().await.expect("config");
    assert!(
        published.contains("no-such-keyword-for-the-agent"),
        "{published}"
    );
    // …and no agent applied it: every HAProxy still serves the good config.
    let after = demo.haproxy_pods().await;
    assert!(after.values().all(|p| p.served == good), "{after:#?}");
    let refused = changes(&before, &after, |p| p.refused);
    assert!(refused.values().all(|r| *r >= 1.0), "{refused:?}");
    let reloads = changes(&before, &after, |p| p.reloads);
    assert!(reloads.values().all(|r| *r == 0.0), "{reloads:?}");
    let hosts = demo.hosts_through_service(10).await;
    assert_eq!(hosts.len(), 2, "still served: {hosts:?}");

    patch_pool_as("json", r#"[{"op":"remove","path":"/spec/template"}]"#);
    let back = demo.served_in_place(2).await;
    assert_eq!(
        back, good,
        "the built-in template renders the good config again"
    );
    kubectl(&["delete", "configmap", "agent-rejects", "-n", NS]).expect("delete the template");
}
