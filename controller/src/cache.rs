//! The watch caches a reconcile reads instead of the API.
//!
//! Every object a reconcile depends on is already streamed to the
//! controller by a watch; keeping it (slimmed to the fields lbpool reads)
//! costs little memory and turns each reconcile's five reads into map
//! lookups. A reconcile reads the API only for a user template (a
//! ConfigMap of any size, read when its pool renders).
//!
//! - pools, without managedFields;
//! - Services: name and ports;
//! - EndpointSlices, indexed by Service ([`SliceIndex`]);
//! - Deployments: replicas, generation, status counts, the claim and the
//!   config-hash annotations;
//! - the generated ConfigMaps without their data: a ConfigMap whose data
//!   no longer hashes to its annotation loses the annotation on the way in
//!   ([`slim_config_map`]), so "holds the wanted config" is a comparison
//!   of annotations;
//! - every ConfigMap's name and owners (metadata-only watch), so a
//!   ConfigMap lbpool did not create is never taken over;
//! - namespaces: names and deletion marks;
//! - the pods of `InPlace` agents (label `lbpool.dev/pool`): what each
//!   agent reports ([`crate::agents::slim_pod`]).
//!
//! A cache may lag behind the API by a watch event. Where acting on a stale
//! view could take what is not lbpool's, the write itself checks: a missing
//! ConfigMap is created, never applied, so one that appeared meanwhile
//! fails the create instead of being overwritten.

use std::collections::{BTreeMap, HashMap};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, RwLock};
use std::time::Duration;

use futures::FutureExt as _;
use k8s_openapi::api::apps::v1::{Deployment, DeploymentCondition};
use k8s_openapi::api::core::v1::{
    ConfigMap, Container, Namespace, ObjectReference, Pod, PodSpec, Service, ServiceSpec,
};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::core::PartialObjectMeta;
use kube::runtime::reflector::{self, Store};
use kube::runtime::watcher::Event;
use lbpool_crds::LoadBalancerPool;

use lbpool_wire::{
    CONFIG_HASH_ANNOTATION, CONFIG_KEY, POOL_CLAIM_ANNOTATION, POOL_LABEL, config_hash,
};

use crate::desired::config_map::published_hash;

/// Label of EndpointSlices naming their Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";

/// The readers of every cache; cheap to clone.
#[derive(Clone)]
pub struct Caches {
    pub pools: Store<LoadBalancerPool>,
    pub services: Store<Service>,
    pub slices: SliceIndex,
    pub deployments: Store<Deployment>,
    /// The generated ConfigMaps (label `app.kubernetes.io/managed-by`), slimmed.
    pub config_maps: Store<ConfigMap>,
    /// Every ConfigMap: name and ownerReferences.
    pub config_map_names: Store<PartialObjectMeta<ConfigMap>>,
    pub namespaces: Store<PartialObjectMeta<Namespace>>,
    /// Pods of `InPlace` agents, slimmed to their reports.
    pub agents: Store<Pod>,
    synced: Arc<AtomicBool>,
}

/// The writers the watches feed; see [`Caches::new`].
#[allow(missing_debug_implementations)]
pub struct Writers {
    pub pools: reflector::store::Writer<LoadBalancerPool>,
    pub services: reflector::store::Writer<Service>,
    pub slices: SliceIndexWriter,
    pub deployments: reflector::store::Writer<Deployment>,
    pub config_maps: reflector::store::Writer<ConfigMap>,
    pub config_map_names: reflector::store::Writer<PartialObjectMeta<ConfigMap>>,
    pub namespaces: reflector::store::Writer<PartialObjectMeta<Namespace>>,
    pub agents: reflector::store::Writer<Pod>,
}

/// A cache's writer: keeps what a watch event says.
pub trait Keep<K> {
    fn keep(&mut self, event: &Event<K>);
}

impl<K> Keep<K> for reflector::store::Writer<K>
where
    K: reflector::Lookup + Clone,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    fn keep(&mut self, event: &Event<K>) {
        self.apply_watcher_event(event);
    }
}

impl Keep<EndpointSlice> for SliceIndexWriter {
    fn keep(&mut self, event: &Event<EndpointSlice>) {
        self.apply_watcher_event(event);
    }
}

impl std::fmt::Debug for Caches {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Caches")
            .field("pools", &self.pools.len())
            .field("services", &self.services.len())
            .field("slices", &self.slices.len())
            .field("deployments", &self.deployments.len())
            .field("config_maps", &self.config_maps.len())
            .field("config_map_names", &self.config_map_names.len())
            .field("namespaces", &self.namespaces.len())
            .field("agents", &self.agents.len())
            .finish()
    }
}

