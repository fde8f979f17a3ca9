//! End to end, monitoring: a real Prometheus (built from its Go module)
//! discovers the real node's pods through the API server, as one in the
//! cluster would: the HAProxy pods and the controller by their
//! `prometheus.io/*` annotations, the InPlace agents by their port named
//! `agent`. Under traffic and a 2→6→2 scale it counts the requests the load
//! generator sent; afterwards every dashboard query and every metric an
//! alert reads must match series, and every rule evaluates. The demo
//! pool's JSON access log parses line by line and carries the request id
//! the webapp received. The panels' data over the run is written to
//! `$LBPOOL_TEST_ARTIFACTS/dashboard-data.json`, from which
//! `hack/dashboard-png.py` draws the README's picture of the dashboard.
//! `hack/test.sh` runs this tier after `e2e_in_place.rs`.

use std::time::Duration;

use lbpool_tests::e2e::{Load, NS, demo_in_place, serial};
use lbpool_tests::monitoring::{Prometheus, alerts, dashboard_queries, selectors, with_variables};
use lbpool_tests::{admin_kubeconfig, eventually, http, kubectl};

fn unix_now() -> f64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .expect("after 1970")
        .as_secs_f64()
}

/// Each panel's queries over `start..end` (a 5 s rate window, one point a
/// second), for `hack/dashboard-png.py`.
fn write_panel_data(prometheus: &Prometheus, queries: &[(String, String)], start: f64, end: f64) {
    let panels: Vec<serde_json::Value> = queries
        .iter()
        .filter(|(panel, _)| !panel.starts_with("variable "))
        .map(|(panel, expr)| {
            let expr = with_variables(expr, NS, "webapp", "5s");
            let series = prometheus
                .query_range(&expr, start, end, 1.0)
                .unwrap_or_else(|e| panic!("{panel}: {e}"));
            serde_json::json!({"panel": panel, "expr": expr, "series": series})
        })
        .collect();
    let dir = std::env::var("LBPOOL_TEST_ARTIFACTS").map_or_else(
        |_| lbpool_tests::repo().join("target/test-artifacts"),
        Into::into,
    );
    std::fs::create_dir_all(&dir).expect("artifacts dir");
    let path = std::path::Path::new(&dir).join("dashboard-data.json");
    let data = serde_json::json!({"start": start, "end": end, "panels": panels});
    std::fs::write(&path, serde_json::to_string(&data).expect("JSON"))
        .expect("write the panels' data");
    println!("the dashboard's data over the run: {}", path.display());
}

const REQUESTS: &str =
    r#"sum(haproxy_backend_http_requests_total{namespace="demo", proxy="be_webapp"})"#;

