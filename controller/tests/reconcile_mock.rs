//! The reconcile I/O against a scripted mock API: each test puts the
//! cluster's objects in the watch caches, lists the exact requests a
//! reconcile must make, in order, and fails on any other. Reads come from
//! the caches, so a script holds only writes (and a user template's read).

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};

use futures::future::BoxFuture;
use http::{Method, Request, Response, StatusCode};
use k8s_openapi::api::core::v1::{ConfigMap, Namespace, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::client::Body;
use kube::core::PartialObjectMeta;
use kube::runtime::controller::Action;
use kube::runtime::events::Reporter;
use kube::runtime::watcher::Event;
use lbpool_checker::{ValidationError, Validator};
use lbpool_controller::cache::{self, Caches, Writers};
use lbpool_controller::metrics::Metrics;
use lbpool_controller::model;
use lbpool_controller::reconcile::{Context, reconcile};
use lbpool_controller::render::{Renderer, Template};
use lbpool_controller::testing::{self, pool};
use lbpool_crds::LoadBalancerPool;
use lbpool_wire::{
    CONFIG_HASH_ANNOTATION, CONFIG_KEY, FIELD_MANAGER, MANAGED_BY_LABEL, POOL_CLAIM_ANNOTATION,
    POOL_LABEL, REJECTED_ANNOTATION, RUNTIME_API_SOCKET, SERVED_ANNOTATION,
};
use serde_json::{Value, json};

/// A validator that accepts everything, or rejects everything with a
/// message; it counts the configs it was given.
#[derive(Debug, Default)]
struct FakeValidator {
    reject: Option<&'static str>,
    checks: Arc<AtomicUsize>,
}

impl FakeValidator {
    fn accepting() -> Self {
        Self::default()
    }

    fn rejecting(message: &'static str) -> Self {
        Self {
            reject: Some(message),
            ..Self::default()
        }
    }
}

impl Validator for FakeValidator {
    fn check<'a>(&'a self, _config: &'a str) -> BoxFuture<'a, Result<(), ValidationError>> {
        self.checks.fetch_add(1, Ordering::Relaxed);
        let result = match self.reject {
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

/// The cluster as the watch caches hold it. Objects go in as the API
/// returns them and are slimmed as the watches slim them.
#[derive(Clone)]
struct World {
    pools: Vec<Value>,
    service: Option<Value>,
    slices: Vec<Value>,
    /// The pool's generated ConfigMap (`webapp-haproxy`).
    config_map: Option<Value>,
    /// Any other ConfigMap by that name (metadata only).
    foreign_config_map: Option<Value>,
    deployment: Option<Value>,
    /// Pods of InPlace agents.
    agents: Vec<Value>,
}

impl World {
    /// `pool`, its Service with one ready endpoint, and the Deployment
    /// (`deployment`); no ConfigMap yet.
    fn with(deployment: Option<Value>) -> Self {
        Self {
            pools: vec![serde_json::to_value(pool()).expect("pool json")],
            service: Some(service()),
            slices: slices()["items"].as_array().cloned().unwrap_or_default(),
            config_map: None,
            foreign_config_map: None,
            deployment,
            agents: Vec::new(),
        }
    }

    fn caches(&self) -> (Caches, Writers) {
        let (caches, mut w) = Caches::new();
        fn all<T: serde::de::DeserializeOwned>(values: &[Value], slim: fn(&mut T)) -> Vec<T> {
            values
                .iter()
                .map(|v| {
                    let mut obj: T = serde_json::from_value(v.clone()).expect("object");
                    slim(&mut obj);
                    obj
                })
                .collect()
        }
        seed(
            &mut |e| w.pools.apply_watcher_event(e),
            all::<LoadBalancerPool>(&self.pools, |_| ()),
        );
        seed(
            &mut |e| w.services.apply_watcher_event(e),
            all(self.service.as_slice(), cache::slim_service),
        );
        seed(
            &mut |e| w.slices.apply_watcher_event(e),
            all(&self.slices, cache::slim_slice),
        );
        seed(
            &mut |e| w.config_maps.apply_watcher_event(e),
            all(self.config_map.as_slice(), cache::slim_config_map),
        );
        let names: Vec<Value> = self
            .config_map
            .iter()
            .chain(&self.foreign_config_map)
            .cloned()
            .collect();
        seed(
            &mut |e| w.config_map_names.apply_watcher_event(e),
            all::<PartialObjectMeta<ConfigMap>>(&names, cache::slim_names),
        );
        seed(
            &mut |e| w.deployments.apply_watcher_event(e),
            all(self.deployment.as_slice(), cache::slim_deployment),
        );
        seed(
            &mut |e| w.namespaces.apply_watcher_event(e),
            Vec::<PartialObjectMeta<Namespace>>::new(),
        );
        seed(
            &mut |e| w.agents.apply_watcher_event(e),
            all(&self.agents, lbpool_controller::agents::slim_pod),
        );
        (caches, w)
    }
}

/// A complete first list of `objects`.
fn seed<K>(apply: &mut dyn FnMut(&Event<K>), objects: Vec<K>) {
    apply(&Event::Init);
    for obj in objects {
        apply(&Event::InitApply(obj));
    }
    apply(&Event::InitDone);
}

/// Answers requests from `script`, in order; returns what was sent once
/// every client is dropped, and fails on a request out of script or one
/// never made.
fn serve(script: Vec<Expect>) -> (Client, tokio::task::JoinHandle<Vec<(String, Value)>>) {
    let (service, mut handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    let server = tokio::spawn(async move {
        let mut sent = Vec::new();
        let mut script = script;
        while let Some((request, respond)) = handle.next_request().await {
            let (parts, body) = request.into_parts();
            let path = parts.uri.path().to_owned();
            let bytes = body.collect_bytes().await.expect("request body");
            let body: Value = serde_json::from_slice(&bytes).unwrap_or(Value::Null);
            // Events go out beside the reconcile, in no fixed order with
            // its other requests: one is matched to the first Event the
            // script still expects.
            let is_event = |p: &str| p.ends_with("/events");
            let at = script
                .iter()
                .position(|e| is_event(&e.path) == is_event(&path));
            let Some(next) = at.map(|i| script.remove(i)) else {
                panic!("unexpected request {} {path}", parts.method);
            };
            assert_eq!(
                (&parts.method, path.as_str()),
                (&next.method, next.path.as_str()),
                "requests out of script"
            );
            let (status, answer) = (next.answer)(&body);
            sent.push((format!("{} {path}", parts.method), body));
            let response = Response::builder()
                .status(status)
                .body(Body::from(serde_json::to_vec(&answer).expect("json")))
                .expect("response");
            respond.send_response(response);
        }
        let rest: Vec<String> = script
            .iter()
            .map(|e| format!("{} {}", e.method, e.path))
            .collect();
        assert!(rest.is_empty(), "requests never made: {rest:?}");
        sent
    });
    (Client::new(service, "demo"), server)
}

fn context(client: Client, validator: FakeValidator, caches: Caches) -> Arc<Context> {
    let reporter = Reporter {
        controller: FIELD_MANAGER.into(),
        instance: None,
    };
    Arc::new(Context::new(
        client,
        Box::new(validator),
        reporter,
        Metrics::default(),
        caches,
    ))
}

/// Runs one reconcile of `pool` in `world` against the script; returns the
/// bodies the controller sent, in order, for further checks.
async fn run(
    pool: LoadBalancerPool,
    world: &World,
    validator: FakeValidator,
    script: Vec<Expect>,
) -> Vec<(String, Value)> {
    run_for(pool, world, validator, script).await.0
}

/// [`run`], also returning what the reconcile asked for next.
async fn run_for(
    pool: LoadBalancerPool,
    world: &World,
    validator: FakeValidator,
    script: Vec<Expect>,
) -> (Vec<(String, Value)>, Action) {
    let (client, server) = serve(script);
    let (caches, _writers) = world.caches();
    let action = reconcile(Arc::new(pool), context(client, validator, caches))
        .await
        .expect("reconcile succeeds");
    // Dropping the last client ends the mock's request stream.
    let sent = server
        .await
        .expect("the mock API saw exactly the scripted requests");
    (sent, action)
}

fn service() -> Value {
    serde_json::to_value(testing::service(&[("http", 80)])).expect("service json")
}

/// One slice of ready endpoints `(address, pod)`.
fn slice_with(addresses: &[(&str, &str)]) -> Value {
    let endpoints: Vec<(&str, &str, bool)> =
        addresses.iter().map(|(a, p)| (*a, *p, true)).collect();
    serde_json::to_value(testing::slice("webapp-x", "http", 3000, &endpoints)).expect("slice json")
}

fn slices() -> Value {
    json!({"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSliceList", "metadata": {"resourceVersion": "1"},
           "items": [slice_with(&[("10.244.0.7", "webapp-1")])]})
}

/// The HAProxy Deployment, 2 pods, its rollout of `hash` complete.
fn deployment(hash: Option<&str>) -> Value {
    let annotations = hash.map_or(json!({}), |h| json!({CONFIG_HASH_ANNOTATION: h}));
    json!({"apiVersion": "apps/v1", "kind": "Deployment",
           "metadata": {"name": "haproxy", "namespace": "demo", "resourceVersion": "7", "generation": 3},
           "spec": {"replicas": 2, "selector": {"matchLabels": {"app": "haproxy"}},
                    "template": {"metadata": {"annotations": annotations}, "spec": {"containers": []}}},
           "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2}})
}

/// The config the controller must render for [`pool`], [`service`] and [`slices`].
fn expected_config() -> lbpool_controller::render::RenderedConfig {
    expected_config_of(&pool())
}

/// The config the controller must render for `p`, [`service`] and [`slices`].
fn expected_config_of(p: &LoadBalancerPool) -> lbpool_controller::render::RenderedConfig {
    let svc: Service = serde_json::from_value(service()).expect("service");
    let list: Vec<EndpointSlice> =
        serde_json::from_value(slices()["items"].clone()).expect("slices");
    let port = model::resolve_port(&p.spec, &svc).expect("port");
    let m = model::build(p, &port, &list).expect("model");
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

fn config_maps_path() -> String {
    format!("/api/v1{NS}/configmaps")
}

fn config_map_path() -> String {
    format!("/api/v1{NS}/configmaps/webapp-haproxy")
}

fn deployment_path() -> String {
    format!("/apis/apps/v1{NS}/deployments/haproxy")
}

fn event_post() -> Expect {
    echo(Method::POST, &format!("/apis/events.k8s.io/v1{NS}/events"))
}

/// The ConfigMap created (it is not in the cache), then `last`.
fn create_and(last: Expect) -> Vec<Expect> {
    vec![echo(Method::POST, &config_maps_path()), last]
}

#[tokio::test]
async fn a_new_config_map_is_created_and_an_up_to_date_deployment_is_not_patched() {
    let hash = expected_hash();
    let world = World::with(Some(deployment(Some(&hash))));
    let sent = run(
        pool(),
        &world,
        FakeValidator::accepting(),
        create_and(status_apply()),
    )
    .await;
    let config_map = &sent[0].1;
    assert_eq!(
        config_map["metadata"]["annotations"][CONFIG_HASH_ANNOTATION],
        hash.as_str()
    );
    assert!(
        config_map["data"][CONFIG_KEY]
            .as_str()
            .unwrap_or_default()
            .contains("server webapp-1 10.244.0.7:3000 check")
    );
    assert_eq!(
        config_map["metadata"]["ownerReferences"][0]["kind"],
        "LoadBalancerPool"
    );
    let status = &sent[1].1;
    assert_eq!(status["status"]["readyBackends"], 1);
    assert_eq!(condition(status, "Ready")["status"], "True");
    assert_eq!(condition(status, "RolloutPending")["status"], "False");
    assert!(
        status["status"].get("lastRolloutTime").is_none(),
        "no rollout happened: {status}"
    );
}

#[tokio::test]
async fn a_config_map_that_appeared_since_the_cache_looked_is_not_taken() {
    let world = World::with(Some(deployment(Some("sha256:old"))));
    let exists = expect(Method::POST, &config_maps_path(), |_| {
        (
            StatusCode::CONFLICT,
            json!({"kind": "Status", "apiVersion": "v1", "status": "Failure", "reason": "AlreadyExists",
                   "code": 409, "message": "configmaps \"webapp-haproxy\" already exists"}),
        )
    });
    // Nothing after the refused create: no apply, no rollout, no status.
    let (sent, action) = run_for(pool(), &world, FakeValidator::accepting(), vec![exists]).await;
    assert_eq!(sent.len(), 1);
    assert_eq!(action, Action::requeue(std::time::Duration::from_secs(1)));
}

#[tokio::test]
async fn a_pool_deleted_during_its_reconcile_is_not_an_error() {
    let status_path = format!("/apis/lbpool.dev/v1alpha1{NS}/loadbalancerpools/webapp/status");
    // `run` requires the reconcile to succeed: the 404 of the status write
    // means the pool is gone, which is nothing to retry or report.
    let gone = expect(Method::PATCH, &status_path, |_| {
        (StatusCode::NOT_FOUND, not_found("loadbalancerpools webapp"))
    });
    let world = World::with(Some(deployment(Some(&expected_hash()))));
    let sent = run(pool(), &world, FakeValidator::accepting(), create_and(gone)).await;
    assert_eq!(sent.len(), 2);
}

/// The rollout patch, answered with the Deployment at its new generation.
fn rollout(claimed_by: Option<&'static str>) -> Expect {
    expect(Method::PATCH, &deployment_path(), move |body| {
        let mut d = deployment(
            body["spec"]["template"]["metadata"]["annotations"][CONFIG_HASH_ANNOTATION].as_str(),
        );
        if let Some(other) = claimed_by {
            d["metadata"]["annotations"] = json!({POOL_CLAIM_ANNOTATION: other});
        }
        for (k, v) in body["metadata"]["annotations"]
            .as_object()
            .into_iter()
            .flatten()
        {
            d["metadata"]["annotations"][k] = v.clone();
        }
        d["metadata"]["resourceVersion"] = json!("8");
        // A new pod template: a new generation, not yet observed.
        d["metadata"]["generation"] = json!(4);
        (StatusCode::OK, d)
    })
}

/// The ConfigMap created, the Deployment rolled, its Event, the status.
fn create_and_roll(claimed_by: Option<&'static str>) -> Vec<Expect> {
    vec![
        echo(Method::POST, &config_maps_path()),
        rollout(claimed_by),
        event_post(),
        status_apply(),
    ]
}

#[tokio::test]
async fn changed_hash_writes_the_config_map_first_then_rolls_the_deployment() {
    let hash = expected_hash();
    let world = World::with(Some(deployment(Some("sha256:old"))));
    let sent = run(
        pool(),
        &world,
        FakeValidator::accepting(),
        create_and_roll(None),
    )
    .await;
    let patch = &sent[1].1;
    assert_eq!(
        patch,
        &json!({"apiVersion": "apps/v1", "kind": "Deployment",
                "metadata": {"name": "haproxy", "annotations": {POOL_CLAIM_ANNOTATION: "webapp"}},
                "spec": {"template": {"metadata": {"annotations": {CONFIG_HASH_ANNOTATION: hash}}}}}),
        "only the pod-template annotation and the pool's claim are applied"
    );
    let event = sent_to(&sent, "/events");
    assert_eq!(event["reason"], "RolloutTriggered");
    assert_eq!(event["related"]["resourceVersion"], "8");
    let status = sent_to(&sent, "/status");
    assert!(status["status"]["lastRolloutTime"].is_string(), "{status}");
    // Written and rolled is not served: Ready waits for the rolling update.
    assert_eq!(condition(status, "Ready")["reason"], "RollingOut");
    assert_eq!(status["status"]["haproxy"]["replicas"], 2);
}

/// The body of the one request sent to a path ending in `suffix`.
fn sent_to<'a>(sent: &'a [(String, Value)], suffix: &str) -> &'a Value {
    let mut found = sent.iter().filter(|(req, _)| req.ends_with(suffix));
    let (Some((_, body)), None) = (found.next(), found.next()) else {
        panic!("not one request to …{suffix}: {sent:?}");
    };
    body
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
    d["metadata"]["annotations"] = json!({POOL_CLAIM_ANNOTATION: "other"});
    d
}

#[tokio::test]
async fn a_deployment_another_pool_rolls_is_left_alone_and_reported() {
    let mut world = World::with(Some(claimed_by_other()));
    let mut other = serde_json::to_value(pool()).expect("pool json");
    other["metadata"]["name"] = json!("other");
    world.pools.push(other);
    let sent = run(
        pool(),
        &world,
        FakeValidator::accepting(),
        vec![event_post(), status_apply()],
    )
    .await;
    // Nothing written: no ConfigMap, no Deployment patch.
    assert_conflict(
        sent_to(&sent, "/events"),
        sent_to(&sent, "/status"),
        "DeploymentConflict",
        "rolled by LoadBalancerPool other",
    );
}

#[tokio::test]
async fn the_claim_of_a_deleted_pool_is_void() {
    // Pool `other` is not in the cache: deleted.
    let world = World::with(Some(claimed_by_other()));
    let sent = run(
        pool(),
        &world,
        FakeValidator::accepting(),
        create_and_roll(Some("other")),
    )
    .await;
    assert_eq!(
        sent[1].1["metadata"]["annotations"][POOL_CLAIM_ANNOTATION],
        "webapp"
    );
}

#[tokio::test]
async fn a_config_map_that_is_not_the_pools_is_left_alone_and_reported() {
    let mut world = World::with(Some(deployment(None)));
    world.foreign_config_map = Some(json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "webapp-haproxy", "namespace": "demo"},
        "data": {"keep": "me"}}));
    let sent = run(
        pool(),
        &world,
        FakeValidator::accepting(),
        vec![event_post(), status_apply()],
    )
    .await;
    // No write of the ConfigMap, no Deployment patch: the script says so.
    assert_conflict(
        sent_to(&sent, "/events"),
        sent_to(&sent, "/status"),
        "ConfigMapConflict",
        "not created by lbpool",
    );
}

#[tokio::test]
async fn missing_service_sets_a_condition_and_leaves_the_config_map_alone() {
    let mut world = World::with(Some(deployment(None)));
    world.service = None;
    let sent = run(
        pool(),
        &world,
        FakeValidator::accepting(),
        vec![event_post(), status_apply()],
    )
    .await;
    let event = sent_to(&sent, "/events");
    assert_eq!(event["type"], "Warning");
    assert_eq!(event["reason"], "ServiceNotFound");
    let status = sent_to(&sent, "/status");
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
    let world = World::with(Some(deployment(None)));
    let sent = run(
        pool(),
        &world,
        FakeValidator::rejecting("[ALERT] parsing [haproxy.cfg:3] : unknown keyword 'bogus'"),
        vec![event_post(), status_apply()],
    )
    .await;
    let valid = condition(sent_to(&sent, "/status"), "ConfigValid");
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
                        "labels": {MANAGED_BY_LABEL: FIELD_MANAGER, POOL_LABEL: "webapp"},
                        "annotations": {CONFIG_HASH_ANNOTATION: hash},
                        "ownerReferences": [{"apiVersion": "lbpool.dev/v1alpha1", "kind": "LoadBalancerPool",
                                             "name": "webapp", "uid": pool().metadata.uid,
                                             "controller": true}]},
           "data": {CONFIG_KEY: text}})
}

