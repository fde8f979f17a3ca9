//! Data plane: the config the controller wrote, run by a real HAProxy in a
//! network namespace, sends real requests to real webapp processes listening
//! on the IPs the local control plane gave the pods.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use lbpool_tests::dataplane::{HaproxyPod, Network};
use lbpool_tests::demo::{DEMO, Demo, Env, WAIT, scale};
use lbpool_tests::{ControllerProcess, TestNamespace, eventually, kubectl, scratch_dir};

/// A server line of the config: (name, address, port).
type Server = (String, String, u16);

fn servers(config: &str) -> Vec<Server> {
    config
        .lines()
        .filter_map(|l| l.trim().strip_prefix("server "))
        .filter_map(|l| {
            let mut words = l.split_whitespace();
            let name = words.next()?.to_owned();
            let (address, port) = words.next()?.rsplit_once(':')?;
            Some((name, address.to_owned(), port.parse().ok()?))
        })
        .collect()
}

async fn published(env: &Env) -> String {
    let cm = env
        .config_maps
        .get("webapp-haproxy")
        .await
        .expect("ConfigMap");
    cm.data
        .unwrap_or_default()
        .remove(lbpool_wire::CONFIG_KEY)
        .unwrap_or_default()
}

/// Waits for a published config other than `old`.
async fn next_config(env: &Env, old: &str) -> String {
    eventually("a new config", WAIT, || async {
        let now = published(env).await;
        if now != old {
            Ok(now)
        } else {
            Err("unchanged".into())
        }
    })
    .await
}

fn patch_pool(ns: &str, patch: &str) {
    kubectl(&[
        "patch",
        "lbp",
        "webapp",
        "-n",
        ns,
        "--type=merge",
        "-p",
        patch,
    ])
    .expect("patch pool");
}

/// The data-plane tests run one at a time: the load test saturates both
/// cores, which would skew the routing test's timings.
static ONE_AT_A_TIME: tokio::sync::Mutex<()> = tokio::sync::Mutex::const_new(());

/// A test namespace with `replicas` webapp pods, the controller, and in the
/// network namespaces a webapp per pod and an HAProxy running the config.
struct Plane {
    ns: TestNamespace,
    env: Env,
    net: Network,
    config: String,
    haproxy: HaproxyPod,
    _controller: ControllerProcess,
}

async fn plane(prefix: &str, replicas: u32) -> Plane {
    let Demo {
        ns,
        env,
        controller,
        dir,
    } = Demo::start_with(
        prefix,
        &DEMO,
        |ns| scale(ns, replicas),
        ControllerProcess::start,
    )
    .await;
    env.converged(replicas as usize).await;
    let mut net = Network::create(dir);
    let config = published(&env).await;
    start_backends(&mut net, &config);
    let haproxy = net.start_haproxy(&config);
    Plane {
        ns,
        env,
        net,
        config,
        haproxy,
        _controller: controller,
    }
}

/// Starts a webapp for every server of `config` that has none yet.
fn start_backends(net: &mut Network, config: &str) {
    for (name, address, port) in servers(config) {
        net.start_webapp(&name, &address, port);
    }
}

/// Replaces `old` with a new HAProxy running `config`: the new one starts and
/// answers first, then the old one soft-stops.
fn replace(net: &mut Network, old: HaproxyPod, config: &str) -> HaproxyPod {
    let new = net.start_haproxy(config);
    old.soft_stop();
    new
}

fn counts(hosts: &[String]) -> BTreeMap<String, usize> {
    let mut c = BTreeMap::new();
    for h in hosts {
        *c.entry(h.clone()).or_insert(0) += 1;
    }
    c
}

/// Rows of `be_webapp` servers on the stats page: name -> status.
fn stats(net: &Network, haproxy: &HaproxyPod) -> BTreeMap<String, String> {
    let csv = net.curl(&[&format!("http://{}:1936/;csv", haproxy.ip)]);
    csv.lines()
        .filter(|l| l.starts_with("be_webapp,") && !l.starts_with("be_webapp,BACKEND"))
        .filter_map(|l| {
            let cols: Vec<&str> = l.split(',').collect();
            Some((cols.get(1)?.to_string(), cols.get(17)?.to_string()))
        })
        .collect()
}

