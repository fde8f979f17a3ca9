//! Load generator for the data-plane tests, standing in for clients behind a
//! Service: each request opens a new connection to one of the HAProxy pods
//! listed in `--targets` (one `ip:port` a line, re-read every 20 ms, as
//! endpoints change), sends `GET /` and expects `200`. Runs until `--stop`
//! exists, then prints `sent=N ok=N failed=N` and the first errors.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, RwLock};
use std::time::Duration;

struct Shared {
    targets: RwLock<Vec<SocketAddr>>,
    next: AtomicUsize,
    sent: AtomicU64,
    ok: AtomicU64,
    errors: Mutex<BTreeMap<String, u64>>,
}

fn arg(name: &str) -> Option<String> {
    let args: Vec<String> = std::env::args().collect();
    args.iter()
        .position(|a| a == name)
        .and_then(|i| args.get(i + 1).cloned())
}

fn read_targets(path: &PathBuf) -> Vec<SocketAddr> {
    std::fs::read_to_string(path)
        .unwrap_or_default()
        .lines()
        .filter_map(|l| l.trim().parse().ok())
        .collect()
}

async fn request(target: SocketAddr) -> Result<(), String> {
    match lbpool_tests::http::get(target, "/", Duration::from_secs(5))
        .await?
        .status
    {
        200 => Ok(()),
        code => Err(format!("HTTP {code}")),
    }
}

async fn worker(shared: Arc<Shared>, stop: Arc<std::sync::atomic::AtomicBool>) {
    while !stop.load(Ordering::Relaxed) {
        let target = {
            let targets = shared.targets.read().unwrap_or_else(|p| p.into_inner());
            if targets.is_empty() {
                None
            } else {
                Some(targets[shared.next.fetch_add(1, Ordering::Relaxed) % targets.len()])
            }
        };
        let Some(target) = target else {
            tokio::time::sleep(Duration::from_millis(10)).await;
            continue;
        };
        shared.sent.fetch_add(1, Ordering::Relaxed);
        match request(target).await {
            Ok(()) => {
                shared.ok.fetch_add(1, Ordering::Relaxed);
            }
            Err(e) => {
                let mut errors = shared.errors.lock().unwrap_or_else(|p| p.into_inner());
                *errors.entry(format!("{target}: {e}")).or_insert(0) += 1;
            }
        }
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    let targets = PathBuf::from(arg("--targets").expect("--targets FILE"));
    let stop_file = PathBuf::from(arg("--stop").expect("--stop FILE"));
    let concurrency: usize = arg("--concurrency")
        .and_then(|c| c.parse().ok())
        .unwrap_or(8);
    let shared = Arc::new(Shared {
        targets: RwLock::new(read_targets(&targets)),
        next: AtomicUsize::new(0),
        sent: AtomicU64::new(0),
        ok: AtomicU64::new(0),
        errors: Mutex::default(),
    });
    let stop = Arc::new(std::sync::atomic::AtomicBool::new(false));
    let workers: Vec<_> = (0..concurrency)
        .map(|_| tokio::spawn(worker(shared.clone(), stop.clone())))
        .collect();
    // Bounded: stops by itself after 10 minutes even if nobody asks.
    for _ in 0..30_000 {
        if stop_file.exists() {
            break;
        }
        *shared.targets.write().unwrap_or_else(|p| p.into_inner()) = read_targets(&targets);
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    stop.store(true, Ordering::Relaxed);
    for w in workers {
        let _ = w.await;
    }
    let sent = shared.sent.load(Ordering::Relaxed);
    let ok = shared.ok.load(Ordering::Relaxed);
    println!("sent={sent} ok={ok} failed={}", sent - ok);
    for (error, count) in shared
        .errors
        .lock()
        .unwrap_or_else(|p| p.into_inner())
        .iter()
        .take(20)
    {
        println!("error {count}x {error}");
    }
}
