//! The demo backend, like the lab's node.js app: `GET /` answers JSON with the
//! host name, the address the request arrived on, and a view counter kept per
//! session (cookie `webapp_session`) in this process. `GET /slow?ms=N` does the
//! same after N ms. Each answer also carries the `X-Request-ID` the request
//! arrived with (HAProxy's id of it, also in its access log), `null` when none. `GET /healthz` answers 200 while the process serves,
//! until `POST /fail-readiness` makes it answer 503 for good (how the
//! end-to-end tests make a pod's real readiness probe fail); SIGTERM drains
//! and exits.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::collections::HashMap;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::header::{COOKIE, SET_COOKIE};
use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Json};
use axum::routing::{get, post};
use clap::Parser;
use serde::Serialize;

const SESSION_COOKIE: &str = "webapp_session";

#[derive(Debug, Parser)]
#[command(name = "webapp", about = "lbpool's demo backend")]
struct Args {
    /// Address to listen on.
    #[arg(long, env = "WEBAPP_LISTEN", default_value = "0.0.0.0:3000")]
    listen: SocketAddr,
    /// Name to answer with; the host name by default.
    #[arg(long, env = "WEBAPP_NAME")]
    name: Option<String>,
}

#[derive(Debug)]
struct App {
    name: String,
    /// `$POD_IP`, or the listen address when it is a specific one.
    address: String,
    next_session: AtomicU64,
    views: Mutex<HashMap<String, u64>>,
    /// Set by `POST /fail-readiness`: `/healthz` answers 503 from then on.
    unready: AtomicBool,
}

#[derive(Debug, Serialize)]
struct Answer {
    host: String,
    address: String,
    session: String,
    views: u64,
    /// The request's `X-Request-ID`, as received.
    request_id: Option<String>,
}

fn session_of(headers: &HeaderMap) -> Option<String> {
    headers
        .get_all(COOKIE)
        .iter()
        .filter_map(|v| v.to_str().ok())
        .flat_map(|v| v.split(';'))
        .filter_map(|kv| kv.trim().split_once('='))
        .find(|(k, _)| *k == SESSION_COOKIE)
        .map(|(_, v)| v.to_owned())
        .filter(|v| {
            !v.is_empty()
                && v.len() <= 64
                && v.chars().all(|c| c.is_ascii_alphanumeric() || c == '-')
        })
}

async fn index(State(app): State<Arc<App>>, headers: HeaderMap) -> impl IntoResponse {
    let (session, new) = match session_of(&headers) {
        Some(s) => (s, false),
        None => {
            let n = app.next_session.fetch_add(1, Ordering::Relaxed);
            (format!("{}-{n}", std::process::id()), true)
        }
    };
    let views = {
        let mut views = app.views.lock().unwrap_or_else(|p| p.into_inner());
        let v = views.entry(session.clone()).or_insert(0);
        *v += 1;
        *v
    };
    let mut out = HeaderMap::new();
    // The session id is ASCII by construction; from_str cannot fail on it.
    if new
        && let Ok(v) =
            HeaderValue::from_str(&format!("{SESSION_COOKIE}={session}; Path=/; HttpOnly"))
    {
        out.insert(SET_COOKIE, v);
    }
    let answer = Answer {
        host: app.name.clone(),
        address: app.address.clone(),
        session,
        views,
        request_id: headers
            .get("x-request-id")
            .and_then(|v| v.to_str().ok())
            .map(str::to_owned),
    };
    (out, Json(answer))
}

#[derive(Debug, serde::Deserialize)]
struct SlowQuery {
    ms: Option<u64>,
}

/// `GET /slow?ms=N`: answers like `/` after N ms (at most 60 s), holding a
/// connection open the way a slow request or a long download does.
async fn slow(
    State(app): State<Arc<App>>,
    axum::extract::Query(q): axum::extract::Query<SlowQuery>,
    headers: HeaderMap,
) -> impl IntoResponse {
    let wait = q.ms.unwrap_or(1000).min(60_000);
    tokio::time::sleep(std::time::Duration::from_millis(wait)).await;
    index(State(app), headers).await
}

async fn healthz(State(app): State<Arc<App>>) -> (StatusCode, &'static str) {
    if app.unready.load(Ordering::Relaxed) {
        (StatusCode::SERVICE_UNAVAILABLE, "failing on purpose")
    } else {
        (StatusCode::OK, "ok")
    }
}

/// Makes this process's readiness fail from now on, and says who it is.
async fn fail_readiness(State(app): State<Arc<App>>) -> Json<Answer> {
    app.unready.store(true, Ordering::Relaxed);
    tracing::warn!("readiness will fail from now on (POST /fail-readiness)");
    Json(Answer {
        host: app.name.clone(),
        address: app.address.clone(),
        session: String::new(),
        views: 0,
        request_id: None,
    })
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .or_else(|| std::fs::read_to_string("/proc/sys/kernel/hostname").ok())
        .map(|s| s.trim().to_owned())
        .filter(|s| !s.is_empty())
        .unwrap_or_else(|| "webapp".into())
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    lbpool_process::init_logging(lbpool_process::LogFormat::Text, "info");
    let args = Args::parse();
    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    let local = listener.local_addr()?;
    let app = Arc::new(App {
        name: args.name.unwrap_or_else(host_name),
        address: std::env::var("POD_IP").unwrap_or_else(|_| local.ip().to_string()),
        next_session: AtomicU64::new(1),
        views: Mutex::default(),
        unready: AtomicBool::new(false),
    });
    let router = Router::new()
        .route("/", get(index).head(|| async {}))
        .route("/healthz", get(healthz))
        .route("/fail-readiness", post(fail_readiness))
        .route("/slow", get(slow))
        .with_state(app.clone());
    tracing::info!(listen = %local, name = %app.name, "webapp serving");
    axum::serve(listener, router)
        .with_graceful_shutdown(lbpool_process::termination())
        .await?;
    tracing::info!("webapp stopped");
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn failing_readiness_is_for_good() {
        let app = Arc::new(App {
            name: "web-1".into(),
            address: "10.0.0.1".into(),
            next_session: AtomicU64::new(1),
            views: Mutex::default(),
            unready: AtomicBool::new(false),
        });
        assert_eq!(healthz(State(app.clone())).await.0, StatusCode::OK);
        let who = fail_readiness(State(app.clone())).await;
        assert_eq!(who.0.host, "web-1");
        for _ in 0..2 {
            assert_eq!(
                healthz(State(app.clone())).await.0,
                StatusCode::SERVICE_UNAVAILABLE
            );
        }
    }

    #[test]
    fn session_cookie_is_found_among_others_and_checked() {
        let mut h = HeaderMap::new();
        h.insert(
            COOKIE,
            HeaderValue::from_static("SERVERID=web-1; webapp_session=42-7"),
        );
        assert_eq!(session_of(&h).as_deref(), Some("42-7"));
        h.insert(COOKIE, HeaderValue::from_static("webapp_session=<script>"));
        assert_eq!(session_of(&h), None);
    }
}
