//! The agent applying configs to a real HAProxy in master-worker mode:
//! server changes through the Runtime API with no reload, a config
//! `haproxy -c` rejects never applied, anything else by a seamless reload
//! through the master CLI; the config file kept in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lbpool_agent::apply::{Applier, ApplyError, Outcome, Resumed, record_of};
use lbpool_agent::runtime::{self, Socket};
use lbpool_checker::HaproxyValidator;
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{TcpListener, TcpStream};

/// An HTTP server that answers every request with `name`.
async fn backend(name: &'static str) -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let mut buf = [0u8; 4096];
                while let Ok(n) = conn.read(&mut buf).await {
                    if n == 0 {
                        break;
                    }
                    let answer = format!(
                        "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{name}",
                        name.len()
                    );
                    if conn.write_all(answer.as_bytes()).await.is_err() {
                        break;
                    }
                }
            });
        }
    });
    addr
}

fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("a free port")
        .port()
}

fn config(dir: &Path, port: u16, maxconn: u32, servers: &[(&str, SocketAddr)]) -> String {
    config_of(dir, port, maxconn, servers, false)
}

/// [`config`], with a sticky cookie `SRV` when `sticky`.
fn config_of(
    dir: &Path,
    port: u16,
    maxconn: u32,
    servers: &[(&str, SocketAddr)],
    sticky: bool,
) -> String {
    let mut text = format!(
        "global\n    maxconn {maxconn}\n    stats socket {}/admin.sock mode 600 level admin expose-fd listeners\n\
defaults\n    mode http\n    timeout connect 2s\n    timeout client 30s\n    timeout server 30s\n\
frontend fe\n    bind 127.0.0.1:{port}\n    default_backend be_web\n\
backend be_web\n    default-server inter 1s rise 1 fall 2\n    balance roundrobin\n",
        dir.display()
    );
    if sticky {
        text.push_str("    cookie SRV insert indirect nocache\n");
    }
    for (name, addr) in servers {
        let cookie = if sticky {
            format!(" cookie {name}")
        } else {
            String::new()
        };
        text.push_str(&format!("    server {name} {addr} check{cookie}\n"));
    }
    text
}

/// HAProxy in master-worker mode; killed on drop.
struct Haproxy {
    child: Child,
    master: Socket,
    admin: Socket,
}

