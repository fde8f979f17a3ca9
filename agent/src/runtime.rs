//! HAProxy's Runtime API (the `stats socket`) and master CLI (`-S`), over
//! their UNIX sockets: one command per connection, written and half-closed,
//! the answer read to its end.

use std::path::{Path, PathBuf};
use std::time::Duration;

use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};
use tokio::net::UnixStream;

use crate::plan::{Change, split_address};

/// How long one command may take.
const COMMAND_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum RuntimeError {
    #[error("{socket}: {source}")]
    Io {
        socket: PathBuf,
        #[source]
        source: std::io::Error,
    },
    #[error("{socket}: no answer to {command:?} within {COMMAND_TIMEOUT:?}")]
    Timeout { socket: PathBuf, command: String },
    /// HAProxy refused a command.
    #[error("{command:?}: {answer}")]
    Refused { command: String, answer: String },
}

/// A socket HAProxy answers commands on.
#[derive(Clone, Debug)]
pub struct Socket {
    path: PathBuf,
}

impl Socket {
    pub fn new(path: impl Into<PathBuf>) -> Self {
        Self { path: path.into() }
    }

    pub fn path(&self) -> &Path {
        &self.path
    }

    /// Sends one command; returns HAProxy's answer, trimmed.
    pub async fn send(&self, command: &str) -> Result<String, RuntimeError> {
        let io = |source| RuntimeError::Io {
            socket: self.path.clone(),
            source,
        };
        let exchange = async {
            let mut stream = UnixStream::connect(&self.path).await.map_err(io)?;
            stream
                .write_all(format!("{command}\n").as_bytes())
                .await
                .map_err(io)?;
            // The end of the command: the master CLI answers only then.
            stream.shutdown().await.map_err(io)?;
            let mut answer = String::new();
            stream.read_to_string(&mut answer).await.map_err(io)?;
            Ok(answer.trim().to_owned())
        };
        tokio::time::timeout(COMMAND_TIMEOUT, exchange)
            .await
            .map_err(|_| RuntimeError::Timeout {
                socket: self.path.clone(),
                command: command.to_owned(),
            })?
    }

    /// Sends a command whose success HAProxy answers with nothing or with
    /// `ok` (a message such as `New server registered.`); anything else is
    /// a refusal.
    async fn expect(&self, command: &str, ok: &[&str]) -> Result<(), RuntimeError> {
        let answer = self.send(command).await?;
        if answer.is_empty() || ok.contains(&answer.as_str()) {
            Ok(())
        } else {
            Err(RuntimeError::Refused {
                command: command.to_owned(),
                answer,
            })
        }
    }
}

/// What became of the changes of a plan.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Applied {
    /// Servers in maintenance whose connections are not done yet:
    /// `(backend, server)`, to delete later ([`delete`]).
    pub draining: Vec<(String, String)>,
}

/// Applies `changes` in order through the Runtime API. A server to remove
/// goes into maintenance at once (no new connection) and is deleted if it
/// has no connection left; otherwise it is returned in
/// [`Applied::draining`].
pub async fn apply(api: &Socket, changes: &[Change]) -> Result<Applied, RuntimeError> {
    let mut applied = Applied::default();
    for change in changes {
        match change {
            Change::Add {
                backend,
                server,
                address,
                options,
            } => {
                let mut command = format!("add server {backend}/{server} {address}");
                for o in options {
                    command.push(' ');
                    command.push_str(o);
                }
                api.expect(&command, &["New server registered."]).await?;
                if options.iter().any(|o| o == "check") {
                    api.expect(&format!("enable health {backend}/{server}"), &[])
                        .await?;
                }
                api.expect(&format!("enable server {backend}/{server}"), &[])
                    .await?;
            }
            Change::Weight {
                backend,
                server,
                weight,
            } => {
                api.expect(
                    &format!("set server {backend}/{server} weight {weight}"),
                    &[],
                )
                .await?;
            }
            Change::Revive {
                backend,
                server,
                address,
                weight,
            } => {
                let name = format!("{backend}/{server}");
                if let Some(address) = address {
                    let (ip, port) =
                        split_address(address).ok_or_else(|| RuntimeError::Refused {
                            command: format!("set server {name} addr"),
                            answer: format!("cannot read the address {address:?}"),
                        })?;
                    let command = format!("set server {name} addr {ip} port {port}");
                    let answer = api.send(&command).await?;
                    if !answer.contains("changed from") && !answer.contains("no need to change") {
                        return Err(RuntimeError::Refused { command, answer });
                    }
                }
                api.expect(&format!("set server {name} weight {weight}"), &[])
                    .await?;
                api.expect(&format!("set server {name} state ready"), &[])
                    .await?;
            }
            Change::Remove { backend, server } => {
                api.expect(&format!("set server {backend}/{server} state maint"), &[])
                    .await?;
                if !delete(api, backend, server).await? {
                    applied.draining.push((backend.clone(), server.clone()));
                }
            }
        }
    }
    Ok(applied)
}

