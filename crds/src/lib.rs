//! The `LoadBalancerPool` custom resource, `lbpool.dev/v1alpha1`.
//!
//! A pool names a Service whose ready endpoints become HAProxy `server` lines,
//! and an HAProxy Deployment that serves them. The controller renders the
//! config into a ConfigMap and rolls the Deployment when the config changes.
//!
//! Every value here that reaches haproxy.cfg is constrained twice: by the CRD
//! schema (patterns, ranges, CEL rules, so `kubectl apply` names the field at
//! fault) and again by the controller ([`syntax`]), because a stored object
//! may predate a schema change.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::{CustomResource, KubeSchema};
use serde::{Deserialize, Serialize};

pub mod syntax;

/// The API group of every lbpool resource.
pub const GROUP: &str = "lbpool.dev";

/// Desired state of a LoadBalancerPool.
// Each `printcolumn(...)` repeats the same keys, which clippy mistakes for duplicates.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[kube(
    group = "lbpool.dev",
    version = "v1alpha1",
    kind = "LoadBalancerPool",
    plural = "loadbalancerpools",
    shortname = "lbp",
    namespaced,
    status = "LoadBalancerPoolStatus",
    derive = "PartialEq",
    doc = "An HAProxy load balancer whose backends are the ready endpoints of a Service",
    printcolumn(
        name = "Service",
        type_ = "string",
        json_path = ".spec.backend.service"
    ),
    printcolumn(
        name = "Ready",
        type_ = "integer",
        json_path = ".status.readyBackends",
        description = "ready backends in the published config"
    ),
    printcolumn(
        name = "Status",
        type_ = "string",
        json_path = ".status.conditions[?(@.type==\"Ready\")].reason"
    ),
    printcolumn(
        name = "Config",
        type_ = "string",
        json_path = ".status.configRevision",
        description = "short hash of the published haproxy.cfg"
    ),
    printcolumn(
        name = "Served",
        type_ = "string",
        json_path = ".status.haproxy.revision",
        description = "short hash of the config the HAProxy Deployment's pods are rolled for"
    ),
    printcolumn(
        name = "Last Rollout",
        type_ = "date",
        json_path = ".status.lastRolloutTime"
    ),
    printcolumn(
        name = "Strategy",
        type_ = "string",
        json_path = ".spec.reload.strategy",
        description = "how a new config reaches HAProxy",
        priority = "1"
    ),
    printcolumn(
        name = "Serving",
        type_ = "integer",
        json_path = ".status.haproxy.updatedReplicas",
        description = "HAProxy pods serving the Served revision",
        priority = "1"
    ),
    printcolumn(
        name = "Pods",
        type_ = "integer",
        json_path = ".status.haproxy.replicas",
        description = "HAProxy pods the Deployment should run",
        priority = "1"
    ),
    printcolumn(
        name = "Metrics",
        type_ = "integer",
        json_path = ".spec.metrics.port",
        description = "port of HAProxy's Prometheus exporter on each HAProxy pod",
        priority = "1"
    ),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    )
)]
#[kube(validation = Rule::new("size(self.metadata.name) <= 63")
    .message("metadata.name: at most 63 characters (it labels the generated ConfigMap)"))]
#[x_kube(validation = Rule::new("!has(self.stats) || self.stats.port != self.frontend.port")
    .message("stats.port must differ from frontend.port")
    .field_path(".stats.port"))]
#[x_kube(validation = Rule::new("!self.metrics.enabled || self.metrics.port != self.frontend.port")
    .message("metrics.port must differ from frontend.port")
    .field_path(".metrics.port"))]
#[x_kube(validation = Rule::new("!self.metrics.enabled || !has(self.stats) || self.metrics.port != self.stats.port")
    .message("metrics.port must differ from stats.port")
    .field_path(".metrics.port"))]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerPoolSpec {
    /// Where the backends come from: the ready endpoints of a Service in the pool's namespace.
    pub backend: BackendSpec,

    /// The HAProxy Deployment that serves this pool and the ConfigMap it mounts.
    pub haproxy: HaproxySpec,

    /// The listening side of the load balancer.
    #[serde(default)]
    pub frontend: FrontendSpec,

    /// HAProxy load-balancing algorithm.
    #[serde(default)]
    pub balance: Balance,

    /// HTTP health check of each backend. When absent, HAProxy checks that a TCP connection opens.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub health_check: Option<HealthCheck>,

    /// Cookie-based session stickiness. When absent, every request is balanced.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub sticky_session: Option<StickySession>,

    /// HAProxy's statistics page. When absent, no stats listener is configured.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stats: Option<Stats>,

    /// HAProxy timeouts.
    #[serde(default)]
    pub timeouts: Timeouts,

    /// HAProxy's own Prometheus exporter, on every HAProxy pod.
    #[serde(default)]
    pub metrics: Metrics,

    /// HAProxy's access log, one line per request on the HAProxy pods' stdout.
    #[serde(default)]
    pub access_log: AccessLog,

    /// A user template replacing the built-in one. When absent, the built-in template is used.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub template: Option<TemplateRef>,

    /// How often a new config may reach HAProxy.
    #[serde(default)]
    pub rollout: RolloutSpec,

    /// How a new config reaches the HAProxy pods.
    #[serde(default)]
    pub reload: ReloadSpec,
}

