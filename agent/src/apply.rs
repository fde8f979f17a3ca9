//! Applies configs to the HAProxy beside the agent: checked by `haproxy
//! -c` first (a rejected config is never applied), then through the
//! Runtime API or a seamless reload as [`crate::plan`] says, and written to
//! the file HAProxy loads, so a later reload or restart loads the same
//! servers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lbpool_checker::{ValidationError, Validator};
use tracing::{info, warn};

use crate::config::Config;
use crate::plan::{Plan, plan};
use crate::runtime::{self, RuntimeError, Socket};

/// How long a reload may take to show a new worker.
const RELOAD_WAIT: Duration = Duration::from_secs(15);

/// What applying a config took.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Outcome {
    /// It was the running config.
    Noop,
    /// This many server changes through the Runtime API, no reload.
    Runtime(usize),
    /// A seamless reload; why.
    Reload(String),
}

#[derive(Debug, thiserror::Error)]
pub enum ApplyError {
    /// The allowlist or `haproxy -c` rejected the config: nothing was applied.
    #[error("the config was rejected: {0}")]
    Rejected(String),
    #[error(transparent)]
    Check(ValidationError),
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reload: {0}")]
    Reload(RuntimeError),
    #[error("reload: no new worker within {RELOAD_WAIT:?}")]
    ReloadTimeout,
}

/// Replaces `file` whole (a new file renamed over it), so HAProxy never
/// loads half of it.
pub async fn write_whole(file: &Path, text: &str) -> Result<(), ApplyError> {
    let err = |source| ApplyError::Write {
        path: file.to_owned(),
        source,
    };
    let fresh = file.with_extension("next");
    tokio::fs::write(&fresh, text).await.map_err(err)?;
    tokio::fs::rename(&fresh, file).await.map_err(err)
}

/// The agent's hold on one HAProxy.
#[derive(Debug)]
pub struct Applier {
    /// The file HAProxy loads (`-f`).
    file: PathBuf,
    admin: Socket,
    master: Socket,
    validator: Box<dyn Validator>,
    /// What HAProxy runs: the file it loaded and the changes made since.
    running: Config,
    /// Servers in maintenance whose connections are not done yet.
    draining: Vec<(String, String)>,
}

impl Applier {
    /// `running` is the text HAProxy was started with.
    pub fn new(
        file: PathBuf,
        admin: Socket,
        master: Socket,
        validator: Box<dyn Validator>,
        running: &str,
    ) -> Self {
        Self {
            file,
            admin,
            master,
            validator,
            running: Config::parse(running),
            draining: Vec::new(),
        }
    }

    /// Servers removed whose connections are not done yet.
    pub fn draining(&self) -> &[(String, String)] {
        &self.draining
    }

    /// Applies `text`, the next config.
    pub async fn apply(&mut self, text: &str) -> Result<Outcome, ApplyError> {
        let next = Config::parse(text);
        let outcome = match plan(&self.running, &next) {
            Plan::Noop => return Ok(Outcome::Noop),
            Plan::Runtime(changes) => {
                self.check(text).await?;
                match runtime::apply(&self.admin, &changes).await {
                    Ok(applied) => {
                        self.draining.extend(applied.draining);
                        self.write(text).await?;
                        Outcome::Runtime(changes.len())
                    }
                    // Some changes may have been made: the reload makes the
                    // worker exactly what the file says.
                    Err(e) => {
                        warn!(error = %e, "Runtime API change failed; reloading instead");
                        self.write(text).await?;
                        self.reload().await?;
                        Outcome::Reload(format!("the Runtime API failed: {e}"))
                    }
                }
            }
            Plan::Reload(why) => {
                self.check(text).await?;
                self.write(text).await?;
                self.reload().await?;
                Outcome::Reload(why)
            }
        };
        self.running = next;
        Ok(outcome)
    }

    /// `haproxy -c`: a config it rejects is never applied or written.
    async fn check(&self, text: &str) -> Result<(), ApplyError> {
        match self.validator.check(text).await {
            Ok(()) => Ok(()),
            Err(ValidationError::Rejected(message)) => Err(ApplyError::Rejected(message)),
            // The allowlist's refusal is as final as HAProxy's.
            Err(ValidationError::Refused(refusal)) => {
                Err(ApplyError::Rejected(format!("refused: {refusal}")))
            }
            Err(e) => Err(ApplyError::Check(e)),
        }
    }

    /// Deletes the drained servers whose connections are done; returns how
    /// many are left.
    pub async fn delete_drained(&mut self) -> Result<usize, RuntimeError> {
        let mut left = Vec::new();
        for (backend, server) in std::mem::take(&mut self.draining) {
            if !runtime::delete(&self.admin, &backend, &server).await? {
                left.push((backend, server));
            }
        }
        self.draining = left;
        Ok(self.draining.len())
    }

    async fn write(&self, text: &str) -> Result<(), ApplyError> {
        write_whole(&self.file, text).await
    }

    /// Asks the master to reload and waits for the new worker; the old
    /// one finishes its connections (up to `hard-stop-after`). Servers that
    /// were draining go with the old worker.
    async fn reload(&mut self) -> Result<(), ApplyError> {
        let before = runtime::processes(&self.master)
            .await
            .map_err(ApplyError::Reload)?;
        runtime::reload(&self.master)
            .await
            .map_err(ApplyError::Reload)?;
        let started = Instant::now();
        while started.elapsed() < RELOAD_WAIT {
            tokio::time::sleep(Duration::from_millis(50)).await;
            if let Ok(now) = runtime::processes(&self.master).await
                && now.reloads > before.reloads
                && !now.workers.is_empty()
                && now.workers != before.workers
            {
                info!(worker = ?now.workers, "reloaded");
                self.draining.clear();
                return Ok(());
            }
        }
        Err(ApplyError::ReloadTimeout)
    }
}
