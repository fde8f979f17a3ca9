//! Prometheus metrics, served on the admin port at `/metrics`.

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Outcome {
    result: &'static str,
}

/// The controller's metrics. Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    reconciles: Family<Outcome, Counter>,
    duration: Histogram,
    /// Rollouts triggered (Deployment annotation patches).
    pub rollouts: Counter,
    /// Pools newly found invalid (a new reason or message).
    pub invalid: Counter,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lbpool");
        let reconciles = Family::<Outcome, Counter>::default();
        let duration = Histogram::new(exponential_buckets(0.001, 2.0, 14));
        let rollouts = Counter::default();
        let invalid = Counter::default();
        registry.register("reconciles", "Reconciles by result", reconciles.clone());
        registry.register(
            "reconcile_duration_seconds",
            "Time of one reconcile",
            duration.clone(),
        );
        registry.register(
            "rollouts",
            "HAProxy Deployment rollouts triggered",
            rollouts.clone(),
        );
        registry.register(
            "invalid_pools",
            "Pools found invalid (new reason)",
            invalid.clone(),
        );
        Self {
            reconciles,
            duration,
            rollouts,
            invalid,
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    pub fn observe_reconcile(&self, took: Duration, ok: bool) {
        self.duration.observe(took.as_secs_f64());
        let result = if ok { "ok" } else { "error" };
        self.reconciles.get_or_create(&Outcome { result }).inc();
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = prometheus_client::encoding::text::encode(&mut out, &self.registry);
        out
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_show_in_the_exposition() {
        let m = Metrics::default();
        m.observe_reconcile(Duration::from_millis(3), true);
        m.rollouts.inc();
        let text = m.encode();
        assert!(
            text.contains("lbpool_reconciles_total{result=\"ok\"} 1"),
            "{text}"
        );
        assert!(text.contains("lbpool_rollouts_total 1"), "{text}");
    }
}
