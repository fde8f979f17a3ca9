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
    /// The HAProxy versions the data plane is known to run, each with where
    /// it was read: `("pod haproxy-…", "3.0.11-1+deb13u5")` from an agent's
    /// report, `("image haproxy:3.0", "3.0")` from the pod template.
    pub versions: Vec<(String, String)>,
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
        versions: image_versions(deployment),
        status: HaproxyStatus {
            revision: hash.as_deref().map(|h| revision(h).to_owned()),
            replicas: want,
            updated_replicas: updated,
            ready_replicas: ready,
        },
        hash,
    }
}

/// The HAProxy versions the pod template's images name by their tag
/// (`haproxy:3.0`, `…/haproxy-debian:3.0.11`); a tag that is no version
/// (`latest`, a digest only) says nothing.
fn image_versions(deployment: &Deployment) -> Vec<(String, String)> {
    let Some(spec) = &deployment.spec.template.spec else {
        return Vec::new();
    };
    spec.containers
        .iter()
        .chain(spec.init_containers.iter().flatten())
        .filter_map(|c| {
            let image = c.image.as_deref()?;
            let tag = haproxy_tag(image)?;
            let version = lbpool_wire::major_minor(tag)?;
            Some((format!("image {image}"), version.to_owned()))
        })
        .collect()
}

/// PURE: the tag of an HAProxy image: one whose name's last segment starts
/// with `haproxy`.
fn haproxy_tag(image: &str) -> Option<&str> {
    let image = image.split('@').next()?;
    let (name, tag) = match image.rsplit_once(':') {
        Some((name, tag)) if !tag.contains('/') => (name, tag),
        _ => return None,
    };
    name.rsplit('/')
        .next()
        .is_some_and(|last| last.starts_with("haproxy"))
        .then_some(tag)
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

    #[test]
    fn haproxy_images_name_their_version_by_tag() {
        assert_eq!(haproxy_tag("haproxy:3.0"), Some("3.0"));
        assert_eq!(
            haproxy_tag("docker.io/library/haproxy:2.6.12"),
            Some("2.6.12")
        );
        assert_eq!(haproxy_tag("haproxytech/haproxy-debian:3.2"), Some("3.2"));
        assert_eq!(
            haproxy_tag("registry:5000/haproxy:3.0@sha256:ab"),
            Some("3.0")
        );
        assert_eq!(haproxy_tag("lbpool-agent:dev"), None);
        assert_eq!(haproxy_tag("registry:5000/haproxy"), None);
        assert_eq!(haproxy_tag("haproxy"), None);
        let mut d = Deployment::default();
        d.spec.template.spec = Some(k8s_openapi::api::core::v1::PodSpec {
            containers: vec![
                k8s_openapi::api::core::v1::Container {
                    image: Some("haproxy:2.6".into()),
                    ..Default::default()
                },
                k8s_openapi::api::core::v1::Container {
                    image: Some("lbpool.local/haproxy:local".into()),
                    ..Default::default()
                },
            ],
            ..Default::default()
        });
        assert_eq!(
            served(&d).versions,
            [("image haproxy:2.6".to_owned(), "2.6".to_owned())]
        );
    }
}