/// The Service whose endpoints are the backends.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct BackendSpec {
    /// Name of a Service in the pool's namespace. Its EndpointSlices (label
    /// `kubernetes.io/service-name`) list the backends.
    #[schemars(length(min = 1, max = 63), pattern(syntax::DNS_LABEL))]
    pub service: String,

    /// The Service port whose target port the backends listen on: a port name
    /// or a Service port number. Optional when the Service has exactly one port.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("type(self) == int ? (self >= 1 && self <= 65535) : self.matches('^[a-z0-9]([-a-z0-9]*[a-z0-9])?$') && size(self) <= 15")
        .message("port must be a Service port number (1-65535) or a port name (lowercase letters, digits and '-', at most 15 characters)"))]
    pub port: Option<IntOrString>,
}

/// The HAProxy side of the pool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HaproxySpec {
    /// Name of the HAProxy Deployment in the pool's namespace. The controller
    /// sets only its pod-template annotation `lbpool.dev/config-hash`, which
    /// rolls the pods when the config changes.
    #[schemars(length(min = 1, max = 253), pattern(syntax::DNS_SUBDOMAIN))]
    pub deployment: String,

    /// Name of the ConfigMap the controller writes `haproxy.cfg` into, and the
    /// Deployment mounts. Defaults to `<pool name>-haproxy`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(syntax::DNS_SUBDOMAIN))]
    pub config_map: Option<String>,
}

/// The frontend HAProxy listens on.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct FrontendSpec {
    /// TCP port of the HTTP frontend.
    #[serde(default = "default_frontend_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,
}

impl Default for FrontendSpec {
    fn default() -> Self {
        Self {
            port: default_frontend_port(),
        }
    }
}

fn default_frontend_port() -> i32 {
    80
}

/// HAProxy's `balance` algorithm: `roundrobin` (each server in turn, the
/// default), `leastconn` (fewest connections), `source` (a hash of the client
/// address), `first` (the first server with a free slot) or `random`.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum Balance {
    #[default]
    Roundrobin,
    Leastconn,
    Source,
    First,
    Random,
}

impl Balance {
    /// The keyword HAProxy expects after `balance`.
    pub fn keyword(self) -> &'static str {
        match self {
            Balance::Roundrobin => "roundrobin",
            Balance::Leastconn => "leastconn",
            Balance::Source => "source",
            Balance::First => "first",
            Balance::Random => "random",
        }
    }
}

/// HTTP method of the health check: `HEAD` (the default, as in the lab), `GET` or `OPTIONS`.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "UPPERCASE")]
pub enum CheckMethod {
    #[default]
    Head,
    Get,
    Options,
}

impl CheckMethod {
    /// The method as sent on the wire.
    pub fn as_str(self) -> &'static str {
        match self {
            CheckMethod::Head => "HEAD",
            CheckMethod::Get => "GET",
            CheckMethod::Options => "OPTIONS",
        }
    }
}

/// An HTTP health check (`option httpchk`).
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct HealthCheck {
    /// Request path: starts with `/`; letters, digits and `-._~!&()*+,;=:@%/?` only.
    #[serde(default = "default_check_path")]
    #[schemars(length(min = 1, max = 1024), pattern(syntax::HTTP_PATH))]
    pub path: String,

    /// HTTP method of the check.
    #[serde(default)]
    pub method: CheckMethod,

    /// Time between two checks of one server (HAProxy `inter`), e.g. `2s`, `500ms`.
    #[serde(default = "default_check_interval")]
    #[schemars(length(max = 12), pattern(syntax::DURATION))]
    pub interval: String,

    /// Consecutive successful checks before a server is considered up.
    #[serde(default = "default_rise")]
    #[schemars(range(min = 1, max = 100))]
    pub rise: i32,

    /// Consecutive failed checks before a server is considered down.
    #[serde(default = "default_fall")]
    #[schemars(range(min = 1, max = 100))]
    pub fall: i32,
}

