//! API tier: the ValidatingAdmissionPolicies that limit the controller's
//! and the agent's writes beyond what RBAC can say, against the real API
//! server, with real ServiceAccount tokens (the agent's bound to its pod).

use std::future::Future;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use kube::Client;
use kube::api::{Api, Patch, PatchParams, PostParams};
use lbpool_tests::{
    TestNamespace, apply_yaml, client_from, kubectl, repo, service_account_kubeconfig,
};
use lbpool_wire::{
    CONFIG_HASH_ANNOTATION, CONFIG_KEY, FIELD_MANAGER, MANAGED_BY_LABEL, POOL_CLAIM_ANNOTATION,
    POOL_LABEL, SERVED_ANNOTATION,
};
use serde_json::json;

/// A pod under the restricted Pod Security Standard (kwok runs it).
fn pod(name: &str) -> String {
    format!(
        "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels: {{app: haproxy}}\nspec:\n  serviceAccountName: haproxy-agent\n  automountServiceAccountToken: false\n  securityContext: {{runAsNonRoot: true, runAsUser: 99, seccompProfile: {{type: RuntimeDefault}}}}\n  containers:\n  - name: haproxy\n    image: haproxy:3.0\n    securityContext: {{allowPrivilegeEscalation: false, capabilities: {{drop: [ALL]}}}}\n"
    )
}

/// A strategic merge patch of `kind/name` as `client`; the API server's answer. A
/// patch with no read before it: RBAC grants these identities patch only.
async fn patch(client: &Client, ns: &str, what: &str, patch: &str) -> Result<(), String> {
    let (kind, name) = what.split_once('/').expect("kind/name");
    let patch: serde_json::Value = serde_json::from_str(patch).expect("json");
    let params = PatchParams::default();
    let result = match kind {
        "pod" => Api::<Pod>::namespaced(client.clone(), ns)
            .patch(name, &params, &Patch::Strategic(patch))
            .await
            .map(drop),
        "deployment" => Api::<Deployment>::namespaced(client.clone(), ns)
            .patch(name, &params, &Patch::Strategic(patch))
            .await
            .map(drop),
        "configmap" => Api::<ConfigMap>::namespaced(client.clone(), ns)
            .patch(name, &params, &Patch::Strategic(patch))
            .await
            .map(drop),
        other => panic!("no patch for {other}"),
    };
    result.map_err(|e| e.to_string())
}

fn denied(result: Result<(), String>, message: &str, what: &str) {
    match result {
        Ok(()) => panic!("{what}: allowed"),
        Err(e) => assert!(
            e.contains(message),
            "{what}: denied, but not by the policy: {e}"
        ),
    }
}

