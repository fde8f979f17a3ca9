//! `lbpool-checker`: the config checker as a service on a UNIX socket
//! ([`lbpool_checker::service`]), run in a container with no credential.

use std::path::PathBuf;

use anyhow::Context as _;
use clap::Parser as _;
use tokio::net::UnixListener;
use tracing::info;

/// Command-line arguments (each also read from the environment).
#[derive(Debug, clap::Parser)]
#[command(name = "lbpool-checker", version, about)]
struct Args {
    /// The socket to serve on, in a volume shared with the controller.
    #[arg(
        long,
        env = "LBPOOL_CHECKER_SOCKET",
        default_value = "/run/lbpool-checker/checker.sock"
    )]
    socket: PathBuf,
    /// The haproxy binary that checks each config (`haproxy -c`).
    #[arg(long, env = "LBPOOL_HAPROXY_BIN", default_value = "haproxy")]
    haproxy_bin: PathBuf,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    tracing_subscriber::fmt()
        .with_ansi(false)
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env().unwrap_or_else(|_| "info".into()),
        )
        .init();
    let validator = lbpool_checker::HaproxyValidator::new(&args.haproxy_bin);
    let version = validator.version().await.context("haproxy -v")?;
    // A socket left by an earlier run of this container is replaced.
    let _ = std::fs::remove_file(&args.socket);
    let listener = UnixListener::bind(&args.socket)
        .with_context(|| format!("listen on {}", args.socket.display()))?;
    info!(socket = %args.socket.display(), %version, "lbpool-checker serving");
    tokio::select! {
        () = lbpool_checker::service::serve(listener, validator) => Ok(()),
        _ = tokio::signal::ctrl_c() => Ok(()),
        () = terminated() => Ok(()),
    }
}

async fn terminated() {
    match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
        Ok(mut s) => {
            s.recv().await;
        }
        Err(_) => std::future::pending().await,
    }
}
