//! PURE: one reconcile's decisions, between its reads and its writes.
//!
//! [`crate::reconcile`] reads what a pool needs into an [`Input`] (from the
//! caches, a template ConfigMap and this process's memory of the pool),
//! [`plan`] turns it into a [`Plan`] (the ConfigMap write, the rollout or
//! publication, the Events), the reconciler carries it out, and
//! [`status()`] says what the status is after it. No API, no clock, no lock.

use std::sync::Arc;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use lbpool_crds::{LoadBalancerPool, LoadBalancerPoolStatus};
use lbpool_wire::revision;

use crate::desired::rollout::{DeploymentState, whole_second_after, whole_second_before};
use crate::desired::served::Served;
use crate::desired::{config_map, deployment, status};
use crate::memory::Verdict;
use crate::metrics::UpdateKind;
use crate::model::{InvalidPool, Model};
use crate::render::RenderedConfig;
use crate::strategy::{ConfigMapNow, ConfigMapWrite, Found, Strategy};

/// A safety net: every pool is reconciled at least this often.
pub const RESYNC: Duration = Duration::from_secs(600);
/// How often an invalid pool is looked at again even without a change (a
/// safety net: the inputs that can make it valid are all watched).
pub const INVALID_RETRY: Duration = Duration::from_secs(15);

/// What one reconcile of a valid pool read: a config ready to publish and
/// everything the decision takes into account.
#[derive(Debug)]
pub struct Input {
    pub model: Model,
    pub config: RenderedConfig,
    pub min_interval: Duration,
    pub strategy: Strategy,
    /// The pool's generated ConfigMap as cached (without its data; see
    /// [`crate::cache::slim_config_map`]).
    pub config_map: Option<Arc<ConfigMap>>,
    /// A ConfigMap of that name exists that is not among the generated
    /// ones: the pool's by its ownerReference, its label removed.
    pub config_map_unlabelled: bool,
    /// The HAProxy Deployment, if it exists (and is not another pool's).
    pub deployment: Option<Arc<Deployment>>,
    /// What HAProxy serves before any write: the Deployment's rollout, or
    /// (`InPlace`) what its agents report.
    pub served: Option<Served>,
    /// The latest rollout (`InPlace`: publication) known: the later of
    /// this process's memory and the pool's status.
    pub last_rollout: Option<Timestamp>,
    /// What this process last said of the pool's validity.
    pub verdict: Option<Verdict>,
    pub now: Timestamp,
}

/// What to write, in this order: the ConfigMap, then the Deployment, then
/// the Events.
#[derive(Clone, Debug, PartialEq)]
pub struct Plan {
    /// The ConfigMap as it should be, and how it is written.
    pub config_map: ConfigMap,
    pub config_map_write: ConfigMapWrite,
    /// What becomes of the Deployment; [`DeploymentState::Rolled`]: patch it
    /// with [`Plan::rollout_patch`].
    pub deployment: DeploymentState,
    pub rollout_patch: Option<serde_json::Value>,
    /// The note of the `RolloutTriggered` Event.
    pub rollout_note: Option<String>,
    /// The note of a `ConfigValid` Event: the pool was invalid, and is not.
    pub valid_again: Option<String>,
    /// What the update metric counts.
    pub update: UpdateKind,
    /// When to look at the pool again without a change.
    pub requeue: Duration,
}

impl Plan {
    /// The Deployment is rolled.
    pub fn rolls(&self) -> bool {
        self.rollout_patch.is_some()
    }
}

