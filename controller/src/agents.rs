//! PURE: what the lbpool agents beside `InPlace` HAProxy pods report, and
//! what it makes of a pool's status.
//!
//! An agent applies the config in its pool's ConfigMap to the HAProxy in
//! its pod, then says so on its own pod: label [`POOL_LABEL`] (the pool,
//! read off the ConfigMap's own label), annotation [`SERVED_ANNOTATION`]
//! (the hash of the config HAProxy serves) and, when its `haproxy -c`
//! refused a config, [`REJECTED_ANNOTATION`] (`<hash> <message>`). The
//! controller watches pods with that label and counts, per pool, the ready
//! pods serving the wanted config: `Ready` means they all do.

use std::collections::BTreeMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::{Pod, PodCondition, PodStatus};
use lbpool_crds::HaproxyStatus;

use lbpool_wire::{
    HAPROXY_VERSION_ANNOTATION, POOL_LABEL, REJECTED_ANNOTATION, Rejection, SERVED_ANNOTATION,
    revision,
};

use crate::desired::served::Served;

/// One agent's pod, as far as the status is concerned.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct AgentReport<'a> {
    pub pod: &'a str,
    pub ready: bool,
    pub deleting: bool,
    pub served: Option<&'a str>,
    /// The config its agent refused last, and why.
    pub rejected: Option<Rejection<'a>>,
    /// The version of the HAProxy beside the agent.
    pub version: Option<&'a str>,
}

impl<'a> AgentReport<'a> {
    pub fn of(pod: &'a Pod) -> Self {
        let annotation = |key| {
            pod.metadata
                .annotations
                .as_ref()
                .and_then(|a| a.get(key))
                .map(String::as_str)
        };
        Self {
            pod: pod.metadata.name.as_deref().unwrap_or_default(),
            ready: is_ready(pod),
            deleting: pod.metadata.deletion_timestamp.is_some(),
            served: annotation(SERVED_ANNOTATION),
            rejected: annotation(REJECTED_ANNOTATION).map(Rejection::parse),
            version: annotation(HAPROXY_VERSION_ANNOTATION),
        }
    }
}

