//! PURE: a pool, its Service and its EndpointSlices in; the backend model out.
//!
//! The [`Model`] is everything a template may use, as plain data. Building it
//! validates every user value for its HAProxy context, so rendering cannot
//! smuggle a directive into the config. The same inputs in any order give the
//! same model: servers are deduplicated and sorted by name.

use std::borrow::Borrow;
use std::collections::{BTreeMap, BTreeSet};
use std::net::IpAddr;
use std::time::Duration;

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointSlice};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use lbpool_crds::{LoadBalancerPool, LoadBalancerPoolSpec, LogFormat, ReloadStrategy, syntax};
use serde::Serialize;

use crate::conditions::reason;

/// The data handed to the haproxy.cfg template. Field names are those a
/// template uses, e.g. `{{#each servers}}server {{name}} {{address}}:{{port}}{{/each}}`;
/// the [`Proxy`] fields appear at the top level (`{{balance}}`, `{{stats.port}}`).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Model {
    /// Everything but the servers.
    #[serde(flatten)]
    pub proxy: Proxy,
    /// Ready backends, sorted by name, names unique.
    pub servers: Vec<Server>,
}

impl Model {
    /// This proxy with stand-ins for its servers and its name, the part of
    /// a config that `haproxy -c` can find fault with. Server lines are
    /// built only from values checked here (names, addresses, ports,
    /// cookies); the rest of each line comes from the spec, which the
    /// stand-ins share: a ready IPv4 server and a draining IPv6 one, so
    /// every form a line can take is checked. The pool's name and namespace
    /// (checked DNS names) appear only in a comment and the backend's name,
    /// so pools with the same settings have the same skeleton. The
    /// injection property test shows that any pool and server set on a
    /// skeleton HAProxy accepts is accepted too.
    pub fn skeleton(&self) -> Model {
        let stand_in = |name: &str, address: &str, draining| Server {
            name: name.to_owned(),
            address: address.to_owned(),
            port: 1,
            cookie: name.to_owned(),
            zone: None,
            draining,
        };
        let pool = PoolRef {
            name: "pool".to_owned(),
            namespace: "namespace".to_owned(),
        };
        Model {
            proxy: Proxy {
                backend_name: format!("be_{}", pool.name),
                pool,
                ..self.proxy.clone()
            },
            servers: vec![
                stand_in("stand-in-ipv4", "192.0.2.1", false),
                stand_in("stand-in-ipv6", "2001:db8::1", true),
            ],
        }
    }
}

/// The settings of the proxy, from the pool's spec.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct Proxy {
    /// The pool this config belongs to.
    pub pool: PoolRef,
    /// HAProxy name of the backend section: `be_<pool name>`.
    pub backend_name: String,
    /// The HTTP frontend.
    pub frontend: Frontend,
    /// `balance` keyword: roundrobin, leastconn, source, first or random.
    pub balance: &'static str,
    /// HTTP health check; `null` means a TCP check.
    pub health_check: Option<HttpCheck>,
    /// Sticky-session cookie; `null` means none.
    pub sticky_session: Option<StickySession>,
    /// Stats listener; `null` means disabled.
    pub stats: Option<Stats>,
    /// Timeouts in HAProxy syntax, e.g. `5s`.
    pub timeouts: Timeouts,
    /// HAProxy's Prometheus exporter; `null` means disabled.
    pub metrics: Option<Metrics>,
    /// `true` for JSON access log lines, `false` for HAProxy's `httplog`.
    pub json_log: bool,
    /// `InPlace` only: the Runtime API socket the agent drives (admin level,
    /// handing listeners over on reloads); `null` otherwise.
    pub runtime_api: Option<&'static str>,
    /// `InPlace` only: the `stats-file` that carries the counters of every
    /// object with a `guid` across a reload (the agent dumps it first).
    pub stats_file: Option<&'static str>,
}

/// Where HAProxy's Runtime API listens in an `InPlace` pod (declared, and
/// so allowed, by the checker).
use lbpool_wire::{RUNTIME_API_SOCKET, STATS_FILE};

