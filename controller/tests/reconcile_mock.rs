//! The reconcile I/O against a scripted mock API: each test lists the exact
//! requests a reconcile must make, in order, and fails on any other.

use std::sync::{Arc, Mutex};

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::client::Body;
use kube::runtime::events::Reporter;
use lbpool_controller::metrics::Metrics;
use lbpool_controller::model;
use lbpool_controller::reconcile::{Context, reconcile};
use lbpool_controller::render::{Renderer, Template};
use lbpool_controller::validate::{ValidationError, Validator};
use lbpool_crds::LoadBalancerPool;
use serde_json::{Value, json};

/// A validator that accepts everything, or rejects everything with a message.
#[derive(Debug)]
struct FakeValidator(Option<&'static str>);

impl Validator for FakeValidator {
    fn check<'a>(&'a self, _config: &'a str) -> BoxFuture<'a, Result<(), ValidationError>> {
        let result = match self.0 {
            None => Ok(()),
            Some(msg) => Err(ValidationError::Rejected(msg.into())),
        };
        Box::pin(async move { result })
    }
}

/// Checks a request body and returns (status, response body).
type Answer = Box<dyn Fn(&Value) -> (StatusCode, Value) + Send>;

/// One expected request: method, path (without query), and the answer.
struct Expect {
    method: Method,
    path: String,
    answer: Answer,
}

fn expect(
    method: Method,
    path: &str,
    answer: impl Fn(&Value) -> (StatusCode, Value) + Send + 'static,
) -> Expect {
    Expect {
        method,
        path: path.into(),
        answer: Box::new(answer),
    }
}

/// Echoes the request body back, as an apply or a create would.
fn echo(method: Method, path: &str) -> Expect {
    expect(method, path, |body| (StatusCode::OK, body.clone()))
}

/// Answers a status apply with the pool carrying that status.
fn status_apply() -> Expect {
    let path = format!("/apis/lbpool.dev/v1alpha1{NS}/loadbalancerpools/webapp/status");
    expect(Method::PATCH, &path, |body| {
        let mut p = serde_json::to_value(pool()).expect("pool json");
        p["status"] = body["status"].clone();
        (StatusCode::OK, p)
    })
}

fn not_found(what: &str) -> Value {
    json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "NotFound", "code": 404,
           "message": format!("{what} not found")})
}

const NS: &str = "/namespaces/demo";

/// Runs one reconcile of `pool` against the script; returns the bodies the
/// controller sent, in order, for further checks.
async fn run(
    pool: LoadBalancerPool,
    validator: FakeValidator,
    script: Vec<Expect>,
) -> Vec<(String, Value)> {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let sent = Arc::new(Mutex::new(Vec::new()));
    let sent_by_server = sent.clone();
    let server = tokio::spawn(async move {
        let mut script = script.into_iter();
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let path = parts.uri.path().to_owned();
            let bytes = body.collect_bytes().await.expect("request body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            let Some(next) = script.next() else {
                panic!("unexpected request {} {path}", parts.method);
            };
            assert_eq!(
                (&parts.method, path.as_str()),
                (&next.method, next.path.as_str()),
                "requests out of script"
            );
            let (status, answer) = (next.answer)(&body);
            sent_by_server
                .lock()
                .expect("lock")
                .push((format!("{} {path}", parts.method), body));
            let response = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                .expect("response");
            respond.send_response(response);
        }
        let rest: Vec<String> = script.map(|e| format!("{} {}", e.method, e.path)).collect();
        assert!(rest.is_empty(), "requests never made: {rest:?}");
    });

    let client = Client::new(service, "demo");
    let reporter = Reporter {
        controller: "lbpool-controller".into(),
        instance: None,
    };
    let ctx = Arc::new(Context::new(
        client,
        Box::new(validator),
        reporter,
        Metrics::default(),
    ));
    reconcile(Arc::new(pool), ctx)
        .await
        .expect("reconcile succeeds");
    // Dropping the last client ends the mock's request stream.
    server
        .await
        .expect("the mock API saw exactly the scripted requests");
    Arc::try_unwrap(sent)
        .expect("server done")
        .into_inner()
        .expect("lock")
}