impl Caches {
    /// Empty caches and their writers. The caches are synced once every
    /// writer has applied its first complete list (`Event::InitDone`).
    pub fn new() -> (Self, Writers) {
        let (pools, pools_w) = reflector::store();
        let (services, services_w) = reflector::store();
        let (slices, slices_w) = SliceIndex::new();
        let (deployments, deployments_w) = reflector::store();
        let (config_maps, config_maps_w) = reflector::store();
        let (config_map_names, config_map_names_w) = reflector::store();
        let (namespaces, namespaces_w) = reflector::store();
        let (agents, agents_w) = reflector::store();
        let caches = Self {
            pools,
            services,
            slices,
            deployments,
            config_maps,
            config_map_names,
            namespaces,
            agents,
            synced: Arc::default(),
        };
        let writers = Writers {
            pools: pools_w,
            services: services_w,
            slices: slices_w,
            deployments: deployments_w,
            config_maps: config_maps_w,
            config_map_names: config_map_names_w,
            namespaces: namespaces_w,
            agents: agents_w,
        };
        (caches, writers)
    }

    /// Whether every cache holds a complete list.
    pub fn is_synced(&self) -> bool {
        if self.synced.load(Ordering::Acquire) {
            return true;
        }
        let all = ready_now(&self.pools)
            && ready_now(&self.services)
            && self.slices.is_ready()
            && ready_now(&self.deployments)
            && ready_now(&self.config_maps)
            && ready_now(&self.config_map_names)
            && ready_now(&self.namespaces)
            && ready_now(&self.agents);
        if all {
            self.synced.store(true, Ordering::Release);
        }
        all
    }

    /// The agents' pods of pool `pool` in `ns`.
    pub fn agents_of(&self, ns: &str, pool: &str) -> Vec<Arc<Pod>> {
        self.agents
            .state()
            .into_iter()
            .filter(|p| {
                p.metadata.namespace.as_deref() == Some(ns)
                    && p.metadata
                        .labels
                        .as_ref()
                        .and_then(|l| l.get(POOL_LABEL))
                        .is_some_and(|l| l == pool)
            })
            .collect()
    }

    /// Waits until [`Caches::is_synced`]: a reconcile before that would
    /// find a Service missing that is only not listed yet.
    pub async fn synced(&self) {
        while !self.is_synced() {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }
}

fn ready_now<K>(store: &Store<K>) -> bool
where
    K: kube::runtime::reflector::Lookup + Clone + 'static,
    K::DynamicType: Eq + std::hash::Hash + Clone,
{
    matches!(store.wait_until_ready().now_or_never(), Some(Ok(())))
}

/// `(namespace, Service name)`.
type ServiceKey = (String, String);

#[derive(Debug, Default)]
struct SliceMap {
    by_service: HashMap<ServiceKey, BTreeMap<String, Arc<EndpointSlice>>>,
    /// `(namespace, slice name)` → its Service, to find a slice on delete
    /// or when its label changes.
    service_of: HashMap<(String, String), String>,
}

impl SliceMap {
    fn insert(&mut self, slice: &EndpointSlice) {
        let ns = slice.metadata.namespace.clone().unwrap_or_default();
        let name = slice.metadata.name.clone().unwrap_or_default();
        self.remove(&ns, &name);
        let Some(service) = slice
            .metadata
            .labels
            .as_ref()
            .and_then(|l| l.get(SERVICE_NAME_LABEL))
        else {
            return;
        };
        self.service_of
            .insert((ns.clone(), name.clone()), service.clone());
        self.by_service
            .entry((ns, service.clone()))
            .or_default()
            .insert(name, Arc::new(slice.clone()));
    }

    fn remove(&mut self, ns: &str, name: &str) {
        let key = (ns.to_owned(), name.to_owned());
        let Some(service) = self.service_of.remove(&key) else {
            return;
        };
        let service_key = (key.0, service);
        if let Some(slices) = self.by_service.get_mut(&service_key) {
            slices.remove(name);
            if slices.is_empty() {
                self.by_service.remove(&service_key);
            }
        }
    }
}

#[derive(Debug, Default)]
struct SliceState {
    map: SliceMap,
    ready: bool,
}

/// The EndpointSlices of each Service, fed by a watch of slices.
#[derive(Clone, Debug, Default)]
pub struct SliceIndex(Arc<RwLock<SliceState>>);

/// Applies watch events to a [`SliceIndex`]. A relist (`Init` …
/// `InitDone`) builds a new map and swaps it in whole, so a reader never
/// sees a half-listed Service.
#[derive(Debug)]
pub struct SliceIndexWriter {
    index: SliceIndex,
    relist: Option<SliceMap>,
}

impl SliceIndex {
    pub fn new() -> (Self, SliceIndexWriter) {
        let index = Self::default();
        let writer = SliceIndexWriter {
            index: index.clone(),
            relist: None,
        };
        (index, writer)
    }

