//! The CRD committed under `crds/` is exactly what the Rust types generate.

#[test]
fn committed_crd_yaml_is_generated_from_the_types() {
    let path = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/lbpool.dev_loadbalancerpools.yaml"
    );
    let committed = std::fs::read_to_string(path).unwrap_or_default();
    let generated = lbpool_crds::crd_yaml();
    assert!(
        committed == generated,
        "{path} is stale; regenerate it with\n  cargo run -p lbpool-crds --bin crdgen > crds/lbpool.dev_loadbalancerpools.yaml"
    );
}