fn pool() -> LoadBalancerPool {
    serde_json::from_value(json!({
        "apiVersion": "lbpool.dev/v1alpha1",
        "kind": "LoadBalancerPool",
        "metadata": {"name": "webapp", "namespace": "demo", "uid": "00000000-0000-0000-0000-000000000001", "generation": 1},
        "spec": {"backend": {"service": "webapp"}, "haproxy": {"deployment": "haproxy"}}
    }))
    .expect("pool")
}

fn service() -> Value {
    json!({"apiVersion": "v1", "kind": "Service", "metadata": {"name": "webapp", "namespace": "demo"},
           "spec": {"ports": [{"name": "http", "port": 80, "targetPort": 3000}]}})
}

fn slices() -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {"resourceVersion": "1"},
           "items": [{"metadata": {"name": "webapp-x", "namespace": "demo", "labels": {"kubernetes.io/service-name": "webapp"}},
                      "addressType": "IPv4", "ports": [{"name": "http", "port": 3000}],
                      "endpoints": [{"addresses": ["10.244.0.7"], "conditions": {"ready": true},
                                     "targetRef": {"kind": "Pod", "name": "webapp-1"}}]}]})
}

/// The HAProxy Deployment, 2 pods, its rollout of `hash` complete.
fn deployment(hash: Option<&str>) -> Value {
    let annotations = hash.map_or(json!({}), |h| json!({"lbpool.dev/config-hash": h}));
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "haproxy", "namespace": "demo", "resourceVersion": "7", "generation": 3},
           "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "haproxy"}},
                    "template": {"metadata": {"annotations": annotations}, "spec": {"containers": []}}},
           "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}})
}

/// The config the controller must render for [`pool`], [`service`] and [`slices`].
fn expected_config() -> lbpool_controller::render::RenderedConfig {
    let svc: Service = serde_json::from_value(service()).expect("service");
    let list: Vec<EndpointSlice> =
        serde_json::from_value(slices()["items"].clone()).expect("slices");
    let p = pool();
    let port = model::resolve_port(&p.spec, &svc).expect("port");
    let m = model::build(&p, &port, &list).expect("model");
    Renderer::new()
        .render(Template::BuiltIn, &m)
        .expect("render")
}

fn expected_hash() -> String {
    expected_config().hash
}

fn condition<'a>(status: &'a Value, type_: &str) -> &'a Value {
    status["status"]["conditions"]
        .as_array()
        .and_then(|cs| cs.iter().find(|c| c["type"] == type_))
        .unwrap_or_else(|| panic!("no {type_} condition in {status}"))
}

/// The requests of every reconcile that publishes: read the Service and its
/// slices, look whether the ConfigMap exists (not yet), read the Deployment
/// (`deployment`), apply the ConfigMap.
fn reads_then_config_map_apply(deployment: Value) -> Vec<Expect> {
    let (_, _, cm) = read_path();
    let missing = (
        StatusCode::NOT_FOUND,
        not_found("configmaps webapp-haproxy"),
    );
    let mut script = reads_answering(missing, deployment);
    script.push(echo(Method::PATCH, &cm));
    script
}

/// The reads of every reconcile that gets past validation: the Service,
/// its slices, the ConfigMap (answered with `config_map`), the Deployment.
fn reads_answering(config_map: (StatusCode, Value), deployment: Value) -> Vec<Expect> {
    let (svc, eps, cm) = read_path();
    vec![
        expect(Method::GET, &svc, |_| (StatusCode::OK, service())),
        expect(Method::GET, &eps, |_| (StatusCode::OK, slices())),
        expect(Method::GET, &cm, move |_| config_map.clone()),
        expect(Method::GET, &deployment_path(), move |_| {
            (StatusCode::OK, deployment.clone())
        }),
    ]
}

fn deployment_path() -> String {
    format!("/apis/apps/v1{NS}/deployments/haproxy")
}

fn read_path() -> (String, String, String) {
    (
        format!("/api/v1{NS}/services/webapp"),
        format!("/apis/discovery.k8s.io/v1{NS}/endpointslices"),
        format!("/api/v1{NS}/configmaps/webapp-haproxy"),
    )
}

