//! No user value can inject an HAProxy directive.
//!
//! Pools with arbitrary and hostile strings in every field that reaches the
//! config, and arbitrary endpoint sets (hostile pod names and addresses),
//! bypass the CRD schema and go straight to the controller's own validation.
//! Every config it accepts must contain exactly the expected directives
//! (line count, keywords, words per line) and pass the real `haproxy -c`.
//!
//! CI runs proptest's default number of cases; the long run is
//! `PROPTEST_CASES=100000 cargo test -p lbpool-controller --release --test injection`.

use std::sync::OnceLock;
use std::sync::atomic::{AtomicUsize, Ordering};

use k8s_openapi::api::core::v1::ObjectReference;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use lbpool_checker::{HaproxyValidator, Validator};
use lbpool_controller::model::{self, BackendPort, Model};
use lbpool_controller::render::{Renderer, Template};
use lbpool_crds::{
    Balance, CheckMethod, HealthCheck, LoadBalancerPool, LogFormat, Stats, StickySession,
};
use proptest::prelude::*;

/// Strings meant to break out of an HAProxy word or line.
fn hostile() -> impl Strategy<Value = String> {
    prop_oneof![
        "\\PC{0,24}",
        "[ -~\\n\\t\\r]{0,24}",
        Just("/ok\n    server evil 6.6.6.6:80".to_owned()),
        Just("ID\r\nbind :1".to_owned()),
        Just("5s\n    stats enable".to_owned()),
        Just("/\"${HOME}\"".to_owned()),
        Just("/a#comment".to_owned()),
        Just("/a b".to_owned()),
        Just("é".to_owned()),
        Just(String::new()),
    ]
}

/// Mostly valid, sometimes hostile: enough configs get through to be checked.
fn or_hostile(valid: impl Strategy<Value = String> + 'static) -> BoxedStrategy<String> {
    prop_oneof![9 => valid, 1 => hostile()].boxed()
}

fn path() -> BoxedStrategy<String> {
    or_hostile("/[A-Za-z0-9._~!&()*+,;=:@%/?-]{0,12}")
}

fn duration() -> BoxedStrategy<String> {
    or_hostile("[1-9][0-9]{0,2}(ms|s|m)")
}

fn port() -> impl Strategy<Value = i32> {
    prop_oneof![9 => 1..65535i32, 1 => any::<i32>()]
}

#[derive(Clone, Debug)]
struct Ep {
    address: String,
    pod: String,
    ready: bool,
}

fn endpoint() -> impl Strategy<Value = Ep> {
    let address = prop_oneof![
        8 => (1u8..=254, 0u8..=255, 1u8..=254).prop_map(|(a, b, c)| format!("10.{a}.{b}.{c}")),
        1 => (0u16..0xffff).prop_map(|x| format!("fd00::{x:x}")),
        1 => hostile(),
    ];
    let pod = prop_oneof![8 => "[a-z0-9][a-z0-9.-]{0,30}", 2 => hostile()];
    (address, pod, any::<bool>()).prop_map(|(address, pod, ready)| Ep {
        address,
        pod,
        ready,
    })
}

fn slices(endpoints: &[Ep], port: i32) -> Vec<EndpointSlice> {
    endpoints
        .chunks(7)
        .map(|chunk| EndpointSlice {
            address_type: if chunk[0].address.contains(':') {
                "IPv6"
            } else {
                "IPv4"
            }
            .into(),
            ports: Some(vec![EndpointPort {
                name: Some("http".into()),
                port: Some(port),
                ..EndpointPort::default()
            }]),
            endpoints: Some(
                chunk
                    .iter()
                    .map(|e| Endpoint {
                        addresses: vec![e.address.clone()],
                        conditions: Some(EndpointConditions {
                            ready: Some(e.ready),
                            ..EndpointConditions::default()
                        }),
                        target_ref: Some(ObjectReference {
                            name: Some(e.pod.clone()),
                            ..ObjectReference::default()
                        }),
                        ..Endpoint::default()
                    })
                    .collect(),
            ),
            ..EndpointSlice::default()
        })
        .collect()
}

