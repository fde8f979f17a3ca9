//! The admin server: `/live`, `/ready`, `/leader` and `/metrics`.
//!
//! `/ready` is true for a leader (or a replica without election) once every
//! watch has delivered its first list, and for a standby once it takes part
//! in the election: it is then ready to take over. A standby is not made
//! unready, because the controller's own Deployment could then never finish
//! a rolling update (a new replica that waits for the Lease would never
//! become available). `/leader` answers 200 only on the replica that leads;
//! the `lbpool_leader` gauge says the same.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU8, Ordering};

use axum::Router;
use axum::extract::State;
use axum::http::{StatusCode, header};
use axum::routing::get;

use crate::metrics::Metrics;

/// What `prometheus_client`'s text encoder writes (it ends with `# EOF`).
pub const OPENMETRICS_CONTENT_TYPE: &str =
    "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Where this replica stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Role {
    /// Starting: not yet in the election, caches not synced.
    Starting = 0,
    /// In the election, waiting for the Lease.
    Standby = 1,
    /// Leading (or alone), caches not yet synced.
    Syncing = 2,
    /// Leading (or alone) with synced caches: reconciling.
    Leading = 3,
}

/// Shared with the controller, which moves it through the [`Role`]s.
#[derive(Clone, Debug)]
pub struct Health {
    role: Arc<AtomicU8>,
    metrics: Metrics,
}

impl Health {
    pub fn new(metrics: Metrics) -> Self {
        Self {
            role: Arc::new(AtomicU8::new(Role::Starting as u8)),
            metrics,
        }
    }

    pub fn set(&self, role: Role) {
        self.role.store(role as u8, Ordering::Release);
        let leads = matches!(role, Role::Syncing | Role::Leading);
        self.metrics.leader.set(i64::from(leads));
    }

    pub fn role(&self) -> Role {
        match self.role.load(Ordering::Acquire) {
            1 => Role::Standby,
            2 => Role::Syncing,
            3 => Role::Leading,
            _ => Role::Starting,
        }
    }

    fn ready(&self) -> (StatusCode, &'static str) {
        match self.role() {
            Role::Starting => (StatusCode::SERVICE_UNAVAILABLE, "starting"),
            Role::Syncing => (
                StatusCode::SERVICE_UNAVAILABLE,
                "leader; caches are not synced yet",
            ),
            Role::Standby => (
                StatusCode::OK,
                "standby: ready to take over the leader Lease",
            ),
            Role::Leading => (StatusCode::OK, "leader: reconciling"),
        }
    }

    fn leader(&self) -> (StatusCode, &'static str) {
        match self.role() {
            Role::Syncing | Role::Leading => (StatusCode::OK, "leader"),
            Role::Standby | Role::Starting => (StatusCode::SERVICE_UNAVAILABLE, "not the leader"),
        }
    }
}

/// Serves until `shutdown` completes.
pub async fn serve(
    addr: SocketAddr,
    health: Health,
    metrics: Metrics,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route("/live", get(|| async { "ok" }))
        .route(
            "/ready",
            get(|State((h, _)): State<(Health, Metrics)>| async move { h.ready() }),
        )
        .route(
            "/leader",
            get(|State((h, _)): State<(Health, Metrics)>| async move { h.leader() }),
        )
        .route(
            "/metrics",
            get(|State((_, m)): State<(Health, Metrics)>| async move {
                (
                    [(header::CONTENT_TYPE, OPENMETRICS_CONTENT_TYPE)],
                    m.encode(),
                )
            }),
        )
        .with_state((health, metrics));
    let listener = tokio::net::TcpListener::bind(addr).await?;
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_standby_is_ready_but_not_the_leader() {
        let metrics = Metrics::default();
        let h = Health::new(metrics.clone());
        assert_eq!(h.ready().0, StatusCode::SERVICE_UNAVAILABLE);
        h.set(Role::Standby);
        assert_eq!(
            (h.ready().0, h.leader().0),
            (StatusCode::OK, StatusCode::SERVICE_UNAVAILABLE)
        );
        assert!(metrics.encode().contains("lbpool_leader 0"));
        h.set(Role::Syncing);
        assert_eq!(
            (h.ready().0, h.leader().0),
            (StatusCode::SERVICE_UNAVAILABLE, StatusCode::OK)
        );
        h.set(Role::Leading);
        assert_eq!(
            (h.ready().0, h.leader().0),
            (StatusCode::OK, StatusCode::OK)
        );
        assert!(metrics.encode().contains("lbpool_leader 1"));
    }

    #[tokio::test]
    async fn metrics_are_served_as_openmetrics() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").expect("port");
        let addr = listener.local_addr().expect("addr");
        drop(listener);
        let (stop, stopped) = tokio::sync::oneshot::channel::<()>();
        let metrics = Metrics::default();
        let health = Health::new(metrics.clone());
        let server = tokio::spawn(serve(addr, health, metrics, async {
            let _ = stopped.await;
        }));
        let mut answer = String::new();
        for _ in 0..50 {
            if let Ok(mut s) = tokio::net::TcpStream::connect(addr).await {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                s.write_all(b"GET /metrics HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n")
                    .await
                    .expect("write");
                s.read_to_string(&mut answer).await.expect("read");
                break;
            }
            tokio::time::sleep(std::time::Duration::from_millis(20)).await;
        }
        let _ = stop.send(());
        let _ = server.await;
        let head = answer.to_ascii_lowercase();
        assert!(head.starts_with("http/1.1 200"), "{answer}");
        assert!(
            head.contains("content-type: application/openmetrics-text; version=1.0.0"),
            "{answer}"
        );
        assert!(answer.trim_end().ends_with("# EOF"), "{answer}");
    }
}
