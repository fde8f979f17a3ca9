//! The agent's Prometheus metrics, served at `/metrics` (OpenMetrics text).

use std::sync::Arc;
use std::time::Duration;

use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::Registry;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Kind {
    kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct Reason {
    reason: &'static str,
}

/// The kinds of [`Metrics::applied`] and the reasons of [`Metrics::failed`],
/// each exported from the start (at 0), so that a rate or an alert on one
/// has a series before the first event.
const KINDS: [&str; 3] = ["runtime", "reload", "noop"];
const REASONS: [&str; 7] = [
    "rejected",
    "load",
    "unpublished",
    "check",
    "write",
    "reload",
    "report",
];

/// Cheap to clone.
#[derive(Clone, Debug)]
pub struct Metrics {
    updates: Family<Kind, Counter>,
    failures: Family<Reason, Counter>,
    apply: Histogram,
    /// Servers removed from the config whose connections are not done yet.
    pub draining: Gauge,
    /// HAProxy workers of earlier configs still finishing their connections.
    pub old_workers: Gauge,
    registry: Arc<Registry>,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("lbpool_agent");
        let updates = Family::<Kind, Counter>::default();
        registry.register(
            "updates",
            "Configs applied, by kind: runtime (Runtime API, no reload), reload (seamless), noop",
            updates.clone(),
        );
        let failures = Family::<Reason, Counter>::default();
        registry.register(
            "failures",
            "Configs not applied, by reason: rejected (the allowlist or haproxy -c), load (HAProxy cannot load it), unpublished (not the controller's), check, write, reload, report",
            failures.clone(),
        );
        // 1 ms … about 16 s.
        let apply = Histogram::new(exponential_buckets(0.001, 2.0, 15));
        registry.register(
            "apply_seconds",
            "Time to apply a new config, from its arrival to HAProxy serving it",
            apply.clone(),
        );
        let draining = Gauge::default();
        registry.register(
            "draining_servers",
            "Servers removed from the config whose connections are not done yet",
            draining.clone(),
        );
        let old_workers = Gauge::default();
        registry.register(
            "haproxy_old_workers",
            "HAProxy workers of earlier configs still finishing their connections (show proc)",
            old_workers.clone(),
        );
        for kind in KINDS {
            drop(updates.get_or_create(&Kind { kind }));
        }
        for reason in REASONS {
            drop(failures.get_or_create(&Reason { reason }));
        }
        Self {
            updates,
            failures,
            apply,
            draining,
            old_workers,
            registry: Arc::new(registry),
        }
    }
}

impl Metrics {
    /// A config applied: `kind` is `runtime`, `reload` or `noop`.
    pub fn applied(&self, kind: &'static str, took: Duration) {
        debug_assert!(KINDS.contains(&kind), "{kind}: add it to KINDS");
        self.updates.get_or_create(&Kind { kind }).inc();
        self.apply.observe(took.as_secs_f64());
    }

    pub fn failed(&self, reason: &'static str) {
        debug_assert!(REASONS.contains(&reason), "{reason}: add it to REASONS");
        self.failures.get_or_create(&Reason { reason }).inc();
    }

    /// How many updates of this kind so far.
    pub fn updates(&self, kind: &'static str) -> u64 {
        self.updates.get_or_create(&Kind { kind }).get()
    }

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
    fn updates_are_counted_by_kind() {
        let m = Metrics::default();
        m.applied("runtime", Duration::from_millis(3));
        m.applied("runtime", Duration::from_millis(4));
        m.applied("reload", Duration::from_millis(300));
        m.failed("rejected");
        assert_eq!(m.updates("runtime"), 2);
        let text = m.encode();
        assert!(
            text.contains(r#"lbpool_agent_updates_total{kind="reload"} 1"#),
            "{text}"
        );
        assert!(
            text.contains(r#"lbpool_agent_failures_total{reason="rejected"} 1"#),
            "{text}"
        );
        assert!(
            text.contains("lbpool_agent_apply_seconds_count 3"),
            "{text}"
        );
    }

    #[test]
    fn every_kind_and_reason_is_exported_before_it_happens() {
        let text = Metrics::default().encode();
        for kind in KINDS {
            let line = format!("lbpool_agent_updates_total{{kind=\"{kind}\"}} 0");
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
        for reason in REASONS {
            let line = format!("lbpool_agent_failures_total{{reason=\"{reason}\"}} 0");
            assert!(text.contains(&line), "{line} missing from:\n{text}");
        }
    }
}
