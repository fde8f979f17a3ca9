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