fn default_check_path() -> String {
    "/".into()
}
fn default_check_interval() -> String {
    "2s".into()
}
fn default_rise() -> i32 {
    2
}
fn default_fall() -> i32 {
    3
}

/// Cookie-based stickiness: HAProxy inserts a cookie naming the server.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct StickySession {
    /// Cookie name: letters, digits, `_`, `.` and `-`.
    #[schemars(length(min = 1, max = 64), pattern(syntax::COOKIE_NAME))]
    pub cookie: String,
}

/// HAProxy's statistics page.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Stats {
    /// TCP port of the stats listener.
    #[serde(default = "default_stats_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Path of the stats page: starts with `/`; letters, digits and `-._~!&()*+,;=:@%/?` only.
    #[serde(default = "default_stats_uri")]
    #[schemars(length(min = 1, max = 256), pattern(syntax::HTTP_PATH))]
    pub uri: String,

    /// Protect the page with HTTP basic auth. Names a Secret (keys `username`
    /// and `password`) that the HAProxy pods receive as the environment
    /// variables `STATS_USERNAME` and `STATS_PASSWORD`; the config refers to
    /// those variables, so the password never enters the ConfigMap and the
    /// controller never reads Secrets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 253), pattern(syntax::DNS_SUBDOMAIN))]
    pub auth_secret: Option<String>,
}

fn default_stats_port() -> i32 {
    1936
}
fn default_stats_uri() -> String {
    "/".into()
}

/// HAProxy's built-in Prometheus exporter (`prometheus-exporter`), a
/// frontend of its own: the traffic of the pool's frontend, backend and
/// each server, and HAProxy's process.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Metrics {
    /// Serve the exporter. On by default.
    #[serde(default = "default_true")]
    pub enabled: bool,

    /// TCP port of the exporter.
    #[serde(default = "default_metrics_port")]
    #[schemars(range(min = 1, max = 65535))]
    pub port: i32,

    /// Path of the exporter: starts with `/`; letters, digits and `-._~/` only.
    #[serde(default = "default_metrics_path")]
    #[schemars(length(min = 1, max = 256), pattern(syntax::PLAIN_PATH))]
    pub path: String,
}

impl Default for Metrics {
    fn default() -> Self {
        Self {
            enabled: true,
            port: default_metrics_port(),
            path: default_metrics_path(),
        }
    }
}

fn default_true() -> bool {
    true
}
fn default_metrics_port() -> i32 {
    8405
}
fn default_metrics_path() -> String {
    "/metrics".into()
}

/// HAProxy's access log.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct AccessLog {
    /// `httplog` (HAProxy's own HTTP format, the default) or `json` (one
    /// JSON object a line). Either way each request carries an id, sent to
    /// the backend as `X-Request-ID` and logged.
    #[serde(default)]
    pub format: LogFormat,
}

/// The format of an access log line.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    #[default]
    Httplog,
    Json,
}

/// HAProxy timeouts; durations like `5s`, `500ms`, `1m`.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct Timeouts {
    /// Maximum time to wait for a connection to a backend.
    #[serde(default = "default_connect")]
    #[schemars(length(max = 12), pattern(syntax::DURATION))]
    pub connect: String,

    /// Maximum inactivity time on the client side.
    #[serde(default = "default_client")]
    #[schemars(length(max = 12), pattern(syntax::DURATION))]
    pub client: String,

    /// Maximum inactivity time on the server side.
    #[serde(default = "default_server")]
    #[schemars(length(max = 12), pattern(syntax::DURATION))]
    pub server: String,
}

impl Default for Timeouts {
    fn default() -> Self {
        Self {
            connect: default_connect(),
            client: default_client(),
            server: default_server(),
        }
    }
}

fn default_connect() -> String {
    "5s".into()
}
fn default_client() -> String {
    "50s".into()
}
fn default_server() -> String {
    "50s".into()
}

/// A handlebars template held in a ConfigMap of the pool's namespace.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct TemplateRef {
    /// Name of the ConfigMap holding the template.
    #[schemars(length(min = 1, max = 253), pattern(syntax::DNS_SUBDOMAIN))]
    pub config_map: String,

    /// Key of the template in that ConfigMap.
    #[serde(default = "default_template_key")]
    #[schemars(length(min = 1, max = 253), pattern(syntax::CONFIG_MAP_KEY))]
    pub key: String,
}

fn default_template_key() -> String {
    "haproxy.cfg.hbs".into()
}

