//! Golden configs: each option of the spec rendered by the built-in template
//! (and one user template), compared byte for byte with `tests/golden/*.cfg`
//! and checked by the real `haproxy -c`. `UPDATE_GOLDEN=1 cargo test`
//! rewrites the files; review the diff.

use lbpool_crds::{
    Balance, CheckMethod, HealthCheck, LoadBalancerPool, LogFormat, ReloadStrategy, Stats,
    StickySession,
};

use lbpool_checker::Validator;
use lbpool_checker::haproxy::test_validator as haproxy;
use lbpool_controller::model::{self, BackendPort};
use lbpool_controller::render::{Renderer, Template};
use lbpool_controller::testing::{pool, slices_with};

fn http_check(path: &str) -> HealthCheck {
    HealthCheck {
        path: path.into(),
        method: CheckMethod::Head,
        interval: "2s".into(),
        rise: 2,
        fall: 3,
    }
}

fn stats() -> Stats {
    Stats {
        port: 1936,
        uri: "/".into(),
        auth_secret: None,
    }
}

/// The lab's final haproxy.cfg: HTTP check `HEAD /`, stats on 1936, round robin.
fn lab(p: &mut LoadBalancerPool) {
    p.spec.health_check = Some(http_check("/"));
    p.spec.stats = Some(stats());
}

const USER_TEMPLATE: &str = "\
global
    maxconn 256
defaults
    mode tcp
    timeout connect {{timeouts.connect}}
    timeout client {{timeouts.client}}
    timeout server {{timeouts.server}}
