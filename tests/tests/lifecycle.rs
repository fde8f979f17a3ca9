//! Lifecycle: pools and namespaces deleted quietly, memory that follows the
//! number of pools, and a standby replica that takes over from a dead leader.
//! The controllers run as local processes with the ServiceAccount's token.

use futures::StreamExt as _;
use kube::api::{DeleteParams, ListParams, PostParams};
use lbpool_crds::LoadBalancerPool;
use std::net::SocketAddr;
use std::time::{Duration, Instant};

use lbpool_tests::demo::{self, DEMO, Demo, Env, WAIT, apply_demo, scale};
use lbpool_tests::{
    ControllerProcess, TestNamespace, admin_get, apply_yaml, eventually, free_local_addr, kubectl,
    metric, metrics_text, rss_kib, scratch_dir,
};

/// Lines of a controller log at `ERROR` or `WARN`.
fn loud_lines(log: &str) -> Vec<&str> {
    log.lines()
        .filter(|l| l.contains(" ERROR ") || l.contains(" WARN "))
        .collect()
}

/// A pool on the Service's port `http`.
fn pool(name: &str, service: &str, deployment: &str) -> LoadBalancerPool {
    demo::with_port(demo::pool(name, service, deployment), "http")
}

#[tokio::test]
async fn deleting_pools_and_their_namespace_is_quiet() {
    let admin = free_local_addr();
    let Demo {
        ns,
        env,
        controller,
        ..
    } = Demo::start_with(
        "quiet",
        &DEMO,
        // More pools with ConfigMaps of their own (no Deployment: published only).
        |n| {
            for i in 0..3 {
                apply_yaml(
                    n,
                    &demo::yaml(&pool(&format!("extra-{i}"), "webapp", "none")),
                )
                .expect("pool");
            }
        },
        |n, dir| ControllerProcess::local(n, dir, &["--admin-addr", &admin.to_string()]),
    )
    .await;
    let n = ns.name.clone();
    env.converged(2).await;
    eventually("every pool published", WAIT, || async {
        let cms = kubectl(&[
            "get",
            "cm",
            "-n",
            &n,
            "-l",
            lbpool_wire::POOL_LABEL,
            "-o",
            "name",
        ])
        .map_err(|e| e.to_string())?;
        (cms.lines().count() == 4).then_some(()).ok_or(cms)
    })
    .await;

    // One pool deleted on its own, then the namespace with the rest.
    kubectl(&["delete", "lbp", "extra-0", "-n", &n, "--wait=true"]).expect("delete a pool");
    scale(&n, 3);
    kubectl(&["delete", "namespace", &n, "--wait=true", "--timeout=120s"])
        .expect("delete the namespace");
    let text = eventually("the controller to forget every pool", WAIT, || async {
        let text = metrics_text(admin).await?;
        let remembered = metric(&text, "lbpool_remembered_pools");
        (remembered == 0.0)
            .then_some(text)
            .ok_or(format!("{remembered} pools remembered"))
    })
    .await;
    // A few seconds more for anything late (a requeued pool, a retry).
    tokio::time::sleep(Duration::from_secs(5)).await;
    let text = metrics_text(admin).await.unwrap_or(text);
    let log = controller.log_text();
    assert_eq!(
        loud_lines(&log),
        Vec::<&str>::new(),
        "no ERROR or WARN line:\n{log}"
    );
    let errors = metric(&text, "lbpool_reconciles_total{result=\"error\"}");
    let invalid = metric(&text, "lbpool_invalid_pools_total");
    println!(
        "pool and namespace deleted: 0 loud log lines, {errors} reconcile errors, {invalid} pools found invalid"
    );
    assert_eq!(errors, 0.0, "a deletion is not a reconcile error:\n{text}");
    assert_eq!(invalid, 0.0, "nor an invalid pool:\n{text}");
}

/// Waits until `lbpool_remembered_pools` is `n`.
async fn remembered(admin: SocketAddr, n: f64, timeout: Duration) {
    eventually(&format!("{n} pools remembered"), timeout, || async {
        let got = metric(&metrics_text(admin).await?, "lbpool_remembered_pools");
        (got == n).then_some(()).ok_or(format!("{got}"))
    })
    .await;
}

