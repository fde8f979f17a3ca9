//! The agent applying configs to a real HAProxy in master-worker mode:
//! server changes through the Runtime API with no reload, a config
//! `haproxy -c` rejects never applied, anything else by a seamless reload
//! through the master CLI; the config file kept in step.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use lbpool_agent::apply::{Applier, ApplyError, Outcome};
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

/// The agent's applier for `haproxy`, which runs `running` from `file`.
fn applier_for(haproxy: &Haproxy, file: &Path, running: &str) -> Applier {
    Applier::new(
        file.to_path_buf(),
        haproxy.admin.clone(),
        haproxy.master.clone(),
        Box::new(
            HaproxyValidator::new(lbpool_checker::haproxy::test_haproxy_bin())
                .with_runtime_api(haproxy.admin.path().to_string_lossy().into_owned()),
        ),
        running,
    )
}

fn write(path: &PathBuf, text: &str) {
    std::fs::write(path, text).expect("write the config");
}

#[tokio::test]
async fn server_changes_need_no_reload_and_other_changes_reload_seamlessly() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (backend("a").await, backend("b").await);
    let port = free_port();
    let file = dir.path().join("haproxy.cfg");
    let v1 = config(dir.path(), port, 100, &[("a", a)]);
    write(&file, &v1);
    let haproxy = start(dir.path(), &file).await;
    let before = runtime::processes(&haproxy.master)
        .await
        .expect("show proc");
    assert_eq!(get(port).await, "a");
    let mut applier = applier_for(&haproxy, &file, &v1);

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
    wait("the admin socket of the new worker", || async {
        haproxy
            .admin
            .send("show info")
            .await
            .is_ok_and(|i| i.contains("Maxconn: 200"))
    })
    .await;
    assert_eq!(get(port).await, "b");
    assert_eq!(
        applier.apply(&v3).await.expect("apply v3 again"),
        Outcome::Noop
    );
}

#[tokio::test]
async fn a_sticky_pool_scales_without_a_reload() {
    let dir = tempfile::tempdir().expect("tempdir");
    let (a, b) = (backend("a").await, backend("b").await);
    let port = free_port();
    let file = dir.path().join("haproxy.cfg");
    let v1 = config_of(dir.path(), port, 100, &[("a", a)], true);
    write(&file, &v1);
    let haproxy = start(dir.path(), &file).await;
    let before = runtime::processes(&haproxy.master)
        .await
        .expect("show proc");
    let mut applier = applier_for(&haproxy, &file, &v1);
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
    let after = runtime::processes(&haproxy.master)
        .await
        .expect("show proc");
    assert_eq!(after.reloads, before.reloads, "no reload");
    assert_eq!(after.workers, before.workers, "the same worker");
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
    let dir = tempfile::tempdir().expect("tempdir");
    let (web, hold) = (backend("a").await, silent().await);
    let (port, hold_port) = (free_port(), free_port());
    let file = dir.path().join("haproxy.cfg");
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
    write(&file, &v0);
    let haproxy = start(dir.path(), &file).await;
    let mut applier = applier_for(&haproxy, &file, &v0);
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