/// Name and namespace of the pool.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct PoolRef {
    pub name: String,
    pub namespace: String,
}

/// The listening side.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Frontend {
    pub port: u16,
}

/// `option httpchk` settings.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct HttpCheck {
    pub method: &'static str,
    pub path: String,
    pub interval: String,
    pub rise: u8,
    pub fall: u8,
}

/// Cookie-based stickiness.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct StickySession {
    pub cookie: String,
}

/// The stats listener.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Stats {
    pub port: u16,
    pub uri: String,
    /// Basic auth from the `STATS_USERNAME` / `STATS_PASSWORD` environment variables.
    pub auth: bool,
}

/// HAProxy's Prometheus exporter, a frontend of its own.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Metrics {
    pub port: u16,
    /// A plain path (`syntax::is_plain_path`), safe inside an ACL.
    pub path: String,
}

/// Timeouts in HAProxy syntax.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Timeouts {
    pub connect: String,
    pub client: String,
    pub server: String,
}

/// One `server` line.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord, Serialize)]
pub struct Server {
    /// HAProxy identifier derived from the pod name: unique and stable.
    pub name: String,
    /// IPv4 or IPv6 address.
    pub address: String,
    pub port: u16,
    /// Value of the sticky cookie for this server (its name).
    pub cookie: String,
    /// Topology zone, when known. Reported in status, not used by the built-in template.
    pub zone: Option<String>,
    /// A terminating pod that still serves, kept for the sessions its sticky
    /// cookie pins to it: no new sessions (`weight 0`, HAProxy's drain).
    pub draining: bool,
}

/// Why a pool cannot be turned into a config. The last good config stays.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("{message}")]
pub struct InvalidPool {
    /// A `ConfigValid=False` reason from [`reason`].
    pub reason: &'static str,
    /// What is wrong, naming the field.
    pub message: String,
}

impl InvalidPool {
    pub fn new(reason: &'static str, message: impl Into<String>) -> Self {
        Self {
            reason,
            message: message.into(),
        }
    }

    fn spec(field: &str, value: impl std::fmt::Debug, expected: &str) -> Self {
        Self::new(
            reason::INVALID_SPEC,
            format!("spec.{field}: {value:?} is not {expected}"),
        )
    }
}

/// The port the backends listen on, resolved through the Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct BackendPort {
    /// Name of the Service port, `None` for a single unnamed port. EndpointSlice
    /// ports carry the same name.
    pub name: Option<String>,
}

/// Checks the spec and resolves `spec.backend.port` against the Service.
pub fn resolve_port(
    spec: &LoadBalancerPoolSpec,
    service: &Service,
) -> Result<BackendPort, InvalidPool> {
    let svc = &spec.backend.service;
    let ports = service
        .spec
        .as_ref()
        .and_then(|s| s.ports.as_deref())
        .unwrap_or_default();
    let names = || {
        ports
            .iter()
            .map(|p| match &p.name {
                Some(n) => format!("{n} ({})", p.port),
                None => p.port.to_string(),
            })
            .collect::<Vec<_>>()
            .join(", ")
    };
    let found = match &spec.backend.port {
        None if ports.len() == 1 => &ports[0],
        None => {
            return Err(InvalidPool::new(
                reason::PORT_NOT_FOUND,
                format!(
                    "spec.backend.port is required: Service {svc} has {} ports ({})",
                    ports.len(),
                    names()
                ),
            ));
        }
        Some(wanted) => ports
            .iter()
            .find(|p| match wanted {
                IntOrString::Int(n) => p.port == *n,
                IntOrString::String(s) => p.name.as_deref() == Some(s.as_str()),
            })
            .ok_or_else(|| {
                let wanted = match wanted {
                    IntOrString::Int(n) => n.to_string(),
                    IntOrString::String(s) => format!("{s:?}"),
                };
                InvalidPool::new(
                    reason::PORT_NOT_FOUND,
                    format!(
                        "spec.backend.port: Service {svc} has no port {wanted}; it has: {}",
                        names()
                    ),
                )
            })?,
    };
    Ok(BackendPort {
        name: found.name.clone().filter(|n| !n.is_empty()),
    })
}

