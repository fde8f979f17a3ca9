//! PURE: how to go from the config HAProxy runs to the next one.
//!
//! Only the server lines changed: Runtime API commands, no reload. New
//! servers come first (capacity before removal), then weights (a draining
//! server's `weight 0`), then removals. HAProxy creates a server at
//! runtime only with some options (3.0 takes `cookie`, so a sticky pool
//! scales without a reload too); a change it cannot make that way is a
//! seamless reload, like any change outside the server lines.

use crate::config::{Backend, Config};

/// What applying a config takes.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Plan {
    /// The same config.
    Noop,
    /// Server changes the Runtime API makes, in this order.
    Runtime(Vec<Change>),
    /// A reload, and why.
    Reload(String),
}

/// One server change through the Runtime API.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Change {
    /// `add server`, then health checks and traffic enabled. `options`
    /// are the backend's `default-server` options followed by the
    /// server's own: a server added at runtime does not inherit them.
    Add {
        backend: String,
        server: String,
        address: String,
        options: Vec<String>,
    },
    /// `set server … weight`.
    Weight {
        backend: String,
        server: String,
        weight: String,
    },
    /// Into maintenance (no new connection), then `del server` once its
    /// connections are done.
    Remove { backend: String, server: String },
    /// A server back under the name of one still draining (in maintenance,
    /// its connections not done): the same server, moved to `address` if
    /// that changed, given `weight` and taken out of maintenance. `add
    /// server` would fail on the name ("Already exists").
    Revive {
        backend: String,
        server: String,
        address: Option<String>,
        weight: String,
    },
}

/// A server removed while it still had connections: in maintenance until
/// they end, then deleted.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Draining {
    pub backend: String,
    pub server: String,
    /// Its address and options (the backend's `default-server` options,
    /// then its own) when it was removed.
    pub address: String,
    pub options: Vec<String>,
}

impl Draining {
    /// `server` of `backend` in `config`, as it was when removed.
    pub fn of(config: &Config, backend: &str, server: &str) -> Option<Self> {
        let b = config.backends.get(backend)?;
        let s = b.servers.get(server)?;
        Some(Self {
            backend: backend.to_owned(),
            server: server.to_owned(),
            address: s.address.clone(),
            options: b.default_server.iter().chain(&s.options).cloned().collect(),
        })
    }
}

/// Options a server created at runtime accepts (each with its value, if
/// it takes one), of those lbpool's configs use.
const RUNTIME_OPTIONS: &[(&str, bool)] = &[
    ("check", false),
    ("inter", true),
    ("fastinter", true),
    ("downinter", true),
    ("rise", true),
    ("fall", true),
    ("weight", true),
    ("maxconn", true),
    // HAProxy 3.0 ("MINOR: server: allow cookie for dynamic servers").
    ("cookie", true),
    // What finds its counters again in the stats-file after a reload.
    ("guid", true),
];

/// HAProxy's weight of a server whose line names none.
const DEFAULT_WEIGHT: &str = "1";

/// The plan from `running` to `next`.
pub fn plan(running: &Config, next: &Config) -> Plan {
    if running == next {
        return Plan::Noop;
    }
    if running.skeleton != next.skeleton {
        return Plan::Reload("the config changed outside its server lines".into());
    }
    let mut adds = Vec::new();
    let mut weights = Vec::new();
    let mut removes = Vec::new();
    for (name, next_backend) in &next.backends {
        let Some(running_backend) = running.backends.get(name) else {
            return Plan::Reload(format!("backend {name} is new"));
        };
        if let Some(line) = next_backend
            .unreadable
            .as_ref()
            .or(running_backend.unreadable.as_ref())
        {
            return Plan::Reload(format!("backend {name}: cannot read {line:?}"));
        }
        if let Err(reason) = diff(
            name,
            running_backend,
            next_backend,
            &mut adds,
            &mut weights,
            &mut removes,
        ) {
            return Plan::Reload(reason);
        }
    }
    if running.backends.len() != next.backends.len() {
        return Plan::Reload("a backend was removed".into());
    }
    let changes: Vec<Change> = adds.into_iter().chain(weights).chain(removes).collect();
    if changes.is_empty() {
        Plan::Noop
    } else {
        Plan::Runtime(changes)
    }
}