/// The reads and the ConfigMap apply, a Deployment already rolled for the
/// expected config, then `last`.
fn up_to_date_and(last: Expect) -> Vec<Expect> {
    let mut script = reads_then_config_map_apply(deployment(Some(&expected_hash())));
    script.push(last);
    script
}

#[tokio::test]
async fn unchanged_hash_writes_the_config_map_but_does_not_patch_the_deployment() {
    let hash = expected_hash();
    let sent = run(pool(), FakeValidator(None), up_to_date_and(status_apply())).await;
    let config_map = &sent[4].1;
    assert_eq!(
        config_map["metadata"]["annotations"]["lbpool.dev/config-hash"],
        hash.as_str()
    );
    assert!(
        config_map["data"]["haproxy.cfg"]
            .as_str()
            .unwrap_or_default()
            .contains("server webapp-1 10.244.0.7:3000 check")
    );
    assert_eq!(
        config_map["metadata"]["ownerReferences"][0]["kind"],
        "LoadBalancerPool"
    );
    let status = &sent[5].1;
    assert_eq!(status["status"]["readyBackends"], 1);
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(condition(status, "RolloutPending")["status"], "False");
    assert!(
        status["status"].get("lastRolloutTime").is_none(),
        "no rollout happened: {status}"
    );
}

#[tokio::test]
async fn a_pool_deleted_during_its_reconcile_is_not_an_error() {
    let status_path = format!("/apis/lbpool.dev/v1alpha1{NS}/loadbalancerpools/webapp/status");
    // `run` requires the reconcile to succeed: the 404 of the status write
    // means the pool is gone, which is nothing to retry or report.
    let gone = expect(Method::PATCH, &status_path, |_| {
        (StatusCode::NOT_FOUND, not_found("loadbalancerpools webapp"))
    });
    let sent = run(pool(), FakeValidator(None), up_to_date_and(gone)).await;
    assert_eq!(sent.len(), 6);
}

#[tokio::test]
async fn changed_hash_writes_the_config_map_first_then_rolls_the_deployment() {
    let hash = expected_hash();
    let sent = run(
        pool(),
        FakeValidator(None),
        reads_then_config_map_apply(deployment(Some("sha256:old")))
            .into_iter()
            .chain([
                expect(Method::PATCH, &deployment_path(), |body| {
                    let mut d = deployment(
                    body["spec"]["template"]["metadata"]["annotations"]["lbpool.dev/config-hash"]
                        .as_str(),
                );
                    d["metadata"]["resourceVersion"] = json!("8");
                    // A new pod template: a new generation, not yet observed.
                    d["metadata"]["generation"] = json!(4);
                    (StatusCode::OK, d)
                }),
                echo(Method::POST, &format!("/apis/events.k8s.io/v1{NS}/events")),
                status_apply(),
            ])
            .collect(),
    )
    .await;
    let patch = &sent[5].1;
    assert_eq!(
        patch,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "haproxy", "annotations": {"lbpool.dev/pool": "webapp"}},
                "spec": {"template": {"metadata": {"annotations": {"lbpool.dev/config-hash": hash}}}}}),
        "only the pod-template annotation and the pool's claim are applied"
    );
    let event = &sent[6].1;
    assert_eq!(event["reason"], "RolloutTriggered");
    assert_eq!(event["related"]["resourceVersion"], "8");
    let status = &sent[7].1;
    assert!(status["status"]["lastRolloutTime"].is_string(), "{status}");
    // Written and rolled is not served: Ready waits for the rolling update.
    assert_eq!(condition(status, "Ready")["reason"], "RollingOut");
    assert_eq!(status["status"]["haproxy"]["replicas"], 2);
}

/// One Warning Event and `ConfigValid=False` with `reason`, saying `says`.
fn assert_conflict(event: &Value, status: &Value, reason: &str, says: &str) {
    assert_eq!(
        (&event["type"], &event["reason"]),
        (&json!("Warning"), &json!(reason))
    );
    let valid = condition(status, "ConfigValid");
    assert_eq!(
        (&valid["status"], &valid["reason"]),
        (&json!("False"), &json!(reason))
    );
    assert!(
        valid["message"].as_str().is_some_and(|m| m.contains(says)),
        "{valid}"
    );
}