/// A world whose ConfigMap holds `text` under `hash` and whose Deployment runs `deployed`.
fn published(hash: &str, text: &str, deployed: &str) -> World {
    let mut world = World::with(Some(deployment(Some(deployed))));
    world.config_map = Some(own_config_map(hash, text));
    world
}

#[tokio::test]
async fn a_config_that_waits_for_its_rollout_is_not_written_yet() {
    // Rolled a moment ago for the old config, which the ConfigMap holds.
    let old = "old config\n";
    let old_hash = lbpool_wire::config_hash(old);
    let mut p = pool();
    let status: lbpool_crds::LoadBalancerPoolStatus = serde_json::from_value(json!({
        "configHash": old_hash, "configRevision": "old", "readyBackends": 4,
        "lastRolloutTime": jiff::Timestamp::now().to_string(),
    }))
    .expect("status");
    p.status = Some(status);
    let world = published(&old_hash, old, &old_hash);
    let sent = run(p, &world, FakeValidator::accepting(), vec![status_apply()]).await;
    // No ConfigMap write, no Deployment patch: the script has none.
    let status = &sent[0].1["status"];
    assert_eq!(status["configHash"], old_hash.as_str(), "{status}");
    assert_eq!(status["readyBackends"], 4, "still what HAProxy serves");
    let pending = condition(&sent[0].1, "RolloutPending");
    assert_eq!(pending["status"], "True");
    assert_eq!(condition(&sent[0].1, "Ready")["reason"], "RollingOut");
}

