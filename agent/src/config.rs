//! PURE: the parts of an haproxy.cfg the agent acts on.
//!
//! A config is split into its `server` lines, backend by backend, and
//! everything else (the skeleton, server lines left out). Two configs with
//! the same skeleton differ only in servers, which the Runtime API can
//! change; any other difference needs a reload.

use std::collections::BTreeMap;

/// Keywords that open a section.
const SECTIONS: &[&str] = &[
    "global",
    "defaults",
    "frontend",
    "backend",
    "listen",
    "resolvers",
    "peers",
    "userlist",
    "mailers",
    "program",
    "http-errors",
    "ring",
    "cache",
];

/// A config as the agent sees it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Config {
    /// Every line but the server lines of backends, in order.
    pub skeleton: String,
    /// Backends (and `listen` sections) by name, with their servers.
    pub backends: BTreeMap<String, Backend>,
}

/// The servers of one backend.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Backend {
    /// The words after `default-server`, if the section has one.
    pub default_server: Vec<String>,
    pub servers: BTreeMap<String, Server>,
    /// A server line the agent cannot read word by word (quotes, escapes,
    /// a comment, a repeated name): the backend's servers are left to a
    /// reload.
    pub unreadable: Option<String>,
}

/// One `server <name> <address> [options]` line.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Server {
    /// As written, e.g. `10.0.0.7:3000` or `ipv6@2001:db8::7:3000`.
    pub address: String,
    /// The options after the address, word by word.
    pub options: Vec<String>,
}

impl Config {
    pub fn parse(text: &str) -> Self {
        let mut config = Config::default();
        // The backend whose lines these are, if any.
        let mut current: Option<String> = None;
        for line in text.lines() {
            let words: Vec<&str> = line.split_whitespace().collect();
            match words.first() {
                Some(first) if SECTIONS.contains(first) => {
                    current = matches!(*first, "backend" | "listen")
                        .then(|| words.get(1).map(|n| (*n).to_owned()))
                        .flatten();
                    if let Some(name) = &current {
                        config.backends.entry(name.clone()).or_default();
                    }
                }
                Some(&"server") if current.is_some() => {
                    let backend = current
                        .as_ref()
                        .and_then(|name| config.backends.get_mut(name))
                        .expect("the current backend was entered");
                    read_server(backend, line, &words);
                    continue;
                }
                Some(&"default-server") => {
                    if let Some(backend) = current.as_ref().and_then(|n| config.backends.get_mut(n))
                    {
                        backend.default_server =
                            words[1..].iter().map(|w| (*w).to_owned()).collect();
                    }
                }
                _ => {}
            }
            config.skeleton.push_str(line);
            config.skeleton.push('\n');
        }
        config
    }
}

impl Config {
    /// Whether every server line is of the narrow grammar lbpool renders
    /// ([`Server::rendered`]), no two servers of a backend share a cookie
    /// and no `guid` is used twice in the config (HAProxy refuses that). A
    /// config that differs from an accepted one only in such lines passes
    /// `haproxy -c` too (the property test in `tests/fast_path.rs`), so the
    /// agent applies it without the check, and checks a new skeleton with a
    /// sample of its servers ([`sample`]).
    pub fn servers_rendered(&self) -> bool {
        let mut guids: std::collections::BTreeSet<&str> = self
            .skeleton
            .lines()
            .filter_map(|l| match l.split_whitespace().collect::<Vec<_>>()[..] {
                ["guid", g, ..] => Some(g),
                _ => None,
            })
            .collect();
        self.backends.values().all(|b| {
            let mut cookies = std::collections::BTreeSet::new();
            b.unreadable.is_none()
                && b.servers.iter().all(|(name, server)| {
                    server.rendered(name)
                        && server.cookie().is_none_or(|c| cookies.insert(c))
                        && server.guid().is_none_or(|g| guids.insert(g))
                })
        })
    }
}

/// How many servers of each backend [`sample`] keeps.
pub const SAMPLE: usize = 16;

