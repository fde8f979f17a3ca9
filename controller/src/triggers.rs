//! PURE: which watch events are worth a reconcile. The controller's own
//! writes come back as watch events; reconciling on each would read and
//! compare everything again for nothing.
//!
//! - A pool is reconciled when its spec changes (a new `generation`), when
//!   it is first seen, when its deletion starts and when it is deleted, not
//!   when only its status (written by the controller) or its metadata moves.
//! - A generated ConfigMap is looked at when it no longer holds the config
//!   its hash annotation names (someone edited it) or when it is deleted,
//!   not after the controller's own write, which is consistent by
//!   construction.

use std::collections::HashMap;

use k8s_openapi::api::core::v1::ConfigMap;
use kube::runtime::reflector::ObjectRef;
use kube::runtime::watcher::Event;
use lbpool_crds::LoadBalancerPool;

use crate::desired::{CONFIG_KEY, published_hash};
use crate::render::config_hash;

/// What of a pool a reconcile depends on: its spec (by generation) and
/// whether it is being deleted.
type PoolInputs = (Option<i64>, bool);

fn inputs(pool: &LoadBalancerPool) -> PoolInputs {
    (
        pool.metadata.generation,
        pool.metadata.deletion_timestamp.is_some(),
    )
}

/// Remembers what each pool looked like at its last trigger.
#[derive(Debug, Default)]
pub struct PoolTrigger {
    seen: HashMap<ObjectRef<LoadBalancerPool>, PoolInputs>,
}

impl PoolTrigger {
    /// The pool to reconcile for this event, if any.
    pub fn on(&mut self, event: Event<LoadBalancerPool>) -> Option<LoadBalancerPool> {
        match event {
            Event::Apply(pool) | Event::InitApply(pool) => {
                let now = inputs(&pool);
                let before = self.seen.insert(ObjectRef::from_obj(&pool), now);
                (before != Some(now)).then_some(pool)
            }
            // Reconciled once more, to find it gone and forget it.
            Event::Delete(pool) => {
                self.seen.remove(&ObjectRef::from_obj(&pool));
                Some(pool)
            }
            Event::Init | Event::InitDone => None,
        }
    }

    /// Pools remembered.
    pub fn len(&self) -> usize {
        self.seen.len()
    }

    pub fn is_empty(&self) -> bool {
        self.seen.is_empty()
    }
}

/// The generated ConfigMap to look at for this event, if any.
pub fn config_map_event(event: Event<ConfigMap>) -> Option<ConfigMap> {
    match event {
        Event::Apply(cm) | Event::InitApply(cm) => (!consistent(&cm)).then_some(cm),
        Event::Delete(cm) => Some(cm),
        Event::Init | Event::InitDone => None,
    }
}

/// Whether a ConfigMap holds exactly the config its hash annotation names.
fn consistent(cm: &ConfigMap) -> bool {
    let text = cm.data.as_ref().and_then(|d| d.get(CONFIG_KEY));
    match (text, published_hash(cm)) {
        (Some(text), Some(hash)) => config_hash(text) == hash,
        _ => false,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::pool;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use std::collections::BTreeMap;

    #[test]
    fn a_pool_triggers_on_spec_changes_and_deletion_only() {
        let mut t = PoolTrigger::default();
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

    fn config_map(text: &str, hash: &str) -> ConfigMap {
        let mut cm = ConfigMap {
            data: Some(BTreeMap::from([(CONFIG_KEY.into(), text.into())])),
            ..ConfigMap::default()
        };
        cm.metadata.annotations = Some(BTreeMap::from([(
            crate::desired::CONFIG_HASH_ANNOTATION.into(),
            hash.into(),
        )]));
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
        let mut emptied = ours.clone();
        emptied.data = None;
        assert!(config_map_event(Event::Apply(emptied)).is_some());
        assert!(config_map_event(Event::Delete(ours)).is_some());
    }
}