/// Deletes a server in maintenance. `Ok(false)` while it still has
/// connections (HAProxy refuses then); `Ok(true)` once it is gone,
/// including when it was gone already.
pub async fn delete(api: &Socket, backend: &str, server: &str) -> Result<bool, RuntimeError> {
    let command = format!("del server {backend}/{server}");
    let answer = api.send(&command).await?;
    match answer.as_str() {
        "Server deleted." | "No such server." => Ok(true),
        a if a.contains("connection") => Ok(false),
        _ => Err(RuntimeError::Refused { command, answer }),
    }
}

/// One line of `show servers state`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ServerState {
    pub backend: String,
    pub server: String,
    pub address: String,
    pub port: u16,
    /// `srv_op_state`: 0 stopped, 1 starting, 2 running, 3 stopping.
    pub operational: u8,
    /// `srv_admin_state`: 0 when in no maintenance mode.
    pub admin: u8,
    /// `srv_uweight`.
    pub weight: u32,
}

impl ServerState {
    /// Takes traffic: running and in no maintenance.
    pub fn live(&self) -> bool {
        self.operational == 2 && self.admin == 0
    }
}

/// The servers of `backend` as HAProxy runs them now.
pub async fn servers(api: &Socket, backend: &str) -> Result<Vec<ServerState>, RuntimeError> {
    let answer = api.send(&format!("show servers state {backend}")).await?;
    Ok(parse_servers_state(&answer))
}

/// The servers of every backend as HAProxy runs them now.
pub async fn all_servers(api: &Socket) -> Result<Vec<ServerState>, RuntimeError> {
    Ok(parse_servers_state(&api.send("show servers state").await?))
}

/// Parses `show servers state` (format 1): a version line, a `#` header,
/// then one line per server.
pub fn parse_servers_state(text: &str) -> Vec<ServerState> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| {
            let f: Vec<&str> = l.split_whitespace().collect();
            Some(ServerState {
                backend: (*f.get(1)?).to_owned(),
                server: (*f.get(3)?).to_owned(),
                address: (*f.get(4)?).to_owned(),
                operational: f.get(5)?.parse().ok()?,
                admin: f.get(6)?.parse().ok()?,
                weight: f.get(7)?.parse().ok()?,
                port: f.get(18)?.parse().ok()?,
            })
        })
        .collect()
}

/// The version of the HAProxy that answers on `api` (`show info`).
pub async fn version(api: &Socket) -> Result<String, RuntimeError> {
    let info = api.send("show info").await?;
    info.lines()
        .find_map(|l| l.strip_prefix("Version:"))
        .map(|v| v.trim().to_owned())
        .ok_or_else(|| RuntimeError::Refused {
            command: "show info".into(),
            answer: "no Version line".into(),
        })
}

/// The processes of a master-worker HAProxy, from the master CLI's `show proc`.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Processes {
    pub master: Option<u32>,
    /// How often the master reloaded.
    pub reloads: u32,
    /// The current worker(s).
    pub workers: Vec<u32>,
    /// Workers of earlier configs that still finish their connections.
    pub old_workers: Vec<u32>,
}

/// Parses `show proc`.
pub fn parse_show_proc(text: &str) -> Processes {
    let mut p = Processes::default();
    let mut old = false;
    for line in text.lines() {
        if line.starts_with("# old workers") {
            old = true;
            continue;
        }
        let f: Vec<&str> = line.split_whitespace().collect();
        let (Some(pid), Some(kind)) = (f.first().and_then(|v| v.parse().ok()), f.get(1)) else {
            continue;
        };
        match *kind {
            "master" => {
                p.master = Some(pid);
                p.reloads = f.get(2).and_then(|r| r.parse().ok()).unwrap_or(0);
            }
            "worker" if old => p.old_workers.push(pid),
            "worker" => p.workers.push(pid),
            _ => {}
        }
    }
    p
}

