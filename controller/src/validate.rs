//! Runs `haproxy -c` on a rendered config: the gate before anything is published.

use std::path::PathBuf;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use tokio::io::AsyncWriteExt;
use tokio::process::Command;
use tokio::sync::Semaphore;

/// Checks a config before it is published.
pub trait Validator: Send + Sync + std::fmt::Debug {
    /// `Ok` when HAProxy accepts `config`.
    fn check<'a>(&'a self, config: &'a str) -> BoxFuture<'a, Result<(), ValidationError>>;
}

/// Why a config could not be published.
#[derive(Debug, thiserror::Error)]
pub enum ValidationError {
    /// HAProxy rejected the config; the message is HAProxy's own.
    #[error("{0}")]
    Rejected(String),
    /// The check itself could not run (binary missing, temp dir not writable, timeout).
    #[error("could not run {binary}: {reason}")]
    Unavailable { binary: String, reason: String },
}

/// Environment the rendered config may refer to (see `stats.authSecret`);
/// the check needs values, not the real ones.
const PLACEHOLDER_ENV: [(&str, &str); 2] =
    [("STATS_USERNAME", "check"), ("STATS_PASSWORD", "check")];

/// The real thing: `haproxy -c -f <file>`.
#[derive(Clone, Debug)]
pub struct HaproxyValidator {
    binary: PathBuf,
    timeout: Duration,
    /// At most this many checks at once: one per core. A burst of a
    /// thousand changed pools queues here instead of forking a thousand
    /// processes that would each finish late and starve the watches.
    running: Arc<Semaphore>,
}

impl HaproxyValidator {
    pub fn new(binary: impl Into<PathBuf>) -> Self {
        let cores = std::thread::available_parallelism().map_or(1, usize::from);
        Self {
            binary: binary.into(),
            timeout: Duration::from_secs(10),
            running: Arc::new(Semaphore::new(cores)),
        }
    }

    /// Runs `haproxy -v`, so a missing binary is found at start-up, not at the first pool.
    pub async fn version(&self) -> Result<String, ValidationError> {
        let out = Command::new(&self.binary)
            .arg("-v")
            .output()
            .await
            .map_err(|e| self.unavailable(e))?;
        let text = String::from_utf8_lossy(&out.stdout);
        Ok(text.lines().next().unwrap_or_default().to_owned())
    }

    async fn run(&self, config: &str) -> Result<(), ValidationError> {
        let _turn = self
            .running
            .acquire()
            .await
            .map_err(|e| self.unavailable(e))?;
        let dir = tempfile::tempdir().map_err(|e| self.unavailable(e))?;
        let path = dir.path().join("haproxy.cfg");
        let mut file = tokio::fs::File::create(&path)
            .await
            .map_err(|e| self.unavailable(e))?;
        file.write_all(config.as_bytes())
            .await
            .map_err(|e| self.unavailable(e))?;
        file.flush().await.map_err(|e| self.unavailable(e))?;
        drop(file);

        let child = Command::new(&self.binary)
            .args(["-c", "-f"])
            .arg(&path)
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
        let mut text = String::from_utf8_lossy(&out.stdout).into_owned();
        text.push_str(&String::from_utf8_lossy(&out.stderr));
        Err(ValidationError::Rejected(haproxy_message(
            &text,
            &path.to_string_lossy(),
        )))
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> ValidationError {
        ValidationError::Unavailable {
            binary: self.binary.display().to_string(),
            reason: reason.to_string(),
        }
    }
}

impl Validator for HaproxyValidator {
    fn check<'a>(&'a self, config: &'a str) -> BoxFuture<'a, Result<(), ValidationError>> {
        Box::pin(self.run(config))
    }
}

/// HAProxy's alerts, one per line, with the temporary path replaced by `haproxy.cfg`.
fn haproxy_message(output: &str, path: &str) -> String {
    let alerts: Vec<&str> = output
        .lines()
        .map(str::trim)
        .filter(|l| l.starts_with("[ALERT]"))
        .collect();
    let lines = if alerts.is_empty() {
        output
            .lines()
            .map(str::trim)
            .filter(|l| !l.is_empty())
            .collect()
    } else {
        alerts
    };
    lines
        .into_iter()
        .map(without_pid)
        .collect::<Vec<_>>()
        .join("\n")
        .replace(path, "haproxy.cfg")
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

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn haproxy_rejects_a_bad_directive_with_its_own_message() {
        let v = crate::testing::haproxy();
        let err = v
            .check("defaults\n    mode http\n    timeout connect 5s\n    balance nonsense\n")
            .await
            .unwrap_err();
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
}
