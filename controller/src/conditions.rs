//! Condition types and reasons of `LoadBalancerPool.status.conditions`, and
//! the merge that keeps `lastTransitionTime` stable while a status holds.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};

/// Condition types.
pub mod kind {
    /// The published config serves the pool's current backends.
    pub const READY: &str = "Ready";
    /// The spec, Service, template and rendered config are valid.
    pub const CONFIG_VALID: &str = "ConfigValid";
    /// A changed config waits for `rollout.minInterval` to pass.
    pub const ROLLOUT_PENDING: &str = "RolloutPending";
    /// The HAProxy the data plane runs is the version lbpool writes and
    /// checks configs for (absent while unknown).
    pub const HAPROXY_VERSION: &str = "HAProxyVersion";
}

/// Condition reasons (CamelCase, as Kubernetes expects).
pub mod reason {
    pub const RENDERED: &str = "Rendered";
    pub const INVALID_SPEC: &str = "InvalidSpec";
    pub const SERVICE_NOT_FOUND: &str = "ServiceNotFound";
    pub const PORT_NOT_FOUND: &str = "PortNotFound";
    pub const TEMPLATE_NOT_FOUND: &str = "TemplateNotFound";
    pub const TEMPLATE_INVALID: &str = "TemplateInvalid";
    /// A user template would take more work to render than lbpool allows.
    pub const TEMPLATE_TOO_SLOW: &str = "TemplateTooSlow";
    /// The rendered config is larger than a ConfigMap holds.
    pub const CONFIG_TOO_LARGE: &str = "ConfigTooLarge";
    /// The rendered config uses something the allowlist does not admit
    /// (a file, Lua, a program, an environment variable …): `haproxy -c`
    /// never saw it.
    pub const CONFIG_REFUSED: &str = "ConfigRefused";
    /// `stats.authSecret` is not the Secret the HAProxy pods take their
    /// stats credentials from.
    pub const STATS_SECRET_NOT_USED: &str = "StatsSecretNotUsed";
    pub const HAPROXY_REJECTED: &str = "HAProxyRejected";
    /// The ConfigMap to write exists and is not this pool's.
    pub const CONFIG_MAP_CONFLICT: &str = "ConfigMapConflict";
    /// The HAProxy Deployment is rolled by another pool.
    pub const DEPLOYMENT_CONFLICT: &str = "DeploymentConflict";
    pub const SERVING: &str = "Serving";
    /// The published config is not yet what every HAProxy pod runs.
    pub const ROLLING_OUT: &str = "RollingOut";
    /// `RollingUpdate`: the HAProxy Deployment's rollout stopped making
    /// progress (its `Progressing=False` condition, e.g.
    /// `ProgressDeadlineExceeded`: new pods that cannot start).
    pub const ROLLOUT_STUCK: &str = "RolloutStuck";
    /// `InPlace`: an HAProxy pod's agent refused the published config (its
    /// `haproxy -c` rejected it); the pod keeps serving its last config.
    pub const AGENT_REJECTED: &str = "AgentRejected";
    pub const NO_READY_BACKENDS: &str = "NoReadyBackends";
    pub const DEPLOYMENT_NOT_FOUND: &str = "DeploymentNotFound";
    pub const CONFIG_INVALID: &str = "ConfigInvalid";
    pub const UP_TO_DATE: &str = "UpToDate";
    pub const RATE_LIMITED: &str = "RateLimited";
    /// The data plane runs the HAProxy version lbpool writes configs for.
    pub const SUPPORTED: &str = "Supported";
    /// An agent reports, or an image tag names, another HAProxy version.
    pub const VERSION_MISMATCH: &str = "VersionMismatch";
}

/// A condition to set; [`merge`] fills in the bookkeeping fields.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: &'static str,
    pub status: bool,
    pub reason: &'static str,
    pub message: String,
}

impl Desired {
    pub fn new(
        type_: &'static str,
        status: bool,
        reason: &'static str,
        message: impl Into<String>,
    ) -> Self {
        Self {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// The new condition list: `lastTransitionTime` moves only when a
/// condition's status changes, so an unchanged pool writes an unchanged status.
pub fn merge(
    existing: &[Condition],
    desired: &[Desired],
    generation: Option<i64>,
    now: &Time,
) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let status = if d.status { "True" } else { "False" };
            let since = existing
                .iter()
                .find(|c| c.type_ == d.type_ && c.status == status)
                .map_or_else(|| now.clone(), |c| c.last_transition_time.clone());
            Condition {
                type_: d.type_.to_owned(),
                status: status.to_owned(),
                reason: d.reason.to_owned(),
                // The API limits messages to 32 KiB.
                message: truncate(&d.message, 4096),
                observed_generation: generation,
                last_transition_time: since,
            }
        })
        .collect()
}

fn truncate(s: &str, max: usize) -> String {
    if s.len() <= max {
        return s.to_owned();
    }
    let mut end = max;
    while !s.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &s[..end])
}

#[cfg(test)]
mod tests {
    use super::*;
    use jiff::Timestamp;

    fn at(secs: i64) -> Time {
        Time(Timestamp::from_second(secs).unwrap())
    }

    #[test]
    fn transition_time_moves_only_when_status_flips() {
        let first = merge(
            &[],
            &[Desired::new(
                kind::READY,
                true,
                reason::SERVING,
                "3 backends",
            )],
            Some(1),
            &at(10),
        );
        let same = merge(
            &first,
            &[Desired::new(
                kind::READY,
                true,
                reason::SERVING,
                "4 backends",
            )],
            Some(2),
            &at(20),
        );
        assert_eq!(same[0].last_transition_time, at(10));
        assert_eq!(same[0].message, "4 backends");
        let flipped = merge(
            &same,
            &[Desired::new(
                kind::READY,
                false,
                reason::NO_READY_BACKENDS,
                "",
            )],
            Some(2),
            &at(30),
        );
        assert_eq!(flipped[0].last_transition_time, at(30));
        assert_eq!(flipped[0].status, "False");
    }

    #[test]
    fn long_messages_are_cut_on_a_char_boundary() {
        let long = "é".repeat(5000);
        let c = merge(
            &[],
            &[Desired::new(
                kind::READY,
                false,
                reason::CONFIG_INVALID,
                long,
            )],
            None,
            &at(0),
        );
        assert!(c[0].message.len() <= 4096 + "…".len());
    }
}
