//! PURE: what the reconciler writes. The ConfigMap, the Deployment annotation
//! patch, whether to roll now, and the status.

use std::collections::BTreeMap;
use std::time::Duration;

use jiff::Timestamp;
use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, Time};
use kube::Resource;
use lbpool_crds::{
    BackendStatus, HaproxyStatus, LoadBalancerPool, LoadBalancerPoolStatus, MAX_STATUS_BACKENDS,
    ReloadStrategy,
};
use serde_json::json;

use crate::conditions::{self, Desired, kind, reason};
use crate::model::{InvalidPool, Model};
use lbpool_wire::{
    CONFIG_HASH_ANNOTATION, CONFIG_KEY, FIELD_MANAGER, MANAGED_BY_LABEL, POOL_CLAIM_ANNOTATION,
    POOL_LABEL, STATS_ENV, revision,
};

use crate::render::RenderedConfig;

/// Where a container of the HAProxy Deployment takes one stats credential
/// from (`STATS_USERNAME` or `STATS_PASSWORD`).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct StatsCredential {
    pub container: String,
    pub variable: String,
    /// The Secret it comes from; `None` when it is not from a Secret.
    pub secret: Option<String>,
}

/// The stats credentials the Deployment's containers take, in order.
pub fn stats_credentials(deployment: &Deployment) -> Vec<StatsCredential> {
    let spec = deployment.spec.template.spec.as_ref();
    spec.into_iter()
        .flat_map(|s| {
            s.containers
                .iter()
                .chain(s.init_containers.iter().flatten())
        })
        .flat_map(|c| {
            c.env
                .iter()
                .flatten()
                .filter(|e| STATS_ENV.contains(&e.name.as_str()))
                .map(|e| StatsCredential {
                    container: c.name.clone(),
                    variable: e.name.clone(),
                    secret: e
                        .value_from
                        .as_ref()
                        .and_then(|v| v.secret_key_ref.as_ref())
                        .map(|r| r.name.clone()),
                })
        })
        .collect()
}

/// `spec.stats.authSecret` names the Secret the HAProxy pods really take
/// their stats credentials from: some container takes both from it, and
/// none takes one from anywhere else. The controller never reads the
/// Secret; it checks that the Deployment refers to it.
pub fn stats_secret_used(
    pool: &LoadBalancerPool,
    deployment: &Deployment,
) -> Result<(), InvalidPool> {
    let Some(wanted) = pool
        .spec
        .stats
        .as_ref()
        .and_then(|s| s.auth_secret.as_deref())
    else {
        return Ok(());
    };
    let deployment_name = &pool.spec.haproxy.deployment;
    let found = stats_credentials(deployment);
    let invalid = |what: String| {
        InvalidPool::new(
            reason::STATS_SECRET_NOT_USED,
            format!(
                "spec.stats.authSecret: {what}; set both variables from Secret {wanted:?} (keys username, password) in the Deployment's HAProxy container"
            ),
        )
    };
    if let Some(other) = found.iter().find(|c| c.secret.as_deref() != Some(wanted)) {
        return Err(invalid(format!(
            "container {} of Deployment {deployment_name} takes {} from {}",
            other.container,
            other.variable,
            other
                .secret
                .as_deref()
                .map_or("no Secret".to_owned(), |s| format!("Secret {s:?}"))
        )));
    }
    let both = found.iter().any(|c| {
        STATS_ENV.iter().all(|v| {
            found
                .iter()
                .any(|o| o.container == c.container && o.variable == *v)
        })
    });
    if both {
        Ok(())
    } else {
        Err(invalid(format!(
            "no container of Deployment {deployment_name} takes STATS_USERNAME and STATS_PASSWORD from Secret {wanted:?}"
        )))
    }
}

