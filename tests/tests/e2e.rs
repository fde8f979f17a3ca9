//! End to end: the shipped manifests on a node that runs real containers
//! (the controller pod under restricted Pod Security, HAProxy pods mounting
//! the ConfigMap, webapp pods with real probes), and real traffic through
//! the HAProxy Service's ClusterIP, routed by kube-proxy. `hack/test.sh`
//! runs this tier on the local real node; `hack/kind.sh` runs it on kind.
//!
//! The tests print what they measure (requests, failures, latency, rollout
//! durations) so a CI log carries the numbers.

use std::time::{Duration, Instant};

use lbpool_tests::e2e::{Load, NS, Rollouts, demo, patch_pool, serial};
use lbpool_tests::{eventually, http, kubectl};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_scaled_up_pods_answer_through_the_service() {
    let _turn = serial().await;
    let demo = demo().await;
    demo.serve(2).await;
    let before = demo.haproxy_generation().await;

    let hash = demo.serve(5).await;
    assert!(
        demo.haproxy_generation().await > before,
        "a new config must have rolled the HAProxy pods"
    );
    let pods = demo.webapp_pod_names().await;
    assert_eq!(pods.len(), 5, "{pods:?}");
    // Round robin over 5 servers: 60 requests reach every pod, whichever
    // HAProxy pod kube-proxy picks for each connection.
    let hosts = demo.hosts_through_service(60).await;
    println!("5 pods, config {hash}: answers per pod through the Service: {hosts:?}");
    assert_eq!(
        hosts
            .keys()
            .cloned()
            .collect::<std::collections::BTreeSet<_>>(),
        pods,
        "every ready webapp pod, and only those, answers through HAProxy"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_the_stats_page_answers_through_the_service() {
    let _turn = serial().await;
    let demo = demo().await;
    demo.serve(3).await;
    let pods = demo.pods("app.kubernetes.io/name=webapp").await;
    let csv = eventually(
        "the stats page to list 3 servers UP",
        Duration::from_secs(60),
        || async {
            let page = http::get(demo.stats, "/;csv", Duration::from_secs(10)).await?;
            // Server rows: every row but the FRONTEND and BACKEND summaries.
            let up: Vec<_> = page
                .body
                .lines()
                .filter(|l| {
                    l.contains(",UP") && !l.contains(",FRONTEND,") && !l.contains(",BACKEND,")
                })
                .map(str::to_owned)
                .collect();
            if page.status == 200 && up.len() == 3 {
                Ok(page.body)
            } else {
                Err(format!("HTTP {}: {up:?}", page.status))
            }
        },
    )
    .await;
    // Server names are the pods' names.
    for pod in &pods {
        let name = pod.metadata.name.as_deref().expect("pod name");
        assert!(
            csv.lines()
                .any(|l| l.contains(&format!(",{name},")) && l.contains(",UP")),
            "the stats page lists {name} UP:\n{csv}"
        );
    }
    let html = http::get(demo.stats, "/", Duration::from_secs(10))
        .await
        .expect("stats page");
    assert_eq!(html.status, 200);
    assert!(html.body.contains("Statistics Report"), "{}", html.body);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_scaling_under_load_fails_no_request() {
    let _turn = serial().await;
    let demo = demo().await;
    demo.serve(2).await;
    let load = Load::start(demo.frontend, 4);
    tokio::time::sleep(Duration::from_secs(2)).await;

    let mut rollouts = Vec::new();
    for n in [6, 2] {
        let from = demo.haproxy_generation().await;
        demo.env.set_replicas(n as i32).await;
        let seen = Rollouts::record_until(&demo, from, || async {
            demo.env.converged_now(n).await.is_ok()
        })
        .await;
        demo.served(n).await;
        println!(
            "to {n} replicas: rollouts (generation, duration) {:?}",
            seen.0
        );
        rollouts.push((n, seen));
    }
    demo.webapp_pods_left(2).await;
    let report = load.stop().await;
    println!("scaling 2 -> 6 -> 2 through the Service under load: {report}");
    for (n, r) in &rollouts {
        for (g, d) in &r.0 {
            println!("  rollout to {n} replicas, generation {g}: {d:.1?}");
        }
    }
    assert!(report.sent > 100, "the load ran: {report}");
    assert_eq!(
        report.failed, 0,
        "no request fails while the pool scales: {report}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_pod_failing_its_readiness_probe_leaves_the_config() {
    let _turn = serial().await;
    let demo = demo().await;
    demo.serve(3).await;
    // Through HAProxy: whichever pod answers stops being ready. It must be
    // one of the three (a pod scaled away by an earlier test may still be
    // finishing its preStop; making it unready changes nothing).
    let ready = demo.webapp_pod_names().await;
    let mut victim = None;
    for _ in 0..20 {
        let answer = http::request(
            demo.frontend,
            "POST",
            "/fail-readiness",
            Duration::from_secs(10),
        )
        .await
        .expect("POST /fail-readiness through the Service");
        assert_eq!(answer.status, 200, "{answer:?}");
        let host = answer.webapp_host().expect("the pod names itself");
        if ready.contains(&host) {
            victim = Some(host);
            break;
        }
    }
    let victim = victim.unwrap_or_else(|| panic!("no answer from the ready pods {ready:?}"));
    let ip = demo
        .pods("app.kubernetes.io/name=webapp")
        .await
        .into_iter()
        .find(|p| p.metadata.name.as_deref() == Some(victim.as_str()))
        .and_then(|p| p.status?.pod_ip)
        .expect("the victim's IP");
    println!("{victim} ({ip}) fails its readiness probe from now on");

    // kubelet's probe (period 2 s, 3 failures) marks it not ready, the
    // EndpointSlice follows, and lbpool drops it; the pod keeps running.
    let hash = demo.served(2).await;
    let config = demo.env.config_addresses().await.expect("config");
    assert!(!config.contains(&ip), "{ip} left the config: {config:?}");
    assert_eq!(demo.env.status().await.ready_backends, 2);
    let hosts = demo.hosts_through_service(30).await;
    println!("config {hash} without {victim}; answers: {hosts:?}");
    assert!(
        !hosts.contains_key(&victim),
        "{victim} gets no traffic: {hosts:?}"
    );
    assert_eq!(hosts.len(), 2, "{hosts:?}");

    // Leave 3 healthy pods behind: the Deployment replaces the deleted one.
    kubectl(&["delete", "pod", &victim, "-n", NS, "--wait=false"]).expect("delete the unready pod");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_request_held_open_across_a_rollout() {
    let _turn = serial().await;
    let demo = demo().await;
    demo.serve(2).await;
    let from = demo.haproxy_generation().await;
    let frontend = demo.frontend;
    let held = tokio::spawn(async move {
        http::get(frontend, "/slow?ms=20000", Duration::from_secs(60)).await
    });
    tokio::time::sleep(Duration::from_secs(1)).await;
    demo.env.set_replicas(3).await;
    let rolled_at = eventually("a rollout to start", Duration::from_secs(60), || async {
        if demo.haproxy_generation().await > from {
            Ok(Instant::now())
        } else {
            Err("no new generation".to_owned())
        }
    })
    .await;
    let result = held.await.expect("the held request");
    let finished = Instant::now();
    demo.served(3).await;
    match &result {
        Ok(r) => println!(
            "a request held open for {:.1?} across a rollout: HTTP {} (hard-stop-after is 30 s)",
            r.took, r.status
        ),
        Err(e) => println!("a request held open across a rollout was cut: {e}"),
    }
    assert!(
        rolled_at < finished,
        "the rollout began while the request was open"
    );
    let r = result.expect("a 20 s request survives the rolling update (drained, not cut)");
    assert_eq!(r.status, 200, "{r:?}");
    assert!(r.took >= Duration::from_secs(20), "{r:?}");
}

/// The pod holding the controller's leader Lease.
fn lease_holder() -> Result<String, String> {
    let holder = kubectl(&[
        "get",
        "lease",
        "lbpool-controller",
        "-n",
        "lbpool-system",
        "-o",
        "jsonpath={.spec.holderIdentity}",
    ])
    .map_err(|e| e.to_string())?;
    let holder = holder.trim().to_owned();
    if holder.is_empty() {
        Err("the Lease has no holder".into())
    } else {
        Ok(holder)
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_the_leader_pod_deleted_mid_burst_is_replaced_by_the_standby_without_an_extra_rollout()
{
    let _turn = serial().await;
    let demo = demo().await;
    demo.serve(2).await;
    let leader = eventually("a leader", Duration::from_secs(60), || async {
        lease_holder()
    })
    .await;
    let before = demo.haproxy_generation().await;
    demo.env.set_replicas(6).await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    kubectl(&[
        "delete",
        "pod",
        &leader,
        "-n",
        "lbpool-system",
        "--grace-period=0",
        "--force",
    ])
    .expect("delete the leader's pod");
    let killed = Instant::now();
    let hash = demo.served(6).await;
    let took = killed.elapsed();
    let after = demo.haproxy_generation().await;
    let successor = lease_holder().expect("a new leader");
    assert_ne!(successor, leader, "another pod leads");
    // Nothing left to do: no rollout over more than a rollout interval (5 s).
    tokio::time::sleep(Duration::from_secs(8)).await;
    let settled = demo.haproxy_generation().await;
    println!(
        "leader {leader} deleted mid-burst: {successor} took over; HAProxy served 6 pods {:.1}s after the deletion (Lease 15 s); {} rollout(s) for 2 -> 6, config {hash}, none after",
        took.as_secs_f64(),
        after - before
    );
    assert_eq!(settled, after, "no rollout once converged");
    assert!(
        (1..=2).contains(&(after - before)),
        "one or two rollouts for the burst, not {}",
        after - before
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_with_a_sticky_cookie_a_terminating_pod_drains_then_leaves() {
    let _turn = serial().await;
    let demo = demo().await;
    demo.serve(3).await;
    patch_pool(r#"{"spec":{"stickySession":{"cookie":"SERVERID"}}}"#);
    let before: std::collections::BTreeSet<String> = demo.env.ready_pod_ips().await;
    demo.env.set_replicas(2).await;
    // The removed pod runs its 30 s preStop: terminating, still serving.
    let line = eventually(
        "the terminating pod as a draining server",
        Duration::from_secs(60),
        || async {
            let cfg = demo.env.config_text().await?;
            let draining: Vec<_> = cfg
                .lines()
                .filter(|l| l.trim_start().starts_with("server ") && l.ends_with(" weight 0"))
                .collect();
            let now = demo.env.ready_pod_ips().await;
            match draining.as_slice() {
                [one]
                    if now.len() == 2
                        && before
                            .iter()
                            .any(|ip| !now.contains(ip) && one.contains(&format!(" {ip}:"))) =>
                {
                    Ok(one.trim().to_owned())
                }
                _ => Err(format!("draining {draining:?}, ready {now:?}")),
            }
        },
    )
    .await;
    assert_eq!(
        demo.env.status().await.ready_backends,
        2,
        "a draining server takes no new sessions"
    );
    println!("sticky pool, 3 -> 2: {line}");
    // Once the pod stops serving and goes, it leaves the config.
    demo.served(2).await;
    let cfg = demo.env.config_addresses().await.expect("config");
    assert_eq!(cfg, demo.env.ready_pod_ips().await);
    patch_pool(r#"{"spec":{"stickySession":null}}"#);
    // The config without cookies first, or `served` could match the last one.
    eventually(
        "a config without the cookie",
        Duration::from_secs(60),
        || async {
            let cfg = demo.env.config_text().await?;
            if cfg.contains("cookie ") {
                Err("still sticky".to_owned())
            } else {
                Ok(())
            }
        },
    )
    .await;
    demo.served(2).await;
}

/// A rollout whose new HAProxy pods cannot start (an image the node does
/// not have, a short progress deadline): `Ready=False/RolloutStuck` with
/// the Deployment's reason once the deadline passes, while the old pods
/// serve on; fixed, the pool is `Ready` again.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn e2e_a_rollout_whose_pods_cannot_start_is_reported() {
    let _turn = serial().await;
    let demo = demo().await;
    demo.serve(2).await;
    let image = demo
        .haproxy()
        .await
        .spec
        .template
        .spec
        .and_then(|s| s.containers.into_iter().find(|c| c.name == "haproxy"))
        .and_then(|c| c.image)
        .expect("the HAProxy image");
    let patch = |image: &str, deadline: u32| {
        let p = format!(
            r#"{{"spec":{{"progressDeadlineSeconds":{deadline},"template":{{"spec":{{"containers":[{{"name":"haproxy","image":"{image}"}}]}}}}}}}}"#
        );
        kubectl(&["patch", "deployment", "haproxy", "-n", NS, "-p", &p])
            .expect("patch the HAProxy Deployment");
    };
    patch("lbpool.local/haproxy:no-such-tag", 15);
    let patched = Instant::now();
    let message = demo
        .ready_reason("RolloutStuck", Duration::from_secs(180))
        .await;
    println!(
        "new HAProxy pods that cannot start: reported {:.1?} after the patch (progress deadline 15 s): {message}",
        patched.elapsed()
    );
    assert!(message.contains("ProgressDeadlineExceeded"), "{message}");
    let hosts = demo.hosts_through_service(10).await;
    assert!(!hosts.is_empty(), "the old HAProxy pods serve on");
    patch(&image, 600);
    demo.served(2).await;
}
