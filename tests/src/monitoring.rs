//! The monitoring component under test: its alerts (a PrometheusRule whose
//! spec is a plain rule file), its Grafana dashboard's queries, and a real
//! Prometheus (`LBPOOL_PROMETHEUS`, built from its Go module by
//! `hack/build-binaries.sh`) to evaluate them against.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use crate::{eventually, repo, required_env};

/// `manifests/components/monitoring`.
pub fn component() -> PathBuf {
    repo().join("manifests/components/monitoring")
}

/// The PrometheusRule's spec (`groups:`), the rule file Prometheus and
/// promtool read.
pub fn rule_file() -> String {
    let path = component().join("alerts.yaml");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let rule: serde_yaml_ng::Value =
        serde_yaml_ng::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    assert_eq!(
        rule["kind"].as_str(),
        Some("PrometheusRule"),
        "{}",
        path.display()
    );
    serde_yaml_ng::to_string(&rule["spec"]).expect("the spec as YAML")
}

/// Each alert of the rule file: its name and expression.
pub fn alerts() -> Vec<(String, String)> {
    let spec: serde_yaml_ng::Value = serde_yaml_ng::from_str(&rule_file()).expect("the rules");
    let groups = spec["groups"].as_sequence().expect("groups");
    groups
        .iter()
        .flat_map(|g| g["rules"].as_sequence().cloned().unwrap_or_default())
        .map(|r| {
            let name = r["alert"]
                .as_str()
                .expect("every rule is an alert")
                .to_owned();
            let expr = r["expr"].as_str().expect("an expr").to_owned();
            (name, expr)
        })
        .collect()
}