/// The longest pool name: it is a label value of the generated ConfigMap.
pub const MAX_POOL_NAME: usize = 63;

/// Builds the model. `slices` are the EndpointSlices of the pool's Service.
pub fn build<S: Borrow<EndpointSlice>>(
    pool: &LoadBalancerPool,
    port: &BackendPort,
    slices: &[S],
) -> Result<Model, InvalidPool> {
    let spec = &pool.spec;
    let pool_ref = pool_ref(pool)?;
    if let Some(t) = spec
        .template
        .as_ref()
        .filter(|t| t.config_map == pool.config_map_name())
    {
        return Err(InvalidPool::new(
            reason::INVALID_SPEC,
            format!(
                "spec.haproxy.configMap: {:?} is also spec.template.configMap; the generated config would overwrite the template",
                t.config_map
            ),
        ));
    }
    let frontend = Frontend {
        port: tcp_port(spec.frontend.port, "frontend.port")?,
    };
    Ok(Model {
        proxy: Proxy {
            backend_name: format!("be_{}", pool_ref.name),
            pool: pool_ref,
            balance: spec.balance.keyword(),
            health_check: health_check(spec)?,
            sticky_session: sticky_session(spec)?,
            stats: stats(spec, &frontend)?,
            metrics: metrics(spec, &frontend)?,
            json_log: spec.access_log.format == LogFormat::Json,
            frontend,
            timeouts: Timeouts {
                connect: duration(&spec.timeouts.connect, "timeouts.connect")?,
                client: duration(&spec.timeouts.client, "timeouts.client")?,
                server: duration(&spec.timeouts.server, "timeouts.server")?,
            },
            runtime_api: (spec.reload.strategy == ReloadStrategy::InPlace)
                .then_some(RUNTIME_API_SOCKET),
            stats_file: (spec.reload.strategy == ReloadStrategy::InPlace).then_some(STATS_FILE),
        },
        servers: servers(port, slices, spec.sticky_session.is_some()),
    })
}

/// The pool's namespace and name. The API server guarantees both are DNS
/// names; they reach the config, so they are checked anyway.
fn pool_ref(pool: &LoadBalancerPool) -> Result<PoolRef, InvalidPool> {
    let name = pool.metadata.name.clone().unwrap_or_default();
    let namespace = pool.metadata.namespace.clone().unwrap_or_default();
    if !syntax::is_dns_subdomain(&name) || !syntax::is_dns_label(&namespace) {
        return Err(InvalidPool::new(
            reason::INVALID_SPEC,
            format!("metadata: {namespace:?}/{name:?} is not a valid namespace/name"),
        ));
    }
    if name.len() > MAX_POOL_NAME {
        return Err(InvalidPool::new(
            reason::INVALID_SPEC,
            format!(
                "metadata.name: {} characters; the generated ConfigMap is labelled with the pool's name, and a label value holds at most {MAX_POOL_NAME}",
                name.len()
            ),
        ));
    }
    Ok(PoolRef { name, namespace })
}

fn health_check(spec: &LoadBalancerPoolSpec) -> Result<Option<HttpCheck>, InvalidPool> {
    let Some(hc) = &spec.health_check else {
        return Ok(None);
    };
    Ok(Some(HttpCheck {
        method: hc.method.as_str(),
        path: checked(
            &hc.path,
            "healthCheck.path",
            syntax::is_http_path,
            "an HTTP path",
        )?,
        interval: duration(&hc.interval, "healthCheck.interval")?,
        rise: small(hc.rise, "healthCheck.rise")?,
        fall: small(hc.fall, "healthCheck.fall")?,
    }))
}

fn sticky_session(spec: &LoadBalancerPoolSpec) -> Result<Option<StickySession>, InvalidPool> {
    let Some(s) = &spec.sticky_session else {
        return Ok(None);
    };
    let cookie = checked(
        &s.cookie,
        "stickySession.cookie",
        syntax::is_cookie_name,
        "a cookie name",
    )?;
    Ok(Some(StickySession { cookie }))
}

