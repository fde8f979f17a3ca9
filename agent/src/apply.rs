//! Applies configs to the HAProxy beside the agent: checked by `haproxy
//! -c` first (a rejected config is never applied; a change of server lines
//! as lbpool renders them needs no check), then through the
//! Runtime API or a seamless reload as [`crate::plan`] says, and written to
//! the file HAProxy loads, so a later reload or restart loads the same
//! servers.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use lbpool_checker::haproxy::sanitize;
use lbpool_checker::{ValidationError, Validator};
use lbpool_wire::config_hash;
use tracing::{debug, info, warn};

use crate::config::{self, Config, binds, stats_file};
use crate::plan::{Change, Draining, Plan, plan, revive, split_address};
use crate::runtime::{self, Reloaded, RuntimeError, Socket};

/// How long a reload may take to show a new worker, when the master's
/// answer does not say.
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
    /// HAProxy cannot load it though `haproxy -c` accepts it: a `bind` the
    /// pod cannot make (found before the reload), or the new worker's
    /// failure (the master's `Success=0`, the file rolled back). The old
    /// worker serves on.
    #[error("HAProxy cannot load the config: {0}")]
    LoadFailed(String),
    #[error(transparent)]
    Check(ValidationError),
    #[error("write {path}: {source}")]
    Write {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("read {path}: {source}")]
    Read {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("reload: {0}")]
    Reload(RuntimeError),
    #[error("reload: no new worker within {RELOAD_WAIT:?}")]
    ReloadTimeout,
}

/// `file` with `suffix` after its whole name.
fn beside(file: &Path, suffix: &str) -> PathBuf {
    let mut name = file.file_name().unwrap_or_default().to_owned();
    name.push(suffix);
    file.with_file_name(name)
}

/// The record of what HAProxy was last seen to run: the text of the last
/// config applied and confirmed, beside the config file. The file itself
/// is written before a reload that may fail or never happen (the agent
/// killed in between); the record only after.
pub fn record_of(file: &Path) -> PathBuf {
    beside(file, ".served")
}

/// Replaces `file` whole (a new file renamed over it), so HAProxy never
/// loads half of it.
pub async fn write_whole(file: &Path, text: &str) -> Result<(), ApplyError> {
    let err = |source| ApplyError::Write {
        path: file.to_owned(),
        source,
    };
    let fresh = beside(file, ".next");
    tokio::fs::write(&fresh, text).await.map_err(err)?;
    tokio::fs::rename(&fresh, file).await.map_err(err)
}

/// A stats-file without counters: empty, which HAProxy 3.0 reads without a
/// warning (a header alone it calls invalid unless it lists every column).
const EMPTY_STATS_FILE: &str = "";

/// Before HAProxy's first start on `text`: its `stats-file`, if it names
/// one that does not exist yet, as a file without counters (HAProxy warns
/// of a missing one at every start).
pub async fn prepare_stats_file(text: &str) -> Result<(), ApplyError> {
    match stats_file(text) {
        Some(path) if tokio::fs::metadata(path).await.is_err() => {
            write_whole(Path::new(path), EMPTY_STATS_FILE).await
        }
        _ => Ok(()),
    }
}

/// Binds and listens on `address` as HAProxy does (address and port
/// reuse), then lets go.
fn try_bind(address: std::net::SocketAddr) -> std::io::Result<()> {
    let socket = if address.is_ipv4() {
        tokio::net::TcpSocket::new_v4()?
    } else {
        tokio::net::TcpSocket::new_v6()?
    };
    socket.set_reuseaddr(true)?;
    socket.set_reuseport(true)?;
    socket.bind(address)?;
    socket.listen(1).map(drop)
}

