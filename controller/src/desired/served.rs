//! PURE: what the HAProxy Deployment serves, read from its spec and
//! status (`InPlace`: from what its agents report, [`crate::agents`]).

use k8s_openapi::api::apps::v1::Deployment;
use lbpool_crds::HaproxyStatus;
use lbpool_wire::revision;

use super::deployment::deployed_hash;

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
    /// `RollingUpdate`: its rollout stopped making progress, as the
    /// Deployment says (`Progressing=False`): `<reason>: <message>`.
    pub stuck: Option<String>,
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
        stuck: stuck(deployment),
        status: HaproxyStatus {
            revision: hash.as_deref().map(|h| revision(h).to_owned()),
            replicas: want,
            updated_replicas: updated,
            ready_replicas: ready,
        },
        hash,
    }
}

/// The Deployment's `Progressing=False` condition, if it has one.
fn stuck(deployment: &Deployment) -> Option<String> {
    let c = deployment
        .status
        .as_ref()?
        .conditions
        .as_ref()?
        .iter()
        .find(|c| {
            c.type_.as_deref() == Some("Progressing") && c.status.as_deref() == Some("False")
        })?;
    Some(format!(
        "{}: {}",
        c.reason.as_deref().unwrap_or("NotProgressing"),
        c.message.as_deref().unwrap_or_default()
    ))
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::{DeploymentCondition, DeploymentStatus};

    #[test]
    fn a_rollout_that_stopped_progressing_is_stuck() {
        let condition = |status: &str| DeploymentCondition {
            type_: Some("Progressing".into()),
            status: Some(status.into()),
            reason: Some("ProgressDeadlineExceeded".into()),
            message: Some("ReplicaSet \"haproxy-7f\" has timed out progressing.".into()),
            ..DeploymentCondition::default()
        };
        let mut d = Deployment {
            status: Some(DeploymentStatus {
                conditions: Some(vec![condition("True")]),
                ..DeploymentStatus::default()
            }),
            ..Deployment::default()
        };
        assert_eq!(served(&d).stuck, None, "progressing");
        d.status = Some(DeploymentStatus {
            conditions: Some(vec![condition("False")]),
            ..DeploymentStatus::default()
        });
        assert_eq!(
            served(&d).stuck.as_deref(),
            Some("ProgressDeadlineExceeded: ReplicaSet \"haproxy-7f\" has timed out progressing.")
        );
    }
}