#[tokio::test]
async fn nothing_is_sent_when_nothing_differs() {
    let c = expected_config();
    let world = published(&c.hash, &c.text, &c.hash);
    // First look: the status is written once...
    let sent = run(
        pool(),
        &world,
        FakeValidator::accepting(),
        vec![status_apply()],
    )
    .await;
    let status = sent[0].1["status"].clone();
    assert_eq!(condition(&sent[0].1, "Ready")["status"], "True");
    // ...and with that status in place, a second reconcile sends nothing.
    let mut p = pool();
    p.status = Some(serde_json::from_value(status).expect("status"));
    let sent = run(p, &world, FakeValidator::accepting(), vec![]).await;
    assert!(sent.is_empty(), "no request at all: {sent:?}");
}

#[tokio::test]
async fn a_config_map_edited_by_hand_is_restored() {
    let c = expected_config();
    // The data no longer is the config its annotation names.
    let world = published(&c.hash, "global\n    maxconn 1\n", &c.hash);
    let sent = run(
        pool(),
        &world,
        FakeValidator::accepting(),
        vec![echo(Method::PATCH, &config_map_path()), status_apply()],
    )
    .await;
    assert_eq!(sent[0].1["data"][CONFIG_KEY], c.text.as_str());
}

/// Two reconciles of one pool in one process: the second after the
/// endpoints changed. Returns how many configs went to `haproxy -c`.
async fn checks_over_an_endpoint_change(template: Option<&str>) -> usize {
    let mut p = pool();
    let mut script = Vec::new();
    let template_get = format!("/api/v1{NS}/configmaps/tpl");
    if let Some(source) = template {
        p.spec.template = Some(lbpool_crds::TemplateRef {
            config_map: "tpl".into(),
            key: "haproxy.cfg.hbs".into(),
        });
        let source = source.to_owned();
        let answer = move |_: &Value| {
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                                    "metadata": {"name": "tpl", "namespace": "demo"},
                                    "data": {"haproxy.cfg.hbs": source}}),
            )
        };
        script.push(expect(Method::GET, &template_get, answer.clone()));
        script.extend(create_and(status_apply()));
        script.push(expect(Method::GET, &template_get, answer));
    } else {
        script.extend(create_and(status_apply()));
    }
    // The second reconcile finds the ConfigMap it created, with other servers.
    script.extend([echo(Method::PATCH, &config_map_path()), status_apply()]);

    // No Deployment: only the ConfigMap and the status are written.
    let world = World::with(None);
    let (client, server) = serve(script);
    let (caches, mut writers) = world.caches();
    let validator = FakeValidator::accepting();
    let checks = validator.checks.clone();
    let ctx = context(client, validator, caches);
    reconcile(Arc::new(p.clone()), ctx.clone())
        .await
        .expect("first reconcile");
    let text = expected_config().text;
    let mut created: ConfigMap =
        serde_json::from_value(own_config_map(&lbpool_wire::config_hash(&text), &text))
            .expect("cm");
    cache::slim_config_map(&mut created);
    writers
        .config_maps
        .apply_watcher_event(&Event::Apply(created));
    let mut scaled: EndpointSlice = serde_json::from_value(slice_with(&[
        ("10.244.0.7", "webapp-1"),
        ("10.244.0.8", "webapp-2"),
    ]))
    .expect("slice");
    cache::slim_slice(&mut scaled);
    writers.slices.apply_watcher_event(&Event::Apply(scaled));
    reconcile(Arc::new(p), ctx.clone())
        .await
        .expect("second reconcile");
    drop(ctx);
    let sent = server.await.expect("the scripted requests");
    assert!(
        sent.iter().any(|(_, body)| body["data"][CONFIG_KEY]
            .as_str()
            .is_some_and(|t| t.contains("10.244.0.8"))),
        "the second config has the new server: {sent:?}"
    );
    checks.load(Ordering::Relaxed)
}