fn stats(spec: &LoadBalancerPoolSpec, frontend: &Frontend) -> Result<Option<Stats>, InvalidPool> {
    let Some(s) = &spec.stats else {
        return Ok(None);
    };
    let port = port_apart(s.port, "stats.port", &[(frontend.port, "frontend.port")])?;
    Ok(Some(Stats {
        port,
        uri: checked(&s.uri, "stats.uri", syntax::is_http_path, "an HTTP path")?,
        auth: s.auth_secret.is_some(),
    }))
}

fn metrics(
    spec: &LoadBalancerPoolSpec,
    frontend: &Frontend,
) -> Result<Option<Metrics>, InvalidPool> {
    let m = &spec.metrics;
    if !m.enabled {
        return Ok(None);
    }
    let mut taken = vec![(frontend.port, "frontend.port")];
    // An invalid stats.port fails on its own, in `stats`.
    if let Some(stats) = spec.stats.as_ref().and_then(|s| u16::try_from(s.port).ok()) {
        taken.push((stats, "stats.port"));
    }
    let port = port_apart(m.port, "metrics.port", &taken)?;
    Ok(Some(Metrics {
        port,
        path: checked(
            &m.path,
            "metrics.path",
            syntax::is_plain_path,
            "a plain HTTP path",
        )?,
    }))
}

/// `spec.rollout.minInterval`, checked.
pub fn min_rollout_interval(spec: &LoadBalancerPoolSpec) -> Result<Duration, InvalidPool> {
    syntax::parse_duration(&spec.rollout.min_interval).ok_or_else(|| {
        InvalidPool::spec(
            "rollout.minInterval",
            &spec.rollout.min_interval,
            "a duration like 5s",
        )
    })
}

fn checked(
    value: &str,
    field: &str,
    ok: fn(&str) -> bool,
    expected: &str,
) -> Result<String, InvalidPool> {
    if ok(value) {
        Ok(value.to_owned())
    } else {
        Err(InvalidPool::spec(field, value, expected))
    }
}

fn duration(value: &str, field: &str) -> Result<String, InvalidPool> {
    checked(
        value,
        field,
        |v| syntax::parse_duration(v).is_some(),
        "a duration like 5s, 500ms, 1m or 1h",
    )
}

fn tcp_port(value: i32, field: &str) -> Result<u16, InvalidPool> {
    u16::try_from(value)
        .ok()
        .filter(|p| *p > 0)
        .ok_or_else(|| InvalidPool::spec(field, value, "a port from 1 to 65535"))
}

/// A TCP port that none of `taken` (port, field) already is.
fn port_apart(value: i32, field: &str, taken: &[(u16, &str)]) -> Result<u16, InvalidPool> {
    let port = tcp_port(value, field)?;
    match taken.iter().find(|(p, _)| *p == port) {
        Some((_, other)) => Err(InvalidPool::spec(
            field,
            port,
            &format!("different from {other}"),
        )),
        None => Ok(port),
    }
}

fn small(value: i32, field: &str) -> Result<u8, InvalidPool> {
    u8::try_from(value)
        .ok()
        .filter(|v| (1..=100).contains(v))
        .ok_or_else(|| InvalidPool::spec(field, value, "a count from 1 to 100"))
}

/// The endpoints of all slices on the backend port that get traffic:
/// deduplicated by address and port, named after their pods, sorted by name.
///
/// kube-proxy's rule: the ready endpoints; when there is none, those that
/// are terminating but still serving (a rolling update of every pod, or all
/// pods draining) rather than nothing. With a sticky cookie, terminating but
/// serving endpoints also stay beside the ready ones as draining servers, so
/// the sessions pinned to them finish there.
fn servers<S: Borrow<EndpointSlice>>(
    port: &BackendPort,
    slices: &[S],
    sticky: bool,
) -> Vec<Server> {
    let endpoints = endpoints(port, slices);
    let any_ready = endpoints.values().any(|e| e.state == State::Ready);
    let mut taking: Vec<Taking> = endpoints
        .into_iter()
        .filter_map(|((address, port), found)| {
            let draining = match found.state {
                State::Ready => false,
                State::ServingTerminating if !any_ready => false,
                State::ServingTerminating if sticky => true,
                _ => return None,
            };
            Some(Taking {
                name: found.name,
                address,
                port,
                zone: found.zone,
                draining,
            })
        })
        .collect();
    taking.sort();
    let mut servers = named(taking);
    servers.sort();
    servers
}