prop_compose! {
    fn pool()(
        balance in prop_oneof![Just(Balance::Roundrobin), Just(Balance::Leastconn), Just(Balance::Source), Just(Balance::First), Just(Balance::Random)],
        frontend in port(),
        check in proptest::option::of((path(), duration(), 0..120i32, 0..120i32)),
        cookie in proptest::option::of(or_hostile("[A-Za-z0-9_.-]{1,16}")),
        stats in proptest::option::of((port(), path(), any::<bool>())),
        timeouts in (duration(), duration(), duration()),
        metrics in (any::<bool>(), port(), prop_oneof![or_hostile("/[A-Za-z0-9._~/-]{0,12}"), path()]),
        json in any::<bool>(),
        name in or_hostile("[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?(\\.[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?){0,3}"),
        namespace in or_hostile("[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?"),
    ) -> LoadBalancerPool {
        let mut pool = lbpool_controller::testing::pool();
        pool.metadata.name = Some(name);
        pool.metadata.namespace = Some(namespace);
        let spec = &mut pool.spec;
        spec.balance = balance;
        spec.frontend.port = frontend;
        spec.health_check = check.map(|(path, interval, rise, fall)| HealthCheck { path, method: CheckMethod::Get, interval, rise, fall });
        spec.sticky_session = cookie.map(|cookie| StickySession { cookie });
        spec.stats = stats.map(|(port, uri, auth)| Stats { port, uri, auth_secret: auth.then(|| "auth".into()) });
        (spec.timeouts.connect, spec.timeouts.client, spec.timeouts.server) = timeouts;
        (spec.metrics.enabled, spec.metrics.port, spec.metrics.path) = metrics;
        spec.access_log.format = if json { LogFormat::Json } else { LogFormat::Httplog };
        pool
    }
}

/// Words per line of each directive the built-in template writes.
fn words(line: &[&str]) -> Option<usize> {
    Some(match (line[0], line.get(1).copied()) {
        ("global" | "defaults", _) => 1,
        ("log", Some("global")) => 2,
        ("log", _) => 7,
        ("unique-id-format", _) => 2,
        // lbpool's JSON format: a quoted constant, split at its spaces.
        ("log-format", Some("\"%{+json}o")) => line.len(),
        (
            "maxconn" | "hard-stop-after" | "mode" | "listen" | "bind" | "frontend"
            | "default_backend" | "backend" | "balance",
            _,
        ) => 2,
        ("option", Some("httpchk")) => 4,
        ("option", _) => 2,
        ("timeout", _) | ("stats", Some("uri" | "auth")) => 3,
        ("stats", _) => 2,
        ("default-server", _) => 7,
        // The stats page's guard, word for word lbpool's.
        ("http-request", Some("deny"))
            if line.join(" ") == lbpool_checker::allowlist::STATS_GUARD =>
        {
            line.len()
        }
        ("http-request", Some("set-log-level")) => 3,
        ("http-request", Some("use-service")) => 8,
        ("http-request", _) => 4,
        ("cookie", _) => 5,
        ("hash-type", _) => 2,
        ("server", _) => 4,
        _ => return None,
    })
}

/// The directives of an accepted config are exactly those the model asks for.
fn assert_exact_directives(model: &Model, text: &str) {
    let lines: Vec<Vec<&str>> = text
        .lines()
        .map(str::trim)
        .filter(|l| !l.is_empty() && !l.starts_with('#'))
        .map(|l| l.split_whitespace().collect())
        .collect();
    let p = &model.proxy;
    // `listen`, bind, enable, uri; with auth the guard and `stats auth`.
    let stats = p.stats.as_ref().map_or(0, |s| 4 + 2 * usize::from(s.auth));
    // `frontend metrics`, bind, silent, the exporter.
    let metrics = if p.metrics.is_some() { 4 } else { 0 };
    // global 4, defaults 9, frontend 5, backend 4, then what the options add.
    let expected = 4
        + 9
        + 5
        + 4
        + stats
        + metrics
        + if p.health_check.is_some() { 2 } else { 0 }
        + usize::from(p.sticky_session.is_some())
        // `balance source` comes with `hash-type consistent`.
        + usize::from(p.balance == "source")
        + model.servers.len();
    assert_eq!(lines.len(), expected, "directive count\n{text}");
    let cookie = usize::from(p.sticky_session.is_some()) * 2;
    let mut servers = model.servers.iter();
    for line in &lines {
        let want = words(line).unwrap_or_else(|| panic!("unexpected directive {line:?}\n{text}"));
        if line[0] == "server" {
            let server = servers.next().expect("a server per line");
            assert_eq!(line.len(), want + cookie, "{line:?}");
            assert_eq!(line[1], server.name);
        } else {
            assert_eq!(line.len(), want, "words in {line:?}\n{text}");
        }
    }
    assert!(servers.next().is_none(), "every server has a line");
}