#[tokio::test]
async fn an_endpoint_change_is_not_checked_again_with_the_built_in_template() {
    assert_eq!(checks_over_an_endpoint_change(None).await, 1);
}

#[tokio::test]
async fn a_user_template_is_checked_whenever_its_config_changes() {
    let template = "# {{pool.name}}\n{{#each servers}}# {{address}}\n{{/each}}";
    assert_eq!(checks_over_an_endpoint_change(Some(template)).await, 2);
}

#[tokio::test]
async fn pools_with_the_same_settings_share_one_check() {
    let mut other = pool();
    other.metadata.name = Some("other".into());
    other.metadata.uid = Some("00000000-0000-0000-0000-000000000002".into());
    let other_status = format!("/apis/lbpool.dev/v1alpha1{NS}/loadbalancerpools/other/status");
    let script = vec![
        echo(Method::POST, &config_maps_path()),
        status_apply(),
        echo(Method::POST, &config_maps_path()),
        expect(Method::PATCH, &other_status, |body| {
            let mut p = serde_json::to_value(pool()).expect("pool json");
            p["metadata"]["name"] = json!("other");
            p["status"] = body["status"].clone();
            (StatusCode::OK, p)
        }),
    ];
    let mut world = World::with(None);
    world
        .pools
        .push(serde_json::to_value(&other).expect("pool json"));
    let (client, server) = serve(script);
    let (caches, _writers) = world.caches();
    let validator = FakeValidator::accepting();
    let checks = validator.checks.clone();
    let ctx = context(client, validator, caches);
    reconcile(Arc::new(pool()), ctx.clone())
        .await
        .expect("webapp");
    reconcile(Arc::new(other), ctx.clone())
        .await
        .expect("other");
    drop(ctx);
    let sent = server.await.expect("the scripted requests");
    assert_eq!(sent[2].1["metadata"]["name"], "other-haproxy");
    assert_eq!(checks.load(Ordering::Relaxed), 1, "one skeleton, one check");
}