/// `show proc` through the master CLI.
pub async fn processes(master: &Socket) -> Result<Processes, RuntimeError> {
    Ok(parse_show_proc(&master.send("show proc").await?))
}

/// What the master said of a reload.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Reloaded {
    /// The new worker loaded the config (`Success=1`).
    Loaded,
    /// It did not (`Success=0`): the old worker keeps serving. HAProxy's
    /// startup messages.
    Failed(String),
    /// No verdict in the answer (the master closed the connection as it
    /// re-executed): to be seen from `show proc`.
    Unknown,
}

/// Asks the master to reload: it re-reads its config file and starts a new
/// worker, which takes the listening sockets over from the old one (with
/// `expose-fd listeners`); the old worker finishes its connections.
/// HAProxy 3.0's master answers once the new worker is up or has failed.
pub async fn reload(master: &Socket) -> Result<Reloaded, RuntimeError> {
    match master.send("reload").await {
        Ok(answer) => Ok(parse_reload(&answer)),
        Err(RuntimeError::Io { source, .. })
            if source.kind() == std::io::ErrorKind::ConnectionReset =>
        {
            Ok(Reloaded::Unknown)
        }
        Err(e) => Err(e),
    }
}

/// PURE: the master's answer to `reload`: `Success=<0|1>`, `--`, then the
/// startup messages.
pub fn parse_reload(answer: &str) -> Reloaded {
    let mut lines = answer.lines();
    let verdict = lines.next().map(str::trim);
    let log = || {
        lines
            .clone()
            .skip_while(|l| l.trim() == "--")
            .collect::<Vec<_>>()
            .join("\n")
    };
    match verdict {
        Some("Success=1") => Reloaded::Loaded,
        Some("Success=0") => Reloaded::Failed(log()),
        _ => Reloaded::Unknown,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn show_servers_state_is_read() {
        let text = "1\n# be_id be_name srv_id srv_name srv_addr srv_op_state srv_admin_state srv_uweight srv_iweight srv_time_since_last_change srv_check_status srv_check_result srv_check_health srv_check_state srv_agent_state bk_f_forced_id srv_f_forced_id srv_fqdn srv_port srvrecord srv_use_ssl srv_check_port srv_check_addr srv_agent_addr srv_agent_port\n\
3 be_web 1 a 127.0.0.1 2 0 1 1 604 8 2 0 6 0 0 0 - 18081 - 0 0 - - 0\n\
3 be_web 2 c ::1 0 1 0 0 0 1 0 0 2 0 0 0 - 18082 - 0 0 - - 0\n";
        let s = parse_servers_state(text);
        assert_eq!(s.len(), 2);
        assert_eq!(
            (s[0].server.as_str(), s[0].port, s[0].live()),
            ("a", 18081, true)
        );
        assert_eq!(
            (s[1].address.as_str(), s[1].weight, s[1].live()),
            ("::1", 0, false)
        );
    }

    #[test]
    fn show_proc_is_read() {
        let text = "#<PID>          <type>          <reloads>       <uptime>        <version>\n\
22536           master          2 [failed: 0]   0d00h00m05s     2.6.12\n\
# workers\n\
22600           worker          0               0d00h00m01s     2.6.12\n\
# old workers\n\
22538           worker          2               0d00h00m05s     2.6.12\n\
# programs\n";
        assert_eq!(
            parse_show_proc(text),
            Processes {
                master: Some(22536),
                reloads: 2,
                workers: vec![22600],
                old_workers: vec![22538],
            }
        );
    }

    #[test]
    fn a_reload_verdict_is_read() {
        assert_eq!(
            parse_reload("Success=1\n--\n[NOTICE]   (1) : Loading success.\n"),
            Reloaded::Loaded
        );
        assert_eq!(
            parse_reload(
                "Success=0\n--\n[ALERT]    (1) : Binding [h.cfg:10] for frontend fe: cannot bind socket\n[WARNING]  (1) : Loading failure!\n"
            ),
            Reloaded::Failed(
                "[ALERT]    (1) : Binding [h.cfg:10] for frontend fe: cannot bind socket\n[WARNING]  (1) : Loading failure!".into()
            )
        );
        assert_eq!(parse_reload(""), Reloaded::Unknown);
    }
}
