//! Prints the LoadBalancerPool CRD as YAML.
//!
//! `cargo run -p lbpool-crds --bin crdgen > crds/lbpool.dev_loadbalancerpools.yaml`
fn main() {
    print!("{}", lbpool_crds::crd_yaml());
}