impl Drop for Haproxy {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

async fn start(dir: &Path, cfg: &Path) -> Haproxy {
    let bin = lbpool_checker::haproxy::test_haproxy_bin();
    let master = dir.join("master.sock");
    let child = Command::new(&bin)
        .arg("-W")
        .arg("-S")
        .arg(&master)
        .arg("-f")
        .arg(cfg)
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .unwrap_or_else(|e| panic!("this test runs the real HAProxy ({bin}): {e}"));
    let h = Haproxy {
        child,
        master: Socket::new(master),
        admin: Socket::new(dir.join("admin.sock")),
    };
    wait("HAProxy's sockets", || async {
        runtime::processes(&h.master)
            .await
            .is_ok_and(|p| !p.workers.is_empty())
            && h.admin.send("show info").await.is_ok()
    })
    .await;
    h
}

async fn wait<F: std::future::Future<Output = bool>>(what: &str, mut done: impl FnMut() -> F) {
    let started = Instant::now();
    while !done().await {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "timed out waiting for {what}"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// One request through HAProxy; the body (the backend's name).
async fn get(port: u16) -> String {
    get_with(port, "").await
}

/// One request with `headers` (each ending in CRLF); the body.
async fn get_with(port: u16, headers: &str) -> String {
    let mut conn = TcpStream::connect(("127.0.0.1", port))
        .await
        .expect("connect to HAProxy");
    let request = format!("GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n{headers}\r\n");
    conn.write_all(request.as_bytes()).await.expect("request");
    let mut answer = String::new();
    conn.read_to_string(&mut answer).await.expect("answer");
    answer
        .rsplit("\r\n\r\n")
        .next()
        .unwrap_or_default()
        .to_owned()
}

/// The agent's applier for `haproxy`, which runs `running` from `file`,
/// as a started agent has it (the config recorded as served).
async fn applier_for(haproxy: &Haproxy, file: &Path, running: &str) -> Applier {
    Applier::started(
        file.to_path_buf(),
        haproxy.admin.clone(),
        haproxy.master.clone(),
        Box::new(
            HaproxyValidator::new(lbpool_checker::haproxy::test_haproxy_bin())
                .with_runtime_api(haproxy.admin.path().to_string_lossy().into_owned()),
        ),
        running,
    )
    .await
    .expect("record the running config")
}

fn write(path: &PathBuf, text: &str) {
    std::fs::write(path, text).expect("write the config");
}

/// Waits until the worker answering the Runtime API runs `maxconn`.
async fn new_worker_with_maxconn(haproxy: &Haproxy, maxconn: u32) {
    let want = format!("Maxconn: {maxconn}");
    wait("the new worker's Runtime API", || async {
        haproxy
            .admin
            .send("show info")
            .await
            .is_ok_and(|i| i.contains(&want))
    })
    .await;
}

/// HAProxy has the worker it had `before`: no reload since.
async fn assert_no_reload(haproxy: &Haproxy, before: &runtime::Processes) {
    let after = runtime::processes(&haproxy.master)
        .await
        .expect("show proc");
    assert_eq!(after.reloads, before.reloads, "no reload");
    assert_eq!(after.workers, before.workers, "the same worker");
}

/// A temporary directory, a free port for the frontend, and the path of
/// the config file in the directory.
fn setup() -> (tempfile::TempDir, u16, PathBuf) {
    let dir = tempfile::tempdir().expect("tempdir");
    let file = dir.path().join("haproxy.cfg");
    (dir, free_port(), file)
}

/// HAProxy started on `text`, written to `file`.
async fn run_on(dir: &Path, file: &PathBuf, text: &str) -> Haproxy {
    write(file, text);
    start(dir, file).await
}

#[tokio::test]
async fn server_changes_need_no_reload_and_other_changes_reload_seamlessly() {
    let (dir, port, file) = setup();
    let (a, b) = (backend("a").await, backend("b").await);
    let v1 = config(dir.path(), port, 100, &[("a", a)]);
    let haproxy = run_on(dir.path(), &file, &v1).await;
    let before = runtime::processes(&haproxy.master)
        .await
        .expect("show proc");
    assert_eq!(get(port).await, "a");
    let mut applier = applier_for(&haproxy, &file, &v1).await;

    // Scale: b added, a removed; through the Runtime API.
    let v2 = config(dir.path(), port, 100, &[("b", b)]);
    assert_eq!(
        applier.apply(&v2).await.expect("apply v2"),
        Outcome::Runtime(2)
    );
    assert!(
        applier.draining().is_empty(),
        "a had no connection: deleted at once"
    );
    assert_eq!(
        std::fs::read_to_string(&file).expect("file"),
        v2,
        "the file in step"
    );
    let state = runtime::servers(&haproxy.admin, "be_web")
        .await
        .expect("servers");
    assert_eq!(state.len(), 1, "{state:?}");
    assert_eq!((state[0].server.as_str(), state[0].port), ("b", b.port()));
    wait("b to be live", || async {
        runtime::servers(&haproxy.admin, "be_web")
            .await
            .is_ok_and(|s| s.iter().all(|s| s.live()))
    })
    .await;
    for _ in 0..5 {
        assert_eq!(get(port).await, "b");
    }
    let after = runtime::processes(&haproxy.master)
        .await
        .expect("show proc");
    assert_eq!(after.reloads, before.reloads, "no reload");
    assert_eq!(after.workers, before.workers, "the same worker");

    // A config HAProxy rejects is never applied: not the file, not a reload.
    let bad = v2.replace(
        "balance roundrobin",
        "balance roundrobin\n    bogus_keyword",
    );
    match applier.apply(&bad).await {
        Err(ApplyError::Rejected(message)) => {
            assert!(message.contains("bogus_keyword"), "{message}")
        }
        other => panic!("a rejected config: {other:?}"),
    }
    assert_eq!(std::fs::read_to_string(&file).expect("file"), v2);
    assert_eq!(
        runtime::processes(&haproxy.master)
            .await
            .expect("show proc"),
        after
    );
    assert_eq!(get(port).await, "b");

    // Anything else: a reload, seamless; the new worker loads the file.
    let v3 = config(dir.path(), port, 200, &[("b", b)]);
    assert!(matches!(
        applier.apply(&v3).await.expect("apply v3"),
        Outcome::Reload(_)
    ));
    let reloaded = runtime::processes(&haproxy.master)
        .await
        .expect("show proc");
    assert_eq!(reloaded.reloads, before.reloads + 1);
    assert_ne!(reloaded.workers, before.workers);
    new_worker_with_maxconn(&haproxy, 200).await;
    assert_eq!(get(port).await, "b");
    assert_eq!(
        applier.apply(&v3).await.expect("apply v3 again"),
        Outcome::Noop
    );
}

#[tokio::test]
async fn a_sticky_pool_scales_without_a_reload() {
    let (dir, port, file) = setup();
    let (a, b) = (backend("a").await, backend("b").await);
    let v1 = config_of(dir.path(), port, 100, &[("a", a)], true);
    let haproxy = run_on(dir.path(), &file, &v1).await;
    let before = runtime::processes(&haproxy.master)
        .await
        .expect("show proc");
    let mut applier = applier_for(&haproxy, &file, &v1).await;
    // What the agent reports on its pod as the version HAProxy runs.
    let version = runtime::version(&haproxy.admin).await.expect("version");
    assert_eq!(
        lbpool_wire::major_minor(&version),
        Some(lbpool_checker::haproxy::HAPROXY_MAJOR),
        "{version}"
    );
    let v2 = config_of(dir.path(), port, 100, &[("a", a), ("b", b)], true);
    assert_eq!(
        applier.apply(&v2).await.expect("apply v2"),
        Outcome::Runtime(1),
        "b added with its cookie through the Runtime API"
    );
    wait("b to be live", || async {
        runtime::servers(&haproxy.admin, "be_web")
            .await
            .is_ok_and(|s| s.len() == 2 && s.iter().all(|s| s.live()))
    })
    .await;
    // A session pinned by its cookie stays on its server, the new one too.
    for _ in 0..4 {
        assert_eq!(get_with(port, "cookie: SRV=b\r\n").await, "b");
        assert_eq!(get_with(port, "cookie: SRV=a\r\n").await, "a");
    }
    assert_no_reload(&haproxy, &before).await;
}

/// A TCP server that accepts connections and never answers: a long
/// connection.
async fn silent() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        let mut held = Vec::new();
        while let Ok((conn, _)) = listener.accept().await {
            held.push(conn);
        }
    });
    addr
}