/// A Deployment claimed by pool `other`.
fn claimed_by_other() -> Value {
    let mut d = deployment(Some("sha256:others"));
    d["metadata"]["annotations"] = json!({"lbpool.dev/pool": "other"});
    d
}

#[tokio::test]
async fn a_deployment_another_pool_rolls_is_left_alone_and_reported() {
    let (svc, eps, cm) = read_path();
    let other = format!("/apis/lbpool.dev/v1alpha1{NS}/loadbalancerpools/other");
    let sent = run(
        pool(),
        FakeValidator(None),
        vec![
            expect(Method::GET, &svc, |_| (StatusCode::OK, service())),
            expect(Method::GET, &eps, |_| (StatusCode::OK, slices())),
            expect(Method::GET, &cm, |_| {
                (
                    StatusCode::NOT_FOUND,
                    not_found("configmaps webapp-haproxy"),
                )
            }),
            expect(Method::GET, &deployment_path(), |_| {
                (StatusCode::OK, claimed_by_other())
            }),
            expect(Method::GET, &other, |_| {
                let mut p = serde_json::to_value(pool()).expect("pool json");
                p["metadata"]["name"] = json!("other");
                (StatusCode::OK, p)
            }),
            echo(Method::POST, &format!("/apis/events.k8s.io/v1{NS}/events")),
            status_apply(),
        ],
    )
    .await;
    // Nothing written: no ConfigMap apply, no Deployment patch.
    assert_conflict(
        &sent[5].1,
        &sent[6].1,
        "DeploymentConflict",
        "rolled by LoadBalancerPool other",
    );
}

#[tokio::test]
async fn the_claim_of_a_deleted_pool_is_void() {
    let other = format!("/apis/lbpool.dev/v1alpha1{NS}/loadbalancerpools/other");
    let mut script = reads_then_config_map_apply(claimed_by_other());
    // The claimant is looked up between the Deployment read and the apply.
    script.insert(
        4,
        expect(Method::GET, &other, |_| {
            (StatusCode::NOT_FOUND, not_found("loadbalancerpools other"))
        }),
    );
    script.extend([
        expect(Method::PATCH, &deployment_path(), |body| {
            let mut d = claimed_by_other();
            d["metadata"]["annotations"] = body["metadata"]["annotations"].clone();
            (StatusCode::OK, d)
        }),
        echo(Method::POST, &format!("/apis/events.k8s.io/v1{NS}/events")),
        status_apply(),
    ]);
    let sent = run(pool(), FakeValidator(None), script).await;
    assert_eq!(
        sent[6].1["metadata"]["annotations"]["lbpool.dev/pool"],
        "webapp"
    );
}

#[tokio::test]
async fn a_config_map_that_is_not_the_pools_is_left_alone_and_reported() {
    let (svc, eps, cm) = read_path();
    let status = run(
        pool(),
        FakeValidator(None),
        vec![
            expect(Method::GET, &svc, |_| (StatusCode::OK, service())),
            expect(Method::GET, &eps, |_| (StatusCode::OK, slices())),
            expect(Method::GET, &cm, |_| {
                let users = json!({"apiVersion": "v1", "kind": "ConfigMap",
                    "metadata": {"name": "webapp-haproxy", "namespace": "demo"},
                    "data": {"keep": "me"}});
                (StatusCode::OK, users)
            }),
            echo(Method::POST, &format!("/apis/events.k8s.io/v1{NS}/events")),
            status_apply(),
        ],
    )
    .await;
    // No PATCH of the ConfigMap, no Deployment read: the script says so.
    assert_conflict(
        &status[3].1,
        &status[4].1,
        "ConfigMapConflict",
        "not created by lbpool",
    );
}

#[tokio::test]
async fn missing_service_sets_a_condition_and_leaves_the_config_map_alone() {
    let (svc, _, _) = read_path();
    let sent = run(
        pool(),
        FakeValidator(None),
        vec![
            expect(Method::GET, &svc, |_| {
                (StatusCode::NOT_FOUND, not_found("services \"webapp\""))
            }),
            echo(Method::POST, &format!("/apis/events.k8s.io/v1{NS}/events")),
            status_apply(),
        ],
    )
    .await;
    let event = &sent[1].1;
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "ServiceNotFound");
    let status = &sent[2].1;
    let valid = condition(status, "ConfigValid");
    assert_eq!(valid["status"], "False");
    assert_eq!(valid["reason"], "ServiceNotFound");
    assert!(
        valid["message"]
            .as_str()
            .unwrap_or_default()
            .contains("spec.backend.service"),
        "{valid}"
    );
}