listen {{backendName}}
    bind :{{frontend.port}}
    balance {{balance}}
{{#each servers}}
    server {{name}} {{address}}:{{port}}
{{/each}}
";

type Case = (&'static str, fn(&mut LoadBalancerPool), usize);

fn cases() -> Vec<Case> {
    vec![
        ("lab", lab, 3),
        (
            "balance-leastconn",
            |p| p.spec.balance = Balance::Leastconn,
            3,
        ),
        ("balance-source", |p| p.spec.balance = Balance::Source, 3),
        ("balance-first", |p| p.spec.balance = Balance::First, 3),
        ("balance-random", |p| p.spec.balance = Balance::Random, 3),
        ("tcp-check", |_| {}, 3),
        (
            "in-place",
            |p| p.spec.reload.strategy = ReloadStrategy::InPlace,
            3,
        ),
        (
            "http-check-get",
            |p| {
                p.spec.health_check = Some(HealthCheck {
                    path: "/healthz?full=1".into(),
                    method: CheckMethod::Get,
                    interval: "500ms".into(),
                    rise: 1,
                    fall: 5,
                })
            },
            3,
        ),
        (
            "sticky-cookie",
            |p| {
                lab(p);
                p.spec.sticky_session = Some(StickySession {
                    cookie: "SERVERID".into(),
                });
            },
            3,
        ),
        ("stats-on", |p| p.spec.stats = Some(stats()), 3),
        (
            "stats-auth",
            |p| {
                p.spec.stats = Some(Stats {
                    port: 8404,
                    uri: "/haproxy?stats".into(),
                    auth_secret: Some("stats-auth".into()),
                })
            },
            3,
        ),
        (
            "timeouts",
            |p| {
                p.spec.timeouts.connect = "250ms".into();
                p.spec.timeouts.client = "2m".into();
                p.spec.timeouts.server = "1h".into();
            },
            3,
        ),
        ("frontend-port", |p| p.spec.frontend.port = 8080, 3),
        ("metrics-off", |p| p.spec.metrics.enabled = false, 3),
        (
            "metrics-port",
            |p| {
                p.spec.metrics.port = 9405;
                p.spec.metrics.path = "/haproxy/metrics".into();
            },
            3,
        ),
        (
            "json-log",
            |p| p.spec.access_log.format = LogFormat::Json,
            3,
        ),
        ("no-backends", lab, 0),
    ]
}

fn golden_path(name: &str) -> String {
    format!("{}/tests/golden/{name}.cfg", env!("CARGO_MANIFEST_DIR"))
}

async fn assert_golden(name: &str, text: &str) {
    let path = golden_path(name);
    if std::env::var_os("UPDATE_GOLDEN").is_some() {
        std::fs::write(&path, text).expect("write golden file");
    }
    let want = std::fs::read_to_string(&path)
        .unwrap_or_else(|e| panic!("{path}: {e} (create it with UPDATE_GOLDEN=1 cargo test)"));
    assert!(
        want == text,
        "{name}: rendered config differs from {path}\n--- rendered ---\n{text}"
    );
    if let Err(e) = haproxy().check(text).await {
        panic!("{name}: haproxy -c rejected the golden config: {e}\n{text}");
    }
}

#[tokio::test]
async fn built_in_template_goldens_pass_haproxy() {
    let renderer = Renderer::new();
    let port = BackendPort {
        name: Some("http".into()),
    };
    for (name, mutate, servers) in cases() {
        let mut p = pool();
        mutate(&mut p);
        let model = model::build(&p, &port, &slices_with(servers)).expect("valid case");
        let out = renderer.render(Template::BuiltIn, &model).expect("renders");
        assert_golden(name, &out.text).await;
    }
}

#[tokio::test]
async fn user_template_golden_passes_haproxy() {
    let port = BackendPort {
        name: Some("http".into()),
    };
    let model = model::build(&pool(), &port, &slices_with(3)).expect("valid");
    let out = Renderer::new()
        .render(
            Template::User {
                source: USER_TEMPLATE,
                origin: "my-template/haproxy.cfg.hbs",
            },
            &model,
        )
        .expect("renders");
    assert_golden("user-template", &out.text).await;
}

#[test]
fn shuffled_input_renders_identical_bytes() {
    let renderer = Renderer::new();
    let port = BackendPort {
        name: Some("http".into()),
    };
    let mut p = pool();
    lab(&mut p);
    let slices = slices_with(250);
    let reference = renderer
        .render(
            Template::BuiltIn,
            &model::build(&p, &port, &slices).unwrap(),
        )
        .unwrap();
    // Deterministic permutations: reversed slices, endpoints rotated within each.
    let mut shuffled = slices.clone();
    shuffled.reverse();
    for (i, s) in shuffled.iter_mut().enumerate() {
        let endpoints = s.endpoints.as_mut().expect("fixture slices list endpoints");
        let len = endpoints.len();
        endpoints.rotate_left((i * 7) % len.max(1));
        endpoints.reverse();
    }
    let again = renderer
        .render(
            Template::BuiltIn,
            &model::build(&p, &port, &shuffled).unwrap(),
        )
        .unwrap();
    assert_eq!(reference.hash, again.hash);
    assert_eq!(reference.text, again.text);
}

#[test]
fn lab_config_has_the_lab_directives() {
    let mut p = pool();
    lab(&mut p);
    let port = BackendPort {
        name: Some("http".into()),
    };
    let text = Renderer::new()
        .render(
            Template::BuiltIn,
            &model::build(&p, &port, &slices_with(2)).unwrap(),
        )
        .unwrap()
        .text;
    for directive in [
        "mode http",
        "option httplog",
        "option dontlognull",
        "timeout connect 5s",
        "timeout client 50s",
        "timeout server 50s",
        "listen stats",
        "bind :1936",
        "stats enable",
        "stats uri /",
        "bind :80",
        "default_backend be_webapp",
        "option httpchk HEAD /",
        "balance roundrobin",
        "option forwardfor",
        "http-request set-header X-Forwarded-Port %[dst_port]",
        "server webapp-00000 10.244.0.1:3000 check",
        "server webapp-00001 10.244.0.2:3000 check",
    ] {
        assert!(
            text.lines().any(|l| l.trim() == directive),
            "missing {directive:?} in\n{text}"
        );
    }
}

#[tokio::test]
async fn ipv6_endpoints_render_to_servers_haproxy_accepts() {
    let mut slice = lbpool_controller::testing::slice(
        "v6",
        "http",
        3000,
        &[("fd00:10:244::7", "webapp-v6", true)],
    );
    slice.address_type = "IPv6".into();
    let mut p = pool();
    p.spec.sticky_session = Some(StickySession {
        cookie: "SERVERID".into(),
    });
    let port = BackendPort {
        name: Some("http".into()),
    };
    let text = Renderer::new()
        .render(
            Template::BuiltIn,
            &model::build(&p, &port, &[slice]).unwrap(),
        )
        .unwrap()
        .text;
    assert!(
        text.contains("    server webapp-v6 ipv6@fd00:10:244::7:3000 check cookie webapp-v6\n"),
        "{text}"
    );
    haproxy()
        .check(&text)
        .await
        .expect("haproxy accepts IPv6 servers");
}

/// Three pods; `webapp-b` and `webapp-c` terminating, `webapp-c` no longer
/// serving; with `all_terminating`, `webapp-a` terminating (serving) too.
fn terminating_slice(all_terminating: bool) -> Vec<k8s_openapi::api::discovery::v1::EndpointSlice> {
    use lbpool_controller::testing::{slice, terminating};
    let mut s = slice(
        "ts",
        "http",
        3000,
        &[
            ("10.244.0.7", "webapp-a", true),
            ("10.244.0.8", "webapp-b", true),
            ("10.244.0.9", "webapp-c", true),
        ],
    );
    terminating(&mut s, "webapp-b", true);
    terminating(&mut s, "webapp-c", false);
    if all_terminating {
        terminating(&mut s, "webapp-a", true);
    }
    vec![s]
}

#[tokio::test]
async fn a_sticky_pool_keeps_serving_terminating_pods_draining() {
    let mut p = pool();
    lab(&mut p);
    p.spec.sticky_session = Some(StickySession {
        cookie: "SERVERID".into(),
    });
    let port = BackendPort {
        name: Some("http".into()),
    };
    let model = model::build(&p, &port, &terminating_slice(false)).unwrap();
    let text = Renderer::new()
        .render(Template::BuiltIn, &model)
        .unwrap()
        .text;
    // The ready pod takes new sessions; the serving terminating one keeps
    // its pinned sessions only; the one no longer serving is gone.
    assert_golden("sticky-drain", &text).await;
    assert!(
        text.contains("server webapp-b 10.244.0.8:3000 check cookie webapp-b weight 0\n"),
        "{text}"
    );
    assert!(!text.contains("webapp-c"), "{text}");
}

#[tokio::test]
async fn serving_terminating_pods_serve_when_no_pod_is_ready() {
    let mut p = pool();
    lab(&mut p);
    let port = BackendPort {
        name: Some("http".into()),
    };
    // Some ready: without a sticky cookie, terminating pods get no traffic.
    let some = model::build(&p, &port, &terminating_slice(false)).unwrap();
    let names: Vec<_> = some.servers.iter().map(|s| s.name.as_str()).collect();
    assert_eq!(names, ["webapp-a"]);
    // None ready: kube-proxy's fallback to the serving terminating ones,
    // at full weight, rather than a config without servers.
    let model = model::build(&p, &port, &terminating_slice(true)).unwrap();
    let text = Renderer::new()
        .render(Template::BuiltIn, &model)
        .unwrap()
        .text;
    assert_golden("serving-terminating", &text).await;
    let names: Vec<_> = model
        .servers
        .iter()
        .map(|s| (s.name.as_str(), s.draining))
        .collect();
    assert_eq!(names, [("webapp-a", false), ("webapp-b", false)]);
}