/// An endpoint as found in the slices.
#[derive(Clone, Debug)]
struct Found {
    /// The name of its server, before duplicates are numbered.
    name: String,
    zone: Option<String>,
    state: State,
}

/// An endpoint that gets traffic, in the order servers are named.
#[derive(Clone, Debug, PartialEq, Eq, PartialOrd, Ord)]
struct Taking {
    name: String,
    address: IpAddr,
    port: u16,
    zone: Option<String>,
    draining: bool,
}

/// Every endpoint on the backend port, by address and port; a BTreeMap
/// makes the result independent of the order of slices and endpoints.
fn endpoints<S: Borrow<EndpointSlice>>(
    port: &BackendPort,
    slices: &[S],
) -> BTreeMap<(IpAddr, u16), Found> {
    let mut endpoints: BTreeMap<(IpAddr, u16), Found> = BTreeMap::new();
    for slice in slices.iter().map(Borrow::borrow) {
        let Some(number) = slice_port(slice, port) else {
            continue;
        };
        for endpoint in slice.endpoints.iter().flatten() {
            let state = state(endpoint);
            // Consumers use the first address only (EndpointSlice API contract).
            let address = endpoint
                .addresses
                .first()
                .and_then(|a| a.parse::<IpAddr>().ok());
            let (Some(address), false) = (address, state == State::Out) else {
                continue;
            };
            let name = base_name(endpoint, address);
            let zone = endpoint.zone.clone().filter(|z| is_label_value(z));
            let entry = endpoints.entry((address, number)).or_insert(Found {
                name: name.clone(),
                zone,
                state,
            });
            // Two slices may briefly list one endpoint; keep the smaller name
            // and the better state so the choice does not depend on slice order.
            if name < entry.name {
                entry.name = name;
            }
            entry.state = entry.state.min(state);
        }
    }
    endpoints
}

/// The number of the backend port in `slice`, if it is an IP slice that has it.
fn slice_port(slice: &EndpointSlice, port: &BackendPort) -> Option<u16> {
    if !matches!(slice.address_type.as_str(), "IPv4" | "IPv6") {
        return None;
    }
    slice
        .ports
        .iter()
        .flatten()
        .find(|p| p.name.as_deref().filter(|n| !n.is_empty()) == port.name.as_deref())
        .and_then(|p| p.port)
        .and_then(|p| u16::try_from(p).ok())
        .filter(|p| *p > 0)
}

/// Servers named after their endpoints; a name taken already gets `-2`,
/// `-3` … in the order given.
fn named(taking: Vec<Taking>) -> Vec<Server> {
    let mut taken = BTreeSet::new();
    taking
        .into_iter()
        .map(|t| {
            let mut name = t.name.clone();
            let mut n = 2;
            while !taken.insert(name.clone()) {
                name = format!("{}-{n}", t.name);
                n += 1;
            }
            Server {
                cookie: name.clone(),
                name,
                address: t.address.to_string(),
                port: t.port,
                zone: t.zone,
                draining: t.draining,
            }
        })
        .collect()
}

/// What an endpoint is good for; the order is preference.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord)]
enum State {
    Ready,
    ServingTerminating,
    Out,
}

/// `ready` unset means unknown, which consumers treat as ready; a terminating
/// endpoint is never ready for new connections, but may still be serving
/// (`serving` unset: as `ready`, its meaning before the field existed).
fn state(endpoint: &Endpoint) -> State {
    let c = endpoint.conditions.as_ref();
    let ready = c.and_then(|c| c.ready).unwrap_or(true);
    let terminating = c.and_then(|c| c.terminating).unwrap_or(false);
    let serving = c.and_then(|c| c.serving).unwrap_or(ready);
    match (terminating, ready, serving) {
        (false, true, _) => State::Ready,
        (true, _, true) => State::ServingTerminating,
        _ => State::Out,
    }
}