#[tokio::test]
async fn requests_reach_the_pools_pods_as_haproxy_documents() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Plane {
        ns,
        env,
        mut net,
        mut config,
        mut haproxy,
        _controller,
    } = plane("routing", 4).await;
    let n = ns.name.clone();
    let pods: BTreeSet<String> = servers(&config).into_iter().map(|s| s.0).collect();
    assert_eq!(pods.len(), 4);
    let url = format!("http://{}/", haproxy.frontend());

    // Round robin: every ready pod, evenly (400 requests, each pod 100 ± 10).
    let hosts = net.hosts(&url, 400, &[]);
    assert_eq!(hosts.len(), 400, "every request answered");
    let spread = counts(&hosts);
    assert_eq!(
        spread.keys().cloned().collect::<BTreeSet<_>>(),
        pods,
        "{spread:?}"
    );
    assert!(
        spread.values().all(|c| (90..=110).contains(c)),
        "round robin spread {spread:?}"
    );
    eprintln!("round robin over 400 requests: {spread:?}");

    // The stats page lists exactly the pool's servers, all UP.
    let page = stats(&net, &haproxy);
    assert_eq!(
        page.keys().cloned().collect::<BTreeSet<_>>(),
        pods,
        "stats page {page:?}"
    );
    // "UP 1/3" is still UP (in rotation) after one failed check.
    assert!(page.values().all(|s| s.starts_with("UP")), "{page:?}");

    // Sticky cookie: one client stays on one pod.
    patch_pool(&n, r#"{"spec":{"stickySession":{"cookie":"SERVERID"}}}"#);
    config = next_config(&env, &config).await;
    haproxy = replace(&mut net, haproxy, &config);
    let url = format!("http://{}/", haproxy.frontend());
    let jar = scratch_dir(&n).join("cookies");
    let jar = jar.to_string_lossy();
    let sticky = net.hosts(&url, 20, &["-c", &jar, "-b", &jar]);
    assert_eq!(sticky.len(), 20);
    assert_eq!(counts(&sticky).len(), 1, "one client, one pod: {sticky:?}");
    assert!(
        std::fs::read_to_string(&*jar)
            .unwrap_or_default()
            .contains("SERVERID"),
        "cookie set"
    );

    // Source: a client address keeps its pod; different clients spread.
    patch_pool(&n, r#"{"spec":{"stickySession":null,"balance":"source"}}"#);
    config = next_config(&env, &config).await;
    haproxy = replace(&mut net, haproxy, &config);
    let url = format!("http://{}/", haproxy.frontend());
    let mut chosen = BTreeSet::new();
    for i in 1..=8 {
        let client = format!("10.244.250.{i}");
        net.add_address(&client);
        let answers = net.hosts(&url, 5, &["--interface", &client]);
        let per_client = counts(&answers);
        assert_eq!(
            per_client.len(),
            1,
            "client {client} kept its pod: {answers:?}"
        );
        chosen.extend(per_client.into_keys());
    }
    assert!(
        chosen.len() >= 2,
        "8 clients spread over several pods: {chosen:?}"
    );

    // Leastconn: with three pods busy on slow requests, quick ones go to the fourth.
    patch_pool(&n, r#"{"spec":{"balance":"leastconn"}}"#);
    config = next_config(&env, &config).await;
    haproxy = replace(&mut net, haproxy, &config);
    let url = format!("http://{}/", haproxy.frontend());
    let slow: Vec<_> = (0..3)
        .map(|_| {
            net.command("curl")
                .args(["-s", "--max-time", "10", &format!("{url}slow?ms=3000")])
                .stdout(std::process::Stdio::piped())
                .spawn()
                .expect("slow request")
        })
        .collect();
    std::thread::sleep(Duration::from_millis(700));
    let quick = counts(&net.hosts(&url, 12, &[]));
    let busy: BTreeSet<String> = slow
        .into_iter()
        .map(|c| {
            let out = c.wait_with_output().expect("slow answer");
            let body = String::from_utf8_lossy(&out.stdout).into_owned();
            body.split("\"host\":\"")
                .nth(1)
                .and_then(|s| s.split('"').next())
                .unwrap_or_default()
                .to_owned()
        })
        .collect();
    assert_eq!(
        busy.len(),
        3,
        "the slow requests went to three different pods: {busy:?}"
    );
    assert_eq!(
        quick.len(),
        1,
        "quick requests all went to the idle pod: {quick:?}"
    );
    assert!(
        !busy.contains(quick.keys().next().expect("a pod")),
        "{quick:?} vs busy {busy:?}"
    );

    // HTTP health check: a killed webapp leaves rotation within interval x fall.
    patch_pool(
        &n,
        r#"{"spec":{"balance":"roundrobin","healthCheck":{"path":"/healthz","interval":"500ms","rise":1,"fall":2}}}"#,
    );
    config = next_config(&env, &config).await;
    haproxy = replace(&mut net, haproxy, &config);
    let url = format!("http://{}/", haproxy.frontend());
    let (victim_name, victim_ip, _) = servers(&config).remove(0);
    net.stop_webapp(&victim_ip, true);
    let killed = Instant::now();
    eventually(
        "the killed pod to be DOWN on the stats page",
        Duration::from_secs(5),
        || async {
            let page = stats(&net, &haproxy);
            if page.get(&victim_name).map(String::as_str) == Some("DOWN") {
                Ok(())
            } else {
                Err(format!("{page:?}"))
            }
        },
    )
    .await;
    let detected = killed.elapsed();
    assert!(
        detected <= Duration::from_millis(500 * 2 + 1500),
        "detected after {detected:?}"
    );
    let after = net.hosts(&url, 200, &[]);
    assert_eq!(
        after.len(),
        200,
        "no request fails once the pod is out of rotation"
    );
    assert!(!after.contains(&victim_name), "the killed pod answered");
    eprintln!("killed webapp marked DOWN after {detected:?} (interval 500ms x fall 2)");
    haproxy.soft_stop();
}

#[tokio::test]
async fn scaling_under_load_fails_no_request() {
    let _serial = ONE_AT_A_TIME.lock().await;
    let Plane {
        ns,
        env,
        mut net,
        mut config,
        mut haproxy,
        _controller,
    } = plane("load", 2).await;
    let n = ns.name.clone();
    let dir = scratch_dir(&n);
    let targets = dir.join("targets");
    let stop = dir.join("stop");
    std::fs::write(&targets, format!("{}\n", haproxy.frontend())).expect("targets");
    let loadgen = net
        .command(env!("CARGO_BIN_EXE_loadgen"))
        .arg("--targets")
        .arg(&targets)
        .arg("--stop")
        .arg(&stop)
        .args(["--concurrency", "8"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .expect("start loadgen");
    let mut replacements = Vec::new();

    for replicas in [6usize, 2] {
        scale(&n, replicas as u32);
        let deadline = Instant::now() + WAIT;
        loop {
            let now = published(&env).await;
            if now != config {
                // The rolling reload of the HAProxy Deployment: pods that became
                // ready serve already; a new HAProxy pod starts and becomes
                // ready, joins the Service, the old one leaves it, drains and
                // stops; pods no longer in the config stop only after that.
                let started = Instant::now();
                start_backends(&mut net, &now);
                let new = net.start_haproxy(&now);
                std::fs::write(
                    &targets,
                    format!("{}\n{}\n", haproxy.frontend(), new.frontend()),
                )
                .expect("targets");
                std::fs::write(&targets, format!("{}\n", new.frontend())).expect("targets");
                std::thread::sleep(Duration::from_millis(300));
                let old = std::mem::replace(&mut haproxy, new);
                let drained = old.soft_stop();
                let live: BTreeSet<String> = servers(&now).into_iter().map(|s| s.1).collect();
                for address in net.webapp_addresses() {
                    if !live.contains(&address) {
                        net.stop_webapp(&address, false);
                    }
                }
                replacements.push((servers(&now).len(), started.elapsed(), drained));
                config = now;
            }
            if servers(&config).len() == replicas && env.ready_pod_ips().await.len() == replicas {
                break;
            }
            assert!(
                Instant::now() < deadline,
                "no config for {replicas} pods within {WAIT:?}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        // Keep the load on the settled pool for a moment.
        tokio::time::sleep(Duration::from_secs(2)).await;
    }

    std::fs::write(&stop, "").expect("stop loadgen");
    let out = loadgen.wait_with_output().expect("loadgen result");
    let summary = String::from_utf8_lossy(&out.stdout).into_owned();
    let field = |name: &str| -> u64 {
        summary
            .split_whitespace()
            .find_map(|w| w.strip_prefix(&format!("{name}=")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("no {name} in loadgen output: {summary}"))
    };
    let (sent, failed) = (field("sent"), field("failed"));
    for (servers, took, drained) in &replacements {
        eprintln!(
            "HAProxy replaced for {servers} servers in {took:?} (old one drained in {drained:?})"
        );
    }
    eprintln!(
        "scaling 2 -> 6 -> 2 under load: {sent} requests, {failed} failed, {} HAProxy replacements",
        replacements.len()
    );
    assert!(
        replacements.len() >= 2,
        "the config changed on both scalings: {replacements:?}"
    );
    assert!(sent > 500, "the load generator ran: {summary}");
    assert_eq!(failed, 0, "failed requests while scaling:\n{summary}");
    haproxy.soft_stop();
}
