//! `cargo bench -p lbpool-controller --bench render`: the pure path of one
//! reconcile (EndpointSlices -> model -> haproxy.cfg -> sha256) at pool sizes
//! up to 10 000 servers. Prints the median and the 95th percentile of each
//! step; the target is render + hash of 10 000 servers well under 10 ms.

use std::hint::black_box;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use lbpool_controller::model::{self, BackendPort};
use lbpool_controller::render::{Renderer, Template};
use lbpool_crds::LoadBalancerPool;
use lbpool_wire::config_hash;

fn pool() -> LoadBalancerPool {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "lbpool.dev/v1alpha1", "kind": "LoadBalancerPool",
        "metadata": {"name": "webapp", "namespace": "demo"},
        "spec": {"backend": {"service": "webapp"}, "haproxy": {"deployment": "haproxy"},
                 "healthCheck": {"path": "/healthz"}, "stats": {}, "stickySession": {"cookie": "SERVERID"}}
    }))
    .expect("pool")
}

/// `n` ready endpoints in slices of 100, as the endpointslice controller makes them.
fn slices(n: usize) -> Vec<EndpointSlice> {
    let endpoints: Vec<Endpoint> = (0..n)
        .map(|i| Endpoint {
            addresses: vec![format!(
                "10.{}.{}.{}",
                244 + i / 65_000,
                (i / 250) % 256,
                i % 250 + 1
            )],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                serving: Some(true),
                terminating: Some(false),
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                name: Some(format!("webapp-7f9c6d5b8-{i:05x}")),
                ..ObjectReference::default()
            }),
            zone: Some("zone-a".into()),
            ..Endpoint::default()
        })
        .collect();
    endpoints
        .chunks(100)
        .map(|chunk| EndpointSlice {
            address_type: "IPv4".into(),
            endpoints: Some(chunk.to_vec()),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(3000),
                ..EndpointPort::default()
            }]),
            ..EndpointSlice::default()
        })
        .collect()
}

/// Median and 95th percentile of `iterations` runs after one warm-up.
fn measure(iterations: usize, mut f: impl FnMut()) -> (Duration, Duration) {
    f();
    let mut times: Vec<Duration> = (0..iterations)
        .map(|_| {
            let start = Instant::now();
            f();
            start.elapsed()
        })
        .collect();
    times.sort();
    (times[times.len() / 2], times[times.len() * 95 / 100])
}

fn pair((p50, p95): (Duration, Duration)) -> String {
    format!(
        "{:.3} / {:.3} ms",
        p50.as_secs_f64() * 1e3,
        p95.as_secs_f64() * 1e3
    )
}

fn main() {
    let renderer = Renderer::new();
    let pool = pool();
    let port = BackendPort {
        name: Some("http".into()),
    };
    println!(
        "{:>7}  {:>22}  {:>22}  {:>22}  {:>22}  {:>8}",
        "servers",
        "model p50 / p95",
        "render p50 / p95",
        "sha256 p50 / p95",
        "user tpl p50 / p95",
        "cfg"
    );
    let user = "{{#each servers}}server {{name}} {{address}}:{{port}} check\n{{/each}}";
    for n in [100, 1_000, 10_000] {
        let input = slices(n);
        let iterations = if n >= 10_000 { 50 } else { 200 };
        let built = model::build(&pool, &port, &input).expect("model");
        let rendered = renderer.render(Template::BuiltIn, &built).expect("render");
        let model_t = measure(iterations, || {
            black_box(model::build(&pool, &port, black_box(&input)).expect("model"));
        });
        let render_t = measure(iterations, || {
            black_box(
                renderer
                    .render(Template::BuiltIn, black_box(&built))
                    .expect("render"),
            );
        });
        let hash_t = measure(iterations, || {
            black_box(config_hash(black_box(&rendered.text)));
        });
        let user_t = measure(iterations, || {
            let t = Template::User {
                source: user,
                origin: "bench",
            };
            black_box(renderer.render(t, black_box(&built)).expect("render"));
        });
        println!(
            "{n:>7}  {:>22}  {:>22}  {:>22}  {:>22}  {:>5} KiB",
            pair(model_t),
            pair(render_t),
            pair(hash_t),
            pair(user_t),
            rendered.text.len() / 1024
        );
    }
}
