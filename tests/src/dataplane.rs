//! Data plane in network namespaces: real webapp processes on the pods' IPs
//! and real HAProxy processes running the controller's config.
//!
//! One namespace holds the pod IPs (on its loopback) with a webapp process
//! per pod, and the clients. Each HAProxy "pod" gets a namespace of its own
//! (so every one binds the config's `:80`), a pod IP in 10.245.0.0/16 and a
//! veth pair to the pods' namespace. Nothing listens outside these
//! namespaces; all of them and every process in them are removed on drop,
//! also when a test fails.

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// Runs `ip` with `args`; fails naming what is missing (iproute2, root).
pub fn ip(args: &[&str]) {
    let out = Command::new("ip")
        .args(args)
        .output()
        .unwrap_or_else(|e| panic!("network namespaces need iproute2 (`ip`) and root: {e}"));
    assert!(
        out.status.success(),
        "ip {}: {} (network namespaces need root)",
        args.join(" "),
        String::from_utf8_lossy(&out.stderr).trim()
    );
}

fn random_tag() -> String {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u32(std::process::id());
    format!("{:04x}", h.finish() & 0xffff)
}

/// An HAProxy process in a namespace of its own.
#[derive(Debug)]
pub struct HaproxyPod {
    pub ns: String,
    /// Its pod IP, reachable from the pods' namespace.
    pub ip: String,
    child: Child,
}

impl HaproxyPod {
    /// `ip:80`, for clients.
    pub fn frontend(&self) -> String {
        format!("{}:80", self.ip)
    }

    /// Soft stop, as the HAProxy pods' preStop does: SIGUSR1 closes the
    /// listeners and lets open connections finish; returns how long the
    /// process took to exit.
    pub fn soft_stop(mut self) -> Duration {
        let started = Instant::now();
        let _ = Command::new("kill")
            .args(["-USR1", &self.child.id().to_string()])
            .status();
        let deadline = started + Duration::from_secs(30);
        while Instant::now() < deadline {
            if let Ok(Some(_)) = self.child.try_wait() {
                return started.elapsed();
            }
            std::thread::sleep(Duration::from_millis(20));
        }
        let _ = self.child.kill();
        panic!("HAProxy in {} did not exit within 30 s of SIGUSR1", self.ns);
    }
}

/// The pods' namespace, its webapps, and the HAProxy pods.
#[derive(Debug)]
pub struct Network {
    tag: String,
    /// The namespace of the pod IPs, the webapps and the clients.
    pub pods: String,
    haproxy_namespaces: Vec<String>,
    webapps: BTreeMap<String, Child>,
    dir: PathBuf,
    next_haproxy: u32,
}

impl Network {
    pub fn create(dir: PathBuf) -> Self {
        let tag = random_tag();
        let pods = format!("lbp-{tag}-pods");
        ip(&["netns", "add", &pods]);
        ip(&["-n", &pods, "link", "set", "lo", "up"]);
        Self {
            tag,
            pods,
            haproxy_namespaces: Vec::new(),
            webapps: BTreeMap::new(),
            dir,
            next_haproxy: 1,
        }
    }

    /// A command run inside the pods' namespace.
    pub fn command(&self, program: &str) -> Command {
        let mut c = Command::new("ip");
        c.args(["netns", "exec", &self.pods, program]);
        c
    }

    /// Adds an address to the pods' namespace (a pod IP or a client IP).
    pub fn add_address(&self, address: &str) {
        ip(&[
            "-n",
            &self.pods,
            "addr",
            "add",
            &format!("{address}/32"),
            "dev",
            "lo",
        ]);
    }

    /// Starts a webapp answering as `name` on `address:port`; waits until it serves.
    pub fn start_webapp(&mut self, name: &str, address: &str, port: u16) {
        if self.webapps.contains_key(address) {
            return;
        }
        self.add_address(address);
        let bin = std::env::var("LBPOOL_WEBAPP_BIN")
            .expect("LBPOOL_WEBAPP_BIN is not set: the data-plane tests need the webapp binary (hack/test.sh sets it)");
        let log =
            std::fs::File::create(self.dir.join(format!("webapp-{address}.log"))).expect("log");
        let child = self
            .command(&bin)
            .args(["--listen", &format!("{address}:{port}"), "--name", name])
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start webapp");
        self.webapps.insert(address.to_owned(), child);
        let url = format!("http://{address}:{port}/healthz");
        self.wait_http(&url, "webapp");
    }

    /// SIGTERM to the webapp on `address` (a graceful stop); `kill` = SIGKILL.
    pub fn stop_webapp(&mut self, address: &str, kill: bool) {
        if let Some(mut child) = self.webapps.remove(address) {
            let signal = if kill { "-KILL" } else { "-TERM" };
            let _ = Command::new("kill")
                .args([signal, &child.id().to_string()])
                .status();
            let _ = child.wait();
        }
    }