fn in_place_pool() -> LoadBalancerPool {
    let mut p = pool();
    p.spec.reload.strategy = lbpool_crds::ReloadStrategy::InPlace;
    p
}

/// An HAProxy pod whose agent reports `served` (and maybe a refusal).
fn agent_pod(name: &str, served: &str, rejected: Option<&str>) -> Value {
    let mut annotations = json!({SERVED_ANNOTATION: served});
    if let Some(r) = rejected {
        annotations[REJECTED_ANNOTATION] = json!(r);
    }
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "namespace": "demo", "labels": {POOL_LABEL: "webapp"},
                        "annotations": annotations},
           "status": {"conditions": [{"type": "Ready", "status": "True"}]}})
}

#[tokio::test]
async fn in_place_writes_the_config_map_and_leaves_the_deployment_alone() {
    let p = in_place_pool();
    let c = expected_config_of(&p);
    assert!(
        c.text.contains(&format!(
            "stats socket {RUNTIME_API_SOCKET} mode 600 level admin expose-fd listeners"
        )),
        "the agent's Runtime API is in the config:\n{}",
        c.text
    );
    // The agents serve an older config; the Deployment's template is not
    // rolled for configs at all.
    let mut world = published("sha256:old", "old config\n", "sha256:whatever");
    world.agents = vec![
        agent_pod("haproxy-a", "sha256:old", None),
        agent_pod("haproxy-b", "sha256:old", None),
    ];
    let sent = run(
        p.clone(),
        &world,
        FakeValidator::accepting(),
        vec![echo(Method::PATCH, &config_map_path()), status_apply()],
    )
    .await;
    assert_eq!(sent[0].1["data"][CONFIG_KEY], c.text.as_str());
    let status = &sent[1].1;
    let ready = condition(status, "Ready");
    assert_eq!(ready["status"], "False", "{status}");
    assert!(
        ready["message"]
            .as_str()
            .unwrap_or_default()
            .contains("0/2 HAProxy pods serve it"),
        "{ready}"
    );
    assert!(status["status"]["lastRolloutTime"].is_string(), "{status}");

    // Both agents applied it: Ready, and nothing to write but the status.
    let mut world = published(&c.hash, &c.text, "sha256:whatever");
    world.agents = vec![
        agent_pod("haproxy-a", &c.hash, None),
        agent_pod("haproxy-b", &c.hash, None),
    ];
    let sent = run(p, &world, FakeValidator::accepting(), vec![status_apply()]).await;
    let ready = condition(&sent[0].1, "Ready");
    assert_eq!(ready["status"], "True", "{ready}");
    assert_eq!(sent[0].1["status"]["haproxy"]["updatedReplicas"], 2);
}