fn validator() -> &'static (tokio::runtime::Runtime, HaproxyValidator) {
    static V: OnceLock<(tokio::runtime::Runtime, HaproxyValidator)> = OnceLock::new();
    V.get_or_init(|| {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .expect("runtime");
        (rt, lbpool_checker::haproxy::test_validator())
    })
}

static CASES: AtomicUsize = AtomicUsize::new(0);
static ACCEPTED: AtomicUsize = AtomicUsize::new(0);

proptest! {
    #[test]
    fn every_accepted_config_has_exactly_the_expected_directives_and_passes_haproxy(
        pool in pool(),
        endpoints in proptest::collection::vec(endpoint(), 0..12),
        endpoint_port in port(),
    ) {
        CASES.fetch_add(1, Ordering::Relaxed);
        let port = BackendPort { name: Some("http".into()) };
        let Ok(model) = model::build(&pool, &port, &slices(&endpoints, endpoint_port)) else {
            return Ok(());
        };
        let text = Renderer::new().render(Template::BuiltIn, &model).expect("the built-in template renders").text;
        assert_exact_directives(&model, &text);
        // The allowlist never refuses lbpool's own output (the validator
        // applies it too; this says so on its own).
        if let Err(r) = lbpool_checker::check(&text, &lbpool_checker::LBPOOL) {
            panic!("the allowlist refused lbpool's own config: {r}\n{text}");
        }
        let (rt, haproxy) = validator();
        if let Err(e) = rt.block_on(haproxy.check(&text)) {
            panic!("haproxy -c rejected an accepted config: {e}\n{text}");
        }
        let accepted = ACCEPTED.fetch_add(1, Ordering::Relaxed) + 1;
        if accepted.is_multiple_of(1000) {
            eprintln!("{} cases, {accepted} accepted and checked by haproxy -c", CASES.load(Ordering::Relaxed));
        }
    }

    /// The premise of checking only skeletons (issue: validation only where
    /// it can fail): once `haproxy -c` accepts a skeleton (the settings,
    /// stand-in servers, a stand-in pool name), the config of every pool
    /// with those settings, whatever its name and server set, is accepted
    /// too: a change of endpoints needs no check, and pools that share
    /// settings share one.
    #[test]
    fn any_server_set_on_an_accepted_skeleton_passes_haproxy(
        pool in pool(),
        endpoints in proptest::collection::vec(endpoint(), 0..12),
        endpoint_port in port(),
    ) {
        let port = BackendPort { name: Some("http".into()) };
        let Ok(model) = model::build(&pool, &port, &slices(&endpoints, endpoint_port)) else {
            return Ok(());
        };
        let renderer = Renderer::new();
        let skeleton = renderer.render(Template::BuiltIn, &model.skeleton()).expect("the skeleton renders").text;
        let (rt, haproxy) = validator();
        if rt.block_on(haproxy.check(&skeleton)).is_err() {
            return Ok(());
        }
        let text = renderer.render(Template::BuiltIn, &model).expect("the config renders").text;
        if let Err(e) = rt.block_on(haproxy.check(&text)) {
            panic!("haproxy -c accepted the skeleton but rejected its servers: {e}\n{skeleton}\n---\n{text}");
        }
    }
}