    /// Addresses of the running webapps.
    pub fn webapp_addresses(&self) -> Vec<String> {
        self.webapps.keys().cloned().collect()
    }

    /// Starts HAProxy with `config` in a new namespace; returns once it answers on :80.
    pub fn start_haproxy(&mut self, config: &str) -> HaproxyPod {
        let k = self.next_haproxy;
        self.next_haproxy += 1;
        let ns = format!("lbp-{}-hp{k}", self.tag);
        let pod_ip = format!("10.245.{}.{}", k / 250, k % 250 + 1);
        let (outer, inner) = (format!("l{}p{k}", self.tag), format!("l{}h{k}", self.tag));
        ip(&["netns", "add", &ns]);
        self.haproxy_namespaces.push(ns.clone());
        ip(&["-n", &ns, "link", "set", "lo", "up"]);
        ip(&[
            "link", "add", &outer, "netns", &self.pods, "type", "veth", "peer", "name", &inner,
            "netns", &ns,
        ]);
        ip(&["-n", &self.pods, "link", "set", &outer, "up"]);
        ip(&["-n", &ns, "link", "set", &inner, "up"]);
        ip(&[
            "-n",
            &ns,
            "addr",
            "add",
            &format!("{pod_ip}/32"),
            "dev",
            "lo",
        ]);
        ip(&["-n", &ns, "route", "add", "10.244.0.0/16", "dev", &inner]);
        ip(&[
            "-n",
            &self.pods,
            "route",
            "add",
            &format!("{pod_ip}/32"),
            "dev",
            &outer,
        ]);

        let cfg = self.dir.join(format!("haproxy-{k}.cfg"));
        std::fs::write(&cfg, config).expect("write config");
        let log = std::fs::File::create(self.dir.join(format!("haproxy-{k}.log"))).expect("log");
        let haproxy = std::env::var("HAPROXY_BIN").unwrap_or_else(|_| "haproxy".into());
        let child = Command::new("ip")
            .args(["netns", "exec", &ns])
            .args([haproxy.as_str(), "-W", "-db", "-f"])
            .arg(&cfg)
            .stdin(Stdio::null())
            .stdout(log.try_clone().expect("log"))
            .stderr(log)
            .spawn()
            .expect("start haproxy (HAPROXY_BIN: hack/haproxy.sh prints it)");
        let pod = HaproxyPod {
            ns,
            ip: pod_ip,
            child,
        };
        self.wait_http(&format!("http://{}/", pod.frontend()), "HAProxy");
        pod
    }

    fn wait_http(&self, url: &str, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while Instant::now() < deadline {
            let out = self
                .command("curl")
                .args([
                    "-s",
                    "-o",
                    "/dev/null",
                    "-w",
                    "%{http_code}",
                    "--max-time",
                    "1",
                    url,
                ])
                .output()
                .expect("curl (apt-get install curl)");
            if String::from_utf8_lossy(&out.stdout).starts_with(['2', '3', '5']) {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
        panic!(
            "{what} did not answer on {url} within 10 s; logs in {}",
            self.dir.display()
        );
    }

    /// `curl` in the pods' namespace with `args`; stdout.
    pub fn curl(&self, args: &[&str]) -> String {
        let out = self
            .command("curl")
            .args(["-s", "--max-time", "5"])
            .args(args)
            .output()
            .expect("curl");
        String::from_utf8_lossy(&out.stdout).into_owned()
    }

    /// The `host` of each JSON answer of `n` requests to `url` (one client,
    /// keep-alive), with extra curl `args` (cookies, source address).
    pub fn hosts(&self, url: &str, n: usize, args: &[&str]) -> Vec<String> {
        let urls: Vec<&str> = std::iter::repeat_n(url, n).collect();
        let mut all: Vec<&str> = args.to_vec();
        all.extend(urls);
        let body = self.curl(&all);
        body.split("\"host\":\"")
            .skip(1)
            .filter_map(|s| s.split('"').next())
            .map(str::to_owned)
            .collect()
    }
}

impl Drop for Network {
    fn drop(&mut self) {
        for child in self.webapps.values_mut() {
            let _ = child.kill();
            let _ = child.wait();
        }
        for ns in self
            .haproxy_namespaces
            .iter()
            .chain(std::iter::once(&self.pods))
        {
            if let Ok(out) = Command::new("ip").args(["netns", "pids", ns]).output() {
                for pid in String::from_utf8_lossy(&out.stdout).split_whitespace() {
                    let _ = Command::new("kill").args(["-KILL", pid]).status();
                }
            }
            // Deleting a namespace deletes its veth ends too.
            let _ = Command::new("ip").args(["netns", "del", ns]).status();
        }
    }
}
