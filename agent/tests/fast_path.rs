//! The agent's fast path: a change of server lines as lbpool renders them,
//! on a skeleton HAProxy accepted, is applied without `haproxy -c`. This is
//! the property that makes it safe: any set of such lines on the skeletons
//! lbpool renders passes the allowlist and the real `haproxy -c`.

use std::collections::BTreeSet;

use lbpool_agent::config::Config;
use lbpool_checker::Validator as _;
use proptest::prelude::*;

/// The goldens lbpool renders for an InPlace pool and a sticky one.
const SKELETONS: [&str; 2] = [
    include_str!("../../controller/tests/golden/in-place.cfg"),
    include_str!("../../controller/tests/golden/sticky-cookie.cfg"),
];

/// `golden` with its server lines replaced by `servers` (the backend is
/// its last section).
fn with_servers(golden: &str, servers: &[String]) -> String {
    let mut text: String = golden
        .lines()
        .filter(|l| !l.trim_start().starts_with("server "))
        .flat_map(|l| [l, "\n"])
        .collect();
    for s in servers {
        text.push_str("    ");
        text.push_str(s);
        text.push('\n');
    }
    text
}

fn address() -> impl Strategy<Value = String> {
    prop_oneof![
        (any::<[u8; 4]>(), 1..=u16::MAX)
            .prop_map(|(ip, port)| format!("{}:{port}", std::net::Ipv4Addr::from(ip))),
        (any::<[u16; 8]>(), 1..=u16::MAX)
            .prop_map(|(ip, port)| format!("ipv6@{}:{port}", std::net::Ipv6Addr::from(ip))),
    ]
}

/// Server lines of the grammar lbpool renders: unique pod-like names, any
/// address, `check`, a weight, the cookie a sticky pool gives (the name).
fn servers(sticky: bool) -> impl Strategy<Value = Vec<String>> {
    prop::collection::vec(
        (
            "[a-z0-9][a-z0-9.-]{0,40}",
            address(),
            any::<bool>(),
            prop::option::of(0u16..=256),
            any::<bool>(),
        ),
        0..40,
    )
    .prop_map(move |lines| {
        let mut names = BTreeSet::new();
        lines
            .into_iter()
            .filter(|(name, ..)| names.insert(name.clone()))
            .map(|(name, address, check, weight, guid)| {
                let mut line = format!("server {name} {address}");
                if check {
                    line.push_str(" check");
                }
                if sticky {
                    line.push_str(&format!(" cookie {name}"));
                }
                if guid {
                    line.push_str(&format!(" guid be_webapp.{name}"));
                }
                if let Some(w) = weight {
                    line.push_str(&format!(" weight {w}"));
                }
                line
            })
            .collect()
    })
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 48, ..ProptestConfig::default() })]

    #[test]
    fn any_rendered_server_set_on_an_accepted_skeleton_passes_haproxy(
        skeleton in 0..SKELETONS.len(),
        lines in servers(false),
        sticky_lines in servers(true),
    ) {
        let lines = if skeleton == 1 { sticky_lines } else { lines };
        let text = with_servers(SKELETONS[skeleton], &lines);
        let config = Config::parse(&text);
        prop_assert!(config.servers_rendered(), "the fast path takes it:\n{}", text);
        let verdict = tokio::runtime::Runtime::new()
            .expect("a runtime")
            .block_on(lbpool_checker::haproxy::test_validator().check(&text));
        prop_assert!(verdict.is_ok(), "{:?}\n{}", verdict, text);
    }
}

#[test]
fn the_skeletons_pass_haproxy_as_they_are() {
    for golden in SKELETONS {
        assert!(Config::parse(golden).servers_rendered());
        let verdict = tokio::runtime::Runtime::new()
            .expect("a runtime")
            .block_on(lbpool_checker::haproxy::test_validator().check(golden));
        assert!(verdict.is_ok(), "{verdict:?}");
    }
}

/// `haproxy -c` sees a sample of a large pool's servers (the property
/// above is why that is enough); what it says still names the line of the
/// whole config.
#[test]
fn a_sampled_check_names_the_line_of_the_whole_config() {
    let servers: Vec<String> = (0..200)
        .map(|i| format!("server w-{i} 10.0.{}.{}:3000 check", i / 250, i % 250 + 1))
        .collect();
    let mut text = with_servers(SKELETONS[0], &servers);
    // A keyword HAProxy does not know, past the blanked server lines.
    text.push_str("    timeout tarpit-nope 1s\n");
    let line = text.lines().count();
    let sample = lbpool_agent::config::sample(&text, &lbpool_agent::config::Config::parse(&text));
    assert!(
        sample.len() < text.len() / 2,
        "{} bytes checked",
        sample.len()
    );
    let verdict = tokio::runtime::Runtime::new()
        .expect("a runtime")
        .block_on(lbpool_checker::haproxy::test_validator().check(&sample));
    match verdict {
        Err(lbpool_checker::ValidationError::Refused(r)) => assert_eq!(r.line, line, "{r:?}"),
        Err(lbpool_checker::ValidationError::Rejected(m)) => {
            assert!(m.contains(&format!(":{line}]")), "{m}")
        }
        other => panic!("accepted or not checked: {other:?}"),
    }
}