    /// The slices of Service `service` in `ns`, in name order.
    pub fn of_service(&self, ns: &str, service: &str) -> Vec<Arc<EndpointSlice>> {
        let state = read(&self.0);
        state
            .map
            .by_service
            .get(&(ns.to_owned(), service.to_owned()))
            .map(|slices| slices.values().cloned().collect())
            .unwrap_or_default()
    }

    /// Slices held, of all Services.
    pub fn len(&self) -> usize {
        read(&self.0).map.service_of.len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Whether a first complete list was applied.
    pub fn is_ready(&self) -> bool {
        read(&self.0).ready
    }
}

impl SliceIndexWriter {
    pub fn apply_watcher_event(&mut self, event: &Event<EndpointSlice>) {
        match event {
            Event::Apply(slice) => write(&self.index.0).map.insert(slice),
            Event::Delete(slice) => write(&self.index.0).map.remove(
                slice.metadata.namespace.as_deref().unwrap_or_default(),
                slice.metadata.name.as_deref().unwrap_or_default(),
            ),
            Event::Init => self.relist = Some(SliceMap::default()),
            Event::InitApply(slice) => self.relist.get_or_insert_default().insert(slice),
            Event::InitDone => {
                let fresh = self.relist.take().unwrap_or_default();
                let mut state = write(&self.index.0);
                state.map = fresh;
                state.ready = true;
            }
        }
    }
}

fn read(lock: &RwLock<SliceState>) -> std::sync::RwLockReadGuard<'_, SliceState> {
    // A panic while holding the lock leaves the map as consistent as any
    // single insert or remove leaves it: keep using it.
    lock.read().unwrap_or_else(|poisoned| poisoned.into_inner())
}

fn write(lock: &RwLock<SliceState>) -> std::sync::RwLockWriteGuard<'_, SliceState> {
    lock.write()
        .unwrap_or_else(|poisoned| poisoned.into_inner())
}

/// Keeps only `keep` of a map of annotations (or labels); `None` when none is left.
fn only(map: &mut Option<BTreeMap<String, String>>, keep: &str) {
    if let Some(m) = map {
        m.retain(|k, _| k == keep);
        if m.is_empty() {
            *map = None;
        }
    }
}

/// What every cached object can do without: who wrote which field, and
/// annotations such as `kubectl.kubernetes.io/last-applied-configuration`,
/// a copy of the whole object.
fn slim_meta(meta: &mut ObjectMeta) {
    meta.managed_fields = None;
    meta.annotations = None;
}

/// A Service as the cache keeps it: name and ports.
/// A pool as the cache keeps it: without its managedFields.
pub fn slim_pool(pool: &mut LoadBalancerPool) {
    pool.metadata.managed_fields = None;
}

pub fn slim_service(svc: &mut Service) {
    slim_meta(&mut svc.metadata);
    svc.metadata.labels = None;
    svc.metadata.owner_references = None;
    let ports = svc.spec.take().and_then(|s| s.ports);
    svc.spec = Some(ServiceSpec {
        ports,
        ..ServiceSpec::default()
    });
    svc.status = None;
}

/// An EndpointSlice as the cache keeps it: its Service label, ports and
/// endpoints (addresses, conditions, pod names, zones).
pub fn slim_slice(slice: &mut EndpointSlice) {
    slim_meta(&mut slice.metadata);
    slice.metadata.owner_references = None;
    only(&mut slice.metadata.labels, SERVICE_NAME_LABEL);
    for e in slice.endpoints.iter_mut().flatten() {
        e.hints = None;
        e.node_name = None;
        e.deprecated_topology = None;
        if let Some(r) = &mut e.target_ref {
            *r = ObjectReference {
                kind: r.kind.take(),
                name: r.name.take(),
                ..ObjectReference::default()
            };
        }
    }
}