/// The ConfigMap holding the pool's haproxy.cfg, owned by the pool so that
/// deleting the pool garbage-collects it.
pub fn config_map(pool: &LoadBalancerPool, config: &RenderedConfig) -> ConfigMap {
    let pool_name = pool.metadata.name.clone().unwrap_or_default();
    ConfigMap {
        metadata: ObjectMeta {
            name: Some(pool.config_map_name()),
            namespace: pool.metadata.namespace.clone(),
            labels: Some(BTreeMap::from([
                (MANAGED_BY_LABEL.to_owned(), FIELD_MANAGER.to_owned()),
                (POOL_LABEL.to_owned(), pool_name),
            ])),
            annotations: Some(BTreeMap::from([(
                CONFIG_HASH_ANNOTATION.to_owned(),
                config.hash.clone(),
            )])),
            owner_references: pool.controller_owner_ref(&()).map(|r| vec![r]),
            ..ObjectMeta::default()
        },
        data: Some(BTreeMap::from([(
            CONFIG_KEY.to_owned(),
            config.text.clone(),
        )])),
        ..ConfigMap::default()
    }
}

/// Whether `existing`, a generated ConfigMap as the cache keeps it
/// ([`crate::cache::slim_config_map`]: its hash annotation kept only if its
/// data is the config the hash names), already holds what [`config_map`]
/// would write: the same hash, the same labels. Then nothing is sent. (The
/// owner was checked by [`config_map_claim`].)
pub fn config_map_current(existing: &ConfigMap, desired: &ConfigMap) -> bool {
    let within = |want: &Option<BTreeMap<String, String>>,
                  have: &Option<BTreeMap<String, String>>| {
        want.iter()
            .flatten()
            .all(|(k, v)| have.as_ref().and_then(|h| h.get(k)) == Some(v))
    };
    within(&desired.metadata.labels, &existing.metadata.labels)
        && within(
            &desired.metadata.annotations,
            &existing.metadata.annotations,
        )
}

/// The hash of the config a ConfigMap holds, from its annotation.
pub fn published_hash(cm: &ConfigMap) -> Option<&str> {
    cm.metadata
        .annotations
        .as_ref()?
        .get(CONFIG_HASH_ANNOTATION)
        .map(String::as_str)
}

/// Whether the pool may write its ConfigMap, given what exists under that
/// name, by its metadata (`None`: nothing, it will be created). lbpool writes only a ConfigMap
/// it created for this pool, which carries the pool's controller
/// ownerReference (by UID). Anything else is a conflict, named, and left
/// alone: a user's ConfigMap would otherwise be taken over and, with the
/// ownerReference, garbage-collected along with the pool; another pool's
/// would flap between two configs. The first claimant keeps it.
pub fn config_map_claim(
    pool: &LoadBalancerPool,
    existing: Option<&ObjectMeta>,
) -> Result<(), InvalidPool> {
    let Some(meta) = existing else {
        return Ok(());
    };
    let name = pool.config_map_name();
    let controller = meta
        .owner_references
        .iter()
        .flatten()
        .find(|r| r.controller == Some(true));
    match controller {
        Some(owner) if pool.metadata.uid.as_deref() == Some(owner.uid.as_str()) => Ok(()),
        Some(owner) => Err(InvalidPool::new(
            reason::CONFIG_MAP_CONFLICT,
            format!(
                "spec.haproxy.configMap: ConfigMap {name} belongs to {} {} (uid {}); choose another name",
                owner.kind, owner.name, owner.uid
            ),
        )),
        None => Err(InvalidPool::new(
            reason::CONFIG_MAP_CONFLICT,
            format!(
                "spec.haproxy.configMap: ConfigMap {name} exists and was not created by lbpool for this pool; \
                 lbpool leaves it untouched: choose another name, or delete it to let lbpool create its own"
            ),
        )),
    }
}

/// Who rolls a Deployment, by its claim annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeploymentClaim {
    /// This pool, or nobody yet: this pool may roll it (and claims it then).
    Free,
    /// The pool of this name (in the same namespace) claimed it first.
    Pool(String),
}

/// The claim on `deployment`, seen from `pool`.
pub fn deployment_claim(pool: &LoadBalancerPool, deployment: &Deployment) -> DeploymentClaim {
    let claimant = deployment
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(POOL_CLAIM_ANNOTATION));
    match claimant {
        Some(other) if Some(other) != pool.metadata.name.as_ref() => {
            DeploymentClaim::Pool(other.clone())
        }
        _ => DeploymentClaim::Free,
    }
}