/// The pod name (or host name) made an HAProxy identifier: letters, digits,
/// `-`, `_` and `.`; an endpoint with neither is named after its address.
fn base_name(endpoint: &Endpoint, address: IpAddr) -> String {
    let from = endpoint
        .target_ref
        .as_ref()
        .and_then(|r| r.name.as_deref())
        .or(endpoint.hostname.as_deref())
        .unwrap_or_default();
    let mut name: String = from
        .chars()
        .take(63)
        .map(|c| {
            if c.is_ascii_alphanumeric() || "-_.".contains(c) {
                c
            } else {
                '_'
            }
        })
        .collect();
    if name.is_empty() {
        name = format!("ep-{address}").replace([':', '.'], "-");
    }
    name
}

fn is_label_value(s: &str) -> bool {
    s.len() <= 63
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || "-_.".contains(c))
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;
    use crate::testing::{pool, service, slice};

    #[test]
    fn keeps_ready_endpoints_on_the_backend_port_sorted_by_pod_name() {
        let slices = [
            slice(
                "web-a",
                "http",
                3000,
                &[("10.0.0.2", "web-b", true), ("10.0.0.3", "web-c", false)],
            ),
            slice("web-b", "http", 3000, &[("10.0.0.1", "web-a", true)]),
        ];
        let port = resolve_port(&pool().spec, &service(&[("http", 80)])).unwrap();
        let model = build(&pool(), &port, &slices).unwrap();
        let got: Vec<_> = model
            .servers
            .iter()
            .map(|s| (s.name.as_str(), s.address.as_str(), s.port))
            .collect();
        assert_eq!(
            got,
            [("web-a", "10.0.0.1", 3000), ("web-b", "10.0.0.2", 3000)]
        );
    }

    #[test]
    fn an_endpoint_listed_by_two_slices_is_one_server() {
        let slices = [
            slice("s1", "http", 3000, &[("10.0.0.1", "web-a", true)]),
            slice("s2", "http", 3000, &[("10.0.0.1", "web-a", true)]),
        ];
        let port = resolve_port(&pool().spec, &service(&[("http", 80)])).unwrap();
        assert_eq!(build(&pool(), &port, &slices).unwrap().servers.len(), 1);
    }

    #[test]
    fn duplicate_pod_names_get_unique_server_names() {
        let slices = [slice(
            "s1",
            "http",
            3000,
            &[
                ("10.0.0.1", "web", true),
                ("10.0.0.2", "web", true),
                ("10.0.0.3", "web-2", true),
            ],
        )];
        let port = resolve_port(&pool().spec, &service(&[("http", 80)])).unwrap();
        let names: Vec<_> = build(&pool(), &port, &slices)
            .unwrap()
            .servers
            .into_iter()
            .map(|s| s.name)
            .collect();
        let unique: BTreeSet<_> = names.iter().collect();
        assert_eq!(unique.len(), 3, "{names:?}");
    }

    #[test]
    fn hostile_pod_names_become_identifiers() {
        let slices = [slice(
            "s1",
            "http",
            3000,
            &[("10.0.0.1", "a b\n#c\"d", true)],
        )];
        let port = resolve_port(&pool().spec, &service(&[("http", 80)])).unwrap();
        let model = build(&pool(), &port, &slices).unwrap();
        assert_eq!(model.servers[0].name, "a_b__c_d");
    }

    #[test]
    fn addresses_that_are_not_ip_addresses_are_skipped() {
        let slices = [slice(
            "s1",
            "http",
            3000,
            &[("10.0.0.1 backup", "x", true), ("10.0.0.2", "y", true)],
        )];
        let port = resolve_port(&pool().spec, &service(&[("http", 80)])).unwrap();
        let model = build(&pool(), &port, &slices).unwrap();
        assert_eq!(model.servers.len(), 1);
        assert_eq!(model.servers[0].address, "10.0.0.2");
    }

    #[test]
    fn slices_without_the_backend_port_contribute_nothing() {
        let slices = [slice("s1", "metrics", 9090, &[("10.0.0.1", "x", true)])];
        let mut p = pool();
        p.spec.backend.port = Some(IntOrString::String("http".into()));
        let port = resolve_port(&p.spec, &service(&[("http", 80), ("metrics", 9090)])).unwrap();
        assert!(build(&p, &port, &slices).unwrap().servers.is_empty());
    }

    #[test]
    fn port_resolution_names_the_field_and_the_choices() {
        let svc = service(&[("http", 80), ("admin", 8080)]);
        let err = resolve_port(&pool().spec, &svc).unwrap_err();
        assert_eq!(err.reason, reason::PORT_NOT_FOUND);
        assert!(err.message.contains("spec.backend.port"), "{err}");
        assert!(err.message.contains("http (80), admin (8080)"), "{err}");

        let mut p = pool();
        p.spec.backend.port = Some(IntOrString::Int(8080));
        assert_eq!(
            resolve_port(&p.spec, &svc).unwrap().name.as_deref(),
            Some("admin")
        );
        p.spec.backend.port = Some(IntOrString::String("grpc".into()));
        let err = resolve_port(&p.spec, &svc).unwrap_err();
        assert!(err.message.contains("no port \"grpc\""), "{err}");
    }

    #[test]
    fn the_generated_config_map_cannot_be_the_template() {
        let port = BackendPort {
            name: Some("http".into()),
        };
        let mut p = pool();
        p.spec.template = Some(lbpool_crds::TemplateRef {
            config_map: "webapp-haproxy".into(),
            key: "haproxy.cfg.hbs".into(),
        });
        let err = build::<EndpointSlice>(&p, &port, &[]).unwrap_err();
        assert!(err.message.starts_with("spec.haproxy.configMap"), "{err}");
        p.spec.haproxy.config_map = Some("generated".into());
        assert!(build::<EndpointSlice>(&p, &port, &[]).is_ok());
    }

    #[test]
    fn invalid_values_are_rejected_naming_the_field() {
        let port = BackendPort {
            name: Some("http".into()),
        };
        type Mutation = fn(&mut LoadBalancerPool);
        let cases: Vec<(Mutation, &str)> = vec![
            (
                |p| p.spec.timeouts.client = "5 s".into(),
                "spec.timeouts.client",
            ),
            (|p| p.spec.frontend.port = 70000, "spec.frontend.port"),
            (
                |p| {
                    p.spec.sticky_session = Some(lbpool_crds::StickySession {
                        cookie: "ID\n  server evil 1.2.3.4:80".into(),
                    })
                },
                "spec.stickySession.cookie",
            ),
            (
                |p| p.spec.rollout.min_interval = "soon".into(),
                "spec.rollout.minInterval",
            ),
            // A DNS name, but too long for the ConfigMap's label.
            (|p| p.metadata.name = Some("p".repeat(64)), "metadata.name"),
            (
                |p| p.spec.metrics.port = 80,
                "spec.metrics.port: 80 is not different from frontend.port",
            ),
            (
                |p| {
                    p.spec.stats = Some(lbpool_crds::Stats {
                        port: 8405,
                        uri: "/".into(),
                        auth_secret: None,
                    })
                },
                "spec.metrics.port: 8405 is not different from stats.port",
            ),
            (
                |p| p.spec.metrics.path = "/metrics(x)".into(),
                "spec.metrics.path",
            ),
        ];
        for (mutate, field) in cases {
            let mut p = pool();
            mutate(&mut p);
            let err = build::<EndpointSlice>(&p, &port, &[])
                .err()
                .or_else(|| min_rollout_interval(&p.spec).err())
                .unwrap_or_else(|| panic!("{field}: accepted"));
            assert_eq!(err.reason, reason::INVALID_SPEC);
            assert!(err.message.starts_with(field), "{field}: {err}");
        }
    }
}