#[tokio::test]
async fn memory_follows_the_number_of_pools() {
    const POOLS: usize = 1000;
    let mut ns = TestNamespace::create("memory");
    let n = ns.name.clone();
    let admin = free_local_addr();
    let controller =
        ControllerProcess::local(&n, &scratch_dir(&n), &["--admin-addr", &admin.to_string()]);
    ns.keep_log(controller.log_path());
    let pid = controller.pid().expect("a local controller");
    eventually("the controller ready", WAIT, || async {
        let (code, body) = admin_get(admin, "/ready").await?;
        (code == 200).then_some(()).ok_or(body)
    })
    .await;
    // Pools whose Service does not exist: each is looked at, reported on and
    // remembered, with no ConfigMap to write or haproxy -c to run. Created
    // and deleted through the API directly (kubectl would throttle itself
    // to a few requests per second).
    let env = Env::new(&n).await;
    let pools: Vec<LoadBalancerPool> = (0..POOLS)
        .map(|i| pool(&format!("p{i:04}"), "missing", "none"))
        .collect();
    let baseline = rss_kib(pid).expect("VmRSS of the controller");
    let mut after = Vec::new();
    for cycle in 1..=2 {
        let started = Instant::now();
        let create = PostParams::default();
        futures::stream::iter(pools.iter())
            .map(|p| env.pools.create(&create, p))
            .buffer_unordered(16)
            .for_each(|r| {
                r.expect("create a pool");
                std::future::ready(())
            })
            .await;
        remembered(admin, POOLS as f64, Duration::from_secs(300)).await;
        let full = rss_kib(pid).expect("VmRSS of the controller");
        env.pools
            .delete_collection(&DeleteParams::default(), &ListParams::default())
            .await
            .expect("delete the pools");
        remembered(admin, 0.0, Duration::from_secs(120)).await;
        // Requeued retries of the deleted pools (15 s) run out, and the
        // allocator hands freed pages back (jemalloc's decay, 10 s).
        tokio::time::sleep(Duration::from_secs(20)).await;
        let emptied = rss_kib(pid).expect("VmRSS of the controller");
        println!(
            "cycle {cycle}: {POOLS} pools created and deleted in {:.1}s; RSS {baseline} KiB before any pool, {full} KiB with {POOLS}, {emptied} KiB after",
            started.elapsed().as_secs_f64()
        );
        // Back near the baseline: what stays is the allocator's and the
        // tables' high-water mark, well under 8 KiB per pool that was there.
        assert!(
            emptied <= baseline + 8 * 1024,
            "cycle {cycle}: RSS {emptied} KiB after deleting the pools, {baseline} KiB before, {full} KiB with them"
        );
        after.push(emptied);
    }
    // What stays after the first cycle is the allocator's and the caches'
    // high-water mark (table capacity, retained pages), not the pools: a
    // second cycle adds nothing (within 10%), so memory follows the number of
    // pools, not their history.
    assert!(
        after[1] <= after[0] + after[0] / 10,
        "RSS grew from {} KiB to {} KiB over a second create/delete cycle",
        after[0],
        after[1]
    );
}

/// The replica whose `/leader` answers 200, if exactly one does.
async fn leader_of(admins: &[SocketAddr]) -> Result<usize, String> {
    let mut leaders = Vec::new();
    for (i, a) in admins.iter().enumerate() {
        if admin_get(*a, "/leader")
            .await
            .is_ok_and(|(code, _)| code == 200)
        {
            leaders.push(i);
        }
    }
    match leaders[..] {
        [one] => Ok(one),
        _ => Err(format!("leaders: {leaders:?}")),
    }
}

#[tokio::test]
async fn a_standby_takes_over_from_a_dead_leader_without_a_second_rollout() {
    const LEASE_SECONDS: u64 = 6;
    let mut ns = TestNamespace::create("leader");
    let n = ns.name.clone();
    apply_demo(&n, &["webapp.yaml", "haproxy.yaml", "pool.yaml"]);
    let dir = scratch_dir(&n);
    let lease = format!("{n}-leader");
    let admins = [free_local_addr(), free_local_addr()];
    let mut replicas: Vec<Option<ControllerProcess>> = admins
        .iter()
        .map(|admin| {
            let c = ControllerProcess::local(
                &n,
                &dir,
                &[
                    "--admin-addr",
                    &admin.to_string(),
                    "--leader-election",
                    "--lease-namespace",
                    "lbpool-system",
                    "--lease-name",
                    &lease,
                    "--lease-duration-seconds",
                    &LEASE_SECONDS.to_string(),
                ],
            );
            ns.keep_log(c.log_path());
            Some(c)
        })
        .collect();
    let env = Env::new(&n).await;
    env.converged(2).await;
    let leader = eventually("exactly one leader", WAIT, || leader_of(&admins)).await;
    let standby = 1 - leader;
    let (code, body) = admin_get(admins[standby], "/ready")
        .await
        .expect("standby /ready");
    assert_eq!(code, 200, "a standby is ready to take over: {body}");
    let standby_log = replicas[standby]
        .as_ref()
        .map(ControllerProcess::log_text)
        .unwrap_or_default();
    assert!(
        !standby_log.contains("rolling HAProxy"),
        "the standby wrote nothing:\n{standby_log}"
    );

    // The leader dies without releasing the Lease; a change comes at once.
    let generation = |env: &Env| {
        let deployments = env.deployments.clone();
        async move {
            let d = deployments
                .get("haproxy")
                .await
                .expect("haproxy Deployment");
            d.metadata.generation.unwrap_or_default()
        }
    };
    let before = generation(&env).await;
    if let Some(dead) = replicas[leader].take() {
        dead.kill();
    }
    let killed = Instant::now();
    scale(&n, 3);
    env.converged(3).await;
    let took = killed.elapsed();
    let rolled = generation(&env).await - before;
    println!(
        "leader killed; the standby converged a change {:.1}s later (Lease {LEASE_SECONDS}s, goal <= {}s) with {rolled} rollout",
        took.as_secs_f64(),
        LEASE_SECONDS + 2
    );
    assert_eq!(leader_of(&admins).await, Ok(standby), "the standby leads");
    // One rollout for the one change, and none after it.
    tokio::time::sleep(Duration::from_secs(6)).await;
    assert_eq!(generation(&env).await - before, 1, "exactly one rollout");
}