#[tokio::test]
async fn the_agent_may_patch_only_its_own_pods_lbpool_keys() {
    let ns = TestNamespace::create("admission-agent");
    let policy = repo().join("manifests/components/in-place/agent-admission.yaml");
    kubectl(&["apply", "--server-side", "-f", &policy.to_string_lossy()])
        .expect("the agent's policy");
    let rbac = format!(
        "apiVersion: v1\nkind: ServiceAccount\nmetadata: {{name: haproxy-agent}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: Role\nmetadata: {{name: haproxy-agent}}\nrules:\n- {{apiGroups: [\"\"], resources: [pods], verbs: [patch]}}\n---\napiVersion: rbac.authorization.k8s.io/v1\nkind: RoleBinding\nmetadata: {{name: haproxy-agent}}\nroleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: haproxy-agent}}\nsubjects:\n- {{kind: ServiceAccount, name: haproxy-agent, namespace: {}}}\n---\n{}---\n{}",
        ns.name,
        pod("pod-a"),
        pod("pod-b")
    );
    apply_yaml(&ns.name, &rbac).expect("ServiceAccount, Role, pods");
    let dir = tempfile_dir();
    let own = service_account_kubeconfig(
        &dir,
        &ns.name,
        "haproxy-agent",
        &["--bound-object-kind", "Pod", "--bound-object-name", "pod-a"],
    );
    let unbound = service_account_kubeconfig(&dir, &ns.name, "haproxy-agent", &[]);
    let (own, unbound) = (client_from(&own).await, client_from(&unbound).await);
    let n = &ns.name;
    // The policy takes a moment to reach the API server's admission.
    let served = &json!({"metadata": {"annotations": {SERVED_ANNOTATION: "sha256:1"}, "labels": {POOL_LABEL: "web"}}}).to_string();
    until_denied("the agent's policy", || {
        patch(&unbound, n, "pod/pod-a", served)
    })
    .await;
    assert_eq!(
        patch(&own, n, "pod/pod-a", served).await,
        Ok(()),
        "its own pod's lbpool.dev/ keys"
    );
    let annotation = kubectl(&[
        "get",
        "-n",
        n,
        "pod",
        "pod-a",
        "-o",
        "jsonpath={.metadata.annotations.lbpool\\.dev/served-hash}",
    ])
    .expect("get");
    assert_eq!(annotation.trim(), "sha256:1");

    let own_pod = "an lbpool agent may patch only its own pod";
    let own_keys = "may change only the lbpool.dev/ labels and annotations";
    denied(
        patch(&own, n, "pod/pod-b", served).await,
        own_pod,
        "another pod",
    );
    denied(
        patch(&unbound, n, "pod/pod-a", served).await,
        own_pod,
        "a token bound to no pod",
    );
    denied(
        patch(
            &own,
            n,
            "pod/pod-a",
            r#"{"metadata":{"labels":{"app":"webapp"}}}"#,
        )
        .await,
        own_keys,
        "a label outside lbpool.dev/ (stealing a Service's traffic)",
    );
    denied(
        patch(
            &own,
            n,
            "pod/pod-a",
            r#"{"metadata":{"annotations":{"other/x":"1"}}}"#,
        )
        .await,
        own_keys,
        "an annotation outside lbpool.dev/",
    );
    denied(
        patch(
            &own,
            n,
            "pod/pod-a",
            r#"{"spec":{"containers":[{"name":"haproxy","image":"evil:1"}]}}"#,
        )
        .await,
        own_keys,
        "its own image",
    );
    // What the admin may do is not this policy's business.
    kubectl(&["label", "-n", n, "pod", "pod-a", "app=other", "--overwrite"])
        .expect("admin labels a pod");
}