/// A Deployment as the cache keeps it: what [`crate::desired::served`] and
/// the claim read.
pub fn slim_deployment(d: &mut Deployment) {
    d.metadata.managed_fields = None;
    d.metadata.labels = None;
    d.metadata.owner_references = None;
    only(&mut d.metadata.annotations, POOL_CLAIM_ANNOTATION);
    let template = &mut d.spec.template;
    // Of the pod spec, only where the stats credentials come from and the
    // images of HAProxy (their tag names its version).
    let containers = template
        .spec
        .take()
        .map(|s| {
            s.containers
                .into_iter()
                .chain(s.init_containers.unwrap_or_default())
        })
        .into_iter()
        .flatten()
        .filter_map(|c| {
            let env: Vec<_> = c
                .env
                .unwrap_or_default()
                .into_iter()
                .filter(|e| lbpool_wire::STATS_ENV.contains(&e.name.as_str()))
                .map(|mut e| {
                    e.value = None;
                    e
                })
                .collect();
            let image = c.image.filter(|i| i.contains("haproxy"));
            (!env.is_empty() || image.is_some()).then(|| Container {
                name: c.name,
                env: (!env.is_empty()).then_some(env),
                image,
                ..Container::default()
            })
        })
        .collect();
    template.spec = Some(PodSpec {
        containers,
        ..PodSpec::default()
    });
    if let Some(m) = &mut template.metadata {
        m.labels = None;
        only(&mut m.annotations, CONFIG_HASH_ANNOTATION);
    }
    // Of the conditions, only a rollout that stopped making progress, and
    // not when it was last looked at (kube-controller-manager renews that).
    if let Some(status) = &mut d.status {
        status.conditions = status.conditions.take().and_then(|conditions| {
            let stuck: Vec<_> = conditions
                .into_iter()
                .filter(|c| {
                    c.type_.as_deref() == Some("Progressing")
                        && c.status.as_deref() == Some("False")
                })
                .map(|c| DeploymentCondition {
                    type_: c.type_,
                    status: c.status,
                    reason: c.reason,
                    message: c.message,
                    ..DeploymentCondition::default()
                })
                .collect();
            (!stuck.is_empty()).then_some(stuck)
        });
    }
}

/// A generated ConfigMap as the cache keeps it: metadata, without the
/// data. The hash annotation stays only if the data really is the config
/// it names; a ConfigMap edited by hand (or emptied) loses it, so it
/// compares unequal to any config lbpool wants and is rewritten.
pub fn slim_config_map(cm: &mut ConfigMap) {
    let text = cm.data.as_ref().and_then(|d| d.get(CONFIG_KEY));
    let consistent = match (text, published_hash(cm)) {
        (Some(text), Some(hash)) => config_hash(text) == hash,
        _ => false,
    };
    cm.metadata.managed_fields = None;
    only(&mut cm.metadata.annotations, CONFIG_HASH_ANNOTATION);
    if !consistent {
        cm.metadata.annotations = None;
    }
    cm.data = None;
    cm.binary_data = None;
}

/// Any ConfigMap's metadata as the cache keeps it: name and owners.
pub fn slim_names<K>(m: &mut PartialObjectMeta<K>) {
    slim_meta(&mut m.metadata);
    m.metadata.labels = None;
}