/// Every query of the dashboard, with its panel's title: the panels'
/// targets and the template variables' queries.
pub fn dashboard_queries() -> Vec<(String, String)> {
    let path = component().join("dashboard.json");
    let text = std::fs::read_to_string(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let dashboard: serde_json::Value =
        serde_json::from_str(&text).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    let mut out = Vec::new();
    for panel in dashboard["panels"].as_array().expect("panels") {
        let title = panel["title"].as_str().unwrap_or_default();
        let targets = panel["targets"]
            .as_array()
            .map(Vec::as_slice)
            .unwrap_or_default();
        assert!(!targets.is_empty(), "panel {title:?} has no query");
        for t in targets {
            let expr = t["expr"]
                .as_str()
                .unwrap_or_else(|| panic!("panel {title:?}: a target without expr"));
            out.push((title.to_owned(), expr.to_owned()));
        }
    }
    for var in dashboard["templating"]["list"]
        .as_array()
        .expect("templating")
    {
        if let Some(q) = var["query"]["query"].as_str() {
            // label_values(<selector>, label) is Grafana's: its selector is the query.
            let selector = q
                .strip_prefix("label_values(")
                .and_then(|rest| rest.rsplit_once(','))
                .map_or(q, |(s, _)| s);
            out.push((format!("variable {}", var["name"]), selector.to_owned()));
        }
    }
    out
}

/// `expr` with Grafana's variables set: `$namespace`, `$pool` and the rate
/// window `$__rate_interval`.
pub fn with_variables(expr: &str, namespace: &str, pool: &str, rate: &str) -> String {
    expr.replace("$__rate_interval", rate)
        .replace("$namespace", namespace)
        .replace("$pool", pool)
}

/// The selectors of lbpool's and HAProxy's metrics in `expr`
/// (`haproxy_…{…}`, `lbpool_…`), as written: each must match series on
/// its own, or the expression around it can never say anything.
pub fn selectors(expr: &str) -> Vec<String> {
    let mut out = Vec::new();
    let bytes = expr.as_bytes();
    let mut i = 0;
    while i < bytes.len() {
        let starts = (expr[i..].starts_with("haproxy_") || expr[i..].starts_with("lbpool_"))
            && (i == 0 || !(bytes[i - 1].is_ascii_alphanumeric() || bytes[i - 1] == b'_'));
        if !starts {
            i += 1;
            continue;
        }
        let name_end = expr[i..]
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_' || c == ':'))
            .map_or(expr.len(), |n| i + n);
        let end = if expr[name_end..].starts_with('{') {
            expr[name_end..]
                .find('}')
                .map_or(expr.len(), |n| name_end + n + 1)
        } else {
            name_end
        };
        out.push(expr[i..end].to_owned());
        i = end;
    }
    out
}

/// A Prometheus server on 127.0.0.1 with lbpool's alerts, scraping the
/// cluster of `kubeconfig` every second: pods annotated `prometheus.io/*`
/// (HAProxy's exporter, the controller; honouring the controller's own
/// `namespace` label, the pool's) and every container port named `agent`
/// (the InPlace agents). Stopped when dropped.
#[derive(Debug)]
pub struct Prometheus {
    child: Child,
    port: u16,
    dir: PathBuf,
}

impl Prometheus {
    pub async fn start(kubeconfig: &Path) -> Self {
        let bin = required_env(
            "LBPOOL_PROMETHEUS",
            "the prometheus binary (hack/build-binaries.sh builds it)",
        );
        let dir = std::env::temp_dir().join(format!("lbpool-prometheus-{}", std::process::id()));
        let _ = std::fs::remove_dir_all(&dir);
        std::fs::create_dir_all(&dir).expect("prometheus dir");
        std::fs::write(dir.join("rules.yaml"), rule_file()).expect("rules");
        let port = free_port();
        let config = format!(
            r#"global: {{scrape_interval: 1s, scrape_timeout: 1s, evaluation_interval: 1s}}
rule_files: [rules.yaml]
scrape_configs:
  - job_name: annotated-pods
    # The controller's per-pool series carry the pool's namespace.
    honor_labels: true
    kubernetes_sd_configs: [{{role: pod, kubeconfig_file: "{kubeconfig}"}}]
    relabel_configs:
      - {{source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_scrape], action: keep, regex: "true"}}
      - {{source_labels: [__meta_kubernetes_pod_phase], action: keep, regex: Running}}
      - {{source_labels: [__meta_kubernetes_pod_annotation_prometheus_io_path], target_label: __metrics_path__, regex: (.+)}}
      - {{source_labels: [__address__, __meta_kubernetes_pod_annotation_prometheus_io_port], target_label: __address__, regex: '([^:]+)(?::\d+)?;(\d+)', replacement: '$1:$2'}}
      - {{source_labels: [__meta_kubernetes_namespace], target_label: namespace}}
      - {{source_labels: [__meta_kubernetes_pod_name], target_label: pod}}
  - job_name: agents
    kubernetes_sd_configs: [{{role: pod, kubeconfig_file: "{kubeconfig}"}}]
    relabel_configs:
      - {{source_labels: [__meta_kubernetes_pod_container_port_name], action: keep, regex: agent}}
      - {{source_labels: [__meta_kubernetes_pod_phase], action: keep, regex: Running}}
      - {{source_labels: [__meta_kubernetes_namespace], target_label: namespace}}
      - {{source_labels: [__meta_kubernetes_pod_name], target_label: pod}}
"#,
            kubeconfig = kubeconfig.display()
        );
        std::fs::write(dir.join("prometheus.yml"), config).expect("prometheus.yml");
        let log = std::fs::File::create(dir.join("prometheus.log")).expect("log");
        let child = Command::new(&bin)
            .current_dir(&dir)
            .arg(format!(
                "--config.file={}",
                dir.join("prometheus.yml").display()
            ))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .unwrap_or_else(|e| panic!("start {bin}: {e}"));
        let prometheus = Self { child, port, dir };
        eventually("Prometheus ready", Duration::from_secs(60), || async {
            prometheus.get("/-/ready").map(drop)
        })
        .await;
        prometheus
    }

    fn get(&self, path: &str) -> Result<String, String> {
        curl(&[&format!("http://127.0.0.1:{}{path}", self.port)])
    }

    /// The result of an instant query (`data.result`), or why there is none.
    pub fn query(&self, expr: &str) -> Result<Vec<serde_json::Value>, String> {
        self.api("query", expr, &[])
    }

    /// The result of a range query from `start` to `end` (Unix seconds),
    /// one point per `step` seconds: each series' labels and values.
    pub fn query_range(
        &self,
        expr: &str,
        start: f64,
        end: f64,
        step: f64,
    ) -> Result<Vec<serde_json::Value>, String> {
        let params = [("start", start), ("end", end), ("step", step)];
        self.api("query_range", expr, &params)
    }

    /// `/api/v1/<endpoint>` with `query=expr` and `params`: `data.result`.
    fn api(
        &self,
        endpoint: &str,
        expr: &str,
        params: &[(&str, f64)],
    ) -> Result<Vec<serde_json::Value>, String> {
        let mut args = vec![
            format!("http://127.0.0.1:{}/api/v1/{endpoint}", self.port),
            "--data-urlencode".to_owned(),
            format!("query={expr}"),
        ];
        for (name, value) in params {
            args.extend(["--data-urlencode".to_owned(), format!("{name}={value}")]);
        }
        let out = curl(&args.iter().map(String::as_str).collect::<Vec<_>>())?;
        let v: serde_json::Value = serde_json::from_str(&out).map_err(|e| format!("{e}: {out}"))?;
        if v["status"] != "success" {
            return Err(format!("{expr}: {out}"));
        }
        Ok(v["data"]["result"].as_array().cloned().unwrap_or_default())
    }

    /// The one value of a query whose result is one sample.
    pub fn value(&self, expr: &str) -> Result<f64, String> {
        let result = self.query(expr)?;
        match result.as_slice() {
            [one] => one["value"][1]
                .as_str()
                .and_then(|v| v.parse().ok())
                .ok_or_else(|| format!("{expr}: {one}")),
            other => Err(format!("{expr}: {} samples", other.len())),
        }
    }

    /// `/api/v1/rules`: each rule's name, health and last error.
    pub fn rules(&self) -> Vec<(String, String, String)> {
        let out = self.get("/api/v1/rules").expect("rules");
        let v: serde_json::Value = serde_json::from_str(&out).expect("rules JSON");
        v["data"]["groups"]
            .as_array()
            .into_iter()
            .flatten()
            .flat_map(|g| g["rules"].as_array().cloned().unwrap_or_default())
            .map(|r| {
                let s = |k: &str| r[k].as_str().unwrap_or_default().to_owned();
                (s("name"), s("health"), s("lastError"))
            })
            .collect()
    }

    /// The scrape targets that are not up, with their error.
    pub fn targets_down(&self) -> Vec<String> {
        let out = self.get("/api/v1/targets?state=active").expect("targets");
        let v: serde_json::Value = serde_json::from_str(&out).expect("targets JSON");
        v["data"]["activeTargets"]
            .as_array()
            .into_iter()
            .flatten()
            .filter(|t| t["health"] != "up")
            .map(|t| format!("{} {}: {}", t["scrapePool"], t["scrapeUrl"], t["lastError"]))
            .collect()
    }

    /// Its log, for a failing test.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.join("prometheus.log")).unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

fn curl(args: &[&str]) -> Result<String, String> {
    let out = Command::new("curl")
        .args(["-fsS", "--max-time", "10"])
        .args(args)
        .output()
        .map_err(|e| format!("curl: {e} (hack/deps.sh installs it)"))?;
    if out.status.success() {
        Ok(String::from_utf8_lossy(&out.stdout).into_owned())
    } else {
        Err(format!(
            "curl {args:?}: {}",
            String::from_utf8_lossy(&out.stderr).trim()
        ))
    }
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn selectors_are_found_as_written() {
        assert_eq!(
            selectors(
                r#"sum(rate(haproxy_backend_http_responses_total{proxy=~"be_.+", code="5xx"}[5m])) / (max(lbpool_leader) or vector(0))"#
            ),
            [
                r#"haproxy_backend_http_responses_total{proxy=~"be_.+", code="5xx"}"#,
                "lbpool_leader"
            ]
        );
        assert!(selectors("up{x_haproxy_y=\"1\"}").is_empty());
    }
}
