//! PURE: the generated ConfigMap, and whether the pool may write it.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::ConfigMap;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use kube::Resource;
use lbpool_crds::LoadBalancerPool;
use lbpool_wire::{
    CONFIG_HASH_ANNOTATION, CONFIG_KEY, FIELD_MANAGER, MANAGED_BY_LABEL, POOL_LABEL,
};

use crate::conditions::reason;
use crate::model::InvalidPool;
use crate::render::RenderedConfig;

/// The ConfigMap holding the pool's haproxy.cfg, owned by the pool so that
/// deleting the pool garbage-collects it.
pub fn build(pool: &LoadBalancerPool, config: &RenderedConfig) -> ConfigMap {
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
/// data is the config the hash names), already holds what [`build`]
/// would write: the same hash, the same labels. Then nothing is sent. (The
/// owner was checked by [`claim`].)
pub fn current(existing: &ConfigMap, desired: &ConfigMap) -> bool {
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
pub fn claim(pool: &LoadBalancerPool, existing: Option<&ObjectMeta>) -> Result<(), InvalidPool> {
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::testing::{model_with_servers, pool};

    #[test]
    fn only_a_config_map_made_for_this_pool_may_be_written() {
        let p = pool();
        let config = crate::render::Renderer::new()
            .render(crate::render::Template::BuiltIn, &model_with_servers(1))
            .expect("render");
        assert!(claim(&p, None).is_ok(), "absent: created");
        let ours = build(&p, &config);
        assert!(
            claim(&p, Some(&ours.metadata)).is_ok(),
            "made for this pool"
        );

        let mut users = ConfigMap::default();
        users.metadata.name = Some(p.config_map_name());
        let e = claim(&p, Some(&users.metadata)).expect_err("a user's");
        assert_eq!(e.reason, reason::CONFIG_MAP_CONFLICT);
        assert!(
            e.message.starts_with("spec.haproxy.configMap:"),
            "{}",
            e.message
        );

        let mut other = pool();
        other.metadata.name = Some("other".into());
        other.metadata.uid = Some("another-uid".into());
        let theirs = build(&other, &config);
        let e = claim(&p, Some(&theirs.metadata)).expect_err("another pool's");
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
        assert!(claim(&reborn, Some(&ours.metadata)).is_err());
    }

    #[test]
    fn an_identical_config_map_is_not_written_again() {
        let p = pool();
        let text = "global\n";
        let config = RenderedConfig {
            text: text.into(),
            hash: lbpool_wire::config_hash(text),
        };
        let want = build(&p, &config);
        let mut have = want.clone();
        // What the API server adds is not a difference.
        have.metadata.resource_version = Some("42".into());
        have.metadata
            .labels
            .get_or_insert_default()
            .insert("team".into(), "web".into());
        crate::cache::slim_config_map(&mut have);
        assert!(current(&have, &want));
        let mut edited = want.clone();
        edited.data = Some(BTreeMap::from([(CONFIG_KEY.into(), "global\n#x\n".into())]));
        crate::cache::slim_config_map(&mut edited);
        assert!(!current(&edited, &want), "an edited config is restored");
        let mut relabelled = have.clone();
        relabelled.metadata.labels = None;
        assert!(!current(&relabelled, &want), "lost labels are restored");
    }

    #[test]
    fn config_map_is_owned_by_the_pool_and_carries_the_hash() {
        let p = pool();
        let rendered = RenderedConfig {
            text: "global\n".into(),
            hash: "sha256:abc".into(),
        };
        let cm = build(&p, &rendered);
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
}