/// The conflict a pool reports when another, existing pool rolls its Deployment.
pub fn deployment_conflict(pool: &LoadBalancerPool, other: &str) -> InvalidPool {
    InvalidPool::new(
        reason::DEPLOYMENT_CONFLICT,
        format!(
            "spec.haproxy.deployment: Deployment {} is rolled by LoadBalancerPool {other} (annotation {POOL_CLAIM_ANNOTATION}); \
             one Deployment serves one pool",
            pool.spec.haproxy.deployment
        ),
    )
}

/// A server-side apply patch that sets only the pod-template annotation,
/// and the claim of `pool` on the Deployment.
pub fn deployment_patch(name: &str, pool: &str, hash: &str) -> serde_json::Value {
    json!({
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": { "name": name, "annotations": { POOL_CLAIM_ANNOTATION: pool } },
        "spec": { "template": { "metadata": { "annotations": { CONFIG_HASH_ANNOTATION: hash } } } }
    })
}

/// The hash the Deployment's pods were last rolled for.
pub fn deployed_hash(deployment: &Deployment) -> Option<&str> {
    deployment
        .spec
        .template
        .metadata
        .as_ref()?
        .annotations
        .as_ref()?
        .get(CONFIG_HASH_ANNOTATION)
        .map(String::as_str)
}

/// What the HAProxy Deployment serves, read from its spec and status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Served {
    pub status: HaproxyStatus,
    /// The hash its pod template carries.
    pub hash: Option<String>,
    /// Its rollout of that template is complete: every pod runs it and is
    /// ready, no pod of an older template is left. `InPlace`: every ready
    /// pod's agent serves the wanted config.
    pub complete: bool,
    /// `InPlace`: a pod whose agent refused the wanted config, and why.
    pub refused: Option<(String, String)>,
}

/// Reads [`Served`] off a Deployment (after this reconcile's patch, if any).
pub fn served(deployment: &Deployment) -> Served {
    let want = deployment.spec.replicas.unwrap_or(1);
    let st = deployment.status.clone().unwrap_or_default();
    let generation = deployment.metadata.generation.unwrap_or_default();
    let (updated, ready) = (
        st.updated_replicas.unwrap_or_default(),
        st.ready_replicas.unwrap_or_default(),
    );
    let hash = deployed_hash(deployment).map(str::to_owned);
    Served {
        complete: st.observed_generation.unwrap_or_default() >= generation
            && updated == want
            && ready == want
            && st.replicas.unwrap_or_default() == want,
        refused: None,
        status: HaproxyStatus {
            revision: hash.as_deref().map(|h| revision(h).to_owned()),
            replicas: want,
            updated_replicas: updated,
            ready_replicas: ready,
        },
        hash,
    }
}

/// Whether the HAProxy Deployment is rolled in this reconcile.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Rollout {
    /// The Deployment already runs this config.
    UpToDate,
    /// Patch the annotation now.
    Now,
    /// The last rollout was too recent; try again after this long.
    Wait(Duration),
}

/// At most one rollout per `min_interval`; a change inside it waits for its end.
pub fn decide_rollout(
    deployed: Option<&str>,
    wanted: &str,
    last_rollout: Option<Timestamp>,
    now: Timestamp,
    min_interval: Duration,
) -> Rollout {
    if deployed == Some(wanted) {
        return Rollout::UpToDate;
    }
    let Some(last) = last_rollout else {
        return Rollout::Now;
    };
    // A clock that went backwards counts as "just rolled", never as "long ago".
    let elapsed = now.duration_since(last).unsigned_abs();
    let elapsed = if now < last { Duration::ZERO } else { elapsed };
    match min_interval.checked_sub(elapsed) {
        Some(left) if !left.is_zero() => Rollout::Wait(left),
        _ => Rollout::Now,
    }
}

/// What happened to the Deployment in this reconcile, for the status.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeploymentState {
    Missing,
    Rolled { at: Timestamp },
    UpToDate,
    Pending { wait: Duration },
}

