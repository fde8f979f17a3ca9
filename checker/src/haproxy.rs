//! I/O: runs `haproxy -c` on a config the allowlist passed, in a process
//! with nothing of the caller's: an empty environment but for placeholder
//! credentials, its own temporary directory, no standard input, a time
//! limit, at most one check per core. HAProxy's answer is reduced to what it
//! says about the config itself ([`sanitize`]).

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::process::Command;
use tokio::sync::Semaphore;

use crate::allowlist::{self, Declared, Refusal};

/// Checks a config before it is published or applied.
pub trait Validator: Send + Sync + std::fmt::Debug {
    /// `Ok` when the allowlist and HAProxy accept `config`.
    fn check<'a>(&'a self, config: &'a str) -> BoxFuture<'a, Result<(), ValidationError>>;
}

/// Why a config cannot be used.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    /// The allowlist refused it; HAProxy never saw it.
    #[error("{0}")]
    Refused(Refusal),
    /// HAProxy rejected it; the message is HAProxy's, about the config.
    #[error("{0}")]
    Rejected(String),
    /// The check itself could not run (binary missing, killed, timed out,
    /// the checker unreachable): not a verdict on the config.
    #[error("could not run {binary}: {reason}")]
    Unavailable { binary: String, reason: String },
}

/// Environment the rendered config may refer to (see `stats.authSecret`):
/// the check needs values, not the real ones, and gets nothing else.
const PLACEHOLDER_ENV: [(&str, &str); 2] = [
    (lbpool_wire::STATS_ENV[0], "check"),
    (lbpool_wire::STATS_ENV[1], "check"),
];

/// The longest message kept of HAProxy's answer: it goes into a status
/// condition and an Event, whose note the API server caps at 1 KiB.
pub const MESSAGE_MAX: usize = 600;

/// `haproxy -c -f <file>` after the allowlist.
#[derive(Clone, Debug)]
pub struct HaproxyValidator {
    binary: PathBuf,
    declared: Declared,
    timeout: Duration,
    /// At most this many checks at once: one per core. A burst of a
    /// thousand changed pools queues here instead of forking a thousand
    /// processes that would each finish late and starve everything else.
    running: Arc<Semaphore>,
}