#[tokio::test]
async fn old_workers_stay_few_while_a_long_connection_is_open() {
    let (dir, port, file) = setup();
    let (web, hold) = (backend("a").await, silent().await);
    let hold_port = free_port();
    // The global lines lbpool's InPlace config carries (golden in-place.cfg),
    // and a TCP proxy to a server that never answers.
    let with_limits = |maxconn: u32| {
        config(dir.path(), port, maxconn, &[("a", web)]).replace(
            "global\n",
            "global\n    hard-stop-after 30s\n    mworker-max-reloads 3\n",
        ) + &format!(
            "listen hold\n    mode tcp\n    bind 127.0.0.1:{hold_port}\n    server h {hold}\n"
        )
    };
    let v0 = with_limits(100);
    let haproxy = run_on(dir.path(), &file, &v0).await;
    let mut applier = applier_for(&haproxy, &file, &v0).await;
    let first = runtime::processes(&haproxy.master)
        .await
        .expect("show proc")
        .workers;
    let mut long = TcpStream::connect(("127.0.0.1", hold_port))
        .await
        .expect("connect");
    long.write_all(b"hello").await.expect("write");
    let started = Instant::now();
    let mut most_old = 0;
    for i in 1..=6 {
        let next = with_limits(100 + i);
        assert!(matches!(
            applier.apply(&next).await.expect("apply"),
            Outcome::Reload(_)
        ));
        let p = runtime::processes(&haproxy.master)
            .await
            .expect("show proc");
        most_old = most_old.max(p.old_workers.len());
    }
    // The worker that holds the connection is stopped after 3 more reloads,
    // long before hard-stop-after.
    wait("the first worker to be stopped", || async {
        runtime::processes(&haproxy.master).await.is_ok_and(|p| {
            !p.old_workers
                .iter()
                .chain(&p.workers)
                .any(|w| first.contains(w))
        })
    })
    .await;
    let mut buf = [0u8; 16];
    let closed = tokio::time::timeout(Duration::from_secs(10), long.read(&mut buf)).await;
    assert!(
        matches!(closed, Ok(Ok(0) | Err(_))),
        "the long connection ends with its worker: {closed:?}"
    );
    eprintln!(
        "6 reloads with a long connection open: at most {most_old} old worker(s), the first stopped after {:?}",
        started.elapsed()
    );
    assert!(most_old <= 3, "old workers: {most_old}");
    assert!(
        started.elapsed() < Duration::from_secs(30),
        "stopped by mworker-max-reloads, not by hard-stop-after"
    );
    assert_eq!(get(port).await, "a");
}