#[tokio::test]
async fn the_controller_may_change_only_lbpool_annotations_and_its_own_config_maps() {
    let ns = TestNamespace::create("admission-controller");
    let n = &ns.name;
    let objects = "apiVersion: apps/v1\nkind: Deployment\nmetadata: {name: haproxy, annotations: {team: web}}\nspec:\n  replicas: 0\n  selector: {matchLabels: {app: haproxy}}\n  template:\n    metadata: {labels: {app: haproxy}}\n    spec:\n      containers: [{name: haproxy, image: haproxy:3.0}]\n---\napiVersion: v1\nkind: ConfigMap\nmetadata: {name: users}\ndata: {key: value}\n";
    apply_yaml(n, objects).expect("a Deployment and a user's ConfigMap");
    let dir = tempfile_dir();
    let controller = client_from(&lbpool_tests::controller_kubeconfig(&dir)).await;
    until_denied("the controller's policy", || {
        patch(
            &controller,
            n,
            "configmap/users",
            r#"{"data":{"key":"probe"}}"#,
        )
    })
    .await;

    let hash = &json!({"spec": {"template": {"metadata": {"annotations": {CONFIG_HASH_ANNOTATION: "sha256:1"}}}}}).to_string();
    assert_eq!(
        patch(&controller, n, "deployment/haproxy", hash).await,
        Ok(()),
        "the hash annotation"
    );
    let claim = &json!({"metadata": {"annotations": {POOL_CLAIM_ANNOTATION: "web"}}}).to_string();
    assert_eq!(
        patch(&controller, n, "deployment/haproxy", claim).await,
        Ok(()),
        "the claim"
    );

    let deployments = "may change only the lbpool.dev/ annotations of a Deployment";
    denied(
        patch(
            &controller,
            n,
            "deployment/haproxy",
            r#"{"spec":{"template":{"spec":{"containers":[{"name":"haproxy","image":"evil:1"}]}}}}"#,
        ).await,
        deployments,
        "a Deployment's image",
    );
    denied(
        patch(
            &controller,
            n,
            "deployment/haproxy",
            r#"{"spec":{"replicas":5}}"#,
        )
        .await,
        deployments,
        "a Deployment's replicas",
    );
    denied(
        patch(
            &controller,
            n,
            "deployment/haproxy",
            r#"{"metadata":{"annotations":{"team":"evil"}}}"#,
        )
        .await,
        deployments,
        "a user's annotation",
    );
    denied(
        patch(
            &controller,
            n,
            "deployment/haproxy",
            r#"{"spec":{"template":{"metadata":{"labels":{"extra":"1"}}}}}"#,
        )
        .await,
        deployments,
        "a pod-template label",
    );

    let config_maps =
        "may write only ConfigMaps labelled app.kubernetes.io/managed-by=lbpool-controller";
    denied(
        patch(
            &controller,
            n,
            "configmap/users",
            r#"{"data":{"key":"evil"}}"#,
        )
        .await,
        config_maps,
        "a user's ConfigMap",
    );
    denied(
        patch(
            &controller,
            n,
            "configmap/users",
            &json!({"metadata": {"labels": {MANAGED_BY_LABEL: FIELD_MANAGER}, "ownerReferences": [{
                "apiVersion": "lbpool.dev/v1alpha1", "kind": "LoadBalancerPool", "name": "p",
                "uid": "00000000-0000-0000-0000-000000000001", "controller": true}]}})
            .to_string(),
        )
        .await,
        config_maps,
        "taking over a user's ConfigMap by giving it lbpool's marks",
    );
    let config_maps_api = Api::<ConfigMap>::namespaced(controller.clone(), n);
    let create = async |yaml: &str| {
        let cm: ConfigMap = serde_yaml_ng::from_str(yaml).expect("a ConfigMap");
        config_maps_api
            .create(&PostParams::default(), &cm)
            .await
            .map(drop)
            .map_err(|e| e.to_string())
    };
    denied(
        create("apiVersion: v1\nkind: ConfigMap\nmetadata: {name: unowned}\ndata: {a: b}\n").await,
        config_maps,
        "a ConfigMap without lbpool's owner",
    );
    let owned = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "owned", "labels": {MANAGED_BY_LABEL: FIELD_MANAGER, POOL_LABEL: "p"},
            "ownerReferences": [{"apiVersion": "lbpool.dev/v1alpha1", "kind": "LoadBalancerPool", "name": "p",
                "uid": "00000000-0000-0000-0000-000000000001", "controller": true}]},
        "data": {CONFIG_KEY: "x"}});
    assert_eq!(
        create(&owned.to_string()).await,
        Ok(()),
        "a ConfigMap of lbpool's"
    );
}

/// A new policy takes a moment to reach the API server's admission: waits
/// until `attempt` is denied.
async fn until_denied<F: Future<Output = Result<(), String>>>(
    what: &str,
    mut attempt: impl FnMut() -> F,
) {
    let mut last = Ok(());
    for _ in 0..100 {
        last = attempt().await;
        if last
            .as_ref()
            .is_err_and(|e| e.contains("ValidatingAdmissionPolicy"))
        {
            return;
        }
        tokio::time::sleep(std::time::Duration::from_millis(200)).await;
    }
    panic!("{what} never applied: for 20 s a write it forbids was answered {last:?}");
}

fn tempfile_dir() -> std::path::PathBuf {
    let dir = std::env::temp_dir().join(format!("lbpool-admission-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    dir
}
