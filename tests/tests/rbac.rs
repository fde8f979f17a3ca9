//! Least privilege: the controller's ServiceAccount may do exactly what the
//! controller does, and its pods pass the restricted Pod Security Standard.

use std::collections::BTreeSet;
use std::time::Duration;

use lbpool_tests::{TestNamespace, eventually, install, kubectl};

const SA: &str = "system:serviceaccount:lbpool-system:lbpool-controller";

/// What `kubectl auth can-i --list` must show: (resource, verbs).
fn expected() -> BTreeSet<(String, String)> {
    [
        ("configmaps", "[get list watch create patch]"),
        ("deployments.apps", "[list watch patch]"),
        ("endpointslices.discovery.k8s.io", "[list watch]"),
        ("events.events.k8s.io", "[create patch]"),
        ("loadbalancerpools.lbpool.dev", "[list watch]"),
        ("loadbalancerpools.lbpool.dev/status", "[patch]"),
        ("namespaces", "[list watch]"),
        ("pods", "[list watch]"),
        ("services", "[list watch]"),
    ]
    .into_iter()
    .map(|(r, v)| (r.to_owned(), v.to_owned()))
    .collect()
}

/// (resource, verbs) rows of `kubectl auth can-i --list` for `user`.
fn can_i_list(user: &str, ns: &str) -> BTreeSet<(String, String)> {
    let out = kubectl(&["auth", "can-i", "--list", "--as", user, "-n", ns]).expect("can-i --list");
    out.lines()
        .skip(1)
        .filter_map(|line| {
            let resource = line.split_whitespace().next()?;
            // Rows for non-resource URLs start with "[]".
            if resource.starts_with('[') {
                return None;
            }
            Some((resource.to_owned(), line[line.rfind('[')?..].to_owned()))
        })
        .collect()
}

#[test]
fn the_controller_may_do_exactly_what_it_does() {
    let ns = TestNamespace::create("rbac");
    // What every identity may do (self reviews, public trust bundles, …), as
    // seen by a ServiceAccount nothing is bound to.
    let baseline = can_i_list(
        &format!("system:serviceaccount:{}:default", ns.name),
        &ns.name,
    );
    let granted: BTreeSet<_> = can_i_list(SA, &ns.name)
        .difference(&baseline)
        .cloned()
        .collect();
    assert_eq!(granted, expected(), "beyond what every identity may do");
    // The leader Lease: in lbpool-system only, and nothing else there.
    let own: BTreeSet<_> = can_i_list(SA, "lbpool-system")
        .difference(&can_i_list(SA, &ns.name))
        .cloned()
        .collect();
    let lease = BTreeSet::from([(
        "leases.coordination.k8s.io".to_owned(),
        "[get create patch]".to_owned(),
    )]);
    assert_eq!(
        own, lease,
        "what the controller may do in its own namespace"
    );
    for forbidden in [
        "get secrets",
        "list secrets",
        "delete configmaps",
        "update deployments",
        "create pods",
        "delete loadbalancerpools.lbpool.dev",
    ] {
        let mut args = vec!["auth", "can-i"];
        args.extend(forbidden.split(' '));
        args.extend(["--as", SA, "-n", &ns.name]);
        let answer = kubectl(&args).unwrap_or_else(|e| e.to_string());
        assert!(answer.trim_end().ends_with("no"), "{forbidden}: {answer}");
    }
}

#[tokio::test]
async fn the_controller_pod_passes_the_restricted_pod_security_standard() {
    install();
    let labels = kubectl(&[
        "get",
        "namespace",
        "lbpool-system",
        "-o",
        "jsonpath={.metadata.labels}",
    ])
    .expect("namespace");
    assert!(
        labels.contains(r#""pod-security.kubernetes.io/enforce":"restricted""#),
        "{labels}"
    );
    // The API server admitted the controller Deployment's pod in that namespace.
    eventually(
        "a Running controller pod in lbpool-system",
        Duration::from_secs(60),
        || async {
            let phase = kubectl(&[
                "get",
                "pods",
                "-n",
                "lbpool-system",
                "-l",
                "app.kubernetes.io/name=lbpool-controller",
                "-o",
                "jsonpath={.items[*].status.phase}",
            ])
            .map_err(|e| e.to_string())?;
            if phase.split_whitespace().any(|p| p == "Running") {
                Ok(())
            } else {
                Err(phase)
            }
        },
    )
    .await;
    // And enforcement is on: a privileged pod there is refused.
    let privileged = "apiVersion: v1\nkind: Pod\nmetadata: {name: privileged-probe}\nspec:\n  containers:\n  - name: c\n    image: busybox\n    securityContext: {privileged: true}\n";
    let err = lbpool_tests::kubectl_as(
        &lbpool_tests::admin_kubeconfig(),
        &[
            "apply",
            "--dry-run=server",
            "-n",
            "lbpool-system",
            "-f",
            "-",
        ],
        Some(privileged),
    )
    .expect_err("a privileged pod is refused");
    assert!(
        err.to_string()
            .contains("violates PodSecurity \"restricted"),
        "{err}"
    );
}

/// The InPlace agent (`manifests/components/in-place/agent-rbac.yaml`): its
/// pool's ConfigMap, by name, and patches of pods; nothing else.
#[test]
fn the_in_place_agent_may_read_its_config_map_and_patch_pods_only() {
    lbpool_tests::apply_yaml(
        "demo",
        "apiVersion: v1\nkind: Namespace\nmetadata: {name: demo}\n",
    )
    .expect("namespace demo");
    let rbac = lbpool_tests::repo().join("manifests/components/in-place/agent-rbac.yaml");
    kubectl(&["apply", "--server-side", "-f", &rbac.to_string_lossy()])
        .expect("apply the agent's RBAC");
    let agent = "system:serviceaccount:demo:haproxy-agent";
    let can = |what: &str| {
        let mut args = vec!["auth", "can-i"];
        args.extend(what.split(' '));
        args.extend(["--as", agent, "-n", "demo"]);
        let answer = kubectl(&args).unwrap_or_else(|e| e.to_string());
        answer.trim_end().ends_with("yes")
    };
    for allowed in [
        "get configmaps/webapp-haproxy",
        "list configmaps/webapp-haproxy",
        "watch configmaps/webapp-haproxy",
        "patch pods",
    ] {
        assert!(can(allowed), "the agent may {allowed}");
    }
    for forbidden in [
        "get configmaps/other",
        "list configmaps",
        "patch configmaps/webapp-haproxy",
        "get pods",
        "list pods",
        "delete pods",
        "create pods",
        "get secrets",
        "list loadbalancerpools.lbpool.dev",
    ] {
        assert!(!can(forbidden), "the agent may not {forbidden}");
    }
}