#[tokio::test]
async fn a_config_an_agent_refuses_is_reported_on_the_status() {
    let p = in_place_pool();
    let c = expected_config_of(&p);
    let mut world = published(&c.hash, &c.text, "sha256:whatever");
    world.agents = vec![
        agent_pod(
            "haproxy-a",
            "sha256:0ld0000000",
            Some(&format!("{} unknown keyword 'foo'", c.hash)),
        ),
        agent_pod("haproxy-b", &c.hash, None),
    ];
    let sent = run(p, &world, FakeValidator::accepting(), vec![status_apply()]).await;
    let ready = condition(&sent[0].1, "Ready");
    assert_eq!(ready["status"], "False");
    assert_eq!(ready["reason"], "AgentRejected");
    let message = ready["message"].as_str().unwrap_or_default();
    assert!(
        message.contains("haproxy-a") && message.contains("unknown keyword 'foo'"),
        "{message}"
    );
}

#[tokio::test]
async fn in_place_keeps_the_recorded_publication_time() {
    // One process publishes, then the agents report: the second status
    // must name the same publication time, at the precision the API stores,
    // or every later reconcile would find a status to rewrite.
    let p = in_place_pool();
    let c = expected_config_of(&p);
    let mut world = published("sha256:old", "old config\n", "sha256:whatever");
    world.agents = vec![agent_pod("haproxy-a", "sha256:old", None)];
    let (client, server) = serve(vec![
        echo(Method::PATCH, &config_map_path()),
        status_apply(),
        status_apply(),
    ]);
    let (caches, mut writers) = world.caches();
    let ctx = context(client, FakeValidator::accepting(), caches);
    reconcile(Arc::new(p.clone()), ctx.clone())
        .await
        .expect("publish");
    let mut cm: ConfigMap = serde_json::from_value(own_config_map(&c.hash, &c.text)).expect("cm");
    cache::slim_config_map(&mut cm);
    writers.config_maps.apply_watcher_event(&Event::Apply(cm));
    for name in ["haproxy-a", "haproxy-b"] {
        let mut pod: k8s_openapi::api::core::v1::Pod =
            serde_json::from_value(agent_pod(name, &c.hash, None)).expect("pod");
        lbpool_controller::agents::slim_pod(&mut pod);
        writers.agents.apply_watcher_event(&Event::Apply(pod));
    }
    reconcile(Arc::new(p), ctx.clone())
        .await
        .expect("the agents report");
    drop(ctx);
    let sent = server.await.expect("the scripted requests");
    let (published, served) = (&sent[1].1, &sent[2].1);
    assert_eq!(condition(published, "Ready")["status"], "False");
    assert_eq!(condition(served, "Ready")["status"], "True", "{served}");
    let time = |s: &Value| s["status"]["lastRolloutTime"].clone();
    assert!(time(published).is_string(), "{published}");
    assert_eq!(time(served), time(published));
}