/// PURE: what `haproxy -c` needs to see of `text` (`parsed` is
/// `Config::parse(text)`, which the caller has at hand): all of it, unless its
/// servers are all of lbpool's grammar ([`Config::servers_rendered`]); then
/// the first [`SAMPLE`] servers of each backend, the other server lines
/// blanked, so HAProxy's messages keep their line numbers. By the property
/// test in `tests/fast_path.rs` the verdict is the same, and it costs what
/// a small pool costs: at 10 000 servers `haproxy -c` takes over a second
/// and about 63 MB, the agent's whole memory limit.
pub fn sample<'a>(text: &'a str, parsed: &Config) -> std::borrow::Cow<'a, str> {
    if !parsed.servers_rendered() {
        return text.into();
    }
    let mut out = String::with_capacity(text.len().min(64 * 1024));
    let mut kept: Option<usize> = None;
    for line in text.lines() {
        match line.split_whitespace().next() {
            Some(first) if SECTIONS.contains(&first) => {
                kept = matches!(first, "backend" | "listen").then_some(0);
            }
            Some("server") => {
                if let Some(n) = kept.as_mut() {
                    *n += 1;
                    if *n > SAMPLE {
                        out.push('\n');
                        continue;
                    }
                }
            }
            _ => {}
        }
        out.push_str(line);
        out.push('\n');
    }
    out.into()
}

/// PURE: the addresses the `bind` lines of `text`'s frontends and
/// `listen` sections name, where they are plain (`:80`, `*:80`,
/// `0.0.0.0:80`, `10.0.0.1:80`, `[::]:80`, `:::80`, with an `ipv4@` or
/// `ipv6@` prefix, several joined by commas); a range, a UNIX socket or a
/// variable is left out.
pub fn binds(text: &str) -> std::collections::BTreeSet<std::net::SocketAddr> {
    use std::net::{IpAddr, Ipv4Addr, SocketAddr};
    let mut out = std::collections::BTreeSet::new();
    let mut in_proxy = false;
    for line in text.lines() {
        let words: Vec<&str> = line.split_whitespace().collect();
        match words.as_slice() {
            [first, ..] if SECTIONS.contains(first) => {
                in_proxy = matches!(*first, "frontend" | "listen");
            }
            ["bind", addresses, ..] if in_proxy => {
                for a in addresses.split(',') {
                    let a = a
                        .strip_prefix("ipv4@")
                        .or_else(|| a.strip_prefix("ipv6@"))
                        .unwrap_or(a);
                    let Some((host, port)) = a.rsplit_once(':') else {
                        continue;
                    };
                    let Ok(port) = port.parse::<u16>() else {
                        continue;
                    };
                    let host = host.trim_start_matches('[').trim_end_matches(']');
                    let ip = match host {
                        "" | "*" => IpAddr::V4(Ipv4Addr::UNSPECIFIED),
                        ":" => IpAddr::V6(std::net::Ipv6Addr::UNSPECIFIED),
                        h => match h.parse() {
                            Ok(ip) => ip,
                            Err(_) => continue,
                        },
                    };
                    out.insert(SocketAddr::new(ip, port));
                }
            }
            _ => {}
        }
    }
    out
}

/// The longest `guid` HAProxy takes.
const GUID_MAX: usize = 127;

/// PURE: the path of the `stats-file` the config's `global` section names.
pub fn stats_file(text: &str) -> Option<&str> {
    let mut global = false;
    for line in text.lines() {
        let mut words = line.split_whitespace();
        match words.next() {
            Some(first) if SECTIONS.contains(&first) => global = first == "global",
            Some("stats-file") if global => return words.next(),
            _ => {}
        }
    }
    None
}

/// The longest server name or cookie lbpool renders: a pod name.
const NAME_MAX: usize = 253;

/// A pod name as lbpool renders it into a server name or cookie.
fn rendered_name(name: &str) -> bool {
    (1..=NAME_MAX).contains(&name.len())
        && name
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_'))
}

/// `10.0.0.7:3000` or `ipv6@2001:db8::7:3000`, port 1 to 65535.
fn rendered_address(address: &str) -> bool {
    let port_ok = |port: &str| port.parse::<u16>().is_ok_and(|p| p > 0);
    match address.strip_prefix("ipv6@") {
        Some(v6) => v6
            .rsplit_once(':')
            .is_some_and(|(ip, port)| ip.parse::<std::net::Ipv6Addr>().is_ok() && port_ok(port)),
        None => address
            .rsplit_once(':')
            .is_some_and(|(ip, port)| ip.parse::<std::net::Ipv4Addr>().is_ok() && port_ok(port)),
    }
}