/// A TCP server that echoes what it reads, on every connection.
async fn echo() -> SocketAddr {
    let listener = TcpListener::bind("127.0.0.1:0").await.expect("bind");
    let addr = listener.local_addr().expect("addr");
    tokio::spawn(async move {
        while let Ok((mut conn, _)) = listener.accept().await {
            tokio::spawn(async move {
                let (mut r, mut w) = conn.split();
                let _ = tokio::io::copy(&mut r, &mut w).await;
            });
        }
    });
    addr
}

/// Writes `word` on `conn` and reads it back.
async fn echoes(conn: &mut TcpStream, word: &str) -> bool {
    if conn.write_all(word.as_bytes()).await.is_err() {
        return false;
    }
    let mut buf = vec![0u8; word.len()];
    matches!(
        tokio::time::timeout(Duration::from_secs(5), conn.read_exact(&mut buf)).await,
        Ok(Ok(_))
    ) && buf == word.as_bytes()
}

#[tokio::test]
async fn a_server_with_a_live_connection_drains_and_its_name_comes_back_without_a_reload() {
    let (dir, port, file) = setup();
    let (web, first, second) = (backend("a").await, echo().await, echo().await);
    let tcp_port = free_port();
    let with_tcp = |servers: &[(&str, SocketAddr)]| {
        let mut text = config(dir.path(), port, 100, &[("a", web)]);
        text.push_str(&format!(
            "listen tcp\n    mode tcp\n    bind 127.0.0.1:{tcp_port}\n"
        ));
        for (name, addr) in servers {
            text.push_str(&format!("    server {name} {addr}\n"));
        }
        text
    };
    let v1 = with_tcp(&[("e", first)]);
    let haproxy = run_on(dir.path(), &file, &v1).await;
    let mut applier = applier_for(&haproxy, &file, &v1).await;
    let before = runtime::processes(&haproxy.master)
        .await
        .expect("show proc");
    let e = || async {
        runtime::servers(&haproxy.admin, "tcp")
            .await
            .expect("servers")
            .into_iter()
            .find(|s| s.server == "e")
    };
    let mut long = TcpStream::connect(("127.0.0.1", tcp_port))
        .await
        .expect("connect");
    assert!(echoes(&mut long, "one").await);

    // Scaled away with the connection open: in maintenance, not deleted.
    let without = with_tcp(&[]);
    assert_eq!(
        applier.apply(&without).await.expect("remove e"),
        Outcome::Runtime(1)
    );
    assert_eq!(applier.draining().len(), 1, "e has a connection: it drains");
    assert_eq!(applier.delete_drained().await.expect("delete drained"), 1);
    let draining = e().await.expect("e is still in show servers state");
    assert!(
        !draining.live(),
        "no new connection goes to e: {draining:?}"
    );
    assert!(
        echoes(&mut long, "two").await,
        "the open connection keeps working"
    );

    // The name back while it drains, at another address: no reload.
    let back = with_tcp(&[("e", second)]);
    assert_eq!(
        applier.apply(&back).await.expect("e back"),
        Outcome::Runtime(1)
    );
    assert!(applier.draining().is_empty(), "e revived, not draining");
    let revived = e().await.expect("e");
    assert!(
        revived.live() && revived.port == second.port(),
        "e takes traffic at its new address: {revived:?}"
    );
    assert!(
        echoes(&mut long, "three").await,
        "the old connection still works"
    );
    let mut fresh = TcpStream::connect(("127.0.0.1", tcp_port))
        .await
        .expect("connect");
    assert!(echoes(&mut fresh, "four").await);

    // Away again; once its connections end it is deleted.
    assert_eq!(
        applier.apply(&without).await.expect("remove e"),
        Outcome::Runtime(1)
    );
    assert_eq!(applier.draining().len(), 1);
    drop((long, fresh));
    let started = Instant::now();
    while applier.delete_drained().await.expect("delete drained") > 0 {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "e was not deleted after its connections ended"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(e().await.is_none(), "e is gone from show servers state");
    assert_no_reload(&haproxy, &before).await;
}

#[tokio::test]
async fn a_config_haproxy_fails_to_load_is_rolled_back_and_stays_so_after_a_restart() {
    let (dir, port, file) = setup();
    let a = backend("a").await;
    let v1 = config(dir.path(), port, 100, &[("a", a)]);
    let mut haproxy = run_on(dir.path(), &file, &v1).await;
    let mut applier = applier_for(&haproxy, &file, &v1).await;
    let before = runtime::processes(&haproxy.master)
        .await
        .expect("show proc");
    // A port someone else holds: `haproxy -c` accepts it; refused before
    // any reload (whose failed bind would pause the listeners for seconds).
    let taken = std::net::TcpListener::bind("127.0.0.1:0").expect("bind");
    let taken_port = taken.local_addr().expect("addr").port();
    let in_use = v1.replace(
        &format!("bind 127.0.0.1:{port}\n"),
        &format!("bind 127.0.0.1:{port}\n    bind 127.0.0.1:{taken_port}\n"),
    );
    match applier.apply(&in_use).await {
        Err(ApplyError::LoadFailed(message)) => assert!(
            message.contains(&format!("127.0.0.1:{taken_port}")) && message.contains("in use"),
            "{message}"
        ),
        other => panic!("a config whose port is taken: {other:?}"),
    }
    assert_no_reload(&haproxy, &before).await;
    assert_eq!(std::fs::read_to_string(&file).expect("file"), v1);

    // A config `haproxy -c` accepts and the new worker fails to load (it
    // cannot size its tables): HAProxy's `Success=0`, the file rolled back.
    let v2 = v1.replace("maxconn 100\n", "maxconn 2000000000\n    strict-limits\n");
    assert_ne!(v1, v2);
    match applier.apply(&v2).await {
        Err(ApplyError::LoadFailed(message)) => assert!(
            message.contains("[ALERT]") && !message.contains(&dir.path().to_string_lossy()[..]),
            "HAProxy's reason, without the agent's paths: {message}"
        ),
        other => panic!("a config that fails at reload: {other:?}"),
    }
    assert_eq!(
        std::fs::read_to_string(&file).expect("file"),
        v1,
        "rolled back"
    );
    assert_eq!(applier.running_hash(), lbpool_wire::config_hash(&v1));
    assert_eq!(get(port).await, "a", "the old worker serves on");

    // The HAProxy container restarts: it loads the last good config.
    drop(haproxy);
    haproxy = start(dir.path(), &file).await;
    assert_eq!(get(port).await, "a");
    // And the agent taking over after its own restart finds it verified.
    let (resumed, how) = resume(&haproxy, &file).await;
    assert_eq!(how, Resumed::Verified);
    assert_eq!(resumed.running_hash(), lbpool_wire::config_hash(&v1));
}

#[tokio::test]
async fn after_its_restart_the_agent_reports_only_what_haproxy_runs() {
    let (dir, port, file) = setup();
    let (a, b) = (backend("a").await, backend("b").await);
    let v1 = config(dir.path(), port, 100, &[("a", a)]);
    let haproxy = run_on(dir.path(), &file, &v1).await;
    // What a started agent records.
    write(&record_of(&file), &v1);
    let reloads = || async {
        runtime::processes(&haproxy.master)
            .await
            .expect("show proc")
            .reloads
    };
    let r0 = reloads().await;

    // Killed between writing the next config and reloading HAProxy.
    let v2 = config(dir.path(), port, 200, &[("a", a)]);
    write(&file, &v2);
    let (applier, how) = resume(&haproxy, &file).await;
    assert!(matches!(how, Resumed::Reloaded(_)), "{how:?}");
    assert_eq!(
        applier.running_hash(),
        lbpool_wire::config_hash(&v1),
        "reports what HAProxy runs, not the file it never loaded"
    );
    assert_eq!(std::fs::read_to_string(&file).expect("file"), v1);
    assert_eq!(reloads().await, r0 + 1);
    assert!(
        haproxy
            .admin
            .send("show info")
            .await
            .expect("show info")
            .contains("Maxconn: 100")
    );
    drop(applier);

    // Killed between a Runtime API change and the file: HAProxy has a
    // server the file lacks.
    haproxy
        .admin
        .send(&format!("add server be_web/b {b}"))
        .await
        .expect("add server");
    let (applier, how) = resume(&haproxy, &file).await;
    assert!(
        matches!(&how, Resumed::Reloaded(why) if why.contains("other servers")),
        "{how:?}"
    );
    assert_eq!(applier.running_hash(), lbpool_wire::config_hash(&v1));
    let servers = runtime::servers(&haproxy.admin, "be_web")
        .await
        .expect("servers");
    assert_eq!(servers.len(), 1, "{servers:?}");
    drop(applier);

    // Nothing amiss: taken over as it is, no reload.
    let r = reloads().await;
    let (applier, how) = resume(&haproxy, &file).await;
    assert_eq!(how, Resumed::Verified);
    assert_eq!(applier.running_hash(), lbpool_wire::config_hash(&v1));
    assert_eq!(reloads().await, r);
}

/// The agent taking over `haproxy` after its own restart.
async fn resume(haproxy: &Haproxy, file: &Path) -> (Applier, Resumed) {
    Applier::resume(
        file.to_path_buf(),
        haproxy.admin.clone(),
        haproxy.master.clone(),
        Box::new(lbpool_checker::haproxy::test_validator()),
    )
    .await
    .expect("resume")
}

#[tokio::test]
async fn a_source_pool_scales_without_a_reload_with_consistent_hashing() {
    let (dir, port, file) = setup();
    let (a, b, c) = (backend("a").await, backend("b").await, backend("c").await);
    let source = |hash: &str, servers: &[(&str, SocketAddr)]| {
        config(dir.path(), port, 100, servers)
            .replace("balance roundrobin", &format!("balance source{hash}"))
    };
    let consistent = "\n    hash-type consistent";
    let v1 = source(consistent, &[("a", a)]);
    let haproxy = run_on(dir.path(), &file, &v1).await;
    let mut applier = applier_for(&haproxy, &file, &v1).await;
    let before = runtime::processes(&haproxy.master)
        .await
        .expect("show proc");
    let v2 = source(consistent, &[("a", a), ("b", b)]);
    assert_eq!(
        applier.apply(&v2).await.expect("apply v2"),
        Outcome::Runtime(1)
    );
    let v3 = source(consistent, &[("b", b)]);
    assert_eq!(
        applier.apply(&v3).await.expect("apply v3"),
        Outcome::Runtime(1)
    );
    wait("b to be live", || async {
        runtime::servers(&haproxy.admin, "be_web")
            .await
            .is_ok_and(|s| s.len() == 1 && s[0].live())
    })
    .await;
    assert_eq!(get(port).await, "b");
    assert_no_reload(&haproxy, &before).await;

    // Why lbpool renders `hash-type consistent`: with HAProxy's default
    // map-based hash, `add server` is refused and a scale event reloads.
    let v4 = source("", &[("b", b)]);
    assert!(matches!(
        applier.apply(&v4).await.expect("apply v4"),
        Outcome::Reload(_)
    ));
    let v5 = source("", &[("b", b), ("c", c)]);
    match applier.apply(&v5).await.expect("apply v5") {
        Outcome::Reload(why) => assert!(why.contains("Runtime API"), "{why}"),
        other => panic!("a map-based source pool reloads to scale: {other:?}"),
    }
}

/// The agent's real validator, counting its checks.
#[derive(Debug)]
struct Counting {
    validator: HaproxyValidator,
    checks: std::sync::Arc<std::sync::atomic::AtomicUsize>,
}

impl lbpool_checker::Validator for Counting {
    fn check<'a>(
        &'a self,
        config: &'a str,
    ) -> futures::future::BoxFuture<'a, Result<(), lbpool_checker::ValidationError>> {
        self.checks
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        self.validator.check(config)
    }
}