impl HaproxyValidator {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            binary: on_path(binary.into()),
            declared: allowlist::LBPOOL,
            timeout: Duration::from_secs(10),
            running: Arc::new(Semaphore::new(cores)),
        }
    }

    /// The same checks, with the Runtime API socket at `path`.
    pub fn with_runtime_api(mut self, path: impl Into<String>) -> Self {
        self.declared.runtime_api = std::borrow::Cow::Owned(path.into());
        self
    }

    /// Runs `haproxy -v`, so a missing binary is found at start-up, not at the first pool.
    pub async fn version(&self) -> Result<String, ValidationError> {
        let out = Command::new(&self.binary)
            .arg("-v")
            .env_clear()
            .stdin(Stdio::null())
            .output()
            .await
            .map_err(|e| self.unavailable(e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.lines().next().unwrap_or_default().to_owned())
    }

    async fn run(&self, config: &str) -> Result<(), ValidationError> {
        allowlist::check(config, &self.declared).map_err(ValidationError::Refused)?;
        let _turn = self
            .running
            .acquire()
            .await
            .map_err(|e| self.unavailable(e))?;
        let dir = tempfile::tempdir().map_err(|e| self.unavailable(e))?;
        let path = dir.path().join("haproxy.cfg");
        tokio::fs::write(&path, config)
            .await
            .map_err(|e| self.unavailable(e))?;

        let child = Command::new(&self.binary)
            .args(["-c", "-f"])
            .arg(&path)
            .current_dir(dir.path())
            .env_clear()
            .envs(PLACEHOLDER_ENV)
            .stdin(Stdio::null())
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .kill_on_drop(true)
            .spawn()
            .map_err(|e| self.unavailable(e))?;
        let out = tokio::time::timeout(self.timeout, child.wait_with_output())
            .await
            .map_err(|_| self.unavailable(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| self.unavailable(e))?;
        if out.status.success() {
            return Ok(());
        }
        // Killed (out of memory, a signal): no verdict on the config.
        if out.status.code().is_none() {
            return Err(self.unavailable(format!("haproxy -c ended by {}", out.status)));
        }
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Err(ValidationError::Rejected(sanitize(
            &text,
            &path.to_string_lossy(),
            config,
        )))
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> ValidationError {
        ValidationError::Unavailable {
            binary: self.binary.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

/// `binary` found on `PATH` when it is a bare name: the check runs with an
/// empty environment, where there is no `PATH` to search.
fn on_path(binary: PathBuf) -> PathBuf {
    if binary.components().count() != 1 {
        return binary;
    }
    std::env::var_os("PATH")
        .iter()
        .flat_map(std::env::split_paths)
        .map(|dir| dir.join(&binary))
        .find(|candidate| candidate.is_file())
        .unwrap_or(binary)
}

impl Validator for HaproxyValidator {
    fn check<'a>(&'a self, config: &'a str) -> BoxFuture<'a, Result<(), ValidationError>> {
        Box::pin(self.run(config))
    }
}

/// HAProxy's alerts about `config`, one per line: the temporary path
/// replaced by `haproxy.cfg`, without process ids, every quoted fragment
/// that is not text of the config itself replaced by `'…'` (HAProxy quotes
/// what it read, and what it read may be another file), at most
/// [`MESSAGE_MAX`] characters.
pub fn sanitize(output: &str, path: &str, config: &str) -> String {
    let alerts: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("[ALERT]"))
        .collect();
    let lines = if alerts.is_empty() {
        output
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty() && !l.starts_with("[NOTICE]"))
            .collect()
    } else {
        alerts
    };
    let text = lines
        .into_iter()
        .map(without_pid)
        .map(|l| l.replace(path, "haproxy.cfg"))
        .map(|l| redact_foreign(&l, config))
        .collect::<Vec<_>>()
        .join("\n");
    if text.chars().count() <= MESSAGE_MAX {
        text
    } else {
        let mut short: String = text.chars().take(MESSAGE_MAX).collect();
        short.push('…');
        short
    }
}

/// Replaces each `'…'` or `"…"` fragment of `line` that does not occur in
/// `config`.
fn redact_foreign(line: &str, config: &str) -> String {
    let mut out = String::with_capacity(line.len());
    let mut rest = line;
    while let Some(open) = rest.find(['\'', '"']) {
        let quote = rest[open..].chars().next().unwrap_or('\'');
        out.push_str(&rest[..=open]);
        let after = &rest[open + 1..];
        match after.find(quote) {
            Some(close) => {
                let inner = &after[..close];
                if inner.is_empty() || config.contains(inner) {
                    out.push_str(inner);
                } else {
                    out.push('…');
                }
                out.push(quote);
                rest = &after[close + 1..];
            }
            None => {
                // An unclosed quote: keep nothing after it that the config lacks.
                if !config.contains(after) {
                    out.push('…');
                    rest = "";
                } else {
                    rest = after;
                }
            }
        }
    }
    out.push_str(rest);
    out
}

/// `[ALERT]    (24694) : config : …` → `[ALERT] config : …`: the same config
/// must give the same message, or every check would look like a new problem.
fn without_pid(line: &str) -> String {
    match line.split_once(" : ") {
        Some((head, rest)) if head.starts_with('[') => {
            let tag = head.split_whitespace().next().unwrap_or(head);
            format!("{tag} {rest}")
        }
        _ => line.to_owned(),
    }
}

/// The HAProxy major version lbpool writes and checks configs for: the
/// one its images ship (Debian trixie's 3.0 LTS).
pub const HAPROXY_MAJOR: &str = "3.0";

/// The haproxy binary for tests: `$HAPROXY_BIN` or `haproxy` on `PATH`,
/// of version [`HAPROXY_MAJOR`]; a test that needs it fails naming what is
/// missing.
#[cfg(any(test, feature = "testing"))]
pub fn test_haproxy_bin() -> String {
    let bin = std::env::var("HAPROXY_BIN").unwrap_or_else(|_| "haproxy".into());
    let version = std::process::Command::new(&bin)
        .arg("-v")
        .output()
        .map(|o| {
            String::from_utf8_lossy(&o.stdout)
                .lines()
                .next()
                .unwrap_or_default()
                .to_owned()
        });
    match version {
        Ok(v) if v.starts_with(&format!("HAProxy version {HAPROXY_MAJOR}.")) => bin,
        other => panic!(
            "these tests run HAProxy {HAPROXY_MAJOR}, the data plane's version; `{bin} -v` says {other:?}: \
             set HAPROXY_BIN=$(bash hack/haproxy.sh)"
        ),
    }
}

/// A validator running [`test_haproxy_bin`].
#[cfg(any(test, feature = "testing"))]
pub fn test_validator() -> HaproxyValidator {
    HaproxyValidator::new(test_haproxy_bin())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn haproxy_rejects_a_bad_directive_with_its_own_message() {
        let config = "defaults\n    mode http\n    timeout connect 5s\n    balance nonsense\n";
        let err = test_validator().check(config).await.unwrap_err();
        let ValidationError::Rejected(msg) = err else {
            panic!("expected a rejection, got {err:?}")
        };
        assert!(
            msg.starts_with("[ALERT] config : parsing [haproxy.cfg:4] : balance"),
            "without HAProxy's pid: {msg}"
        );
        assert!(msg.contains("balance only supports"), "{msg}");
        assert!(!msg.contains("/tmp"), "{msg}");
    }

    /// What users of HAProxy write every day passes both checks: the
    /// allowlist is no reason to give up templates.
    #[tokio::test]
    async fn an_everyday_config_passes_the_allowlist_and_haproxy() {
        let config = r#"global
    log stdout format raw local0
    maxconn 4096
    hard-stop-after 30s
    stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners
defaults
    log global
    mode http
    option httplog
    option dontlognull
    option redispatch
    retries 3
    timeout connect 5s
    timeout client 50s
    timeout server 50s
    timeout http-request 10s
frontend fe_http
    bind :8080
    bind :::8081 v6only
    acl is_api path_beg -i /api
    acl is_static path_end -i .jpg .png .css
    stick-table type ip size 100k expire 30s store http_req_rate(10s)
    http-request track-sc0 src
    http-request deny deny_status 429 if { sc_http_req_rate(0) gt 100 }
    http-request redirect scheme https code 301 if !{ ssl_fc } { hdr(host) -i secure.example.com }
    http-request set-header X-Forwarded-Port %[dst_port]
    http-request set-var(txn.host) req.hdr(host),lower
    http-response set-header Strict-Transport-Security "max-age=16000000; includeSubDomains"
    http-request return status 200 content-type text/plain string "ok" if { path /ping }
    capture request header Host len 64
    unique-id-format %{+X}o\ %ci:%cp_%fi:%fp_%Ts_%rt
    use_backend be_api if is_api
    default_backend be_web
backend be_api
    balance leastconn
    option httpchk GET /healthz
    http-check expect status 200
    default-server inter 2s rise 2 fall 3
    server api-1 10.0.0.1:3000 check maxconn 100
backend be_web
    balance roundrobin
    cookie SERVERID insert indirect nocache
    option forwardfor
    compression algo gzip
    compression type text/html text/css
    server web-1 10.0.0.2:3000 check cookie web-1
    server web-2 ipv6@2001:db8::2:3000 check cookie web-2 weight 0
listen stats
    bind :1936
    stats enable
    stats uri /
    stats refresh 10s
"#;
        if let Err(e) = test_validator().check(config).await {
            panic!("an everyday config was refused: {e}");
        }
    }

    #[tokio::test]
    async fn the_allowlist_refuses_before_haproxy_runs() {
        let err = HaproxyValidator::new("/nonexistent/haproxy")
            .check("global\n    lua-load /proc/self/fd/3\n")
            .await
            .unwrap_err();
        let ValidationError::Refused(r) = err else {
            panic!("expected a refusal, got {err:?}")
        };
        assert_eq!((r.line, r.word.as_str()), (2, "'lua-load'"));
    }

    #[tokio::test]
    async fn a_missing_binary_is_unavailable_not_rejected() {
        let err = HaproxyValidator::new("/nonexistent/haproxy")
            .check("global\n")
            .await
            .unwrap_err();
        assert!(
            matches!(err, ValidationError::Unavailable { .. }),
            "{err:?}"
        );
    }

    #[tokio::test]
    async fn a_check_killed_by_a_signal_is_no_verdict() {
        // An haproxy killed while checking (out of memory in a small
        // container): the config is not rejected, the check is retried.
        use std::os::unix::fs::PermissionsExt as _;
        let dir = tempfile::tempdir().expect("tempdir");
        let killed = dir.path().join("haproxy");
        std::fs::write(&killed, "#!/bin/sh\nkill -KILL $$\n").expect("script");
        std::fs::set_permissions(&killed, std::fs::Permissions::from_mode(0o755)).expect("chmod");
        let err = HaproxyValidator::new(&killed)
            .check("global\n")
            .await
            .unwrap_err();
        assert!(
            matches!(&err, ValidationError::Unavailable { reason, .. } if reason.contains("signal")),
            "{err:?}"
        );
    }

    #[test]
    fn what_haproxy_read_elsewhere_is_not_echoed() {
        let config = "frontend f\n    acl x src 'eyJ-not-here'\n";
        let output = "[NOTICE]   (1) : haproxy version is 2.6\n[ALERT]    (1) : config : parsing [/tmp/x/haproxy.cfg:2] : error detected while parsing ACL 'x' : 'eyJhbGciOiJSUzI1NiJ9.secret' is not a valid IPv4 or IPv6 address at line 1 of file '/var/run/secrets/token'.\n";
        let msg = sanitize(output, "/tmp/x/haproxy.cfg", config);
        assert_eq!(
            msg,
            "[ALERT] config : parsing [haproxy.cfg:2] : error detected while parsing ACL 'x' : '…' is not a valid IPv4 or IPv6 address at line 1 of file '…'."
        );
        let long = format!("[ALERT] (1) : {}", "x".repeat(5000));
        assert!(sanitize(&long, "p", "").chars().count() <= MESSAGE_MAX + 1);
    }
}