fn is_ready(pod: &Pod) -> bool {
    pod.status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// A pod as the agents cache keeps it: name, the pool label, the agent's
/// annotations, the deletion mark and the `Ready` condition.
pub fn slim_pod(pod: &mut Pod) {
    let meta = &mut pod.metadata;
    meta.managed_fields = None;
    meta.owner_references = None;
    meta.generate_name = None;
    if let Some(labels) = &mut meta.labels {
        labels.retain(|k, _| k == POOL_LABEL);
    }
    if let Some(a) = &mut meta.annotations {
        a.retain(|k, _| {
            k == SERVED_ANNOTATION || k == REJECTED_ANNOTATION || k == HAPROXY_VERSION_ANNOTATION
        });
    }
    pod.spec = None;
    let ready = pod
        .status
        .as_ref()
        .and_then(|s| s.conditions.as_ref())
        .and_then(|c| c.iter().find(|c| c.type_ == "Ready"))
        .map(|c| PodCondition {
            type_: c.type_.clone(),
            status: c.status.clone(),
            ..PodCondition::default()
        });
    pod.status = Some(PodStatus {
        conditions: ready.map(|c| vec![c]),
        ..PodStatus::default()
    });
}

/// The agents' view of a pool wanting config `wanted`, served by
/// `deployment`: `complete` once the Deployment has all its pods ready and
/// every live, ready pod serves `wanted`.
pub fn in_place(deployment: &Deployment, reports: &[AgentReport<'_>], wanted: &str) -> Served {
    let want = deployment.spec.replicas.unwrap_or(1);
    let live: Vec<&AgentReport<'_>> = reports.iter().filter(|r| !r.deleting).collect();
    let ready = live.iter().filter(|r| r.ready).count();
    let serving = live
        .iter()
        .filter(|r| r.ready && r.served == Some(wanted))
        .count();
    // How many ready pods serve each config.
    let mut by_hash: BTreeMap<&str, usize> = BTreeMap::new();
    for r in live.iter().filter(|r| r.ready) {
        *by_hash.entry(r.served.unwrap_or_default()).or_default() += 1;
    }
    let common = by_hash
        .iter()
        .max_by_key(|(hash, n)| (**n, **hash == wanted))
        .map(|(hash, _)| *hash)
        .filter(|h| !h.is_empty());
    let count = |n: usize| i32::try_from(n).unwrap_or(i32::MAX);
    let refused = live.iter().find_map(|r| match &r.rejected {
        Some(rejection) if rejection.hash == wanted => {
            Some((r.pod.to_owned(), rejection.message.clone().into_owned()))
        }
        _ => None,
    });
    let complete = serving == ready && count(serving) >= want;
    Served {
        status: HaproxyStatus {
            revision: common.map(|h| revision(h).to_owned()),
            replicas: want,
            updated_replicas: count(serving),
            ready_replicas: count(ready),
        },
        hash: if complete {
            Some(wanted.to_owned())
        } else {
            common.map(str::to_owned)
        },
        complete,
        refused,
        stuck: None,
        versions: live
            .iter()
            .filter_map(|r| Some((format!("pod {}", r.pod), r.version?.to_owned())))
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use k8s_openapi::api::apps::v1::DeploymentSpec;

    fn deployment(replicas: i32) -> Deployment {
        Deployment {
            spec: DeploymentSpec {
                replicas: Some(replicas),
                ..DeploymentSpec::default()
            },
            ..Deployment::default()
        }
    }

    fn report<'a>(pod: &'a str, ready: bool, served: Option<&'a str>) -> AgentReport<'a> {
        AgentReport {
            pod,
            ready,
            deleting: false,
            served,
            rejected: None,
            version: None,
        }
    }

    #[test]
    fn complete_once_every_ready_pod_serves_the_wanted_config() {
        let d = deployment(2);
        let half = in_place(
            &d,
            &[
                report("a", true, Some("new")),
                report("b", true, Some("old")),
            ],
            "new",
        );
        assert!(!half.complete);
        assert_eq!(half.status.updated_replicas, 1);
        assert_eq!(half.status.ready_replicas, 2);

        let all = in_place(
            &d,
            &[
                report("a", true, Some("new")),
                report("b", true, Some("new")),
                // Not ready yet: neither counted nor waited for.
                report("c", false, None),
            ],
            "new",
        );
        assert!(all.complete);
        assert_eq!(all.hash.as_deref(), Some("new"));

        // Fewer than the Deployment wants: not complete.
        let short = in_place(&d, &[report("a", true, Some("new"))], "new");
        assert!(!short.complete);
        // No agent at all (a Deployment without the sidecar): nothing served.
        let none = in_place(&d, &[], "new");
        assert!(!none.complete);
        assert_eq!(none.hash, None);
    }

    #[test]
    fn a_pod_being_deleted_does_not_count_and_a_refusal_is_reported() {
        let d = deployment(1);
        let mut leaving = report("old", true, Some("old"));
        leaving.deleting = true;
        let mut refusing = report("b", true, Some("old"));
        refusing.rejected = Some(Rejection::parse("new unknown keyword"));
        let r = in_place(&d, &[leaving, refusing], "new");
        assert_eq!(
            r.refused,
            Some(("b".to_owned(), "unknown keyword".to_owned()))
        );
        assert!(!r.complete);
        assert_eq!(r.hash.as_deref(), Some("old"));
        // A refusal of an older config is history.
        let mut past = report("b", true, Some("new"));
        past.rejected = Some(Rejection::parse("older whatever"));
        let r = in_place(&d, &[past], "new");
        assert_eq!(r.refused, None);
        assert!(r.complete);
    }

    #[test]
    fn slimming_keeps_what_a_report_reads() {
        let mut pod: Pod = serde_json::from_value(serde_json::json!({
            "metadata": {
                "name": "haproxy-1", "namespace": "demo",
                "labels": {POOL_LABEL: "web", "app": "haproxy"},
                "annotations": {SERVED_ANNOTATION: "sha256:a", REJECTED_ANNOTATION: "sha256:b bad", "other": "x"},
                "deletionTimestamp": "2026-01-01T00:00:00Z",
            },
            "spec": {"containers": [{"name": "haproxy"}]},
            "status": {"conditions": [
                {"type": "PodScheduled", "status": "True"},
                {"type": "Ready", "status": "True", "reason": "x"},
            ]},
        }))
        .expect("pod");
        let before = AgentReport::of(&pod);
        let before = (
            before.ready,
            before.deleting,
            before.served.map(str::to_owned),
            before
                .rejected
                .map(|r| (r.hash.to_owned(), r.message.into_owned())),
        );
        slim_pod(&mut pod);
        let after = AgentReport::of(&pod);
        assert_eq!(
            before,
            (
                after.ready,
                after.deleting,
                after.served.map(str::to_owned),
                after
                    .rejected
                    .map(|r| (r.hash.to_owned(), r.message.into_owned())),
            )
        );
        assert_eq!(before.3, Some(("sha256:b".into(), "bad".into())));
        assert!(pod.spec.is_none());
        assert_eq!(pod.metadata.labels.as_ref().map(BTreeMap::len), Some(1));
    }
}
