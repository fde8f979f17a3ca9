//! A plain HTTP/1.1 client for the tests: one connection per request, as a
//! client behind a Service makes them, with a bounded wait. Enough to read a
//! status line and a small body; no dependency of its own.

use std::net::SocketAddr;
use std::time::{Duration, Instant};

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::TcpStream;

/// What came back.
#[derive(Debug, Clone)]
pub struct Response {
    pub status: u16,
    pub body: String,
    /// From connect to the last byte.
    pub took: Duration,
    /// From the start to the connection established (the TCP handshake,
    /// through kube-proxy's rules for a Service).
    pub connected: Duration,
}

impl Response {
    /// The `"host"` field of the webapp's JSON answer.
    pub fn webapp_host(&self) -> Option<String> {
        let v: serde_json::Value = serde_json::from_str(&self.body).ok()?;
        v["host"].as_str().map(str::to_owned)
    }
}

/// Sends `METHOD path` to `target` on a new connection and reads the whole
/// answer. `Err` names what failed (connect, write, read, timeout).
pub async fn request(
    target: SocketAddr,
    method: &str,
    path: &str,
    timeout: Duration,
) -> Result<Response, String> {
    request_with(target, method, path, "", timeout).await
}

/// [`request`] with more header lines (`headers`, each ending in CRLF).
pub async fn request_with(
    target: SocketAddr,
    method: &str,
    path: &str,
    headers: &str,
    timeout: Duration,
) -> Result<Response, String> {
    let started = Instant::now();
    let mut connected = Duration::ZERO;
    let io = async {
        let mut stream = TcpStream::connect(target)
            .await
            .map_err(|e| format!("connect: {}", e.kind()))?;
        connected = started.elapsed();
        let head = format!(
            "{method} {path} HTTP/1.1\r\nHost: lbpool\r\nContent-Length: 0\r\nConnection: close\r\n{headers}\r\n"
        );
        stream
            .write_all(head.as_bytes())
            .await
            .map_err(|e| format!("write: {}", e.kind()))?;
        let mut raw = Vec::with_capacity(1024);
        stream
            .read_to_end(&mut raw)
            .await
            .map_err(|e| format!("read: {}", e.kind()))?;
        parse(&raw)
    };
    let mut response = tokio::time::timeout(timeout, io)
        .await
        .unwrap_or_else(|_| Err(format!("timeout after {timeout:?}")))?;
    response.took = started.elapsed();
    response.connected = connected;
    Ok(response)
}

/// `GET path`.
pub async fn get(target: SocketAddr, path: &str, timeout: Duration) -> Result<Response, String> {
    request(target, "GET", path, timeout).await
}

fn parse(raw: &[u8]) -> Result<Response, String> {
    let text = String::from_utf8_lossy(raw);
    let status = text
        .get(9..12)
        .and_then(|s| s.parse().ok())
        .ok_or_else(|| {
            if raw.is_empty() {
                "empty response".to_owned()
            } else {
                format!("not HTTP: {:?}", text.chars().take(40).collect::<String>())
            }
        })?;
    let body = text
        .split_once("\r\n\r\n")
        .map(|(_, b)| b.to_owned())
        .unwrap_or_default();
    Ok(Response {
        status,
        body: dechunk(&body),
        took: Duration::ZERO,
        connected: Duration::ZERO,
    })
}

/// Joins a chunked body (HAProxy's stats page is sent chunked); a body that
/// is not chunked comes back as it is.
fn dechunk(body: &str) -> String {
    let mut out = String::new();
    let mut rest = body;
    loop {
        let Some((size, after)) = rest.split_once("\r\n") else {
            return body.to_owned();
        };
        let Ok(n) = usize::from_str_radix(size.trim(), 16) else {
            return body.to_owned();
        };
        if n == 0 {
            return out;
        }
        let Some(chunk) = after.get(..n) else {
            return body.to_owned();
        };
        out.push_str(chunk);
        rest = after.get(n + 2..).unwrap_or_default();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_status_and_body_plain_or_chunked() {
        let plain = parse(b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok").expect("plain");
        assert_eq!((plain.status, plain.body.as_str()), (200, "ok"));
        let chunked = parse(
            b"HTTP/1.1 503 Service Unavailable\r\ntransfer-encoding: chunked\r\n\r\n3\r\nabc\r\n2\r\nde\r\n0\r\n\r\n",
        )
        .expect("chunked");
        assert_eq!((chunked.status, chunked.body.as_str()), (503, "abcde"));
        assert!(parse(b"").is_err());
        assert!(parse(b"SSH-2.0-x").is_err());
    }
}