/// How the agent found a running HAProxy after its own restart.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Resumed {
    /// It runs the recorded config: file, record and servers agree.
    Verified,
    /// It was reloaded with the recorded config, because of this.
    Reloaded(String),
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
    /// Its text.
    text: String,
    /// Servers in maintenance whose connections are not done yet.
    draining: Vec<Draining>,
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
            text: running.to_owned(),
            draining: Vec::new(),
        }
    }

    /// [`Applier::new`] for an HAProxy that was just seen running
    /// `running`: recorded as served.
    pub async fn started(
        file: PathBuf,
        admin: Socket,
        master: Socket,
        validator: Box<dyn Validator>,
        running: &str,
    ) -> Result<Self, ApplyError> {
        let applier = Self::new(file, admin, master, validator, running);
        applier.record().await?;
        Ok(applier)
    }

    /// Takes over an HAProxy that runs already (the agent restarted): it
    /// runs the recorded config if the file is that config and its servers
    /// are what HAProxy has; otherwise the agent may have stopped between
    /// writing a file and a reload, or between Runtime API changes and the
    /// file, and the recorded config is reloaded so that what is reported is
    /// what runs. Without a record (an agent that kept none), the file is
    /// checked and reloaded.
    pub async fn resume(
        file: PathBuf,
        admin: Socket,
        master: Socket,
        validator: Box<dyn Validator>,
    ) -> Result<(Self, Resumed), ApplyError> {
        let record = record_of(&file);
        let on_disk = tokio::fs::read_to_string(&file).await.ok();
        let recorded = tokio::fs::read_to_string(&record).await.ok();
        let (text, checked) = match (recorded, on_disk) {
            (Some(r), _) => (r, true),
            (None, Some(f)) => (f, false),
            (None, None) => {
                return Err(ApplyError::Read {
                    path: record,
                    source: std::io::ErrorKind::NotFound.into(),
                });
            }
        };
        let mut applier = Self::new(file, admin, master, validator, &text);
        let why = if !checked {
            "no record of what it runs".to_owned()
        } else if tokio::fs::read_to_string(&applier.file).await.ok().as_ref() != Some(&text) {
            "the file is not the config it was last seen to run".to_owned()
        } else {
            match applier.servers_differ().await {
                Ok(None) => return Ok((applier, Resumed::Verified)),
                Ok(Some(why)) => why,
                Err(e) => format!("show servers state: {e}"),
            }
        };
        if !checked {
            applier.check(&text, &applier.running).await?;
        }
        applier.write(&text).await?;
        applier.reload().await?;
        applier.record().await?;
        Ok((applier, Resumed::Reloaded(why)))
    }

    /// HAProxy's Runtime API.
    pub fn admin(&self) -> &Socket {
        &self.admin
    }

    /// HAProxy's master CLI.
    pub fn master(&self) -> &Socket {
        &self.master
    }

    /// The hash of the config HAProxy runs.
    pub fn running_hash(&self) -> String {
        config_hash(&self.text)
    }

    /// Servers removed whose connections are not done yet.
    pub fn draining(&self) -> &[Draining] {
        &self.draining
    }

    /// Applies `text`, the next config.
    pub async fn apply(&mut self, text: &str) -> Result<Outcome, ApplyError> {
        let started = Instant::now();
        let next = Config::parse(text);
        let outcome = match plan(&self.running, &next) {
            Plan::Noop => return Ok(Outcome::Noop),
            Plan::Runtime(changes) => {
                // The skeleton is the running one, which passed the check;
                // server lines of the grammar lbpool renders cannot make it
                // fail (`tests/fast_path.rs`): no `haproxy -c`, which takes
                // 40-60 ms at 1 000 servers and seconds at 10 000.
                if !next.servers_rendered() {
                    self.check(text, &next).await?;
                }
                let changes = revive(changes, &self.draining);
                let planned = started.elapsed();
                match runtime::apply(&self.admin, &changes).await {
                    Ok(applied) => {
                        let commanded = started.elapsed();
                        self.revived(&changes);
                        let removed = applied
                            .draining
                            .iter()
                            .filter_map(|(b, s)| Draining::of(&self.running, b, s));
                        self.draining.extend(removed.collect::<Vec<_>>());
                        self.write(text).await?;
                        debug!(?planned, ?commanded, written = ?started.elapsed(), "Runtime API apply, time by phase");
                        Outcome::Runtime(changes.len())
                    }
                    // Some changes may have been made: the reload makes the
                    // worker exactly what the file says.
                    Err(e) => {
                        warn!(error = %e, "Runtime API change failed; reloading instead");
                        self.write(text).await?;
                        if let Err(failed) = self.reload().await {
                            // Back to the whole old config, in the file and
                            // in the worker the changes were half made to.
                            self.roll_back().await?;
                            if let Err(again) = self.reload().await {
                                warn!(error = %again, "reloading the last good config failed");
                            }
                            return Err(failed);
                        }
                        Outcome::Reload(format!("the Runtime API failed: {e}"))
                    }
                }
            }
            Plan::Reload(why) => {
                self.check(text, &next).await?;
                self.bindable(text)?;
                self.write(text).await?;
                if let Err(e) = self.reload().await {
                    self.roll_back().await?;
                    return Err(e);
                }
                Outcome::Reload(why)
            }
        };
        self.running = next;
        text.clone_into(&mut self.text);
        self.record().await?;
        Ok(outcome)
    }

    /// `haproxy -c` (of [`config::sample`]; `parsed` is `text` parsed): a
    /// config it rejects is never applied or written.
    async fn check(&self, text: &str, parsed: &Config) -> Result<(), ApplyError> {
        match self.validator.check(&config::sample(text, parsed)).await {
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
        for d in std::mem::take(&mut self.draining) {
            if !runtime::delete(&self.admin, &d.backend, &d.server).await? {
                left.push(d);
            }
        }
        self.draining = left;
        Ok(self.draining.len())
    }

    /// Forgets the draining servers `changes` revived.
    fn revived(&mut self, changes: &[Change]) {
        for change in changes {
            if let Change::Revive {
                backend, server, ..
            } = change
            {
                self.draining
                    .retain(|d| (&d.backend, &d.server) != (backend, server));
            }
        }
    }

    /// Why the servers HAProxy has are not those of the running config, if
    /// they are not (names and addresses, backend by backend).
    async fn servers_differ(&self) -> Result<Option<String>, RuntimeError> {
        let state = runtime::all_servers(&self.admin).await?;
        for (name, backend) in &self.running.backends {
            let mut have: Vec<(&str, &str, u16)> = state
                .iter()
                .filter(|s| &s.backend == name)
                .map(|s| (s.server.as_str(), s.address.as_str(), s.port))
                .collect();
            let mut want: Vec<(&str, &str, u16)> = backend
                .servers
                .iter()
                .filter_map(|(server, line)| {
                    let (ip, port) = split_address(&line.address)?;
                    Some((server.as_str(), ip, port))
                })
                .collect();
            have.sort_unstable();
            want.sort_unstable();
            if have != want {
                return Ok(Some(format!(
                    "backend {name} has other servers than its config says"
                )));
            }
        }
        Ok(None)
    }

    /// Every address `text` binds that the running config does not is
    /// free in the pod: tried first with a socket like HAProxy's. A reload
    /// whose bind fails is refused by HAProxy too, but only after the new
    /// process had the old worker pause its listeners while it retried
    /// (about 2 s of refused connections, measured with HAProxy 3.0).
    /// Permission errors are no verdict: HAProxy may have rights the agent
    /// has not.
    fn bindable(&self, text: &str) -> Result<(), ApplyError> {
        let running = binds(&self.text);
        for address in binds(text).difference(&running) {
            match try_bind(*address) {
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::AddrInUse | std::io::ErrorKind::AddrNotAvailable
                    ) =>
                {
                    return Err(ApplyError::LoadFailed(format!(
                        "bind {address}: {e} in this pod (tried before the reload)"
                    )));
                }
                _ => {}
            }
        }
        Ok(())
    }

    async fn write(&self, text: &str) -> Result<(), ApplyError> {
        write_whole(&self.file, text).await
    }

    /// The running config back in the file, after a reload that failed.
    async fn roll_back(&self) -> Result<(), ApplyError> {
        write_whole(&self.file, &self.text).await
    }

    /// Records the running config as served ([`record_of`]).
    async fn record(&self) -> Result<(), ApplyError> {
        write_whole(&record_of(&self.file), &self.text).await
    }

    /// Before a reload: the counters of every object with a guid into the
    /// config's `stats-file`, which the new worker loads. Losing them is
    /// no reason not to reload: a failure is logged.
    async fn save_counters(&self) {
        let Ok(text) = tokio::fs::read_to_string(&self.file).await else {
            return;
        };
        let Some(path) = stats_file(&text) else {
            return;
        };
        let saved = match self.admin.send("dump stats-file").await {
            Ok(dump) => write_whole(Path::new(path), &format!("{dump}\n")).await,
            Err(e) => Err(ApplyError::Reload(e)),
        };
        if let Err(e) = saved {
            warn!(error = %e, "saving the counters before the reload failed; they restart from zero");
        }
    }

    /// Asks the master to reload and waits for the new worker; the old
    /// one finishes its connections (up to `hard-stop-after`). Servers that
    /// were draining go with the old worker. A config the new worker fails
    /// to load is [`ApplyError::LoadFailed`], with HAProxy's alerts.
    async fn reload(&mut self) -> Result<(), ApplyError> {
        self.save_counters().await;
        let before = runtime::processes(&self.master)
            .await
            .map_err(ApplyError::Reload)?;
        match runtime::reload(&self.master)
            .await
            .map_err(ApplyError::Reload)?
        {
            Reloaded::Loaded => {
                info!("reloaded");
                self.draining.clear();
                return Ok(());
            }
            Reloaded::Failed(log) => {
                let text = tokio::fs::read_to_string(&self.file)
                    .await
                    .unwrap_or_default();
                let why = sanitize(&log, &self.file.to_string_lossy(), &text);
                return Err(ApplyError::LoadFailed(why));
            }
            Reloaded::Unknown => {}
        }
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