/// The decision on a valid pool; see the module docs.
///
/// The ConfigMap always holds the config the Deployment's annotation names
/// (`RollingUpdate`): a config that waits for `rollout.minInterval` is not
/// written until its rollout, so an HAProxy pod that restarts meanwhile
/// loads the config its ReplicaSet was rolled for. Nothing is sent when
/// nothing differs.
pub fn plan(pool: &LoadBalancerPool, input: &Input) -> Plan {
    let wanted = config_map::build(pool, &input.config);
    let step = input.strategy.step(&Found {
        config_map: config_map_now(input, &wanted),
        deployed: input.deployment.as_deref().map(deployment::deployed_hash),
        wanted: &input.config.hash,
        last_rollout: input.last_rollout,
        now: input.now,
        // At the precision the API stores, rounded up: the rate limit may
        // wait a little longer, never less.
        stamp: whole_second_after(input.now),
        min_interval: input.min_interval,
    });
    let rolls = step.rolls() && input.deployment.is_some();
    let name = &pool.spec.haproxy.deployment;
    let pool_name = pool.metadata.name.as_deref().unwrap_or_default();
    Plan {
        config_map: wanted,
        config_map_write: step.config_map,
        rollout_patch: rolls
            .then(|| deployment::rollout_patch(name, pool_name, &input.config.hash)),
        rollout_note: rolls.then(|| rollout_note(pool, input)),
        valid_again: valid_again(pool, input),
        update: match (rolls, step.config_map) {
            (true, _) => UpdateKind::Rolled,
            (false, ConfigMapWrite::Keep) => UpdateKind::Noop,
            (false, ConfigMapWrite::Create | ConfigMapWrite::Apply) => UpdateKind::Published,
        },
        requeue: match step.deployment {
            // Just after the interval ends; a little slack avoids waking early.
            DeploymentState::Pending { wait } => wait + Duration::from_millis(50),
            _ => RESYNC,
        },
        deployment: step.deployment,
    }
}

/// The pool's ConfigMap as cached, against the one wanted.
fn config_map_now(input: &Input, wanted: &ConfigMap) -> ConfigMapNow {
    match &input.config_map {
        Some(existing) if config_map::current(existing, wanted) => ConfigMapNow::Current,
        Some(_) => ConfigMapNow::Stale,
        None if input.config_map_unlabelled => ConfigMapNow::Stale,
        None => ConfigMapNow::Missing,
    }
}

fn rollout_note(pool: &LoadBalancerPool, input: &Input) -> String {
    let was = input
        .deployment
        .as_deref()
        .and_then(deployment::deployed_hash)
        .map_or("none", revision);
    format!(
        "Deployment {} rolls for config {} ({} backends, was {was})",
        pool.spec.haproxy.deployment,
        input.config.revision(),
        input.model.servers.len(),
    )
}

/// The note of a `ConfigValid` Event when the pool was invalid: as this
/// process last said, or (its first look at the pool) as its status says.
fn valid_again(pool: &LoadBalancerPool, input: &Input) -> Option<String> {
    let was = match &input.verdict {
        Some(Verdict::Invalid(reason, _)) => Some(*reason),
        Some(Verdict::Valid) => None,
        None => status::invalid_reason(pool.status.as_ref()).map(|(reason, _)| reason),
    }?;
    Some(format!(
        "config {} is valid again (was {was})",
        input.config.revision()
    ))
}

/// The status after the plan was carried out, `served` as it stands then
/// (after a rollout: as the patch returned the Deployment). `None`: leave
/// the status as it is for now.
pub fn status(
    pool: &LoadBalancerPool,
    input: &Input,
    plan: &Plan,
    served: Option<&Served>,
) -> Option<LoadBalancerPoolStatus> {
    // While the new config waits, the status repeats what the ConfigMap
    // holds: taken from a cached pool that is behind the ConfigMap, it
    // would say something older. The fresh pool's watch event comes soon.
    let cached_hash = input
        .config_map
        .as_deref()
        .and_then(config_map::published_hash);
    let cached_is_behind = matches!(plan.deployment, DeploymentState::Pending { .. })
        && (plan.config_map_write != ConfigMapWrite::Keep
            || cached_hash != pool.status.as_ref().and_then(|s| s.config_hash.as_deref()));
    if cached_is_behind {
        return None;
    }
    Some(status::published(
        pool,
        &input.model,
        &input.config,
        &plan.deployment,
        served,
        input.last_rollout.map(whole_second_after),
        &Time(whole_second_before(input.now)),
    ))
}

