//! Prometheus metrics, served on the admin port at `/metrics` (OpenMetrics
//! text, through `prometheus-client`).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::{EncodeLabelSet, EncodeLabelValue, LabelValueEncoder};
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

/// What a reconcile that published did.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum UpdateKind {
    /// Nothing differed: nothing written but, if it changed, the status.
    Noop,
    /// The ConfigMap was written (no rollout: the Deployment is up to date
    /// or missing).
    Published,
    /// The ConfigMap and the Deployment's annotation: HAProxy rolls.
    Rolled,
}

impl EncodeLabelValue for UpdateKind {
    fn encode(&self, encoder: &mut LabelValueEncoder<'_>) -> std::fmt::Result {
        use std::fmt::Write as _;
        encoder.write_str(match self {
            UpdateKind::Noop => "noop",
            UpdateKind::Published => "published",
            UpdateKind::Rolled => "rolled",
        })
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Update {
    kind: UpdateKind,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Request {
    verb: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// One pool, as the per-pool gauges label it.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Pool {
    namespace: String,
    pool: String,
}

/// HAProxy pods of a pool, by whether they serve its current revision.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct PoolPods {
    namespace: String,
    pool: String,
    revision: &'static str,
}

/// The controller's metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    reconciles: Family<Outcome, Counter>,
    duration: Histogram,
    updates: Family<Update, Counter>,
    errors: Family<Reason, Counter>,
    conflicts: Family<Reason, Counter>,
    requests: Family<Request, Counter>,
    /// Rollouts triggered (Deployment annotation patches).
    pub rollouts: Counter,
    /// Pools newly found invalid (a new reason or message).
    pub invalid: Counter,
    /// Pools this process keeps something in memory for.
    pub remembered_pools: Gauge,
    /// 1 while this replica holds the leader Lease (or runs without election).
    pub leader: Gauge,
    /// Per pool: 1 while its status says `Ready`.
    pool_ready: Family<Pool, Gauge>,
    /// Per pool: 1 while a new config waits for `rollout.minInterval`.
    pool_pending: Family<Pool, Gauge>,
    /// Per pool: its HAProxy pods serving the current revision, and the others.
    pool_pods: Family<PoolPods, Gauge>,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lbpool");
        let reconciles = Family::<Outcome, Counter>::default();
        // Both results from the start (at 0): an error rate has a series
        // before the first error.
        for result in ["ok", "error"] {
            drop(reconciles.get_or_create(&Outcome { result }));
        }
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let (updates, errors, conflicts, requests) = Default::default();
        let (rollouts, invalid) = Default::default();
        let (remembered_pools, leader) = Default::default();
        let (pool_ready, pool_pending, pool_pods) = Default::default();
        registry.register("reconciles", "Reconciles by result", reconciles.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile",
            duration.clone(),
        );
        registry.register(
            "updates",
            "Reconciles that published, by what they wrote: noop, published (ConfigMap), rolled (ConfigMap and Deployment)",
            Family::clone(&updates),
        );
        registry.register(
            "reconcile_errors",
            "Failed reconciles by reason (API status reason, or the controller's own)",
            Family::clone(&errors),
        );
        registry.register(
            "conflicts",
            "Conflicts reported (another owner's ConfigMap or Deployment), by reason",
            Family::clone(&conflicts),
        );
        registry.register(
            "api_requests",
            "Requests this process sent to the API server, by verb (get, list, watch, create, patch, update, delete)",
            Family::clone(&requests),
        );
        registry.register(
            "rollouts",
            "HAProxy Deployment rollouts triggered",
            Counter::clone(&rollouts),
        );
        registry.register(
            "invalid_pools",
            "Pools found invalid (new reason)",
            Counter::clone(&invalid),
        );
        registry.register(
            "remembered_pools",
            "Pools this process keeps state in memory for",
            Gauge::clone(&remembered_pools),
        );
        registry.register(
            "leader",
            "1 while this replica is the leader and reconciles",
            Gauge::clone(&leader),
        );
        registry.register(
            "pool_ready",
            "1 while the pool's status is Ready (HAProxy serves its current config), else 0",
            Family::clone(&pool_ready),
        );
        registry.register(
            "pool_rollout_pending",
            "1 while a new config of the pool waits for rollout.minInterval (RolloutPending), else 0",
            Family::clone(&pool_pending),
        );
        registry.register(
            "pool_haproxy_pods",
            "HAProxy pods of the pool by revision: current (serving the published config) or older",
            Family::clone(&pool_pods),
        );
        Self {
            pool_ready,
            pool_pending,
            pool_pods,
            reconciles,
            duration,
            updates,
            errors,
            conflicts,
            requests,
            rollouts,
            invalid,
            remembered_pools,
            leader,
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    /// One reconcile: its time, and the reason it failed, if it did.
    pub fn observe_reconcile(&self, took: Duration, error: Option<&'static str>) {
        self.duration.observe(took.as_secs_f64());
        let result = if error.is_some() { "error" } else { "ok" };
        self.reconciles.get_or_create(&Outcome { result }).inc();
        if let Some(reason) = error {
            self.errors.get_or_create(&Reason { reason }).inc();
        }
    }

    /// One reconcile that published.
    pub fn update(&self, kind: UpdateKind) {
        self.updates.get_or_create(&Update { kind }).inc();
    }

    /// A conflict newly reported.
    pub fn conflict(&self, reason: &'static str) {
        self.conflicts.get_or_create(&Reason { reason }).inc();
    }

    /// One request to the API server.
    pub fn api_request<B>(&self, request: &http::Request<B>) {
        let verb = verb_of(request.method(), request.uri());
        self.requests.get_or_create(&Request { verb }).inc();
    }

    /// The gauges of one pool, from the status just computed for it.
    pub fn pool(&self, namespace: &str, pool: &str, status: &lbpool_crds::LoadBalancerPoolStatus) {
        let is = |type_: &str| {
            i64::from(
                status
                    .conditions
                    .iter()
                    .any(|c| c.type_ == type_ && c.status == "True"),
            )
        };
        let labels = Pool {
            namespace: namespace.to_owned(),
            pool: pool.to_owned(),
        };
        self.pool_ready
            .get_or_create(&labels)
            .set(is(crate::conditions::kind::READY));
        self.pool_pending
            .get_or_create(&labels)
            .set(is(crate::conditions::kind::ROLLOUT_PENDING));
        let (current, all) = status.haproxy.as_ref().map_or((0, 0), |h| {
            (h.updated_replicas, h.replicas.max(h.updated_replicas))
        });
        for (revision, n) in [("current", current), ("older", all - current)] {
            let labels = PoolPods {
                namespace: namespace.to_owned(),
                pool: pool.to_owned(),
                revision,
            };
            self.pool_pods.get_or_create(&labels).set(i64::from(n));
        }
    }

    /// A pool that is gone: its gauges go too.
    pub fn forget_pool(&self, namespace: &str, pool: &str) {
        let (namespace, pool) = (namespace.to_owned(), pool.to_owned());
        for revision in ["current", "older"] {
            self.pool_pods.remove(&PoolPods {
                namespace: namespace.clone(),
                pool: pool.clone(),
                revision,
            });
        }
        let labels = Pool { namespace, pool };
        self.pool_pending.remove(&labels);
        self.pool_ready.remove(&labels);
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

/// The Kubernetes verb of a request: a GET is a `watch` with `watch=true`,
/// else a `get` of a named object or a `list` of a collection. Whether a path
/// names an object is read from its shape: `/api/v1/namespaces/ns/pods/x` and
/// `/apis/g/v/namespaces/ns/r/x` do, as do cluster-scoped
/// `/api/v1/namespaces/x` and `/apis/g/v/r/x`.
fn verb_of(method: &http::Method, uri: &http::Uri) -> &'static str {
    match *method {
        http::Method::GET => {
            if uri
                .query()
                .is_some_and(|q| q.split('&').any(|kv| kv == "watch=true" || kv == "watch=1"))
            {
                return "watch";
            }
            let segments: Vec<&str> = uri.path().trim_matches('/').split('/').collect();
            // Drop the group/version prefix: ["api", v] or ["apis", g, v].
            let rest = match segments.first() {
                Some(&"api") => segments.get(2..),
                Some(&"apis") => segments.get(3..),
                _ => None,
            }
            .unwrap_or_default();
            let rest = match rest {
                ["namespaces", _, tail @ ..] if !tail.is_empty() => tail,
                other => other,
            };
            // [resource] is a list, [resource, name] (and subresources) a get.
            if rest.len() >= 2 { "get" } else { "list" }
        }
        http::Method::POST => "create",
        http::Method::PATCH => "patch",
        http::Method::PUT => "update",
        http::Method::DELETE => "delete",
        _ => "other",
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_verb() {
        let verb =
            |method: &str, uri: &str| verb_of(&method.parse().unwrap(), &uri.parse().unwrap());
        assert_eq!(
            verb("GET", "/api/v1/namespaces/demo/services/webapp"),
            "get"
        );
        assert_eq!(
            verb(
                "GET",
                "/apis/discovery.k8s.io/v1/namespaces/demo/endpointslices?labelSelector=x"
            ),
            "list"
        );
        assert_eq!(
            verb(
                "GET",
                "/apis/apps/v1/deployments?watch=true&resourceVersion=5"
            ),
            "watch"
        );
        assert_eq!(verb("GET", "/api/v1/namespaces"), "list");
        assert_eq!(verb("GET", "/api/v1/namespaces/demo"), "get");
        assert_eq!(
            verb("GET", "/apis/lbpool.dev/v1alpha1/loadbalancerpools"),
            "list"
        );
        assert_eq!(
            verb(
                "PATCH",
                "/apis/lbpool.dev/v1alpha1/namespaces/demo/loadbalancerpools/webapp/status"
            ),
            "patch"
        );
        assert_eq!(
            verb("POST", "/apis/events.k8s.io/v1/namespaces/demo/events"),
            "create"
        );
    }

    #[test]
    fn counts_show_in_the_exposition() {
        let m = Metrics::default();
        m.observe_reconcile(Duration::from_millis(3), None);
        m.observe_reconcile(Duration::from_millis(3), Some("Forbidden"));
        m.update(UpdateKind::Noop);
        m.update(UpdateKind::Rolled);
        m.conflict("ConfigMapConflict");
        m.rollouts.inc();
        m.remembered_pools.set(7);
        let text = m.encode();
        for line in [
            "lbpool_reconciles_total{result=\"ok\"} 1",
            "lbpool_reconciles_total{result=\"error\"} 1",
            "lbpool_reconcile_errors_total{reason=\"Forbidden\"} 1",
            "lbpool_updates_total{kind=\"noop\"} 1",
            "lbpool_updates_total{kind=\"rolled\"} 1",
            "lbpool_conflicts_total{reason=\"ConfigMapConflict\"} 1",
            "lbpool_rollouts_total 1",
            "lbpool_remembered_pools 7",
            "lbpool_leader 0",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }

    #[test]
    fn a_pool_has_gauges_until_it_is_forgotten() {
        let m = Metrics::default();
        let mut status: lbpool_crds::LoadBalancerPoolStatus =
            serde_json::from_value(serde_json::json!({
                "haproxy": {"replicas": 3, "updatedReplicas": 1, "readyReplicas": 3},
                "conditions": [{"type": "Ready", "status": "False", "reason": "RollingOut",
                    "message": "", "lastTransitionTime": "2026-12-02T00:00:00Z"}],
            }))
            .unwrap();
        m.pool("demo", "webapp", &status);
        let text = m.encode();
        for line in [
            r#"lbpool_pool_ready{namespace="demo",pool="webapp"} 0"#,
            r#"lbpool_pool_rollout_pending{namespace="demo",pool="webapp"} 0"#,
            r#"lbpool_pool_haproxy_pods{namespace="demo",pool="webapp",revision="current"} 1"#,
            r#"lbpool_pool_haproxy_pods{namespace="demo",pool="webapp",revision="older"} 2"#,
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
        status.conditions[0].status = "True".into();
        m.pool("demo", "webapp", &status);
        assert!(
            m.encode()
                .contains(r#"lbpool_pool_ready{namespace="demo",pool="webapp"} 1"#)
        );
        m.forget_pool("demo", "webapp");
        assert!(!m.encode().contains("webapp"), "{}", m.encode());
    }
}