#[tokio::test]
async fn a_config_haproxy_rejects_is_not_published() {
    let (svc, eps, _) = read_path();
    let sent = run(
        pool(),
        FakeValidator(Some(
            "[ALERT] parsing [haproxy.cfg:3] : unknown keyword 'bogus'",
        )),
        vec![
            expect(Method::GET, &svc, |_| (StatusCode::OK, service())),
            expect(Method::GET, &eps, |_| (StatusCode::OK, slices())),
            echo(Method::POST, &format!("/apis/events.k8s.io/v1{NS}/events")),
            status_apply(),
        ],
    )
    .await;
    let valid = condition(&sent[3].1, "ConfigValid");
    assert_eq!(valid["reason"], "HAProxyRejected");
    assert!(
        valid["message"]
            .as_str()
            .unwrap_or_default()
            .contains("unknown keyword 'bogus'"),
        "{valid}"
    );
}

/// The pool's own ConfigMap, holding the config of `hash`.
fn own_config_map(hash: &str, text: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "ConfigMap",
           "metadata": {"name": "webapp-haproxy", "namespace": "demo",
                        "labels": {"app.kubernetes.io/managed-by": "lbpool-controller", "lbpool.dev/pool": "webapp"},
                        "annotations": {"lbpool.dev/config-hash": hash},
                        "ownerReferences": [{"apiVersion": "lbpool.dev/v1alpha1", "kind": "LoadBalancerPool",
                                             "name": "webapp", "uid": "00000000-0000-0000-0000-000000000001",
                                             "controller": true}]},
           "data": {"haproxy.cfg": text}})
}

/// The reads of a pool whose ConfigMap exists (`config_map`) and whose
/// Deployment runs `deployed`.
fn reads(config_map: Value, deployed: &str) -> Vec<Expect> {
    reads_answering((StatusCode::OK, config_map), deployment(Some(deployed)))
}

#[tokio::test]
async fn a_config_that_waits_for_its_rollout_is_not_written_yet() {
    // Rolled a moment ago for the old config, which the ConfigMap holds.
    let mut p = pool();
    let published: lbpool_crds::LoadBalancerPoolStatus = serde_json::from_value(json!({
        "configHash": "sha256:old", "configRevision": "old", "readyBackends": 4,
        "lastRolloutTime": jiff::Timestamp::now().to_string(),
    }))
    .expect("status");
    p.status = Some(published);
    let mut script = reads(own_config_map("sha256:old", "old config\n"), "sha256:old");
    script.push(status_apply());
    let sent = run(p, FakeValidator(None), script).await;
    // No ConfigMap apply, no Deployment patch: the script has none.
    let status = &sent[4].1["status"];
    assert_eq!(status["configHash"], "sha256:old", "{status}");
    assert_eq!(status["readyBackends"], 4, "still what HAProxy serves");
    let pending = condition(&sent[4].1, "RolloutPending");
    assert_eq!(pending["status"], "True");
    assert_eq!(condition(&sent[4].1, "Ready")["reason"], "RollingOut");
}

#[tokio::test]
async fn nothing_is_written_when_nothing_differs() {
    let (hash, text) = {
        let c = expected_config();
        (c.hash, c.text)
    };
    // First look: the status is written once...
    let mut script = reads(own_config_map(&hash, &text), &hash);
    script.push(status_apply());
    let sent = run(pool(), FakeValidator(None), script).await;
    let status = sent[4].1["status"].clone();
    assert_eq!(condition(&sent[4].1, "Ready")["status"], "True");
    // ...and with that status in place, a second reconcile only reads.
    let mut p = pool();
    p.status = Some(serde_json::from_value(status).expect("status"));
    let sent = run(
        p,
        FakeValidator(None),
        reads(own_config_map(&hash, &text), &hash),
    )
    .await;
    assert_eq!(sent.len(), 4, "4 reads, no write");
}