impl Server {
    /// Whether this is a line lbpool renders: `<name> <address>` and at
    /// most once each `check`, `weight <0-256>`, `cookie <name>`, `guid
    /// <name>` (at most 127 characters).
    pub fn rendered(&self, name: &str) -> bool {
        let mut seen = Vec::new();
        let mut words = self.options.iter();
        while let Some(word) = words.next() {
            if seen.contains(&word) {
                return false;
            }
            seen.push(word);
            let ok = match word.as_str() {
                "check" => true,
                "weight" => words.next().is_some_and(|w| {
                    w.parse::<u16>().is_ok_and(|w| w <= 256) && !w.starts_with('+')
                }),
                "cookie" => words.next().is_some_and(|c| rendered_name(c)),
                "guid" => words
                    .next()
                    .is_some_and(|g| rendered_name(g) && g.len() <= GUID_MAX),
                _ => false,
            };
            if !ok {
                return false;
            }
        }
        rendered_name(name) && rendered_address(&self.address)
    }

    /// The value of its `cookie` option.
    pub fn cookie(&self) -> Option<&str> {
        self.option("cookie")
    }

    /// The value of its `guid` option.
    pub fn guid(&self) -> Option<&str> {
        self.option("guid")
    }

    fn option(&self, keyword: &str) -> Option<&str> {
        let at = self.options.iter().position(|o| o == keyword)?;
        self.options.get(at + 1).map(String::as_str)
    }
}