/// A pool whose user template (ConfigMap `tpl`) is `source`, and the read of it.
fn templated(source: &str) -> (LoadBalancerPool, Expect) {
    let mut p = pool();
    p.spec.template = Some(lbpool_crds::TemplateRef {
        config_map: "tpl".into(),
        key: "haproxy.cfg.hbs".into(),
    });
    let source = source.to_owned();
    let get = expect(
        Method::GET,
        &format!("/api/v1{NS}/configmaps/tpl"),
        move |_: &Value| {
            (
                StatusCode::OK,
                json!({"apiVersion": "v1", "kind": "ConfigMap",
                   "metadata": {"name": "tpl", "namespace": "demo"},
                   "data": {"haproxy.cfg.hbs": source}}),
            )
        },
    );
    (p, get)
}

#[tokio::test]
async fn a_refused_template_never_reaches_haproxy_and_waits_for_a_change_only_when_costly() {
    for (source, reason, retried) in [
        (
            "global\n    lua-load /proc/self/fd/3\n",
            "ConfigRefused",
            true,
        ),
        (
            "{{#each servers}}{{#each ../servers}}{{#each ../../servers}}{{#each ../../../servers}}{{#each ../../../../servers}}x{{/each}}{{/each}}{{/each}}{{/each}}{{/each}}",
            "TemplateTooSlow",
            false,
        ),
    ] {
        let (p, get) = templated(source);
        let world = World::with(Some(deployment(None)));
        let validator = FakeValidator::accepting();
        let checks = validator.checks.clone();
        let (sent, action) = run_for(
            p,
            &world,
            validator,
            vec![get, event_post(), status_apply()],
        )
        .await;
        let valid = condition(sent_to(&sent, "/status"), "ConfigValid");
        assert_eq!(valid["reason"], reason, "{valid}");
        assert_eq!(
            checks.load(Ordering::Relaxed),
            0,
            "{reason}: haproxy -c never ran"
        );
        // Costly refusals wait for an input to change, not for a timer.
        assert_eq!(
            action != Action::await_change(),
            retried,
            "{reason}: {action:?}"
        );
    }
}
