//! PURE: how a new config reaches the HAProxy pods, the seam between the
//! reconciler and a reload strategy.
//!
//! The reconciler hands a strategy what it found ([`Found`]) and carries
//! out the [`Step`] it gets back: which ConfigMap write, whether to roll
//! the Deployment, what to say in the status. `RollingUpdate`, the
//! default, rolls the Deployment for every new config, at most once per
//! `rollout.minInterval`; the ConfigMap is written together with the
//! rollout, so it always holds the config the pods were rolled for.
//! `InPlace` never touches the Deployment: the ConfigMap is the message,
//! written at most once per `rollout.minInterval`, and the agent beside
//! each HAProxy applies it to the running process (see [`crate::agents`]).

use std::time::Duration;

use jiff::Timestamp;

use crate::desired::rollout::{self, DeploymentState, Rollout};

/// A reload strategy.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Strategy {
    /// A new config rolls the HAProxy Deployment (new pods load it).
    #[default]
    RollingUpdate,
    /// A new config is written to the ConfigMap; the agents apply it to the
    /// running HAProxy pods.
    InPlace,
}

impl From<lbpool_crds::ReloadStrategy> for Strategy {
    fn from(s: lbpool_crds::ReloadStrategy) -> Self {
        match s {
            lbpool_crds::ReloadStrategy::RollingUpdate => Strategy::RollingUpdate,
            lbpool_crds::ReloadStrategy::InPlace => Strategy::InPlace,
        }
    }
}

/// The pool's ConfigMap, as the caches know it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigMapNow {
    /// No ConfigMap of that name.
    Missing,
    /// This pool's, holding the wanted config.
    Current,
    /// This pool's, holding another config (or edited by hand, or without
    /// its labels).
    Stale,
}

/// What a reconcile found, for a strategy to decide on.
#[derive(Clone, Copy, Debug)]
pub struct Found<'a> {
    pub config_map: ConfigMapNow,
    /// The Deployment's pod-template hash: `None` without a Deployment,
    /// `Some(None)` for one never rolled.
    pub deployed: Option<Option<&'a str>>,
    /// The hash of the config wanted now.
    pub wanted: &'a str,
    /// The latest rollout (`InPlace`: publication) known.
    pub last_rollout: Option<Timestamp>,
    pub now: Timestamp,
    /// The time a rollout or publication now is recorded with (`now` at
    /// the precision the API stores).
    pub stamp: Timestamp,
    pub min_interval: Duration,
}

/// How the ConfigMap is written.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ConfigMapWrite {
    /// Not at all.
    Keep,
    /// Created (it is missing; a create never takes a ConfigMap that
    /// appeared meanwhile).
    Create,
    /// Server-side applied.
    Apply,
}

/// What the reconciler does, in this order: the ConfigMap, then the
/// Deployment.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Step {
    pub config_map: ConfigMapWrite,
    /// What becomes of the Deployment: [`DeploymentState::Rolled`] means
    /// patch its pod-template annotation now (a rolling update).
    pub deployment: DeploymentState,
}

impl Step {
    /// The Deployment is rolled in this step.
    pub fn rolls(&self) -> bool {
        matches!(self.deployment, DeploymentState::Rolled { .. })
    }
}

impl Strategy {
    pub fn step(self, found: &Found<'_>) -> Step {
        match self {
            Strategy::RollingUpdate => rolling_update(found),
            Strategy::InPlace => in_place(found),
        }
    }
}

fn rolling_update(f: &Found<'_>) -> Step {
    let decision = f
        .deployed
        .map(|deployed| rollout::decide(deployed, f.wanted, f.last_rollout, f.now, f.min_interval));
    let config_map = match (f.config_map, decision) {
        // HAProxy pods without a ConfigMap have nothing to load.
        (ConfigMapNow::Missing, _) => ConfigMapWrite::Create,
        // Rate-limited: the ConfigMap keeps the config the pods run.
        (_, Some(Rollout::Wait(_))) | (ConfigMapNow::Current, _) => ConfigMapWrite::Keep,
        (ConfigMapNow::Stale, _) => ConfigMapWrite::Apply,
    };
    let deployment = match decision {
        None => DeploymentState::Missing,
        Some(Rollout::UpToDate) => DeploymentState::UpToDate,
        Some(Rollout::Wait(wait)) => DeploymentState::Pending { wait },
        Some(Rollout::Now) => DeploymentState::Rolled { at: f.stamp },
    };
    Step {
        config_map,
        deployment,
    }
}