fn read_server(backend: &mut Backend, line: &str, words: &[&str]) {
    let plain = !line.contains(['"', '\'', '\\', '#']);
    match (plain, words) {
        (true, [_, name, address, options @ ..]) if !backend.servers.contains_key(*name) => {
            backend.servers.insert(
                (*name).to_owned(),
                Server {
                    address: (*address).to_owned(),
                    options: options.iter().map(|o| (*o).to_owned()).collect(),
                },
            );
        }
        _ => {
            backend
                .unreadable
                .get_or_insert_with(|| line.trim().to_owned());
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const CFG: &str = "\
global
    maxconn 4096

defaults
    mode http

frontend fe_http
    bind :8080
    default_backend be_web

backend be_web
    default-server inter 2s rise 2 fall 3
    balance roundrobin
    server web-1 10.244.0.7:3000 check
    server web-2 ipv6@2001:db8::7:3000 check weight 0
";

    #[test]
    fn server_lines_are_read_and_left_out_of_the_skeleton() {
        let c = Config::parse(CFG);
        let be = &c.backends["be_web"];
        assert_eq!(be.default_server, ["inter", "2s", "rise", "2", "fall", "3"]);
        assert_eq!(be.servers.len(), 2);
        assert_eq!(be.servers["web-2"].address, "ipv6@2001:db8::7:3000");
        assert_eq!(be.servers["web-2"].options, ["check", "weight", "0"]);
        assert!(!c.skeleton.contains("server web-"), "{}", c.skeleton);
        assert!(c.skeleton.contains("default-server inter 2s"));
        assert!(be.unreadable.is_none());
        // Another server set, the same skeleton.
        let other = Config::parse(&CFG.replace("10.244.0.7", "10.244.0.9"));
        assert_eq!(other.skeleton, c.skeleton);
        assert_ne!(other.backends, c.backends);
    }

    #[test]
    fn a_line_the_agent_cannot_read_marks_the_backend() {
        let c = Config::parse(&format!("{CFG}    server \"odd name\" 10.0.0.1:80\n"));
        assert!(c.backends["be_web"].unreadable.is_some());
        let twice = Config::parse(&format!("{CFG}    server web-1 10.0.0.1:80\n"));
        assert!(
            twice.backends["be_web"].unreadable.is_some(),
            "a repeated name"
        );
    }

    #[test]
    fn servers_outside_a_backend_stay_in_the_skeleton() {
        // `server` in a resolvers or peers section is not a backend server.
        let c = Config::parse("peers p\n    server a 10.0.0.1:1024\n");
        assert!(c.backends.is_empty());
        assert!(c.skeleton.contains("server a"));
    }

    fn server(address: &str, options: &[&str]) -> Server {
        Server {
            address: address.into(),
            options: options.iter().map(|o| (*o).to_owned()).collect(),
        }
    }

    #[test]
    fn only_the_lines_lbpool_renders_are_rendered() {
        for (name, s) in [
            ("web-1", server("10.244.0.7:3000", &["check"])),
            (
                "web-1",
                server("ipv6@2001:db8::7:3000", &["check", "weight", "0"]),
            ),
            (
                "w.1_a",
                server("10.0.0.1:1", &["check", "cookie", "w.1_a", "weight", "256"]),
            ),
            ("web", server("10.0.0.1:65535", &[])),
        ] {
            assert!(s.rendered(name), "{name} {s:?}");
        }
        for (name, s) in [
            ("web", server("10.0.0.1:80", &["check", "send-proxy"])),
            ("web", server("10.0.0.1:80", &["check", "check"])),
            ("web", server("10.0.0.1:80", &["weight", "257"])),
            ("web", server("10.0.0.1:80", &["weight", "+1"])),
            ("web", server("10.0.0.1:80", &["weight"])),
            ("web", server("10.0.0.1:80", &["cookie", "a,b"])),
            ("web", server("10.0.0.1:80", &["guid", &"g".repeat(128)])),
            ("web", server("10.0.0.1:0", &[])),
            ("web", server("10.0.0.256:80", &[])),
            ("web", server("2001:db8::7:80", &[])),
            ("web", server("example.com:80", &[])),
            ("web", server("unix@/x", &[])),
            ("we/b", server("10.0.0.1:80", &[])),
            ("", server("10.0.0.1:80", &[])),
        ] {
            assert!(!s.rendered(name), "{name} {s:?}");
        }
    }

    #[test]
    fn a_cookie_used_twice_is_not_rendered_by_lbpool() {
        let twice = Config::parse(&format!(
            "{CFG}    server web-3 10.0.0.3:3000 check cookie c\n    server web-4 10.0.0.4:3000 check cookie c\n"
        ));
        assert!(!twice.servers_rendered());
        assert!(Config::parse(CFG).servers_rendered());
    }

    #[test]
    fn a_guid_used_twice_is_not_rendered_by_lbpool() {
        let servers = |a: &str, b: &str| {
            Config::parse(&format!(
                "{CFG}    server web-3 10.0.0.3:3000 guid {a}\n    server web-4 10.0.0.4:3000 guid {b}\n"
            ))
        };
        assert!(servers("be_web.web-3", "be_web.web-4").servers_rendered());
        assert!(!servers("g", "g").servers_rendered());
        // Nor one a proxy has.
        let proxy = CFG.replace("    bind :8080\n", "    guid fe_http\n    bind :8080\n");
        let c = Config::parse(&format!(
            "{proxy}    server web-3 10.0.0.3:3000 guid fe_http\n"
        ));
        assert!(!c.servers_rendered());
    }

    #[test]
    fn haproxy_checks_a_sample_of_lbpools_servers_on_the_same_lines() {
        let many: String = (0..40)
            .map(|i| format!("    server w-{i} 10.0.1.{i}:3000 check\n"))
            .collect();
        let text = format!("{CFG}{many}frontend after\n    bind :81\n");
        let sample = sample(&text, &Config::parse(&text));
        assert_eq!(sample.lines().count(), text.lines().count());
        let kept = Config::parse(&sample);
        assert_eq!(kept.backends["be_web"].servers.len(), SAMPLE);
        let words = |t: &str| {
            t.lines()
                .filter(|l| !l.is_empty())
                .collect::<Vec<_>>()
                .join("\n")
        };
        assert_eq!(words(&kept.skeleton), words(&Config::parse(&text).skeleton));
        let at = |t: &str, l: &str| t.lines().position(|x| x == l);
        assert_eq!(at(&sample, "frontend after"), at(&text, "frontend after"));
        // A line that is not lbpool's: all of it is checked.
        let odd = format!("{text}backend b2\n    server x 10.0.0.1:80 send-proxy\n");
        assert_eq!(super::sample(&odd, &Config::parse(&odd)), odd);
    }

    #[test]
    fn the_addresses_of_bind_lines_are_read() {
        let text = "frontend fe\n    bind :80\n    bind 10.0.0.1:81,ipv6@[::1]:82\n    bind :::83 ssl\n\
listen stats\n    bind *:1936\n    bind :8000-8010\n    bind unix@/x\n\
backend be\n    bind :99\npeers p\n    bind :10000\n";
        let want: std::collections::BTreeSet<std::net::SocketAddr> = [
            "0.0.0.0:80",
            "10.0.0.1:81",
            "[::1]:82",
            "[::]:83",
            "0.0.0.0:1936",
        ]
        .iter()
        .map(|a| a.parse().expect("an address"))
        .collect();
        assert_eq!(binds(text), want);
    }

    #[test]
    fn the_stats_file_is_read_off_the_global_section() {
        assert_eq!(
            stats_file("global\n    stats-file /run/haproxy/haproxy.stats\ndefaults\n"),
            Some("/run/haproxy/haproxy.stats")
        );
        assert_eq!(stats_file("defaults\n    stats-file /x\n"), None);
        assert_eq!(stats_file(CFG), None);
    }
}