/// Status of a pool whose config was published. `last_rollout` is the latest
/// rollout known, which may be newer than the (cached) pool's status.
pub fn published_status(
    pool: &LoadBalancerPool,
    model: &Model,
    config: &RenderedConfig,
    deployment: &DeploymentState,
    served: Option<&Served>,
    last_rollout: Option<Timestamp>,
    now: &Time,
) -> LoadBalancerPoolStatus {
    let previous = pool.status.clone().unwrap_or_default();
    // Draining servers finish sticky sessions; they take no new ones.
    let taking = model.servers.iter().filter(|s| !s.draining).count();
    let ready = i32::try_from(taking).unwrap_or(i32::MAX);
    let last_rollout_time = match deployment {
        DeploymentState::Rolled { at } => Some(Time(*at)),
        _ => last_rollout.map(Time),
    };
    let deployment_name = &pool.spec.haproxy.deployment;
    let ready_condition = match deployment {
        DeploymentState::Missing => Desired::new(
            kind::READY,
            false,
            reason::DEPLOYMENT_NOT_FOUND,
            format!(
                "spec.haproxy.deployment: Deployment {deployment_name} not found; the config is published in ConfigMap {}",
                pool.config_map_name()
            ),
        ),
        _ if ready == 0 => Desired::new(
            kind::READY,
            false,
            reason::NO_READY_BACKENDS,
            format!(
                "Service {} has no ready endpoints",
                pool.spec.backend.service
            ),
        ),
        // Ready means HAProxy serves this config, not that it was written.
        _ => match served {
            Some(Served {
                refused: Some((pod, message)),
                status,
                ..
            }) => Desired::new(
                kind::READY,
                false,
                reason::AGENT_REJECTED,
                format!(
                    "HAProxy pod {pod} refused config {}, it keeps serving config {}: {message}",
                    config.revision(),
                    status.revision.as_deref().unwrap_or("none")
                ),
            ),
            Some(sv) if sv.complete && sv.hash.as_deref() == Some(config.hash.as_str()) => {
                Desired::new(
                    kind::READY,
                    true,
                    reason::SERVING,
                    format!(
                        "{ready} ready backends; {} HAProxy pods serve config {}",
                        sv.status.ready_replicas,
                        config.revision()
                    ),
                )
            }
            _ => Desired::new(
                kind::READY,
                false,
                reason::ROLLING_OUT,
                rolling_out_message(
                    pool.spec.reload.strategy,
                    deployment_name,
                    config,
                    served,
                    deployment,
                ),
            ),
        },
    };
    let rollout_condition = match deployment {
        DeploymentState::Pending { wait } => Desired::new(
            kind::ROLLOUT_PENDING,
            true,
            reason::RATE_LIMITED,
            format!(
                "config {} waits {:.1}s for rollout.minInterval {}",
                config.revision(),
                wait.as_secs_f64(),
                pool.spec.rollout.min_interval
            ),
        ),
        _ => Desired::new(kind::ROLLOUT_PENDING, false, reason::UP_TO_DATE, ""),
    };
    let desired = [
        ready_condition,
        Desired::new(
            kind::CONFIG_VALID,
            true,
            reason::RENDERED,
            format!("config {} accepted by haproxy -c", config.revision()),
        ),
        rollout_condition,
    ];
    let conditions = conditions::merge(
        &previous.conditions,
        &desired,
        pool.metadata.generation,
        now,
    );
    let haproxy = served.map(|s| s.status.clone());
    if let DeploymentState::Pending { .. } = deployment {
        // The new config waits, unpublished: the ConfigMap still holds the
        // config the Deployment runs, and so does the status.
        return LoadBalancerPoolStatus {
            observed_generation: pool.metadata.generation,
            last_rollout_time,
            haproxy,
            conditions,
            ..previous
        };
    }
    LoadBalancerPoolStatus {
        observed_generation: pool.metadata.generation,
        backends: model
            .servers
            .iter()
            .take(MAX_STATUS_BACKENDS)
            .map(|s| BackendStatus {
                name: s.name.clone(),
                address: s.address.clone(),
                port: i32::from(s.port),
                zone: s.zone.clone(),
            })
            .collect(),
        ready_backends: ready,
        config_map: Some(pool.config_map_name()),
        config_hash: Some(config.hash.clone()),
        config_revision: Some(revision(&config.hash).to_owned()),
        last_rollout_time,
        haproxy,
        conditions,
    }
}

