//! PURE: the pool's status: what is published and served, and one
//! function per condition (`Ready`, `ConfigValid`, `RolloutPending`,
//! `HAProxyVersion`).

use jiff::Timestamp;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use lbpool_checker::haproxy::HAPROXY_MAJOR;
use lbpool_crds::{
    BackendStatus, LoadBalancerPool, LoadBalancerPoolStatus, MAX_STATUS_BACKENDS, ReloadStrategy,
};
use lbpool_wire::{major_minor, revision};

use super::rollout::DeploymentState;
use super::served::Served;
use crate::conditions::{self, Desired, kind, reason};
use crate::model::{InvalidPool, Model};
use crate::render::RenderedConfig;

/// Status of a pool whose config was published. `last_rollout` is the latest
/// rollout known, which may be newer than the (cached) pool's status.
pub fn published(
    pool: &LoadBalancerPool,
    model: &Model,
    config: &RenderedConfig,
    deployment: &DeploymentState,
    served: Option<&Served>,
    last_rollout: Option<Timestamp>,
    now: &Time,
) -> LoadBalancerPoolStatus {
    let previous = pool.status.clone().unwrap_or_default();
    let ready = ready_backends(model);
    let mut desired = vec![
        ready_condition(pool, config, deployment, served, ready),
        config_valid_condition(config),
        rollout_pending_condition(pool, config, deployment),
    ];
    desired.extend(haproxy_version_condition(served));
    let conditions = conditions::merge(
        &previous.conditions,
        &desired,
        pool.metadata.generation,
        now,
    );
    let last_rollout_time = deployment.changed_at().or(last_rollout).map(Time);
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
        backends: backends(model),
        ready_backends: ready,
        config_map: Some(pool.config_map_name()),
        config_hash: Some(config.hash.clone()),
        config_revision: Some(config.revision().to_owned()),
        last_rollout_time,
        haproxy,
        conditions,
    }
}

/// The backends taking new requests: draining servers finish sticky
/// sessions, they take no new ones.
fn ready_backends(model: &Model) -> i32 {
    let taking = model.servers.iter().filter(|s| !s.draining).count();
    i32::try_from(taking).unwrap_or(i32::MAX)
}

/// The backends the status lists: at most [`MAX_STATUS_BACKENDS`].
fn backends(model: &Model) -> Vec<BackendStatus> {
    model
        .servers
        .iter()
        .take(MAX_STATUS_BACKENDS)
        .map(|s| BackendStatus {
            name: s.name.clone(),
            address: s.address.clone(),
            port: i32::from(s.port),
            zone: s.zone.clone(),
        })
        .collect()
}

/// `Ready`: HAProxy serves this config, not merely that it was written.
fn ready_condition(
    pool: &LoadBalancerPool,
    config: &RenderedConfig,
    deployment: &DeploymentState,
    served: Option<&Served>,
    ready_backends: i32,
) -> Desired {
    if let Some(blocked) = blocked(pool, deployment, ready_backends) {
        return blocked;
    }
    match served {
        Some(Served {
            refused: Some((pod, message)),
            status,
            ..
        }) => not_ready(
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
                    "{ready_backends} ready backends; {} HAProxy pods serve config {}",
                    sv.status.ready_replicas,
                    config.revision()
                ),
            )
        }
        Some(Served {
            stuck: Some(why),
            complete: false,
            status,
            ..
        }) => not_ready(
            reason::ROLLOUT_STUCK,
            format!(
                "Deployment {} stopped rolling out config {}: {why}; {}/{} pods updated, {} ready (the pods of its previous rollout keep serving their config)",
                pool.spec.haproxy.deployment,
                config.revision(),
                status.updated_replicas,
                status.replicas,
                status.ready_replicas
            ),
        ),
        _ => not_ready(
            reason::ROLLING_OUT,
            rolling_out_message(
                pool.spec.reload.strategy,
                &pool.spec.haproxy.deployment,
                config,
                served,
                deployment,
            ),
        ),
    }
}

/// `Ready=False` when nothing can serve: no Deployment, or no backend.
fn blocked(
    pool: &LoadBalancerPool,
    deployment: &DeploymentState,
    ready_backends: i32,
) -> Option<Desired> {
    if *deployment == DeploymentState::Missing {
        return Some(not_ready(
            reason::DEPLOYMENT_NOT_FOUND,
            format!(
                "spec.haproxy.deployment: Deployment {} not found; the config is published in ConfigMap {}",
                pool.spec.haproxy.deployment,
                pool.config_map_name()
            ),
        ));
    }
    (ready_backends == 0).then(|| {
        not_ready(
            reason::NO_READY_BACKENDS,
            format!(
                "Service {} has no ready endpoints",
                pool.spec.backend.service
            ),
        )
    })
}

fn not_ready(reason: &'static str, message: String) -> Desired {
    Desired::new(kind::READY, false, reason, message)
}

/// `ConfigValid`: the config passed the allowlist and `haproxy -c`.
fn config_valid_condition(config: &RenderedConfig) -> Desired {
    Desired::new(
        kind::CONFIG_VALID,
        true,
        reason::RENDERED,
        format!("config {} accepted by haproxy -c", config.revision()),
    )
}

