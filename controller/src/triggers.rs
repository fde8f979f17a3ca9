//! PURE: which watch events are worth a reconcile. The controller's own
//! writes come back as watch events; reconciling on each would read and
//! compare everything again for nothing.
//!
//! - A pool is reconciled when its spec changes (a new `generation`), when
//!   it is first seen, when its deletion starts and when it is deleted, not
//!   when only its status (written by the controller) or its metadata moves.
//! - A generated ConfigMap is looked at when it no longer holds the config
//!   its hash annotation names (someone edited it; the cache has dropped
//!   the annotation, see [`crate::cache::slim_config_map`]) or when it is
//!   deleted, not after the controller's own write, which is consistent by
//!   construction.
//! - A Deployment is looked at when what the status reports of it changes
//!   (replicas, updated and ready counts, generations, the config hash of
//!   its pod template) or its claim, not on kube-controller-manager's
//!   progress updates.
//! - An agent's pod (`InPlace`) is looked at when what its agent reports
//!   or its readiness changes, and when it goes.
//!
//! Which pools an event concerns is looked up in the pool cache (no API
//! call per event): the pools of a Service, an EndpointSlice, a Deployment,
//! a template ConfigMap, an agent's pod ([`pools_for_service`] and the
//! mappers after it).

use std::collections::HashMap;

use k8s_openapi::api::apps::v1::Deployment;
use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::core::v1::{ConfigMap, Pod};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::reflector::Store;
use kube::runtime::watcher::Event;
use kube::{Resource, ResourceExt};
use lbpool_crds::LoadBalancerPool;

use lbpool_wire::{POOL_CLAIM_ANNOTATION, POOL_LABEL};

use crate::cache::SERVICE_NAME_LABEL;
use crate::desired::config_map::published_hash;
use crate::desired::deployment::{StatsCredential, stats_credentials};
use crate::desired::served::{Served, served};

/// Passes on an object when what a reconcile reads of it (`inputs`)
/// changed since it last passed, when it is first seen and when it is
/// deleted.
pub struct Changes<K: Resource<DynamicType = ()>, V> {
    seen: HashMap<ObjectRef<K>, V>,
    inputs: fn(&K) -> V,
}

impl<K: Resource<DynamicType = ()>, V> std::fmt::Debug for Changes<K, V> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Changes")
            .field("seen", &self.seen.len())
            .finish()
    }
}

impl<K: Resource<DynamicType = ()>, V: PartialEq> Changes<K, V> {
    pub fn new(inputs: fn(&K) -> V) -> Self {
        Self {
            seen: HashMap::new(),
            inputs,
        }
    }

    /// The object to reconcile for this event, if any.
    pub fn on(&mut self, event: Event<K>) -> Option<K> {
        match event {
            Event::Apply(obj) | Event::InitApply(obj) => {
                let now = (self.inputs)(&obj);
                let key = ObjectRef::from_obj(&obj);
                let changed = self.seen.get(&key) != Some(&now);
                if changed {
                    self.seen.insert(key, now);
                }
                changed.then_some(obj)
            }
            // Looked at once more, to find it gone.
            Event::Delete(obj) => {
                self.seen.remove(&ObjectRef::from_obj(&obj));
                Some(obj)
            }
            Event::Init | Event::InitDone => None,
        }
    }