#[tokio::test]
async fn rendered_server_changes_skip_haproxy_c_anything_else_is_checked() {
    let (dir, port, file) = setup();
    let a = backend("a").await;
    // 1 000 servers on this machine (closed ports, no health check): what a
    // check costs at that size.
    let many = |n: usize, extra: &str| {
        let mut text = config(dir.path(), port, 100, &[("a", a)]);
        for i in 0..n {
            text.push_str(&format!(
                "    server s{i} 127.0.{}.{}:9{extra}\n",
                i / 250,
                i % 250 + 1
            ));
        }
        text
    };
    let v1 = many(1000, "");
    let haproxy = run_on(dir.path(), &file, &v1).await;
    let counting = Counting {
        validator: HaproxyValidator::new(lbpool_checker::haproxy::test_haproxy_bin())
            .with_runtime_api(haproxy.admin.path().to_string_lossy().into_owned()),
        checks: Default::default(),
    };
    let checks = counting.checks.clone();
    let mut applier = Applier::started(
        file.clone(),
        haproxy.admin.clone(),
        haproxy.master.clone(),
        Box::new(counting),
        &v1,
    )
    .await
    .expect("record");
    let count = || checks.load(std::sync::atomic::Ordering::Relaxed);

    let started = Instant::now();
    let v2 = many(999, "");
    assert_eq!(applier.apply(&v2).await.expect("v2"), Outcome::Runtime(1));
    let fast = started.elapsed();
    assert_eq!(count(), 0, "a rendered server change is not checked");

    // A new server with an option lbpool does not render: checked, though
    // the Runtime API applies it.
    let started = Instant::now();
    let v3 = format!("{v2}    server extra 127.0.9.9:9 maxconn 5\n");
    assert_eq!(applier.apply(&v3).await.expect("v3"), Outcome::Runtime(1));
    let checked = started.elapsed();
    assert_eq!(count(), 1, "anything else is checked");
    eprintln!(
        "at 1 000 servers: a rendered change applied in {fast:?} without haproxy -c, one with an option lbpool does not render in {checked:?}"
    );
}