/// How many data-plane versions a mismatch message names.
const VERSIONS_NAMED: usize = 3;

/// `HAProxyVersion`: the HAProxy the data plane runs (its agents' reports,
/// or its image tags) is the version lbpool writes and checks configs for.
/// Absent while no version is known (an image tag that is no version, no
/// agent report yet).
fn haproxy_version_condition(served: Option<&Served>) -> Option<Desired> {
    let known: Vec<(&str, &str, &str)> = served?
        .versions
        .iter()
        .filter_map(|(what, v)| Some((what.as_str(), v.as_str(), major_minor(v)?)))
        .collect();
    if known.is_empty() {
        return None;
    }
    let other: Vec<String> = known
        .iter()
        .filter(|(_, _, mm)| *mm != HAPROXY_MAJOR)
        .map(|(what, v, _)| format!("{what}: HAProxy {v}"))
        .collect();
    Some(if other.is_empty() {
        Desired::new(
            kind::HAPROXY_VERSION,
            true,
            reason::SUPPORTED,
            format!("HAProxy {HAPROXY_MAJOR}, the version lbpool writes and checks configs for"),
        )
    } else {
        let mut named = other[..other.len().min(VERSIONS_NAMED)].join("; ");
        if other.len() > VERSIONS_NAMED {
            named.push_str(&format!(" and {} more", other.len() - VERSIONS_NAMED));
        }
        Desired::new(
            kind::HAPROXY_VERSION,
            false,
            reason::VERSION_MISMATCH,
            format!("lbpool writes and checks configs for HAProxy {HAPROXY_MAJOR}, but {named}"),
        )
    })
}

/// `RolloutPending`: the config waits for `rollout.minInterval`.
fn rollout_pending_condition(
    pool: &LoadBalancerPool,
    config: &RenderedConfig,
    deployment: &DeploymentState,
) -> Desired {
    match deployment {
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
pub fn invalid(
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
    use std::collections::BTreeMap;
    use std::time::Duration;

    use k8s_openapi::api::apps::v1::Deployment;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
    use lbpool_wire::CONFIG_HASH_ANNOTATION;

    use super::*;
    use crate::desired::served::served;
    use crate::testing::{model_with_servers, pool};

    fn ts(s: i64) -> Timestamp {
        Timestamp::from_second(s).unwrap()
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
            published(
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
        let waiting = published(
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

        // The rollout stopped progressing: said, with the Deployment's reason.
        rolling.stuck =
            Some("ProgressDeadlineExceeded: ReplicaSet \"x\" has timed out progressing.".into());
        let (s, r, m) = ready_of(&status(&DeploymentState::UpToDate, &rolling));
        assert_eq!((s.as_str(), r.as_str()), ("False", reason::ROLLOUT_STUCK));
        assert!(m.contains("ProgressDeadlineExceeded"), "{m}");
        assert!(m.contains("1/2 pods updated"), "{m}");
        // Once complete, a stale condition does not count.
        let mut done = complete(&rendered.hash);
        done.stuck = rolling.stuck.clone();
        assert_eq!(
            ready_of(&status(&DeploymentState::UpToDate, &done)).0,
            "True"
        );
    }

    #[test]
    fn invalid_status_keeps_what_was_published() {
        let mut p = pool();
        let now = Time(ts(1000));
        let rendered = RenderedConfig {
            text: "x".into(),
            hash: "sha256:0123456789abcdef".into(),
        };
        let good = published(
            &p,
            &model_with_servers(3),
            &rendered,
            &DeploymentState::UpToDate,
            Some(&complete(&rendered.hash)),
            None,
            &now,
        );
        p.status = Some(good.clone());
        let why = InvalidPool::new(reason::SERVICE_NOT_FOUND, "Service webapp not found");
        let bad = invalid(&p, &why, &now);
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
        let s = published(
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

    #[test]
    fn a_data_plane_of_another_haproxy_version_is_named() {
        let with = |versions: &[(&str, &str)]| Served {
            versions: versions
                .iter()
                .map(|(w, v)| ((*w).to_owned(), (*v).to_owned()))
                .collect(),
            ..complete("sha256:a")
        };
        assert_eq!(haproxy_version_condition(None), None);
        assert_eq!(
            haproxy_version_condition(Some(&with(&[]))),
            None,
            "nothing known"
        );
        let same = haproxy_version_condition(Some(&with(&[
            ("pod a", &format!("{HAPROXY_MAJOR}.11-1+deb13u5")),
            ("image haproxy:latest", "latest"),
        ])))
        .expect("known");
        assert_eq!((same.status, same.reason), (true, reason::SUPPORTED));
        let other = haproxy_version_condition(Some(&with(&[
            ("pod a", &format!("{HAPROXY_MAJOR}.11")),
            ("pod b", "2.6.12-1+deb12u2"),
        ])))
        .expect("known");
        assert_eq!(
            (other.status, other.reason),
            (false, reason::VERSION_MISMATCH)
        );
        assert!(
            other.message.contains("pod b: HAProxy 2.6.12") && !other.message.contains("pod a"),
            "{}",
            other.message
        );
    }
}
