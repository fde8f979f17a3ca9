//! Fixtures for unit tests: pools, Services, EndpointSlices, models.

use k8s_openapi::api::core::v1::{ObjectReference, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lbpool_crds::{LoadBalancerPool, LoadBalancerPoolSpec};

use crate::model::{self, BackendPort, Model};

/// `demo/webapp`: Service `webapp`, Deployment `haproxy`, every option at its default.
pub fn pool() -> LoadBalancerPool {
    let spec: LoadBalancerPoolSpec = serde_json::from_value(serde_json::json!({
        "backend": {"service": "webapp"},
        "haproxy": {"deployment": "haproxy"},
    }))
    .expect("a minimal spec deserializes with defaults");
    let mut pool = LoadBalancerPool::new("webapp", spec);
    pool.metadata.namespace = Some("demo".into());
    pool.metadata.uid = Some("6f1c7e0a-3c1e-4a55-9d0e-000000000001".into());
    pool.metadata.generation = Some(1);
    pool
}

/// A Service with named ports `(name, port)`.
pub fn service(ports: &[(&str, i32)]) -> Service {
    Service {
        metadata: ObjectMeta {
            name: Some("webapp".into()),
            namespace: Some("demo".into()),
            ..ObjectMeta::default()
        },
        spec: Some(ServiceSpec {
            ports: Some(
                ports
                    .iter()
                    .map(|(name, port)| ServicePort {
                        name: Some((*name).into()),
                        port: *port,
                        target_port: Some(IntOrString::Int(3000)),
                        ..ServicePort::default()
                    })
                    .collect(),
            ),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// An IPv4 EndpointSlice of Service `webapp` with one port; endpoints are `(address, pod, ready)`.
pub fn slice(
    name: &str,
    port_name: &str,
    port: i32,
    endpoints: &[(&str, &str, bool)],
) -> EndpointSlice {
    EndpointSlice {
        metadata: ObjectMeta {
            name: Some(name.into()),
            namespace: Some("demo".into()),
            labels: Some([("kubernetes.io/service-name".to_owned(), "webapp".to_owned())].into()),
            ..ObjectMeta::default()
        },
        address_type: "IPv4".into(),
        ports: Some(vec![EndpointPort {
            name: Some(port_name.into()),
            port: Some(port),
            protocol: Some("TCP".into()),
            ..EndpointPort::default()
        }]),
        endpoints: Some(
            endpoints
                .iter()
                .map(|(address, pod, ready)| Endpoint {
                    addresses: vec![(*address).into()],
                    conditions: Some(EndpointConditions {
                        ready: Some(*ready),
                        serving: Some(*ready),
                        terminating: Some(false),
                    }),
                    target_ref: Some(ObjectReference {
                        kind: Some("Pod".into()),
                        name: Some((*pod).into()),
                        namespace: Some("demo".into()),
                        ..ObjectReference::default()
                    }),
                    ..Endpoint::default()
                })
                .collect(),
        ),
    }
}

/// `n` ready endpoints `webapp-<i>` at 10.244.x.y:3000.
pub fn slices_with(n: usize) -> Vec<EndpointSlice> {
    let eps: Vec<(String, String)> = (0..n)
        .map(|i| {
            (
                format!("10.244.{}.{}", i / 250, i % 250 + 1),
                format!("webapp-{i:05}"),
            )
        })
        .collect();
    let refs: Vec<(&str, &str, bool)> = eps
        .iter()
        .map(|(a, p)| (a.as_str(), p.as_str(), true))
        .collect();
    refs.chunks(100)
        .enumerate()
        .map(|(i, chunk)| slice(&format!("webapp-{i}"), "http", 3000, chunk))
        .collect()
}

/// The model of [`pool`] with `n` servers.
pub fn model_with_servers(n: usize) -> Model {
    let port = BackendPort {
        name: Some("http".into()),
    };
    model::build(&pool(), &port, &slices_with(n)).expect("the default pool is valid")
}

/// Marks the endpoint of pod `pod` in `slice` terminating, serving or not.
pub fn terminating(slice: &mut EndpointSlice, pod: &str, serving: bool) {
    for e in slice.endpoints.iter_mut().flatten() {
        if e.target_ref.as_ref().and_then(|r| r.name.as_deref()) == Some(pod) {
            e.conditions = Some(EndpointConditions {
                ready: Some(false),
                serving: Some(serving),
                terminating: Some(true),
            });
        }
    }
}