fn diff(
    backend: &str,
    running: &Backend,
    next: &Backend,
    adds: &mut Vec<Change>,
    weights: &mut Vec<Change>,
    removes: &mut Vec<Change>,
) -> Result<(), String> {
    for (server, wanted) in &next.servers {
        match running.servers.get(server) {
            None => {
                let options: Vec<String> = next
                    .default_server
                    .iter()
                    .chain(&wanted.options)
                    .cloned()
                    .collect();
                runtime_options(&options).map_err(|o| {
                    format!("server {backend}/{server}: option {o:?} cannot be set at runtime")
                })?;
                adds.push(Change::Add {
                    backend: backend.to_owned(),
                    server: server.clone(),
                    address: wanted.address.clone(),
                    options,
                });
            }
            Some(have) if have == wanted => {}
            Some(have) => {
                if without_weight(&have.options) != without_weight(&wanted.options)
                    || have.address != wanted.address
                {
                    return Err(format!(
                        "server {backend}/{server} changed beyond its weight"
                    ));
                }
                weights.push(Change::Weight {
                    backend: backend.to_owned(),
                    server: server.clone(),
                    weight: weight(&wanted.options).unwrap_or(DEFAULT_WEIGHT).to_owned(),
                });
            }
        }
    }
    for server in running.servers.keys() {
        if !next.servers.contains_key(server) {
            removes.push(Change::Remove {
                backend: backend.to_owned(),
                server: server.clone(),
            });
        }
    }
    Ok(())
}

/// `Err(option)` for the first option a runtime server does not take.
fn runtime_options(options: &[String]) -> Result<(), String> {
    let mut words = options.iter();
    while let Some(word) = words.next() {
        match RUNTIME_OPTIONS.iter().find(|(name, _)| name == word) {
            Some((_, true)) => {
                words.next().ok_or_else(|| word.clone())?;
            }
            Some((_, false)) => {}
            None => return Err(word.clone()),
        }
    }
    Ok(())
}

/// PURE: `changes` with every `add server` of a name still draining
/// turned into a [`Change::Revive`] of that server, when only its address
/// or weight differ; any other difference stays an `add` (which HAProxy
/// refuses while the name exists: a reload).
pub fn revive(changes: Vec<Change>, draining: &[Draining]) -> Vec<Change> {
    changes
        .into_iter()
        .map(|change| {
            let Change::Add {
                backend,
                server,
                address,
                options,
            } = &change
            else {
                return change;
            };
            let Some(old) = draining
                .iter()
                .find(|d| &d.backend == backend && &d.server == server)
            else {
                return change;
            };
            if without_weight(options) != without_weight(&old.options) {
                return change;
            }
            Change::Revive {
                backend: backend.clone(),
                server: server.clone(),
                address: (*address != old.address).then(|| address.clone()),
                weight: weight(options).unwrap_or(DEFAULT_WEIGHT).to_owned(),
            }
        })
        .collect()
}

/// `(ip, port)` of a server address as lbpool writes it: `10.0.0.7:3000`
/// or `ipv6@2001:db8::7:3000`.
pub fn split_address(address: &str) -> Option<(&str, u16)> {
    let plain = address
        .strip_prefix("ipv6@")
        .or_else(|| address.strip_prefix("ipv4@"))
        .unwrap_or(address);
    let (ip, port) = plain.rsplit_once(':')?;
    Some((
        ip.trim_start_matches('[').trim_end_matches(']'),
        port.parse().ok()?,
    ))
}

fn weight(options: &[String]) -> Option<&str> {
    let at = options.iter().position(|o| o == "weight")?;
    options.get(at + 1).map(String::as_str)
}

