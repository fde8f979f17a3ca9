//! The CRD committed under `crds/` is exactly what the Rust types generate.

#[test]
fn committed_crd_yaml_is_generated_from_the_types() {
    // Read when the test runs (cargo sets it then too), not baked in at
    // build time: a test binary reused from a build cache made elsewhere
    // still reads this checkout's file.
    let dir =
        std::env::var("CARGO_MANIFEST_DIR").unwrap_or_else(|_| env!("CARGO_MANIFEST_DIR").into());
    let path = format!("{dir}/lbpool.dev_loadbalancerpools.yaml");
    let committed = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("read {path}: {e}"));
    let generated = lbpool_crds::crd_yaml();
    assert!(
        committed == generated,
        "{path} is stale; regenerate it with\n  cargo run -p lbpool-crds --bin crdgen > crds/lbpool.dev_loadbalancerpools.yaml"
    );
}