fn in_place(f: &Found<'_>) -> Step {
    let published = |config_map| Step {
        config_map,
        deployment: match f.deployed {
            None => DeploymentState::Missing,
            Some(_) => DeploymentState::Published { at: f.stamp },
        },
    };
    let unchanged = |deployment| Step {
        config_map: ConfigMapWrite::Keep,
        deployment,
    };
    match f.config_map {
        // The agents have nothing to start HAProxy with: at once.
        ConfigMapNow::Missing => published(ConfigMapWrite::Create),
        ConfigMapNow::Current => unchanged(match f.deployed {
            None => DeploymentState::Missing,
            Some(_) => DeploymentState::UpToDate,
        }),
        ConfigMapNow::Stale => {
            match rollout::decide(None, f.wanted, f.last_rollout, f.now, f.min_interval) {
                Rollout::Wait(wait) if f.deployed.is_some() => {
                    unchanged(DeploymentState::Pending { wait })
                }
                _ => published(ConfigMapWrite::Apply),
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn found<'a>(
        config_map: ConfigMapNow,
        deployed: Option<Option<&'a str>>,
        last: Option<Timestamp>,
    ) -> Found<'a> {
        Found {
            config_map,
            deployed,
            wanted: "sha256:new",
            last_rollout: last,
            now: Timestamp::from_second(1_700_000_100).expect("time"),
            stamp: Timestamp::from_second(1_700_000_100).expect("time"),
            min_interval: Duration::from_secs(5),
        }
    }

    fn step(f: Found<'_>) -> (ConfigMapWrite, bool) {
        let s = Strategy::RollingUpdate.step(&f);
        (s.config_map, s.rolls())
    }

    #[test]
    fn a_new_config_is_written_and_rolled_together() {
        use ConfigMapNow::*;
        let old = Some(Some("sha256:old"));
        assert_eq!(step(found(Stale, old, None)), (ConfigMapWrite::Apply, true));
        assert_eq!(
            step(found(Missing, Some(None), None)),
            (ConfigMapWrite::Create, true)
        );
        // Rolled 2 s ago: both wait, except a missing ConfigMap.
        let recent = Some(Timestamp::from_second(1_700_000_098).expect("time"));
        assert_eq!(
            step(found(Stale, old, recent)),
            (ConfigMapWrite::Keep, false)
        );
        assert_eq!(
            step(found(Missing, old, recent)),
            (ConfigMapWrite::Create, false)
        );
        let waiting = Strategy::RollingUpdate.step(&found(Stale, old, recent));
        assert_eq!(
            waiting.deployment,
            DeploymentState::Pending {
                wait: Duration::from_secs(3)
            }
        );
    }

    #[test]
    fn an_up_to_date_deployment_is_left_alone() {
        use ConfigMapNow::*;
        let current = Some(Some("sha256:new"));
        assert_eq!(
            step(found(Current, current, None)),
            (ConfigMapWrite::Keep, false)
        );
        // A ConfigMap edited by hand is restored, with no rollout.
        assert_eq!(
            step(found(Stale, current, None)),
            (ConfigMapWrite::Apply, false)
        );
    }

    #[test]
    fn in_place_writes_the_config_map_and_never_rolls() {
        use ConfigMapNow::*;
        let in_place = |f| {
            let s = Strategy::InPlace.step(&f);
            (s.config_map, s.rolls(), s.deployment)
        };
        let deployed = Some(Some("sha256:whatever"));
        let at = Timestamp::from_second(1_700_000_100).expect("time");
        assert_eq!(
            in_place(found(Stale, deployed, None)),
            (
                ConfigMapWrite::Apply,
                false,
                DeploymentState::Published { at }
            )
        );
        assert_eq!(
            in_place(found(Current, deployed, None)),
            (ConfigMapWrite::Keep, false, DeploymentState::UpToDate)
        );
        // Published 2 s ago: the next one waits for the interval…
        let recent = Some(Timestamp::from_second(1_700_000_098).expect("time"));
        assert_eq!(
            in_place(found(Stale, deployed, recent)),
            (
                ConfigMapWrite::Keep,
                false,
                DeploymentState::Pending {
                    wait: Duration::from_secs(3)
                }
            )
        );
        // …but a missing ConfigMap does not.
        assert_eq!(
            in_place(found(Missing, deployed, recent)).0,
            ConfigMapWrite::Create
        );
        // Without a Deployment there is nothing to wait for.
        assert_eq!(
            in_place(found(Stale, None, recent)),
            (ConfigMapWrite::Apply, false, DeploymentState::Missing)
        );
    }

    #[test]
    fn without_a_deployment_only_the_config_map_is_written() {
        use ConfigMapNow::*;
        let s = Strategy::RollingUpdate.step(&found(Stale, None, None));
        assert_eq!(
            (s.config_map, s.rolls(), s.deployment),
            (ConfigMapWrite::Apply, false, DeploymentState::Missing)
        );
    }
}
