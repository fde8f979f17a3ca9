//! PURE: the HAProxy Deployment: who rolls it, the patch that rolls it,
//! the hash it was rolled for, and where its pods take the stats
//! credentials from.

use k8s_openapi::api::apps::v1::Deployment;
use lbpool_crds::LoadBalancerPool;
use lbpool_wire::{CONFIG_HASH_ANNOTATION, POOL_CLAIM_ANNOTATION, STATS_ENV};
use serde_json::json;

use crate::conditions::reason;
use crate::model::InvalidPool;

/// Who rolls a Deployment, by its claim annotation.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum DeploymentClaim {
    /// This pool, or nobody yet: this pool may roll it (and claims it then).
    Free,
    /// The pool of this name (in the same namespace) claimed it first.
    Pool(String),
}

/// The claim on `deployment`, seen from `pool`.
pub fn claim(pool: &LoadBalancerPool, deployment: &Deployment) -> DeploymentClaim {
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
pub fn conflict(pool: &LoadBalancerPool, other: &str) -> InvalidPool {
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
pub fn rollout_patch(name: &str, pool: &str, hash: &str) -> serde_json::Value {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pool;

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
}