/// Why `Ready` is not true yet: what waits, and how far HAProxy is.
fn rolling_out_message(
    strategy: ReloadStrategy,
    deployment: &str,
    config: &RenderedConfig,
    served: Option<&Served>,
    state: &DeploymentState,
) -> String {
    let Some(sv) = served else {
        return format!("Deployment {deployment} is not known yet");
    };
    let st = &sv.status;
    let (wanted, running) = (config.revision(), st.revision.as_deref().unwrap_or("none"));
    match (strategy, state) {
        (ReloadStrategy::RollingUpdate, DeploymentState::Pending { .. }) => format!(
            "config {wanted} waits for rollout.minInterval; Deployment {deployment} and ConfigMap keep config {running} until then"
        ),
        (ReloadStrategy::InPlace, DeploymentState::Pending { .. }) => format!(
            "config {wanted} waits for rollout.minInterval; the ConfigMap keeps config {running} until then"
        ),
        (ReloadStrategy::RollingUpdate, _) if sv.hash.as_deref() != Some(config.hash.as_str()) => {
            format!(
                "config {wanted} is published; Deployment {deployment} still runs config {running} until its rollout"
            )
        }
        (ReloadStrategy::RollingUpdate, _) => format!(
            "Deployment {deployment} rolls out config {wanted}: {}/{} pods updated, {} ready",
            st.updated_replicas, st.replicas, st.ready_replicas
        ),
        (ReloadStrategy::InPlace, _) if st.ready_replicas == 0 => format!(
            "no ready HAProxy pod of Deployment {deployment} reports through an lbpool agent yet; reload.strategy InPlace needs the agent beside HAProxy (manifests/components/in-place)"
        ),
        (ReloadStrategy::InPlace, _) => format!(
            "config {wanted} is published; {}/{} HAProxy pods serve it ({} ready)",
            st.updated_replicas, st.replicas, st.ready_replicas
        ),
    }
}

/// Status of a pool that cannot be served: what was published before stays
/// described as it is, the conditions say why nothing new was.
pub fn invalid_status(
    pool: &LoadBalancerPool,
    invalid: &InvalidPool,
    now: &Time,
) -> LoadBalancerPoolStatus {
    let previous = pool.status.clone().unwrap_or_default();
    let kept = match &previous.config_hash {
        Some(hash) => format!("; the last good config {} stays published", revision(hash)),
        None => String::new(),
    };
    let desired = [
        Desired::new(
            kind::READY,
            false,
            reason::CONFIG_INVALID,
            format!("{}{kept}", invalid.message),
        ),
        Desired::new(
            kind::CONFIG_VALID,
            false,
            invalid.reason,
            invalid.message.clone(),
        ),
        Desired::new(kind::ROLLOUT_PENDING, false, reason::UP_TO_DATE, ""),
    ];
    LoadBalancerPoolStatus {
        observed_generation: pool.metadata.generation,
        conditions: conditions::merge(
            &previous.conditions,
            &desired,
            pool.metadata.generation,
            now,
        ),
        ..previous
    }
}