/// The options without `weight <w>`.
fn without_weight(options: &[String]) -> Vec<&str> {
    let mut out = Vec::new();
    let mut words = options.iter();
    while let Some(w) = words.next() {
        if w == "weight" {
            words.next();
        } else {
            out.push(w.as_str());
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cfg(servers: &[&str]) -> Config {
        let mut text = String::from(
            "global\n    maxconn 100\nbackend be_web\n    default-server inter 2s rise 2 fall 3\n    balance roundrobin\n",
        );
        for s in servers {
            text.push_str("    server ");
            text.push_str(s);
            text.push('\n');
        }
        Config::parse(&text)
    }

    #[test]
    fn the_same_config_needs_nothing() {
        let c = cfg(&["a 10.0.0.1:80 check"]);
        assert_eq!(plan(&c, &c.clone()), Plan::Noop);
    }

    #[test]
    fn servers_added_and_removed_are_runtime_changes_adds_first() {
        let running = cfg(&["a 10.0.0.1:80 check", "b 10.0.0.2:80 check"]);
        let next = cfg(&["b 10.0.0.2:80 check", "c ipv6@2001:db8::3:80 check"]);
        assert_eq!(
            plan(&running, &next),
            Plan::Runtime(vec![
                Change::Add {
                    backend: "be_web".into(),
                    server: "c".into(),
                    address: "ipv6@2001:db8::3:80".into(),
                    options: ["inter", "2s", "rise", "2", "fall", "3", "check"]
                        .map(String::from)
                        .to_vec(),
                },
                Change::Remove {
                    backend: "be_web".into(),
                    server: "a".into()
                },
            ])
        );
    }

    #[test]
    fn a_draining_server_is_a_weight_change() {
        let running = cfg(&["a 10.0.0.1:80 check"]);
        let draining = cfg(&["a 10.0.0.1:80 check weight 0"]);
        let weight = |w: &str| {
            Plan::Runtime(vec![Change::Weight {
                backend: "be_web".into(),
                server: "a".into(),
                weight: w.into(),
            }])
        };
        assert_eq!(plan(&running, &draining), weight("0"));
        assert_eq!(plan(&draining, &running), weight("1"));
    }

    #[test]
    fn what_the_runtime_api_cannot_do_is_a_reload() {
        let running = cfg(&["a 10.0.0.1:80 check"]);
        let reload = |next: &Config| matches!(plan(&running, next), Plan::Reload(_));
        // An option a runtime server does not take.
        assert!(reload(&cfg(&[
            "a 10.0.0.1:80 check",
            "b 10.0.0.2:80 check send-proxy"
        ])));
        // The same name at another address.
        assert!(reload(&cfg(&["a 10.0.0.9:80 check"])));
        // Anything outside the server lines.
        let mut options = running.clone();
        options.skeleton = options.skeleton.replace("maxconn 100", "maxconn 200");
        assert!(reload(&options));
        // An option missing its value.
        assert!(reload(&cfg(&[
            "a 10.0.0.1:80 check",
            "b 10.0.0.2:80 inter"
        ])));
    }

    #[test]
    fn a_sticky_server_is_added_at_runtime_with_its_cookie() {
        let running = cfg(&["a 10.0.0.1:80 check cookie a"]);
        let next = cfg(&[
            "a 10.0.0.1:80 check cookie a",
            "b 10.0.0.2:80 check cookie b",
        ]);
        match plan(&running, &next) {
            Plan::Runtime(changes) => assert!(
                matches!(&changes[..], [Change::Add { server, options, .. }]
                    if server == "b" && options.ends_with(&["cookie".to_owned(), "b".to_owned()])),
                "{changes:?}"
            ),
            other => panic!("a runtime change: {other:?}"),
        }
    }

    #[test]
    fn an_empty_backend_is_a_runtime_change_too() {
        let running = cfg(&["a 10.0.0.1:80 check"]);
        assert!(matches!(plan(&running, &cfg(&[])), Plan::Runtime(c) if c.len() == 1));
        assert!(matches!(plan(&cfg(&[]), &running), Plan::Runtime(c) if c.len() == 1));
    }

    fn draining(address: &str, options: &[&str]) -> Draining {
        Draining {
            backend: "be_web".into(),
            server: "a".into(),
            address: address.into(),
            options: options.iter().map(|o| (*o).to_owned()).collect(),
        }
    }

    fn add(address: &str) -> Change {
        Change::Add {
            backend: "be_web".into(),
            server: "a".into(),
            address: address.into(),
            options: ["check"].map(String::from).to_vec(),
        }
    }

    #[test]
    fn a_name_back_while_it_drains_is_revived_not_added() {
        // Removed at weight 0 (it was terminating), back at the default.
        let old = [draining("10.0.0.1:80", &["check", "weight", "0"])];
        let revived = |address: Option<&str>| {
            vec![Change::Revive {
                backend: "be_web".into(),
                server: "a".into(),
                address: address.map(String::from),
                weight: "1".into(),
            }]
        };
        assert_eq!(revive(vec![add("10.0.0.1:80")], &old), revived(None));
        // The same name at a new address (a StatefulSet pod): moved.
        assert_eq!(
            revive(vec![add("10.0.0.9:80")], &old),
            revived(Some("10.0.0.9:80"))
        );
        // Other options: left an add (a reload); another name: an add.
        let other = [draining("10.0.0.1:80", &["check", "maxconn", "5"])];
        assert_eq!(
            revive(vec![add("10.0.0.1:80")], &other),
            vec![add("10.0.0.1:80")]
        );
        assert_eq!(
            revive(vec![add("10.0.0.1:80")], &[]),
            vec![add("10.0.0.1:80")]
        );
    }

    #[test]
    fn server_addresses_are_split() {
        assert_eq!(split_address("10.0.0.7:3000"), Some(("10.0.0.7", 3000)));
        assert_eq!(
            split_address("ipv6@2001:db8::7:3000"),
            Some(("2001:db8::7", 3000))
        );
        assert_eq!(split_address("[::1]:80"), Some(("::1", 80)));
        assert_eq!(split_address("10.0.0.7"), None);
    }
}