/// Rate limit of rollouts.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct RolloutSpec {
    /// Minimum time between two rollouts of the HAProxy Deployment
    /// (`RollingUpdate`) or two configs published to its agents (`InPlace`).
    /// A change inside the interval is published when it ends, so a burst of
    /// endpoint changes gives one or two updates, not one per change.
    #[serde(default = "default_min_interval")]
    #[schemars(length(max = 12), pattern(syntax::DURATION))]
    pub min_interval: String,
}

impl Default for RolloutSpec {
    fn default() -> Self {
        Self {
            min_interval: default_min_interval(),
        }
    }
}

fn default_min_interval() -> String {
    "5s".into()
}

/// How a new config reaches the HAProxy pods.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct ReloadSpec {
    /// `RollingUpdate` (the default) or `InPlace`.
    #[serde(default)]
    pub strategy: ReloadStrategy,
}

/// `RollingUpdate`: each new config rolls the HAProxy Deployment, and new
/// pods load it. `InPlace`: the lbpool agent beside each HAProxy applies it
/// to the running process: server changes through the Runtime API (no
/// reload), anything else with a seamless reload; see
/// `manifests/components/in-place`.
#[derive(
    schemars::JsonSchema, Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq,
)]
pub enum ReloadStrategy {
    #[default]
    RollingUpdate,
    InPlace,
}

/// Observed state of a LoadBalancerPool.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct LoadBalancerPoolStatus {
    /// The `metadata.generation` this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,

    /// The servers in the published config, sorted by name (at most
    /// [`MAX_STATUS_BACKENDS`]; `readyBackends` counts them all).
    #[serde(default)]
    pub backends: Vec<BackendStatus>,

    /// Number of servers in the published config.
    #[serde(default)]
    pub ready_backends: i32,

    /// The ConfigMap holding the published haproxy.cfg.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_map: Option<String>,

    /// `sha256:<hex>` of the published haproxy.cfg.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_hash: Option<String>,

    /// The first 10 hex digits of `configHash`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub config_revision: Option<String>,

    /// When the controller last rolled the HAProxy Deployment (`InPlace`:
    /// last published a config to its agents).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_rollout_time: Option<Time>,

    /// What the HAProxy Deployment serves: the published config may wait
    /// for `rollout.minInterval` or for the rolling update. `Ready` is true
    /// only once every HAProxy pod runs `configRevision`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub haproxy: Option<HaproxyStatus>,

    /// `Ready`, `ConfigValid` and `RolloutPending`.
    #[serde(default)]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

/// The HAProxy Deployment as the pool sees it.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, Default, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct HaproxyStatus {
    /// The first 10 hex digits of the config hash its pod template carries.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub revision: Option<String>,
    /// Pods it should run.
    #[serde(default)]
    pub replicas: i32,
    /// Pods of its current pod template (this revision).
    #[serde(default)]
    pub updated_replicas: i32,
    /// Ready pods, of any revision.
    #[serde(default)]
    pub ready_replicas: i32,
}

/// The most backends listed in `status.backends`; a bigger pool is counted but not listed,
/// which keeps the object far below etcd's size limit.
pub const MAX_STATUS_BACKENDS: usize = 1000;

/// One server of the published config: the lab's `/nodes/<host>` file, as data.
#[derive(KubeSchema, Serialize, Deserialize, Clone, Debug, PartialEq, Eq)]
#[serde(rename_all = "camelCase")]
pub struct BackendStatus {
    /// HAProxy server name, derived from the pod name.
    pub name: String,
    /// Endpoint address.
    pub address: String,
    /// Endpoint port.
    pub port: i32,
    /// Topology zone of the endpoint, when the EndpointSlice names one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub zone: Option<String>,
}

impl LoadBalancerPool {
    /// The ConfigMap the pool's haproxy.cfg is written to.
    pub fn config_map_name(&self) -> String {
        match &self.spec.haproxy.config_map {
            Some(name) => name.clone(),
            None => format!(
                "{}-haproxy",
                self.metadata.name.as_deref().unwrap_or_default()
            ),
        }
    }
}

/// The CRD as YAML, as `crdgen` prints it and `crds/` commits it.
pub fn crd_yaml() -> String {
    use kube::CustomResourceExt;
    let crd = LoadBalancerPool::crd();
    let mut out =
        String::from("# Generated by `cargo run -p lbpool-crds --bin crdgen`; do not edit.\n");
    out.push_str(&serde_yaml_ng::to_string(&crd).expect("a CRD always serializes"));
    out
}
