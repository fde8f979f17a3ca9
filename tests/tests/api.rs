//! API tier: the CRD and the manifests against a real kube-apiserver.

use kube::Api;
use lbpool_crds::{Balance, LoadBalancerPool};
use lbpool_tests::{TestNamespace, admin_client, apply_yaml, kubectl, repo};

fn pool_yaml(spec: &str) -> String {
    format!(
        "apiVersion: lbpool.dev/v1alpha1\nkind: LoadBalancerPool\nmetadata:\n  name: p\nspec:\n{}",
        spec.lines().map(|l| format!("  {l}\n")).collect::<String>()
    )
}

const VALID: &str = "backend: {service: webapp}\nhaproxy: {deployment: haproxy}\n";

#[tokio::test]
async fn the_example_pool_is_accepted_and_defaults_are_filled_in() {
    let ns = TestNamespace::create("api-example");
    let example =
        std::fs::read_to_string(repo().join("manifests/demo/pool.yaml")).expect("example pool");
    apply_yaml(&ns.name, &example).expect("the example pool is accepted");
    apply_yaml(&ns.name, &pool_yaml(VALID)).expect("a minimal pool is accepted");

    let pools: Api<LoadBalancerPool> = Api::namespaced(admin_client().await, &ns.name);
    let example = pools.get("webapp").await.expect("example pool stored");
    assert_eq!(example.spec.backend.service, "webapp");
    assert_eq!(
        example.spec.health_check.as_ref().map(|h| h.path.as_str()),
        Some("/healthz")
    );

    let minimal = pools.get("p").await.expect("minimal pool stored");
    assert_eq!(minimal.spec.balance, Balance::Roundrobin);
    assert_eq!(minimal.spec.frontend.port, 80);
    assert_eq!(minimal.spec.timeouts.connect, "5s");
    assert_eq!(minimal.spec.timeouts.client, "50s");
    assert_eq!(minimal.spec.rollout.min_interval, "5s");
    assert!(minimal.spec.stats.is_none() && minimal.spec.health_check.is_none());

    let columns = kubectl(&["get", "lbp", "-n", &ns.name]).expect("kubectl get lbp");
    let header = columns.lines().next().unwrap_or_default();
    for column in [
        "SERVICE",
        "READY",
        "STATUS",
        "CONFIG",
        "SERVED",
        "LAST ROLLOUT",
        "AGE",
    ] {
        assert!(header.contains(column), "missing column {column}: {header}");
    }
    let short = kubectl(&[
        "get",
        "loadbalancerpools.lbpool.dev",
        "-n",
        &ns.name,
        "-o",
        "name",
    ])
    .expect("plural");
    assert!(
        short.contains("loadbalancerpool.lbpool.dev/webapp"),
        "{short}"
    );
}

