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
    /// Log format.
    #[arg(long, env = "LBPOOL_LOG_FORMAT", value_enum, default_value = "text")]
    log_format: lbpool_process::LogFormat,
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    lbpool_process::init_logging(args.log_format, "info");
    let validator = lbpool_checker::HaproxyValidator::new(&args.haproxy_bin);
    let version = validator.version().await.context("haproxy -v")?;
    // A socket left by an earlier run of this container is replaced.
    let _ = std::fs::remove_file(&args.socket);
    let listener = UnixListener::bind(&args.socket)
        .with_context(|| format!("listen on {}", args.socket.display()))?;
    info!(socket = %args.socket.display(), %version, "lbpool-checker serving");
    tokio::select! {
        () = lbpool_checker::service::serve(listener, validator) => Ok(()),
        () = lbpool_process::termination() => Ok(()),
    }
}
