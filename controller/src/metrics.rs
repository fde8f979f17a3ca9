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
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lbpool");
        let reconciles = Family::<Outcome, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let (updates, errors, conflicts, requests) = Default::default();
        let (rollouts, invalid) = Default::default();
        let (remembered_pools, leader) = Default::default();
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
        Self {
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
}