/// The pool's request count once two scrapes a few seconds apart agree.
async fn settled_requests(prometheus: &Prometheus, what: &str) -> f64 {
    eventually(what, Duration::from_secs(120), || async {
        let first = prometheus.value(REQUESTS)?;
        tokio::time::sleep(Duration::from_millis(2500)).await;
        let second = prometheus.value(REQUESTS)?;
        if first == second {
            Ok(second)
        } else {
            Err(format!("still moving: {first} then {second}"))
        }
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_monitoring_prometheus_counts_the_traffic_and_every_query_matches() {
    let _turn = serial().await;
    let demo = demo_in_place().await;
    demo.env.set_replicas(2).await;
    demo.served_in_place(2).await;
    let pods = demo.haproxy_pods().await;
    let prometheus = Prometheus::start(&admin_kubeconfig()).await;

    let scraped = |expr: String, want: usize| {
        let prometheus = &prometheus;
        async move {
            let n = prometheus.query(&expr)?.len();
            if n == want {
                Ok(())
            } else {
                Err(format!(
                    "{expr}: {n} series, want {want}; targets down: {:?}",
                    prometheus.targets_down()
                ))
            }
        }
    };
    eventually(
        "Prometheus scrapes every HAProxy pod's exporter and agent, and the controller",
        Duration::from_secs(120),
        || async {
            scraped(
                format!(r#"haproxy_process_start_time_seconds{{namespace="{NS}"}}"#),
                pods.len(),
            )
            .await?;
            scraped(
                format!(r#"lbpool_agent_updates_total{{namespace="{NS}", kind="runtime"}}"#),
                pods.len(),
            )
            .await?;
            scraped(
                r#"lbpool_pool_ready{namespace="demo", pool="webapp"} == 1"#.to_owned(),
                1,
            )
            .await
        },
    )
    .await;
    let before = settled_requests(&prometheus, "the request count before the load").await;
    let started = unix_now();

    let load = Load::start(demo.frontend, 4);
    tokio::time::sleep(Duration::from_secs(1)).await;
    for n in [6, 2] {
        demo.env.set_replicas(n as i32).await;
        demo.served_in_place(n).await;
    }
    demo.webapp_pods_left(2).await;
    let report = load.stop().await;
    println!("load under 2 -> 6 -> 2: {report}");
    assert_eq!(report.failed, 0, "no request fails: {report}");

    // One more request, whose id the webapp answers with.
    let answer = http::get(demo.frontend, "/", Duration::from_secs(10))
        .await
        .expect("a request through the Service");
    let answer: serde_json::Value = serde_json::from_str(&answer.body).expect("the webapp's JSON");
    let id = answer["request_id"]
        .as_str()
        .unwrap_or_else(|| panic!("HAProxy sends X-Request-ID: {answer}"))
        .to_owned();

    let after = settled_requests(&prometheus, "the request count after the load").await;
    let counted = after - before;
    println!(
        "Prometheus counted {counted} requests to be_webapp; the load generator sent {} and the test 1",
        report.sent
    );
    assert_eq!(
        counted,
        (report.sent + 1) as f64,
        "HAProxy's exporter counts every request"
    );

    // Every dashboard query, with the demo's namespace and pool.
    let mut empty = Vec::new();
    let queries = dashboard_queries();
    for (panel, expr) in &queries {
        let expr = with_variables(expr, NS, "webapp", "1m");
        match prometheus.query(&expr) {
            Ok(r) if !r.is_empty() => {}
            Ok(_) => empty.push(format!("{panel}: {expr}: no series")),
            Err(e) => empty.push(format!("{panel}: {e}")),
        }
    }
    // Every alert: Prometheus takes its expression, and each metric it
    // reads has series (a healthy cluster fires none, so the expression
    // itself is empty).
    let rules = alerts();
    for (alert, expr) in &rules {
        if let Err(e) = prometheus.query(expr) {
            empty.push(format!("{alert}: {e}"));
        }
        for selector in selectors(expr) {
            match prometheus.query(&format!("count({selector})")) {
                Ok(r) if !r.is_empty() => {}
                Ok(_) => empty.push(format!("{alert}: {selector}: no series")),
                Err(e) => empty.push(format!("{alert}: {e}")),
            }
        }
    }
    let unhealthy: Vec<_> = prometheus
        .rules()
        .into_iter()
        .filter(|(_, health, _)| health != "ok")
        .collect();
    assert!(
        empty.is_empty() && unhealthy.is_empty(),
        "queries without series:\n{}\nrules not evaluating: {unhealthy:?}\nPrometheus log:\n{}",
        empty.join("\n"),
        prometheus.log()
    );
    println!(
        "{} dashboard queries and {} alerts evaluated by Prometheus: every one matches series",
        queries.len(),
        rules.len()
    );
    write_panel_data(&prometheus, &queries, started - 10.0, unix_now());

    // The JSON access log: every access line parses, one carries the id.
    let mut lines = 0;
    let mut found = None;
    for pod in pods.keys() {
        let log = kubectl(&["logs", "-n", NS, pod, "-c", "haproxy"]).expect("the HAProxy log");
        for line in log.lines().filter(|l| l.starts_with('{')) {
            let entry: serde_json::Value = serde_json::from_str(line)
                .unwrap_or_else(|e| panic!("{pod}: not JSON ({e}): {line}"));
            lines += 1;
            if entry["request_id"] == id.as_str() {
                found = Some(entry);
            }
        }
    }
    let entry = found
        .unwrap_or_else(|| panic!("no access log line has request_id {id} ({lines} lines read)"));
    // HAProxy drops a log line rather than wait for a slow reader.
    let dropped = prometheus
        .value(r#"sum(haproxy_process_dropped_logs_total{namespace="demo"})"#)
        .unwrap_or(f64::NAN);
    println!(
        "{lines} JSON access log lines parsed ({dropped} dropped by HAProxy); the test's request: {entry}"
    );
    assert_eq!(entry["status"], 200, "{entry}");
    assert_eq!(entry["frontend"], "fe_http", "{entry}");
    assert_eq!(entry["backend"], "be_webapp", "{entry}");
    assert_eq!(entry["path"], "/", "{entry}");
    assert!(
        entry["server"]
            .as_str()
            .is_some_and(|s| s.starts_with("webapp-")),
        "{entry}"
    );
}
