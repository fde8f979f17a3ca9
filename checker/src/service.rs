//! I/O: the checker as a service on a UNIX socket, so `haproxy -c` runs in
//! a container of its own that holds no credential: the controller's pod
//! mounts its ServiceAccount token into the controller container only, and
//! the checker container reaches nothing but this socket (an `emptyDir`
//! both share).
//!
//! One request per connection: a command line (`check` or `version`), then
//! for `check` the config; the client half-closes, the server answers with
//! one JSON [`Answer`] and closes.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::{UnixListener, UnixStream};
use tracing::{debug, warn};

use crate::allowlist::Refusal;
use crate::haproxy::{HaproxyValidator, ValidationError, Validator};

/// The largest request read: a config the controller may publish (1 MiB)
/// and a little more, so a larger one is refused, not truncated.
pub const REQUEST_MAX: u64 = 1024 * 1024 + 4096;
/// How long a client may take to send its request.
const READ_TIMEOUT: Duration = Duration::from_secs(5);

/// What the checker answers.
#[derive(Debug, Serialize, Deserialize, PartialEq, Eq)]
#[serde(tag = "result", rename_all = "camelCase")]
pub enum Answer {
    Accepted,
    Refused {
        line: usize,
        word: String,
        rule: String,
    },
    Rejected {
        message: String,
    },
    Unavailable {
        reason: String,
    },
    Version {
        version: String,
    },
}

impl From<Result<(), ValidationError>> for Answer {
    fn from(r: Result<(), ValidationError>) -> Self {
        match r {
            Ok(()) => Answer::Accepted,
            Err(ValidationError::Refused(r)) => Answer::Refused {
                line: r.line,
                word: r.word,
                rule: r.rule,
            },
            Err(ValidationError::Rejected(message)) => Answer::Rejected { message },
            Err(e @ ValidationError::Unavailable { .. }) => Answer::Unavailable {
                reason: e.to_string(),
            },
        }
    }
}

/// Serves checks on `listener` until the task is dropped.
pub async fn serve(listener: UnixListener, validator: HaproxyValidator) {
    let validator = Arc::new(validator);
    loop {
        match listener.accept().await {
            Ok((stream, _)) => {
                let validator = validator.clone();
                tokio::spawn(async move {
                    if let Err(e) = answer(stream, &validator).await {
                        debug!(error = %e, "a check request failed");
                    }
                });
            }
            Err(e) => {
                warn!(error = %e, "accept failed");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
        }
    }
}

async fn answer(mut stream: UnixStream, validator: &HaproxyValidator) -> std::io::Result<()> {
    let mut request = Vec::new();
    let mut limited = (&mut stream).take(REQUEST_MAX + 1);
    let read = limited.read_to_end(&mut request);
    let answer = match tokio::time::timeout(READ_TIMEOUT, read).await {
        Err(_) => Answer::Unavailable {
            reason: "the request took too long".into(),
        },
        Ok(Err(e)) => return Err(e),
        Ok(Ok(_)) if request.len() as u64 > REQUEST_MAX => Answer::Refused {
            line: 0,
            word: "config".into(),
            rule: format!("larger than {REQUEST_MAX} bytes"),
        },
        Ok(Ok(_)) => {
            let text = String::from_utf8_lossy(&request);
            match text.split_once('\n') {
                Some(("check", config)) => validator.check(config).await.into(),
                _ if text.trim_end() == "version" => match validator.version().await {
                    Ok(version) => Answer::Version { version },
                    Err(e) => Answer::Unavailable {
                        reason: e.to_string(),
                    },
                },
                _ => Answer::Unavailable {
                    reason: "unknown request".into(),
                },
            }
        }
    };
    drop(limited);
    let mut body = serde_json::to_vec(&answer).unwrap_or_default();
    body.push(b'\n');
    stream.write_all(&body).await?;
    stream.shutdown().await
}

/// A [`Validator`] that asks the checker service.
#[derive(Clone, Debug)]
pub struct RemoteValidator {
    socket: PathBuf,
    timeout: Duration,
}

impl RemoteValidator {
    pub fn new(socket: impl Into<PathBuf>) -> Self {
        Self {
            socket: socket.into(),
            // The service's own check may take 10 s, and it may queue.
            timeout: Duration::from_secs(30),
        }
    }

    async fn ask(&self, request: &[u8]) -> Result<Answer, ValidationError> {
        let exchange = async {
            let mut stream = UnixStream::connect(&self.socket).await?;
            stream.write_all(request).await?;
            stream.shutdown().await?;
            let mut reply = Vec::new();
            stream.take(64 * 1024).read_to_end(&mut reply).await?;
            serde_json::from_slice::<Answer>(&reply).map_err(std::io::Error::other)
        };
        tokio::time::timeout(self.timeout, exchange)
            .await
            .map_err(|_| self.unavailable(format!("no answer within {:?}", self.timeout)))?
            .map_err(|e| self.unavailable(e))
    }

    /// The checker's `haproxy -v`: found at start-up when it is unreachable.
    pub async fn version(&self) -> Result<String, ValidationError> {
        match self.ask(b"version\n").await? {
            Answer::Version { version } => Ok(version),
            other => Err(self.unavailable(format!("unexpected answer {other:?}"))),
        }
    }

    async fn run(&self, config: &str) -> Result<(), ValidationError> {
        let mut request = Vec::with_capacity(config.len() + 6);
        request.extend_from_slice(b"check\n");
        request.extend_from_slice(config.as_bytes());
        match self.ask(&request).await? {
            Answer::Accepted => Ok(()),
            Answer::Refused { line, word, rule } => {
                Err(ValidationError::Refused(Refusal { line, word, rule }))
            }
            Answer::Rejected { message } => Err(ValidationError::Rejected(message)),
            Answer::Unavailable { reason } => Err(self.unavailable(reason)),
            Answer::Version { .. } => Err(self.unavailable("unexpected answer")),
        }
    }

    fn unavailable(&self, reason: impl std::fmt::Display) -> ValidationError {
        ValidationError::Unavailable {
            binary: format!("the checker at {}", self.socket.display()),
            reason: reason.to_string(),
        }
    }
}

impl Validator for RemoteValidator {
    fn check<'a>(&'a self, config: &'a str) -> BoxFuture<'a, Result<(), ValidationError>> {
        Box::pin(self.run(config))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::haproxy::test_validator;

    #[tokio::test]
    async fn the_service_answers_as_the_local_check_would() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("checker.sock");
        let listener = UnixListener::bind(&path).unwrap();
        let server = tokio::spawn(serve(listener, test_validator()));
        let remote = RemoteValidator::new(&path);

        assert!(
            remote
                .version()
                .await
                .unwrap()
                .starts_with("HAProxy version")
        );
        let good = "defaults\n    mode http\n    timeout connect 5s\n    timeout client 5s\n    timeout server 5s\nfrontend f\n    bind :8080\n";
        remote.check(good).await.expect("accepted");
        let err = remote.check("global\n    program x\n").await.unwrap_err();
        assert!(
            matches!(err, ValidationError::Refused(ref r) if r.line == 2),
            "{err:?}"
        );
        let err = remote
            .check("defaults\n    mode http\n    balance nonsense\n")
            .await
            .unwrap_err();
        assert!(
            matches!(err, ValidationError::Rejected(ref m) if m.contains("balance")),
            "{err:?}"
        );
        server.abort();
        let err = RemoteValidator::new(dir.path().join("none.sock"))
            .check(good)
            .await
            .unwrap_err();
        assert!(
            matches!(err, ValidationError::Unavailable { .. }),
            "{err:?}"
        );
    }
}