/// (what, spec, text the API server's message must contain).
fn invalid_pools() -> Vec<(&'static str, String, &'static str)> {
    let with = |extra: &str| format!("{VALID}{extra}\n");
    vec![
        (
            "unknown balance",
            with("balance: weighted"),
            "spec.balance: Unsupported value: \"weighted\"",
        ),
        (
            "port out of range",
            with("frontend: {port: 70000}"),
            "spec.frontend.port",
        ),
        (
            "port zero",
            with("frontend: {port: 0}"),
            "spec.frontend.port",
        ),
        (
            "path with a space",
            with("healthCheck: {path: \"/a b\"}"),
            "spec.healthCheck.path",
        ),
        (
            "path without slash",
            with("healthCheck: {path: healthz}"),
            "spec.healthCheck.path",
        ),
        (
            "cookie with #",
            with("stickySession: {cookie: \"ID#1\"}"),
            "spec.stickySession.cookie",
        ),
        (
            "duration with a space",
            with("timeouts: {client: \"5 s\"}"),
            "spec.timeouts.client",
        ),
        (
            "zero interval",
            with("rollout: {minInterval: 0s}"),
            "spec.rollout.minInterval",
        ),
        (
            "rise too high",
            with("healthCheck: {rise: 1000}"),
            "spec.healthCheck.rise",
        ),
        (
            "stats on the frontend port",
            with("stats: {port: 80}"),
            "stats.port must differ from frontend.port",
        ),
        (
            "stats uri with newline",
            with("stats: {uri: \"/a\\nbind :1\"}"),
            "spec.stats.uri",
        ),
        (
            "uppercase service",
            "backend: {service: WebApp}\nhaproxy: {deployment: haproxy}\n".into(),
            "spec.backend.service",
        ),
        (
            "backend port number out of range",
            "backend: {service: webapp, port: 0}\nhaproxy: {deployment: haproxy}\n".into(),
            "spec.backend.port",
        ),
        (
            "backend port name with a space",
            "backend: {service: webapp, port: \"my port\"}\nhaproxy: {deployment: haproxy}\n"
                .into(),
            "spec.backend.port",
        ),
        (
            "no haproxy",
            "backend: {service: webapp}\n".into(),
            "spec.haproxy: Required value",
        ),
        (
            "non-ASCII cookie",
            with("stickySession: {cookie: \"SÉRVERID\"}"),
            "spec.stickySession.cookie",
        ),
        (
            "quote in a path",
            with("healthCheck: {path: \"/\\\"x\"}"),
            "spec.healthCheck.path",
        ),
        (
            "# in the stats uri",
            with("stats: {uri: \"/stats#x\"}"),
            "spec.stats.uri",
        ),
        (
            "$ in a path",
            with("healthCheck: {path: \"/${HOME}\"}"),
            "spec.healthCheck.path",
        ),
        (
            "space in a cookie",
            with("stickySession: {cookie: \"ID x\"}"),
            "spec.stickySession.cookie",
        ),
        (
            "huge service name",
            format!(
                "backend: {{service: {}}}\nhaproxy: {{deployment: haproxy}}\n",
                "a".repeat(300)
            ),
            "spec.backend.service",
        ),
        (
            "huge timeout",
            with("timeouts: {server: 99999999s}"),
            "spec.timeouts.server",
        ),
        (
            "duration without unit",
            with("rollout: {minInterval: \"5\"}"),
            "spec.rollout.minInterval",
        ),
        (
            "port as a word",
            with("frontend: {port: eighty}"),
            "spec.frontend.port",
        ),
        (
            "fall zero",
            with("healthCheck: {fall: 0}"),
            "spec.healthCheck.fall",
        ),
        (
            "uppercase ConfigMap name",
            "backend: {service: webapp}\nhaproxy: {deployment: haproxy, configMap: Haproxy}\n"
                .into(),
            "spec.haproxy.configMap",
        ),
        (
            "template key with a slash",
            with("template: {configMap: tpl, key: a/b}"),
            "spec.template.key",
        ),
        (
            "unknown check method",
            with("healthCheck: {method: DELETE}"),
            "spec.healthCheck.method",
        ),
        (
            "newline in a deployment name",
            "backend: {service: webapp}\nhaproxy: {deployment: \"haproxy\\nbind :1\"}\n".into(),
            "spec.haproxy.deployment",
        ),
        ("wrong type", with("balance: 3"), "spec.balance"),
    ]
}

#[tokio::test]
async fn invalid_pools_are_rejected_with_a_message_that_names_the_field() {
    let ns = TestNamespace::create("api-invalid");
    for (what, spec, expected) in invalid_pools() {
        let err = apply_yaml(&ns.name, &pool_yaml(&spec))
            .err()
            .unwrap_or_else(|| panic!("{what}: the API server accepted\n{spec}"));
        let message = err.to_string();
        assert!(
            message.contains(expected),
            "{what}: expected {expected:?} in:\n{message}"
        );
    }
    eprintln!(
        "{} invalid pools rejected by the API server",
        invalid_pools().len()
    );
    // A name that is a DNS subdomain but too long for the ConfigMap's label.
    let long = pool_yaml(VALID).replace("name: p\n", &format!("name: {}\n", "p".repeat(64)));
    let err = apply_yaml(&ns.name, &long).expect_err("a 64-character pool name is refused");
    assert!(
        err.to_string()
            .contains("metadata.name: at most 63 characters"),
        "{err}"
    );
    let left = kubectl(&["get", "lbp", "-n", &ns.name, "-o", "name"]).expect("list");
    assert!(left.trim().is_empty(), "nothing was created: {left}");
}

#[tokio::test]
async fn the_manifests_are_accepted_by_the_api_server() {
    let _ns = TestNamespace::create("api-manifests");
    // Namespaced objects can only be dry-run into namespaces that exist.
    for ns in [
        "manifests/demo/namespace.yaml",
        "manifests/controller/namespace.yaml",
    ] {
        kubectl(&[
            "apply",
            "--server-side",
            "-f",
            &repo().join(ns).to_string_lossy(),
        ])
        .expect(ns);
    }
    let out = kubectl(&[
        "apply",
        "--server-side",
        "--force-conflicts",
        "--dry-run=server",
        "-k",
        &repo().join("manifests").to_string_lossy(),
    ])
    .expect("kubectl apply -k manifests/ --dry-run=server");
    for object in [
        "customresourcedefinition.apiextensions.k8s.io/loadbalancerpools.lbpool.dev",
        "clusterrole.rbac.authorization.k8s.io/lbpool-controller",
        "deployment.apps/lbpool-controller",
        "deployment.apps/haproxy",
        "poddisruptionbudget.policy/haproxy",
        "deployment.apps/webapp",
        "loadbalancerpool.lbpool.dev/webapp",
    ] {
        assert!(out.contains(object), "{object} missing from:\n{out}");
    }
}