    /// Objects remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// A pool is reconciled on a new spec (`generation`) and when its deletion
/// starts, not on the status the controller writes.
pub fn pool_trigger() -> Changes<LoadBalancerPool, (Option<i64>, bool)> {
    Changes::new(|pool| {
        (
            pool.metadata.generation,
            pool.metadata.deletion_timestamp.is_some(),
        )
    })
}

/// A Deployment's pools are reconciled when what the status reports of it
/// ([`served`]) or its claim changes, not on every step of kube-controller-
/// manager's progress conditions.
pub fn deployment_trigger() -> Changes<Deployment, (Served, Option<String>, Vec<StatsCredential>)> {
    Changes::new(|d| {
        let claim = d
            .metadata
            .annotations
            .as_ref()
            .and_then(|a| a.get(POOL_CLAIM_ANNOTATION))
            .cloned();
        (served(d), claim, stats_credentials(d))
    })
}

/// What an agent's pod says: readiness, deletion, served and rejected.
type AgentSays = (bool, bool, Option<String>, Option<(String, String)>);

/// An agent's pool is reconciled when what the agent reports changes.
pub fn agent_trigger() -> Changes<Pod, AgentSays> {
    Changes::new(|pod| {
        let r = crate::agents::AgentReport::of(pod);
        (
            r.ready,
            r.deleting,
            r.served.map(str::to_owned),
            r.rejected
                .map(|r| (r.hash.to_owned(), r.message.into_owned())),
        )
    })
}

/// The generated ConfigMap to look at for this event, if any. `event`
/// carries the ConfigMap as the cache keeps it: with its hash annotation
/// only if its data is the config the hash names.
pub fn config_map_event(event: Event<ConfigMap>) -> Option<ConfigMap> {
    match event {
        Event::Apply(cm) | Event::InitApply(cm) => published_hash(&cm).is_none().then_some(cm),
        Event::Delete(cm) => Some(cm),
        Event::Init | Event::InitDone => None,
    }
}

/// The pools in `namespace` for which `names` is true.
fn pools_where(
    store: &Store<LoadBalancerPool>,
    namespace: Option<String>,
    names: impl Fn(&LoadBalancerPool) -> bool,
) -> Vec<ObjectRef<LoadBalancerPool>> {
    store
        .state()
        .iter()
        .filter(|p| p.namespace() == namespace && names(p))
        .map(|p| ObjectRef::from_obj(p.as_ref()))
        .collect()
}

/// Pools whose backends are this Service's.
pub fn pools_for_service(
    store: &Store<LoadBalancerPool>,
    svc: &Service,
) -> Vec<ObjectRef<LoadBalancerPool>> {
    let name = svc.name_any();
    pools_where(store, svc.namespace(), |p| p.spec.backend.service == name)
}

/// Pools whose backends come from this EndpointSlice's Service.
pub fn pools_for_slice(
    store: &Store<LoadBalancerPool>,
    slice: &EndpointSlice,
) -> Vec<ObjectRef<LoadBalancerPool>> {
    let Some(service) = slice.labels().get(SERVICE_NAME_LABEL).cloned() else {
        return Vec::new();
    };
    pools_where(store, slice.namespace(), |p| {
        p.spec.backend.service == service
    })
}

/// Pools served by this Deployment.
pub fn pools_for_deployment(
    store: &Store<LoadBalancerPool>,
    d: &Deployment,
) -> Vec<ObjectRef<LoadBalancerPool>> {
    let name = d.name_any();
    pools_where(store, d.namespace(), |p| p.spec.haproxy.deployment == name)
}

/// The pool an agent's pod serves: its label names it.
pub fn pool_of_agent(pod: &Pod) -> Option<ObjectRef<LoadBalancerPool>> {
    let pool = pod.labels().get(POOL_LABEL)?;
    Some(ObjectRef::new(pool).within(&pod.namespace()?))
}

/// Pools whose template is this ConfigMap (by its metadata).
pub fn pools_for_template(
    store: &Store<LoadBalancerPool>,
    cm: &impl ResourceExt,
) -> Vec<ObjectRef<LoadBalancerPool>> {
    let name = cm.name_any();
    pools_where(store, cm.namespace(), |p| {
        p.spec
            .template
            .as_ref()
            .is_some_and(|t| t.config_map == name)
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{pool, slice};
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::runtime::reflector::store;
    use lbpool_wire::config_hash;
    use std::collections::BTreeMap;

    #[test]
    fn a_pool_triggers_on_spec_changes_and_deletion_only() {
        let mut t = pool_trigger();
        let mut p = pool();
        p.metadata.generation = Some(1);
        assert!(t.on(Event::InitApply(p.clone())).is_some(), "first seen");
        // The controller's status write: same generation.
        let mut written = p.clone();
        written.status = Some(Default::default());
        written.metadata.resource_version = Some("2".into());
        assert!(t.on(Event::Apply(written)).is_none());
        // A relist after a watch restart: nothing new.
        assert!(t.on(Event::InitApply(p.clone())).is_none());
        // A label, an annotation: not an input.
        let mut labelled = p.clone();
        labelled.metadata.labels = Some(BTreeMap::from([("team".into(), "web".into())]));
        assert!(t.on(Event::Apply(labelled)).is_none());
        // A spec change bumps the generation.
        p.metadata.generation = Some(2);
        assert!(t.on(Event::Apply(p.clone())).is_some());
        // Deletion starts (a finalizer of someone else's), then ends.
        p.metadata.deletion_timestamp = Some(Time(jiff::Timestamp::now()));
        assert!(t.on(Event::Apply(p.clone())).is_some());
        assert_eq!(t.len(), 1);
        assert!(t.on(Event::Delete(p)).is_some());
        assert!(t.is_empty(), "a deleted pool is forgotten");
        assert!(t.on(Event::Init).is_none());
    }

    /// A ConfigMap holding `text` under the hash `hash`, as cached.
    #[test]
    fn a_deployment_triggers_when_what_is_served_changes() {
        let mut t = deployment_trigger();
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "haproxy", "namespace": "demo", "generation": 1},
            "spec": {"replicas": 2, "selector": {}, "template": {}},
            "status": {"observedGeneration": 1, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 1}
        }))
        .expect("deployment");
        assert!(t.on(Event::InitApply(d.clone())).is_some(), "first seen");
        // A progress condition moved: nothing the status reports.
        d.metadata.resource_version = Some("5".into());
        d.status.get_or_insert_default().conditions = Some(vec![]);
        assert!(t.on(Event::Apply(d.clone())).is_none());
        // One more pod ready.
        d.status.get_or_insert_default().ready_replicas = Some(2);
        assert!(t.on(Event::Apply(d.clone())).is_some());
        assert!(t.on(Event::Apply(d.clone())).is_none());
        // Claimed by a pool.
        d.metadata.annotations = Some(BTreeMap::from([(
            POOL_CLAIM_ANNOTATION.into(),
            "web".into(),
        )]));
        assert!(t.on(Event::Apply(d.clone())).is_some());
        assert!(t.on(Event::Delete(d)).is_some());
        assert!(t.is_empty());
    }

    fn config_map(text: &str, hash: &str) -> ConfigMap {
        let mut cm = ConfigMap {
            data: Some(BTreeMap::from([(
                lbpool_wire::CONFIG_KEY.into(),
                text.into(),
            )])),
            ..ConfigMap::default()
        };
        cm.metadata.annotations = Some(BTreeMap::from([(
            lbpool_wire::CONFIG_HASH_ANNOTATION.into(),
            hash.into(),
        )]));
        crate::cache::slim_config_map(&mut cm);
        cm
    }

    #[test]
    fn only_an_edited_or_deleted_config_map_triggers() {
        let text = "global\n";
        let ours = config_map(text, &config_hash(text));
        assert!(
            config_map_event(Event::Apply(ours.clone())).is_none(),
            "our own write"
        );
        assert!(config_map_event(Event::InitApply(ours.clone())).is_none());
        let edited = config_map("global\n    maxconn 1\n", &config_hash(text));
        assert!(config_map_event(Event::Apply(edited)).is_some());
        let emptied = config_map("", &config_hash(text));
        assert!(config_map_event(Event::Apply(emptied)).is_some());
        assert!(config_map_event(Event::Delete(ours)).is_some());
    }

    fn store_with(pools: Vec<LoadBalancerPool>) -> Store<LoadBalancerPool> {
        let (reader, mut writer) = store::<LoadBalancerPool>();
        writer.apply_watcher_event(&Event::Init);
        for p in pools {
            writer.apply_watcher_event(&Event::InitApply(p));
        }
        writer.apply_watcher_event(&Event::InitDone);
        reader
    }

    #[test]
    fn a_slice_maps_to_the_pools_of_its_service_in_its_namespace() {
        let mut other_ns = pool();
        other_ns.metadata.namespace = Some("other".into());
        let mut other_svc = pool();
        other_svc.metadata.name = Some("api".into());
        other_svc.spec.backend.service = "api".into();
        let store = store_with(vec![pool(), other_ns, other_svc]);
        let refs = pools_for_slice(&store, &slice("webapp-abc", "http", 3000, &[]));
        assert_eq!(refs, vec![ObjectRef::new("webapp").within("demo")]);
    }

    #[test]
    fn a_slice_without_service_label_maps_to_nothing() {
        let store = store_with(vec![pool()]);
        let mut s = slice("x", "http", 3000, &[]);
        s.metadata.labels = None;
        assert!(pools_for_slice(&store, &s).is_empty());
    }

    #[test]
    fn a_config_map_maps_to_the_pools_whose_template_it_holds() {
        let mut templated = pool();
        templated.spec.template = Some(lbpool_crds::TemplateRef {
            config_map: "my-template".into(),
            key: "haproxy.cfg.hbs".into(),
        });
        let mut plain = pool();
        plain.metadata.name = Some("plain".into());
        let store = store_with(vec![templated, plain]);
        let mut cm = ConfigMap::default();
        cm.metadata.name = Some("my-template".into());
        cm.metadata.namespace = Some("demo".into());
        assert_eq!(
            pools_for_template(&store, &cm),
            vec![ObjectRef::new("webapp").within("demo")]
        );
        cm.metadata.namespace = Some("other".into());
        assert!(pools_for_template(&store, &cm).is_empty());
    }

    #[test]
    fn a_deployment_maps_to_the_pools_it_serves() {
        let store = store_with(vec![pool()]);
        let mut d = Deployment::default();
        d.metadata.name = Some("haproxy".into());
        d.metadata.namespace = Some("demo".into());
        assert_eq!(pools_for_deployment(&store, &d).len(), 1);
        d.metadata.name = Some("nginx".into());
        assert!(pools_for_deployment(&store, &d).is_empty());
    }
}