/// The `ConfigValid=False` reason and message of a status, if any.
pub fn invalid_reason(status: Option<&LoadBalancerPoolStatus>) -> Option<(&str, &str)> {
    status?
        .conditions
        .iter()
        .find(|c| c.type_ == kind::CONFIG_VALID && c.status == "False")
        .map(|c| (c.reason.as_str(), c.message.as_str()))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{model_with_servers, pool};

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
    }

    const FIVE: Duration = Duration::from_secs(5);

    /// A Deployment whose container `haproxy` takes each `(variable, secret)`.
    fn deployment_with_env(env: &[(&str, Option<&str>)]) -> Deployment {
        let env: Vec<_> = env
            .iter()
            .map(|(name, secret)| match secret {
                Some(s) => {
                    json!({"name": name, "valueFrom": {"secretKeyRef": {"name": s, "key": "k"}}})
                }
                None => json!({"name": name, "value": "plain"}),
            })
            .collect();
        serde_json::from_value(json!({
            "metadata": {"name": "haproxy"},
            "spec": {"selector": {}, "template": {"spec": {"containers": [
                {"name": "haproxy", "env": env},
                {"name": "other", "env": [{"name": "UNRELATED", "value": "x"}]},
            ]}}},
        }))
        .expect("a Deployment")
    }

    #[test]
    fn the_stats_secret_must_be_the_one_the_pods_use() {
        let mut p = pool();
        let used = deployment_with_env(&[
            ("STATS_USERNAME", Some("auth")),
            ("STATS_PASSWORD", Some("auth")),
        ]);
        // No auth asked for: nothing to check.
        assert_eq!(stats_secret_used(&p, &used), Ok(()));
        p.spec.stats = Some(lbpool_crds::Stats {
            port: 1936,
            uri: "/".into(),
            auth_secret: Some("auth".into()),
        });
        assert_eq!(stats_secret_used(&p, &used), Ok(()));
        // The cache keeps what the check reads.
        let mut slim = used.clone();
        crate::cache::slim_deployment(&mut slim);
        assert_eq!(stats_credentials(&slim), stats_credentials(&used));
        assert_eq!(stats_credentials(&slim).len(), 2);

        for (env, says) in [
            (
                vec![
                    ("STATS_USERNAME", Some("other")),
                    ("STATS_PASSWORD", Some("auth")),
                ],
                "takes STATS_USERNAME from Secret \"other\"",
            ),
            (
                vec![("STATS_USERNAME", Some("auth")), ("STATS_PASSWORD", None)],
                "takes STATS_PASSWORD from no Secret",
            ),
            (
                vec![("STATS_PASSWORD", Some("auth"))],
                "no container of Deployment haproxy takes STATS_USERNAME and STATS_PASSWORD",
            ),
            (vec![], "no container"),
        ] {
            let err = stats_secret_used(&p, &deployment_with_env(&env)).unwrap_err();
            assert_eq!(err.reason, reason::STATS_SECRET_NOT_USED);
            assert!(err.message.contains(says), "{env:?}: {}", err.message);
            assert!(
                err.message.starts_with("spec.stats.authSecret: "),
                "{}",
                err.message
            );
        }
    }

    #[test]
    fn same_hash_never_rolls() {
        assert_eq!(
            decide_rollout(Some("h"), "h", None, ts(100), FIVE),
            Rollout::UpToDate
        );
        assert_eq!(
            decide_rollout(Some("h"), "h", Some(ts(99)), ts(100), FIVE),
            Rollout::UpToDate
        );
    }

    #[test]
    fn first_rollout_is_immediate() {
        assert_eq!(decide_rollout(None, "h", None, ts(100), FIVE), Rollout::Now);
        assert_eq!(
            decide_rollout(Some("old"), "h", None, ts(100), FIVE),
            Rollout::Now
        );
    }

    #[test]
    fn a_change_inside_the_interval_waits_for_its_end() {
        assert_eq!(
            decide_rollout(Some("old"), "h", Some(ts(98)), ts(100), FIVE),
            Rollout::Wait(Duration::from_secs(3))
        );
        assert_eq!(
            decide_rollout(Some("old"), "h", Some(ts(95)), ts(100), FIVE),
            Rollout::Now
        );
        assert_eq!(
            decide_rollout(Some("old"), "h", Some(ts(10)), ts(100), FIVE),
            Rollout::Now
        );
    }

    #[test]
    fn a_clock_behind_the_last_rollout_waits_the_full_interval() {
        assert_eq!(
            decide_rollout(Some("old"), "h", Some(ts(200)), ts(100), FIVE),
            Rollout::Wait(FIVE)
        );
    }

    #[test]
    fn a_burst_of_changes_rolls_at_most_once_per_interval() {
        // One change every 100 ms for 10 s, each with a new hash.
        let mut last = None;
        let mut deployed = String::from("h0");
        let mut rollouts = 0;
        for tick in 0..100i64 {
            let now = Timestamp::from_millisecond(1_000_000 + tick * 100).unwrap();
            let wanted = format!("h{}", tick + 1);
            if decide_rollout(Some(&deployed), &wanted, last, now, FIVE) == Rollout::Now {
                rollouts += 1;
                last = Some(now);
                deployed = wanted;
            }
        }
        assert_eq!(rollouts, 2, "10 s of changes with a 5 s interval");
    }

    #[test]
    fn only_a_config_map_made_for_this_pool_may_be_written() {
        let p = pool();
        let config = crate::render::Renderer::new()
            .render(crate::render::Template::BuiltIn, &model_with_servers(1))
            .expect("render");
        assert!(config_map_claim(&p, None).is_ok(), "absent: created");
        let ours = config_map(&p, &config);
        assert!(
            config_map_claim(&p, Some(&ours.metadata)).is_ok(),
            "made for this pool"
        );

        let mut users = ConfigMap::default();
        users.metadata.name = Some(p.config_map_name());
        let e = config_map_claim(&p, Some(&users.metadata)).expect_err("a user's");
        assert_eq!(e.reason, reason::CONFIG_MAP_CONFLICT);
        assert!(
            e.message.starts_with("spec.haproxy.configMap:"),
            "{}",
            e.message
        );

        let mut other = pool();
        other.metadata.name = Some("other".into());
        other.metadata.uid = Some("another-uid".into());
        let theirs = config_map(&other, &config);
        let e = config_map_claim(&p, Some(&theirs.metadata)).expect_err("another pool's");
        assert!(
            e.message
                .contains("LoadBalancerPool other (uid another-uid)"),
            "{}",
            e.message
        );
        // The same name recreated: the old pool's ConfigMap awaits garbage
        // collection and is not taken over.
        let mut reborn = pool();
        reborn.metadata.uid = Some("new-uid".into());
        assert!(config_map_claim(&reborn, Some(&ours.metadata)).is_err());
    }

    #[test]
    fn an_identical_config_map_is_not_written_again() {
        let p = pool();
        let text = "global\n";
        let config = RenderedConfig {
            text: text.into(),
            hash: lbpool_wire::config_hash(text),
        };
        let want = config_map(&p, &config);
        let mut have = want.clone();
        // What the API server adds is not a difference.
        have.metadata.resource_version = Some("42".into());
        have.metadata
            .labels
            .get_or_insert_default()
            .insert("team".into(), "web".into());
        crate::cache::slim_config_map(&mut have);
        assert!(config_map_current(&have, &want));
        let mut edited = want.clone();
        edited.data = Some(BTreeMap::from([(CONFIG_KEY.into(), "global\n#x\n".into())]));
        crate::cache::slim_config_map(&mut edited);
        assert!(
            !config_map_current(&edited, &want),
            "an edited config is restored"
        );
        let mut relabelled = have.clone();
        relabelled.metadata.labels = None;
        assert!(
            !config_map_current(&relabelled, &want),
            "lost labels are restored"
        );
    }

    #[test]
    fn config_map_is_owned_by_the_pool_and_carries_the_hash() {
        let p = pool();
        let rendered = RenderedConfig {
            text: "global\n".into(),
            hash: "sha256:abc".into(),
        };
        let cm = config_map(&p, &rendered);
        assert_eq!(cm.metadata.name.as_deref(), Some("webapp-haproxy"));
        let owner = &cm.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!(owner.kind, "LoadBalancerPool");
        assert_eq!(owner.controller, Some(true));
        assert_eq!(cm.data.unwrap()[CONFIG_KEY], "global\n");
        assert_eq!(
            cm.metadata.annotations.unwrap()[CONFIG_HASH_ANNOTATION],
            "sha256:abc"
        );
    }

    /// A Deployment of 2 pods whose rollout of `hash` is complete.
    fn complete(hash: &str) -> Served {
        let mut d = Deployment::default();
        d.spec.replicas = Some(2);
        d.metadata.generation = Some(4);
        d.spec.template.metadata = Some(ObjectMeta {
            annotations: Some(BTreeMap::from([(
                CONFIG_HASH_ANNOTATION.to_owned(),
                hash.to_owned(),
            )])),
            ..ObjectMeta::default()
        });
        d.status = Some(k8s_openapi::api::apps::v1::DeploymentStatus {
            observed_generation: Some(4),
            replicas: Some(2),
            updated_replicas: Some(2),
            ready_replicas: Some(2),
            ..Default::default()
        });
        served(&d)
    }

    fn ready_of(s: &LoadBalancerPoolStatus) -> (String, String, String) {
        let c = s
            .conditions
            .iter()
            .find(|c| c.type_ == kind::READY)
            .expect("Ready");
        (c.status.clone(), c.reason.clone(), c.message.clone())
    }

    #[test]
    fn ready_means_every_haproxy_pod_serves_the_published_config() {
        let p = pool();
        let rendered = RenderedConfig {
            text: "x".into(),
            hash: "sha256:aaaaaaaaaaaa".into(),
        };
        let status = |state: &DeploymentState, served: &Served| {
            published_status(
                &p,
                &model_with_servers(3),
                &rendered,
                state,
                Some(served),
                None,
                &Time(ts(9)),
            )
        };
        // Served: Ready, and the status says what runs.
        let done = status(&DeploymentState::UpToDate, &complete(&rendered.hash));
        assert_eq!(ready_of(&done).0, "True");
        assert_eq!(
            done.haproxy.as_ref().and_then(|h| h.revision.as_deref()),
            Some("aaaaaaaaaa")
        );

        // Published but waiting for rollout.minInterval: the pods run the old one.
        let old = complete("sha256:bbbbbbbbbbbb");
        let (s, r, m) = ready_of(&status(
            &DeploymentState::Pending {
                wait: Duration::from_secs(3),
            },
            &old,
        ));
        assert_eq!((s.as_str(), r.as_str()), ("False", reason::ROLLING_OUT));
        assert!(m.contains("keep config bbbbbbbbbb until then"), "{m}");
        // ...and so does the status: it describes what the ConfigMap holds.
        let mut before = p.clone();
        before.status = Some(done.clone());
        let waiting = published_status(
            &before,
            &model_with_servers(5),
            &RenderedConfig {
                text: "y".into(),
                hash: "sha256:cccccccccccc".into(),
            },
            &DeploymentState::Pending {
                wait: Duration::from_secs(3),
            },
            Some(&complete(&rendered.hash)),
            None,
            &Time(ts(10)),
        );
        assert_eq!(waiting.config_hash, done.config_hash);
        assert_eq!(waiting.ready_backends, 3);
        assert_eq!(ready_of(&waiting).1, reason::ROLLING_OUT);

        // Rolled, the rolling update under way: 1 of 2 pods updated.
        let mut rolling = complete(&rendered.hash);
        rolling.complete = false;
        rolling.status.updated_replicas = 1;
        let (s, r, m) = ready_of(&status(&DeploymentState::Rolled { at: ts(9) }, &rolling));
        assert_eq!((s.as_str(), r.as_str()), ("False", reason::ROLLING_OUT));
        assert!(m.contains("1/2 pods updated"), "{m}");
    }

    #[test]
    fn invalid_status_keeps_what_was_published() {
        let mut p = pool();
        let now = Time(ts(1000));
        let rendered = RenderedConfig {
            text: "x".into(),
            hash: "sha256:0123456789abcdef".into(),
        };
        let good = published_status(
            &p,
            &model_with_servers(3),
            &rendered,
            &DeploymentState::UpToDate,
            Some(&complete(&rendered.hash)),
            None,
            &now,
        );
        p.status = Some(good.clone());
        let invalid = InvalidPool::new(reason::SERVICE_NOT_FOUND, "Service webapp not found");
        let bad = invalid_status(&p, &invalid, &now);
        assert_eq!(bad.backends, good.backends);
        assert_eq!(bad.config_hash, good.config_hash);
        assert_eq!(
            invalid_reason(Some(&bad)),
            Some((reason::SERVICE_NOT_FOUND, "Service webapp not found"))
        );
        let ready = bad
            .conditions
            .iter()
            .find(|c| c.type_ == kind::READY)
            .unwrap();
        assert!(
            ready.message.contains("0123456789 stays published"),
            "{}",
            ready.message
        );
    }

    #[test]
    fn status_lists_at_most_the_cap_but_counts_all() {
        let p = pool();
        let rendered = RenderedConfig {
            text: "x".into(),
            hash: "sha256:00".into(),
        };
        let s = published_status(
            &p,
            &model_with_servers(MAX_STATUS_BACKENDS + 5),
            &rendered,
            &DeploymentState::UpToDate,
            Some(&complete(&rendered.hash)),
            None,
            &Time(ts(0)),
        );
        assert_eq!(s.backends.len(), MAX_STATUS_BACKENDS);
        assert_eq!(s.ready_backends as usize, MAX_STATUS_BACKENDS + 5);
    }
}
