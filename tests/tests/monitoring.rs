//! The monitoring component without a cluster: `promtool` checks lbpool's
//! alerts and runs their unit tests (`tests/monitoring/alerts.test.yaml`:
//! each fires on the series that should fire it, silent on healthy ones),
//! and every alert has a test that fires it. The e2e tier
//! (`e2e_monitoring.rs`) evaluates the same rules and the dashboard's
//! queries against a real Prometheus scraping the real node.

use std::process::Command;

use lbpool_tests::monitoring::{alerts, rule_file};
use lbpool_tests::{repo, required_env};

#[test]
fn promtool_checks_the_alerts_and_their_unit_tests_pass() {
    let promtool = required_env(
        "LBPOOL_PROMTOOL",
        "promtool (hack/build-binaries.sh builds it)",
    );
    let dir = std::env::temp_dir().join(format!("lbpool-promtool-{}", std::process::id()));
    std::fs::create_dir_all(&dir).expect("temp dir");
    std::fs::write(dir.join("rules.yaml"), rule_file()).expect("rules.yaml");
    let tests = repo().join("tests/monitoring/alerts.test.yaml");
    std::fs::copy(&tests, dir.join("alerts.test.yaml")).expect("the tests");
    for args in [
        ["check", "rules", "rules.yaml"],
        ["test", "rules", "alerts.test.yaml"],
    ] {
        let out = Command::new(&promtool)
            .args(args)
            .current_dir(&dir)
            .output()
            .unwrap_or_else(|e| panic!("{promtool}: {e}"));
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        println!("promtool {}:\n{text}", args.join(" "));
        assert!(out.status.success(), "promtool {}: {text}", args.join(" "));
    }
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn every_alert_has_a_test_that_fires_it() {
    let text = std::fs::read_to_string(repo().join("tests/monitoring/alerts.test.yaml"))
        .expect("the tests");
    let tests: serde_yaml_ng::Value = serde_yaml_ng::from_str(&text).expect("YAML");
    let fired: Vec<String> = tests["tests"]
        .as_sequence()
        .expect("tests")
        .iter()
        .flat_map(|t| {
            t["alert_rule_test"]
                .as_sequence()
                .cloned()
                .unwrap_or_default()
        })
        .filter(|a| a["exp_alerts"].as_sequence().is_some_and(|e| !e.is_empty()))
        .filter_map(|a| a["alertname"].as_str().map(str::to_owned))
        .collect();
    let names: Vec<String> = alerts().into_iter().map(|(name, _)| name).collect();
    assert!(names.len() >= 7, "{names:?}");
    for name in &names {
        assert!(fired.contains(name), "no test fires {name}");
    }
}

/// The component builds with kustomize, as a user's kustomization uses it:
/// the PodMonitors, the PrometheusRule and the dashboard's ConfigMap, the
/// latter labelled for Grafana's sidecar and holding `dashboard.json`.
#[test]
fn the_monitoring_component_builds_with_kustomize() {
    let dir = repo().join("target/monitoring-kustomization");
    std::fs::create_dir_all(&dir).expect("dir");
    std::fs::write(
        dir.join("kustomization.yaml"),
        "apiVersion: kustomize.config.k8s.io/v1beta1\nkind: Kustomization\ncomponents:\n  - ../../manifests/components/monitoring\n",
    )
    .expect("kustomization");
    let out = lbpool_tests::kubectl(&["kustomize", &dir.display().to_string()])
        .expect("kubectl kustomize");
    let _ = std::fs::remove_dir_all(&dir);
    let objects: Vec<serde_yaml_ng::Value> = out
        .split("\n---\n")
        .map(|doc| serde_yaml_ng::from_str(doc).expect("YAML"))
        .collect();
    let kinds: Vec<&str> = objects.iter().filter_map(|o| o["kind"].as_str()).collect();
    assert_eq!(
        kinds,
        ["ConfigMap", "PodMonitor", "PodMonitor", "PrometheusRule"],
        "{out}"
    );
    let dashboard = &objects[0];
    assert_eq!(dashboard["metadata"]["labels"]["grafana_dashboard"], "1");
    let json = dashboard["data"]["lbpool.json"]
        .as_str()
        .expect("lbpool.json");
    let parsed: serde_json::Value = serde_json::from_str(json).expect("the dashboard's JSON");
    assert_eq!(parsed["uid"], "lbpool");
}