/// Whether `invalid` was said already (by this process, or, at its first
/// look at the pool, in its status): then no Event or log line repeats it.
pub fn already_said(
    pool: &LoadBalancerPool,
    before: Option<&Verdict>,
    invalid: &InvalidPool,
) -> bool {
    match before {
        Some(Verdict::Invalid(reason, message)) => {
            *reason == invalid.reason && *message == invalid.message
        }
        Some(Verdict::Valid) => false,
        None => {
            status::invalid_reason(pool.status.as_ref())
                == Some((invalid.reason, invalid.message.as_str()))
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::conditions::reason;
    use crate::testing::{model_with_servers, pool};

    fn input(strategy: Strategy) -> Input {
        let config = RenderedConfig::new("global\n".into());
        Input {
            model: model_with_servers(2),
            config,
            min_interval: Duration::from_secs(5),
            strategy,
            config_map: None,
            config_map_unlabelled: false,
            deployment: Some(Arc::new(Deployment::default())),
            served: None,
            last_rollout: None,
            verdict: None,
            now: Timestamp::from_second(1_700_000_000).expect("time"),
        }
    }

    #[test]
    fn a_first_config_is_created_and_rolled_with_a_note() {
        let p = pool();
        let plan = plan(&p, &input(Strategy::RollingUpdate));
        assert_eq!(plan.config_map_write, ConfigMapWrite::Create);
        assert!(plan.rolls());
        assert_eq!(plan.update, UpdateKind::Rolled);
        let note = plan.rollout_note.as_deref().unwrap_or_default();
        assert!(note.contains("(2 backends, was none)"), "{note}");
        assert_eq!(plan.requeue, RESYNC);
    }

    #[test]
    fn in_place_publishes_without_a_patch() {
        let p = pool();
        let plan = plan(&p, &input(Strategy::InPlace));
        assert!(!plan.rolls());
        assert_eq!(plan.update, UpdateKind::Published);
        assert!(matches!(plan.deployment, DeploymentState::Published { .. }));
    }

    #[test]
    fn a_waiting_config_wakes_after_the_interval_and_writes_no_stale_status() {
        let p = pool();
        let mut waiting = input(Strategy::RollingUpdate);
        waiting.config_map_unlabelled = true;
        waiting.last_rollout = Some(waiting.now - jiff::SignedDuration::from_secs(2));
        let plan = plan(&p, &waiting);
        assert_eq!(plan.config_map_write, ConfigMapWrite::Keep);
        assert_eq!(plan.requeue, Duration::from_millis(3050));
        // The cached pool's status names no config, nor does the cache: in step.
        assert!(status(&p, &waiting, &plan, None).is_some());
        let mut ahead = p.clone();
        ahead.status = Some(LoadBalancerPoolStatus {
            config_hash: Some("sha256:other".into()),
            ..LoadBalancerPoolStatus::default()
        });
        assert_eq!(status(&ahead, &waiting, &plan, None), None);
    }

    #[test]
    fn valid_again_is_said_once_and_only_after_invalid() {
        let p = pool();
        let mut i = input(Strategy::RollingUpdate);
        assert_eq!(plan(&p, &i).valid_again, None);
        i.verdict = Some(Verdict::Invalid(reason::SERVICE_NOT_FOUND, "gone".into()));
        let note = plan(&p, &i).valid_again.unwrap_or_default();
        assert!(
            note.ends_with("is valid again (was ServiceNotFound)"),
            "{note}"
        );
        i.verdict = Some(Verdict::Valid);
        assert_eq!(plan(&p, &i).valid_again, None);
    }

    #[test]
    fn an_invalid_pool_is_reported_once_per_reason_and_message() {
        let p = pool();
        let gone = InvalidPool::new(reason::SERVICE_NOT_FOUND, "gone");
        assert!(!already_said(&p, None, &gone));
        let said = Verdict::Invalid(reason::SERVICE_NOT_FOUND, "gone".into());
        assert!(already_said(&p, Some(&said), &gone));
        let other = InvalidPool::new(reason::SERVICE_NOT_FOUND, "elsewhere");
        assert!(!already_said(&p, Some(&said), &other));
        assert!(!already_said(&p, Some(&Verdict::Valid), &gone));
    }
}