/// A namespace as the cache keeps it: name and deletion mark.
pub fn slim_namespace(m: &mut PartialObjectMeta<Namespace>) {
    slim_meta(&mut m.metadata);
    m.metadata.labels = None;
    m.metadata.owner_references = None;
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::slice;

    fn in_service(name: &str, service: Option<&str>) -> EndpointSlice {
        let mut s = slice(name, "http", 3000, &[("10.0.0.1", "a", true)]);
        s.metadata.labels =
            service.map(|svc| BTreeMap::from([(SERVICE_NAME_LABEL.into(), svc.into())]));
        s
    }

    fn names(index: &SliceIndex, service: &str) -> Vec<String> {
        index
            .of_service("demo", service)
            .iter()
            .map(|s| s.metadata.name.clone().unwrap_or_default())
            .collect()
    }

    #[test]
    fn the_slice_index_follows_apply_and_delete_events() {
        let (index, mut w) = SliceIndex::new();
        assert!(!index.is_ready());
        w.apply_watcher_event(&Event::Init);
        w.apply_watcher_event(&Event::InitApply(in_service("web-a", Some("web"))));
        assert!(
            names(&index, "web").is_empty(),
            "not swapped in before InitDone"
        );
        w.apply_watcher_event(&Event::InitApply(in_service("api-a", Some("api"))));
        w.apply_watcher_event(&Event::InitDone);
        assert!(index.is_ready());
        assert_eq!(names(&index, "web"), ["web-a"]);

        w.apply_watcher_event(&Event::Apply(in_service("web-b", Some("web"))));
        assert_eq!(names(&index, "web"), ["web-a", "web-b"]);
        // A slice moved to another Service (its label changed) leaves the first.
        w.apply_watcher_event(&Event::Apply(in_service("web-a", Some("api"))));
        assert_eq!(names(&index, "web"), ["web-b"]);
        assert_eq!(names(&index, "api"), ["api-a", "web-a"]);
        // A slice that lost its label is no Service's.
        w.apply_watcher_event(&Event::Apply(in_service("web-b", None)));
        assert!(names(&index, "web").is_empty());
        w.apply_watcher_event(&Event::Delete(in_service("api-a", Some("api"))));
        assert_eq!(names(&index, "api"), ["web-a"]);
        assert_eq!(index.len(), 1);
        // Another namespace is another Service.
        assert!(index.of_service("other", "api").is_empty());

        // A relist replaces everything, including what was deleted unseen.
        w.apply_watcher_event(&Event::Init);
        w.apply_watcher_event(&Event::InitApply(in_service("web-c", Some("web"))));
        w.apply_watcher_event(&Event::InitDone);
        assert_eq!(names(&index, "web"), ["web-c"]);
        assert!(names(&index, "api").is_empty());
        assert_eq!(index.len(), 1);
    }

    #[test]
    fn an_edited_config_map_loses_its_hash_in_the_cache() {
        let text = "global\n";
        let cm = |text: &str, hash: String| {
            let mut cm = ConfigMap {
                data: Some(BTreeMap::from([(CONFIG_KEY.into(), text.into())])),
                ..ConfigMap::default()
            };
            cm.metadata.annotations = Some(BTreeMap::from([
                (CONFIG_HASH_ANNOTATION.into(), hash),
                (
                    "kubectl.kubernetes.io/last-applied-configuration".into(),
                    "{}".into(),
                ),
            ]));
            cm
        };
        let mut ours = cm(text, config_hash(text));
        slim_config_map(&mut ours);
        assert!(ours.data.is_none());
        assert_eq!(published_hash(&ours), Some(config_hash(text).as_str()));
        assert_eq!(
            ours.metadata.annotations.as_ref().map(BTreeMap::len),
            Some(1)
        );
        let mut edited = cm("global\n    maxconn 1\n", config_hash(text));
        slim_config_map(&mut edited);
        assert_eq!(published_hash(&edited), None);
    }

    #[test]
    fn a_slim_deployment_keeps_what_served_and_the_claim_read() {
        let mut d: Deployment = serde_json::from_value(serde_json::json!({
            "metadata": {"name": "haproxy", "namespace": "demo", "generation": 3,
                         "annotations": {POOL_CLAIM_ANNOTATION: "webapp", "big": "x".repeat(1000)}},
            "spec": {"replicas": 2, "selector": {},
                     "template": {"metadata": {"annotations": {CONFIG_HASH_ANNOTATION: "sha256:a", "other": "b"}},
                                  "spec": {"containers": [{"name": "haproxy", "image": "haproxy:3.0"},
                                                          {"name": "sidecar", "image": "busybox:1.36"}]}}},
            "status": {"observedGeneration": 3, "replicas": 2, "updatedReplicas": 2, "readyReplicas": 2,
                       "conditions": [{"type": "Available", "status": "True"},
                                      {"type": "Progressing", "status": "False", "reason": "ProgressDeadlineExceeded",
                                       "message": "ReplicaSet \"haproxy-1\" has timed out progressing.",
                                       "lastUpdateTime": "2026-12-02T00:00:00Z"}]}
        }))
        .expect("deployment");
        let before = crate::desired::served::served(&d);
        assert!(before.stuck.is_some());
        assert_eq!(before.versions.len(), 1, "{:?}", before.versions);
        slim_deployment(&mut d);
        assert_eq!(crate::desired::served::served(&d), before);
        assert_eq!(
            d.metadata.annotations,
            Some(BTreeMap::from([(
                POOL_CLAIM_ANNOTATION.into(),
                "webapp".into()
            )]))
        );
        assert!(serde_json::to_string(&d).expect("json").len() < 600);
    }

    #[tokio::test]
    async fn caches_are_synced_when_every_list_is_complete() {
        let (caches, mut w) = Caches::new();
        assert!(!caches.is_synced());
        w.pools.apply_watcher_event(&Event::InitDone);
        w.services.apply_watcher_event(&Event::InitDone);
        w.slices.apply_watcher_event(&Event::InitDone);
        w.deployments.apply_watcher_event(&Event::InitDone);
        w.config_maps.apply_watcher_event(&Event::InitDone);
        w.config_map_names.apply_watcher_event(&Event::InitDone);
        w.namespaces.apply_watcher_event(&Event::InitDone);
        assert!(!caches.is_synced(), "agents not listed yet");
        w.agents.apply_watcher_event(&Event::InitDone);
        caches.synced().await;
        assert!(caches.is_synced());
    }
}