/// `stot` (sessions in total) of `proxy`/`row` in `show stat`.
async fn sessions(haproxy: &Haproxy, proxy: &str, row: &str) -> u64 {
    let csv = haproxy.admin.send("show stat").await.expect("show stat");
    csv.lines()
        .map(|l| l.split(',').collect::<Vec<_>>())
        .find(|f| f.first() == Some(&proxy) && f.get(1) == Some(&row))
        .and_then(|f| f.get(7)?.parse().ok())
        .unwrap_or_else(|| panic!("no {proxy}/{row} in {csv}"))
}

#[tokio::test]
async fn counters_survive_a_reload_through_the_stats_file() {
    let (dir, port, file) = setup();
    let a = backend("a").await;
    let stats = dir.path().join("haproxy.stats");
    let with_counters = |maxconn: u32| {
        config(dir.path(), port, maxconn, &[("a", a)])
            .replace(
                "global\n",
                &format!("global\n    stats-file {}\n", stats.display()),
            )
            .replace("frontend fe\n", "frontend fe\n    guid fe\n")
            .replace("\nbackend be_web\n", "\nbackend be_web\n    guid be_web\n")
            .replace(" check\n", " check guid be_web.a\n")
    };
    let v1 = with_counters(100);
    // What the agent does before HAProxy's first start: a stats-file
    // without counters, which HAProxy reads without a warning.
    lbpool_agent::apply::prepare_stats_file(&v1)
        .await
        .expect("prepare");
    write(&file, &v1);
    let check = Command::new(lbpool_checker::haproxy::test_haproxy_bin())
        .args(["-c", "-f"])
        .arg(&file)
        .output()
        .expect("haproxy -c");
    let said = String::from_utf8_lossy(&check.stderr).into_owned()
        + &String::from_utf8_lossy(&check.stdout);
    assert!(
        check.status.success()
            && !said.to_lowercase().contains("stats file")
            && !said.contains("stats-file"),
        "{said}"
    );
    let haproxy = start(dir.path(), &file).await;
    let mut applier = applier_for(&haproxy, &file, &v1).await;
    for _ in 0..5 {
        assert_eq!(get(port).await, "a");
    }
    assert_eq!(sessions(&haproxy, "fe", "FRONTEND").await, 5);

    // An option change: a reload, a new worker, the same counters.
    assert!(matches!(
        applier.apply(&with_counters(200)).await.expect("reload"),
        Outcome::Reload(_)
    ));
    new_worker_with_maxconn(&haproxy, 200).await;
    assert_eq!(
        sessions(&haproxy, "fe", "FRONTEND").await,
        5,
        "kept across the reload"
    );
    assert_eq!(sessions(&haproxy, "be_web", "a").await, 5);
    assert_eq!(get(port).await, "a");
    assert_eq!(sessions(&haproxy, "fe", "FRONTEND").await, 6);
}
