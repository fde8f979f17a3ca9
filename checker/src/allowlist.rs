//! PURE: the allowlist every rendered config passes before `haproxy -c`
//! sees it, the built-in template's and a user template's alike.
//!
//! A config is read as HAProxy reads it ([`crate::lexer`]) and every line
//! is judged by what it is: the sections a pool's load balancer needs
//! (`global`, `defaults`, `frontend`, `backend`, `listen`), the keywords of
//! each with arguments of a safe shape, sample expressions whose fetches and
//! converters are known ([`crate::samples`]), and only the environment
//! variables and paths lbpool declares ([`Declared`]). Anything else is
//! refused with the line, the word and the rule: nothing in a config can
//! run code (Lua, `program`, `external-check`), read or write a file (`-f`,
//! `errorfile`, `map`, `crt`, a UNIX socket), change HAProxy's environment,
//! resolve a name, or open an admin socket of its own.

use std::borrow::Cow;
use std::net::IpAddr;

use crate::lexer::{self, Line};
use crate::samples;

/// What lbpool itself puts into configs, and so allows.
#[derive(Clone, Debug)]
pub struct Declared {
    /// The environment variables `stats auth` may take its credentials from.
    pub stats_env: &'static [&'static str],
    /// The Runtime API socket of an `InPlace` pod ([`RUNTIME_API_SOCKET`];
    /// an agent started with another `--admin-socket` declares that one).
    pub runtime_api: Cow<'static, str>,
}

use lbpool_wire::{RUNTIME_API_SOCKET, STATS_ENV, STATS_FILE_NAME};

/// The stats page's guard: no page without both credentials. The only
/// line that may read lbpool's variables with `env()`, and only whether
/// they are empty.
pub const STATS_GUARD: &str = "http-request deny deny_status 503 unless { env(STATS_USERNAME) -m len gt 0 } { env(STATS_PASSWORD) -m len gt 0 }";

impl Declared {
    /// The `stats-file` an `InPlace` config may name: [`STATS_FILE_NAME`]
    /// beside the Runtime API socket ([`lbpool_wire::STATS_FILE`] for
    /// lbpool's own socket).
    pub fn stats_file(&self) -> String {
        match self.runtime_api.rsplit_once('/') {
            Some((dir, _)) => format!("{dir}/{STATS_FILE_NAME}"),
            None => STATS_FILE_NAME.to_owned(),
        }
    }
}

/// lbpool's declarations.
pub const LBPOOL: Declared = Declared {
    stats_env: &STATS_ENV,
    runtime_api: Cow::Borrowed(RUNTIME_API_SOCKET),
};

/// Why a config is refused: the line, the word and the rule.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("line {line}: {word}: {rule}")]
pub struct Refusal {
    /// 1-based line of the config.
    pub line: usize,
    /// The keyword or argument refused, as the config spells it (shortened).
    pub word: String,
    /// The rule it breaks.
    pub rule: String,
}

/// Checks `config` against the allowlist.
pub fn check(config: &str, declared: &Declared) -> Result<(), Refusal> {
    let lines = lexer::lines(config).map_err(|(line, e)| Refusal {
        line,
        word: "line".into(),
        rule: e.to_string(),
    })?;
    let mut section = Section::None;
    let mut guid = false;
    for line in &lines {
        let refuse = |(word, rule): (String, String)| Refusal {
            line: line.number,
            word: shorten(&word),
            rule,
        };
        if let Some(next) = section_start(&line.words).map_err(refuse)? {
            section = next;
            guid = false;
            continue;
        }
        // HAProxy 3.0.11's `haproxy -c` dies of a second `guid` in one
        // proxy (found here): refused, so it never gets to run.
        if line.words[0] == "guid" {
            if guid {
                return Err(refuse(("guid".into(), "a section takes one guid".into())));
            }
            guid = true;
        }
        check_line(section, line, declared).map_err(refuse)?;
    }
    Ok(())
}

/// A refused word and the rule.
type Verdict = Result<(), (String, String)>;

fn refuse(word: &str, rule: impl Into<String>) -> Verdict {
    Err((word.to_owned(), rule.into()))
}

fn shorten(word: &str) -> String {
    const MAX: usize = 80;
    if word.chars().count() <= MAX {
        format!("'{word}'")
    } else {
        format!("'{}…'", word.chars().take(MAX).collect::<String>())
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Section {
    None,
    Global,
    /// `defaults`, `frontend`, `backend` or `listen`.
    Proxy,
}

/// Sections HAProxy knows that a pool's config has no use for.
const OTHER_SECTIONS: &[(&str, &str)] = &[
    ("program", "it runs a program"),
    ("userlist", "it holds passwords in the config"),
    ("peers", "it connects to other HAProxy processes"),
    ("resolvers", "it resolves names over DNS"),
    ("mailers", "it sends mail"),
    ("cache", "it is not a feature lbpool configures"),
    ("http-errors", "its error pages are files"),
    ("ring", "it is not a feature lbpool configures"),
    ("fcgi-app", "it is not a feature lbpool configures"),
    ("crt-store", "its certificates are files"),
    ("log-forward", "it is not a feature lbpool configures"),
    ("traces", "it is not a feature lbpool configures"),
];

/// `Some` when the line opens a section.
fn section_start(words: &[String]) -> Result<Option<Section>, (String, String)> {
    let first = words[0].as_str();
    if first.starts_with('.') {
        return Err((
            first.to_owned(),
            "conditional and diagnostic directives (.if, .diag …) are not allowed".into(),
        ));
    }
    let section = match first {
        "global" => Section::Global,
        "defaults" | "frontend" | "backend" | "listen" => Section::Proxy,
        _ => {
            if let Some((_, why)) = OTHER_SECTIONS.iter().find(|(s, _)| *s == first) {
                return Err((
                    first.to_owned(),
                    format!("a {first} section is not allowed: {why}"),
                ));
            }
            return Ok(None);
        }
    };
    let rest = &words[1..];
    let named = match (first, rest) {
        ("global", []) | ("defaults", []) => true,
        ("global", _) => false,
        (_, [name]) => is_name(name),
        (_, [name, from, parent]) => is_name(name) && from == "from" && is_name(parent),
        _ => false,
    };
    if !named {
        return Err((
            words.join(" "),
            format!("a {first} section takes a name of letters, digits and '-_.:'"),
        ));
    }
    Ok(Some(section))
}

fn check_line(section: Section, line: &Line, declared: &Declared) -> Verdict {
    let words = &line.words;
    if section == Section::Proxy && words.join(" ") == STATS_GUARD {
        return Ok(());
    }
    env(line, declared)?;
    // `except` takes a network HAProxy would resolve if it were a name.
    if matches!(words[0].as_str(), "option" | "no")
        && let Some(at) = words.iter().position(|w| w == "except")
        && let Some(network) = words.get(at + 1).filter(|n| !is_network(n))
    {
        return refuse(
            network,
            "an address pattern is an IP address or network: names are not resolved",
        );
    }
    match section {
        Section::None => refuse(&words[0], "a keyword outside any section"),
        Section::Global => global(words, declared),
        Section::Proxy => proxy(words),
    }?;
    if is_literal(words) {
        return Ok(());
    }
    // Whatever the keyword, no word may call what the allowlist does not
    // know, or load patterns from a file.
    for w in words {
        samples::calls(w).or_else(|rule| refuse(w, rule))?;
        if w == "-f" || w == "-M" {
            return refuse(w, "patterns and maps from a file are not allowed");
        }
    }
    Ok(())
}

/// Lines whose arguments HAProxy takes as plain text, never as an
/// expression: an HTTP path may hold `(` without calling anything.
fn is_literal(words: &[String]) -> bool {
    let pair = (words[0].as_str(), words.get(1).map_or("", String::as_str));
    matches!(
        pair,
        ("option", "httpchk")
            | ("stats", "uri" | "realm" | "auth")
            | ("monitor-uri" | "description" | "node" | "log-tag", _)
    )
}

/// Only `stats auth` may expand variables, and only lbpool's.
fn env(line: &Line, declared: &Declared) -> Verdict {
    let stats_auth = line.words.len() == 3 && line.words[0] == "stats" && line.words[1] == "auth";
    for name in &line.env {
        if !declared.stats_env.contains(&name.as_str()) {
            return refuse(
                &format!("${{{name}}}"),
                "environment variables other than lbpool's are not allowed",
            );
        }
        if !stats_auth {
            return refuse(
                &format!("${{{name}}}"),
                "lbpool's variables may only be used by 'stats auth'",
            );
        }
    }
    Ok(())
}

fn is_name(s: &str) -> bool {
    !s.is_empty()
        && s.chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
}

fn is_number(s: &str) -> bool {
    !s.is_empty() && s.len() <= 12 && s.chars().all(|c| c.is_ascii_digit())
}

/// HAProxy's time format: a number with an optional unit.
fn is_duration(s: &str) -> bool {
    let digits = s.trim_end_matches(|c: char| c.is_ascii_alphabetic());
    let unit = &s[digits.len()..];
    is_number(digits) && ["", "us", "ms", "s", "m", "h", "d"].contains(&unit)
}

/// An address literal with an optional port: `10.0.0.1`, `10.0.0.1:80`,
/// `ipv6@2001:db8::1:80`. Never a name to resolve, a path or a socket.
fn is_address(s: &str, port: PortRule) -> bool {
    let s = [
        "ipv4@", "ipv6@", "udp@", "udp4@", "udp6@", "tcp@", "tcp4@", "tcp6@",
    ]
    .iter()
    .find_map(|p| s.strip_prefix(p))
    .unwrap_or(s);
    let host_port = s.rsplit_once(':');
    let host_ok = |h: &str| h.parse::<IpAddr>().is_ok();
    let port_ok = |p: &str| match port {
        PortRule::Bind => p
            .split_once('-')
            .map_or(is_port(p), |(a, b)| is_port(a) && is_port(b)),
        PortRule::Optional => is_port(p),
    };
    match host_port {
        // A bind may leave the host out (`:80`) or use `*`.
        Some((host, p)) if port == PortRule::Bind => {
            (host.is_empty() || host == "*" || host == "::" || host_ok(host)) && port_ok(p)
        }
        Some((host, p)) if host_ok(host) && port_ok(p) => true,
        // HAProxy takes the part after the last colon as the port: only an
        // IPv4 address may go without one.
        _ => port == PortRule::Optional && !s.contains(':') && host_ok(s),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum PortRule {
    /// `server`, `log`: a port may follow.
    Optional,
    /// `bind`: a port or range, the host may be empty.
    Bind,
}

fn is_port(p: &str) -> bool {
    p.parse::<u16>().is_ok_and(|n| n > 0)
}

// --- global ----------------------------------------------------------------

/// `global` keywords that take plain values.
const GLOBAL: &[&str] = &[
    "maxconn",
    "maxconnrate",
    "maxsessrate",
    "maxsslconn",
    "maxsslrate",
    "maxcomprate",
    "maxcompcpuusage",
    "maxpipes",
    "hard-stop-after",
    "grace",
    "nbthread",
    "spread-checks",
    "max-spread-checks",
    "node",
    "description",
    "log-tag",
    "log-send-hostname",
    "busy-polling",
    "strict-limits",
    "mworker-max-reloads",
    "ssl-default-bind-ciphers",
    "ssl-default-bind-ciphersuites",
    "ssl-default-bind-options",
    "ssl-default-bind-curves",
    "ssl-default-bind-sigalgs",
    "ssl-default-server-ciphers",
    "ssl-default-server-ciphersuites",
    "ssl-default-server-options",
    "ssl-server-verify",
    "tune.bufsize",
    "tune.maxrewrite",
    "tune.maxaccept",
    "tune.maxpollevents",
    "tune.idletimer",
    "tune.recv_enough",
    "tune.runqueue-depth",
    "tune.pattern.cache-size",
    "tune.comp.maxlevel",
    "tune.ssl.cachesize",
    "tune.ssl.lifetime",
    "tune.ssl.maxrecord",
    "tune.ssl.default-dh-param",
    "tune.h2.header-table-size",
    "tune.h2.initial-window-size",
    "tune.h2.max-concurrent-streams",
    "tune.h2.max-frame-size",
    "tune.http.cookielen",
    "tune.http.logurilen",
    "tune.http.maxhdr",
    "tune.rcvbuf.client",
    "tune.rcvbuf.server",
    "tune.sndbuf.client",
    "tune.sndbuf.server",
    "tune.zlib.memlevel",
    "tune.zlib.windowsize",
    "tune.idle-pool.shared",
];

/// Refusals worth a reason of their own.
fn global_refusal(keyword: &str) -> Option<&'static str> {
    Some(match keyword {
        k if k.starts_with("lua") || k.starts_with("tune.lua") => "lbpool runs no Lua",
        "setenv" | "presetenv" | "resetenv" | "unsetenv" => {
            "HAProxy's environment is not the config's to change"
        }
        "chroot" | "user" | "group" | "uid" | "gid" | "daemon" | "master-worker" => {
            "the pod decides how and as whom HAProxy runs"
        }
        "external-check" | "insecure-fork-wanted" | "insecure-setuid-wanted" => {
            "HAProxy forks no programs here"
        }
        "ca-base"
        | "crt-base"
        | "key-base"
        | "pidfile"
        | "server-state-file"
        | "server-state-base"
        | "h1-case-adjust-file"
        | "ssl-engine"
        | "ssl-dh-param-file"
        | "issuers-chain-path" => "it names a file, which lbpool does not declare",
        _ => return None,
    })
}

fn global(words: &[String], declared: &Declared) -> Verdict {
    let keyword = words[0].as_str();
    if let Some(why) = global_refusal(keyword) {
        return refuse(keyword, why);
    }
    match keyword {
        "log" => log(words),
        "stats" => global_stats(words, declared),
        "stats-file" => stats_file(words, declared),
        k if GLOBAL.contains(&k) => Ok(()),
        k => refuse(k, "not a global keyword lbpool allows"),
    }
}

/// `stats-file` only at lbpool's path, beside the Runtime API socket: the
/// counters the agent dumps there before a reload.
fn stats_file(words: &[String], declared: &Declared) -> Verdict {
    let path = words.get(1).map_or("", String::as_str);
    let own = declared.stats_file();
    if words.len() == 2 && path == own {
        Ok(())
    } else {
        refuse(
            path,
            format!("a stats-file is allowed only at lbpool's {own}"),
        )
    }
}

/// `stats socket` only at lbpool's Runtime API path; `stats timeout`, `stats maxconn`.
fn global_stats(words: &[String], declared: &Declared) -> Verdict {
    match words.get(1).map(String::as_str) {
        Some("timeout" | "maxconn") if words.len() == 3 => Ok(()),
        Some("socket") => {
            let path = words.get(2).map_or("", String::as_str);
            if path != declared.runtime_api.as_ref() {
                return refuse(
                    path,
                    format!(
                        "a stats socket is allowed only at lbpool's {}",
                        declared.runtime_api
                    ),
                );
            }
            let mut rest = words[3..].iter().map(String::as_str);
            while let Some(opt) = rest.next() {
                let ok = match opt {
                    "mode" => rest.next().is_some_and(|m| m.len() == 3 && is_number(m)),
                    "level" => rest
                        .next()
                        .is_some_and(|l| ["admin", "operator", "user"].contains(&l)),
                    "expose-fd" => rest.next() == Some("listeners"),
                    _ => false,
                };
                if !ok {
                    return refuse(
                        opt,
                        "not a stats socket option lbpool allows (mode, level, expose-fd listeners)",
                    );
                }
            }
            Ok(())
        }
        _ => refuse(&words.join(" "), "not a global stats setting lbpool allows"),
    }
}

/// `log global`, or a target that is stdout, stderr or an address literal:
/// never a path (`/dev/log`) or a UNIX socket.
fn log(words: &[String]) -> Verdict {
    let target = words.get(1).map_or("", String::as_str);
    let ok = matches!(target, "global" | "stdout" | "stderr" | "fd@1" | "fd@2")
        || is_address(target, PortRule::Optional);
    if ok {
        Ok(())
    } else {
        refuse(
            target,
            "a log target must be stdout, stderr or an IP address",
        )
    }
}

// --- proxies ---------------------------------------------------------------

/// Proxy keywords whose arguments are plain values or expressions (the
/// latter checked by [`samples::calls`] on every word).
const PROXY: &[&str] = &[
    "mode",
    "balance",
    "retries",
    "retry-on",
    "maxconn",
    "fullconn",
    "backlog",
    "rate-limit",
    "hash-type",
    "hash-balance-factor",
    "http-reuse",
    "id",
    "description",
    "disabled",
    "enabled",
    "default_backend",
    "use_backend",
    "use-server",
    "force-persist",
    "ignore-persist",
    "cookie",
    "capture",
    "declare",
    "compression",
    "monitor-uri",
    "monitor",
    "unique-id-format",
    "unique-id-header",
    "log-format",
    "log-format-sd",
    "error-log-format",
    "log-tag",
    "http-send-name-header",
    "max-keep-alive-queue",
    "redirect",
    "stick",
    "persist",
];

fn proxy_refusal(keyword: &str) -> Option<&'static str> {
    Some(match keyword {
        k if k.starts_with("lua") => "lbpool runs no Lua",
        "errorfile"
        | "errorfiles"
        | "http-error"
        | "load-server-state-from-file"
        | "server-state-file-name" => "it names a file, which lbpool does not declare",
        "errorloc" | "errorloc302" | "errorloc303" => {
            "error pages are not a feature lbpool configures"
        }
        "external-check" => "HAProxy forks no programs here",
        "server-template" | "dispatch" => "servers come from the pool's endpoints, as IP addresses",
        "source" | "usesrc" => "HAProxy binds no source addresses of its own here",
        "filter" => "filters load external configuration",
        "email-alert" => "HAProxy sends no mail",
        "tcp-check" => "TCP checks are not a feature lbpool configures",
        _ => return None,
    })
}

fn proxy(words: &[String]) -> Verdict {
    let keyword = words[0].as_str();
    if let Some(why) = proxy_refusal(keyword) {
        return refuse(keyword, why);
    }
    match keyword {
        "option" => option(words.get(1)),
        "no" if words.get(1).is_some_and(|w| w == "option") => option(words.get(2)),
        "timeout" => timeout(&words[1..]),
        "bind" => bind(&words[1..]),
        "server" => server(words),
        "default-server" => server_options(&words[1..]),
        "log" => log(words),
        "stats" => proxy_stats(&words[1..]),
        "guid" if words.len() == 2 && is_name(&words[1]) => Ok(()),
        "acl" => acl(words),
        "stick-table" => stick_table(&words[1..]),
        "http-check" => http_check(&words[1..]),
        "http-request" | "http-response" | "http-after-response" => rule(&words[1..]),
        "tcp-request" | "tcp-response" => tcp_rule(&words[1..]),
        k if PROXY.contains(&k) => conditions(words),
        k => refuse(k, "not a proxy keyword lbpool allows"),
    }
}

const OPTIONS: &[&str] = &[
    "httplog",
    "tcplog",
    "dontlognull",
    "dontlog-normal",
    "log-health-checks",
    "log-separate-errors",
    "logasap",
    "redispatch",
    "forwardfor",
    "originalto",
    "httpchk",
    "http-server-close",
    "http-keep-alive",
    "httpclose",
    "http-buffer-request",
    "http-ignore-probes",
    "http-no-delay",
    "http-pretend-keepalive",
    "http-restrict-req-hdr-names",
    "abortonclose",
    "allbackups",
    "checkcache",
    "clitcpka",
    "srvtcpka",
    "tcpka",
    "contstats",
    "disable-h2-upgrade",
    "independent-streams",
    "nolinger",
    "persist",
    "prefer-last-server",
    "socket-stats",
    "splice-auto",
    "splice-request",
    "splice-response",
    "tcp-smart-accept",
    "tcp-smart-connect",
    "ssl-hello-chk",
    "http-use-proxy-header",
    "accept-invalid-http-request",
    "accept-invalid-http-response",
    "h1-case-adjust-bogus-client",
    "h1-case-adjust-bogus-server",
];

fn option(name: Option<&String>) -> Verdict {
    match name.map(String::as_str) {
        Some(n) if OPTIONS.contains(&n) => Ok(()),
        Some("external-check") => refuse("external-check", "HAProxy forks no programs here"),
        Some("transparent") => refuse("transparent", "HAProxy binds no foreign addresses here"),
        Some(n) => refuse(n, "not an option lbpool allows"),
        None => refuse("option", "names no option"),
    }
}

const TIMEOUTS: &[&str] = &[
    "connect",
    "client",
    "server",
    "queue",
    "http-request",
    "http-keep-alive",
    "tunnel",
    "client-fin",
    "server-fin",
    "check",
    "tarpit",
];

fn timeout(args: &[String]) -> Verdict {
    match args {
        [name, value] if TIMEOUTS.contains(&name.as_str()) && is_duration(value) => Ok(()),
        _ => refuse(
            &args.join(" "),
            "a timeout is 'timeout <connect|client|server|…> <duration>'",
        ),
    }
}

fn bind(args: &[String]) -> Verdict {
    let Some(addr) = args.first() else {
        return refuse("bind", "names no address");
    };
    if !is_address(addr, PortRule::Bind) {
        return refuse(
            addr,
            "a bind address is [IP]:port: never a path or a UNIX socket",
        );
    }
    let mut rest = args[1..].iter().map(String::as_str);
    while let Some(opt) = rest.next() {
        let ok = match opt {
            "accept-proxy" | "v4v6" | "v6only" | "defer-accept" | "tfo" => true,
            "name" => rest.next().is_some_and(is_name),
            "maxconn" | "backlog" | "mss" | "nice" | "id" => rest.next().is_some_and(is_number),
            "ssl" | "crt" | "crt-list" | "ca-file" | "crl-file" | "ca-verify-file" => {
                return refuse(opt, "TLS files are not declared by lbpool yet");
            }
            _ => false,
        };
        if !ok {
            return refuse(opt, "not a bind option lbpool allows");
        }
    }
    Ok(())
}

fn server(words: &[String]) -> Verdict {
    match words {
        [_, name, addr, options @ ..] => {
            if !is_name(name) {
                return refuse(name, "a server name is letters, digits and '-_.:'");
            }
            if !is_address(addr, PortRule::Optional) {
                return refuse(
                    addr,
                    "a server address is an IP literal with an optional port, never a name to resolve",
                );
            }
            server_options(options)
        }
        _ => refuse(
            &words.join(" "),
            "a server is 'server <name> <ip>:<port> [options]'",
        ),
    }
}

fn server_options(options: &[String]) -> Verdict {
    if options.iter().filter(|o| *o == "guid").count() > 1 {
        return refuse("guid", "a server takes one guid");
    }
    let mut rest = options.iter().map(String::as_str);
    while let Some(opt) = rest.next() {
        let ok = match opt {
            "check" | "no-check" | "backup" | "no-backup" | "disabled" | "enabled"
            | "send-proxy" | "send-proxy-v2" | "no-send-proxy" | "check-send-proxy"
            | "non-stick" | "stick" => true,
            "weight" | "maxconn" | "minconn" | "maxqueue" | "rise" | "fall" | "port" | "id"
            | "error-limit" | "max-reuse" | "pool-max-conn" | "pool-low-conn"
            | "pool-purge-delay" => rest.next().is_some_and(is_number),
            "inter" | "fastinter" | "downinter" | "slowstart" => {
                rest.next().is_some_and(is_duration)
            }
            "cookie" | "observe" | "on-error" | "on-marked-down" | "on-marked-up" | "proto"
            | "track" | "guid" => rest.next().is_some_and(is_name),
            "addr" => rest.next().is_some_and(|a| a.parse::<IpAddr>().is_ok()),
            "init-addr" | "resolvers" | "resolve-prefer" | "resolve-opts" | "resolve-net" => {
                return refuse(opt, "servers are IP addresses: nothing is resolved");
            }
            "ssl" | "crt" | "ca-file" | "crl-file" | "verify" | "sni" | "check-ssl" => {
                return refuse(opt, "TLS to servers is not declared by lbpool yet");
            }
            _ => false,
        };
        if !ok {
            return refuse(
                opt,
                "not a server option lbpool allows (or its value is malformed)",
            );
        }
    }
    Ok(())
}

/// `stats` in a proxy: the page's settings. Admin mode is not allowed: it
/// lets the page change servers.
fn proxy_stats(args: &[String]) -> Verdict {
    let sub = args.first().map_or("", String::as_str);
    match sub {
        "enable" | "hide-version" | "show-legends" | "show-modules" | "show-node" | "show-desc"
        | "uri" | "realm" | "auth" | "refresh" | "scope" => Ok(()),
        "admin" => refuse(sub, "the stats page may not change servers"),
        "http-request" => rule(&args[1..]),
        _ => refuse(sub, "not a stats setting lbpool allows"),
    }
}

const ACL_FLAGS: &[&str] = &["-i", "-n", "--"];
const MATCH_METHODS: &[&str] = &[
    "found", "bool", "int", "ip", "bin", "len", "str", "sub", "reg", "beg", "end", "dir", "dom",
];

fn acl(words: &[String]) -> Verdict {
    match words {
        [_, name, criterion, rest @ ..] if is_name(name) => acl_expression(criterion, rest),
        _ => refuse(
            &words.join(" "),
            "an ACL is 'acl <name> <criterion> [flags] [values]'",
        ),
    }
}

/// An IP address or network: never a name HAProxy would resolve.
fn is_network(s: &str) -> bool {
    let (ip, mask) = s.split_once('/').unwrap_or((s, "0"));
    ip.parse::<IpAddr>().is_ok() && (is_number(mask) || mask.parse::<IpAddr>().is_ok())
}

/// Whether HAProxy reads an ACL's values as addresses (and would resolve
/// a name among them): an address fetch, `ipmask`, or `-m ip`.
fn ip_typed(criterion: &str, rest: &[String]) -> bool {
    let fetch = criterion.split(['(', ',']).next().unwrap_or(criterion);
    [
        "src", "dst", "fc_src", "fc_dst", "bc_src", "bc_dst", "ipv4", "ipv6",
    ]
    .contains(&fetch)
        || fetch.ends_with("_ip")
        || criterion.contains("ipmask")
        || rest.windows(2).any(|w| w[0] == "-m" && w[1] == "ip")
}

/// An ACL's criterion and what follows it (flags, then values).
fn acl_expression(criterion: &str, rest: &[String]) -> Verdict {
    samples::criterion(criterion).or_else(|rule| refuse(criterion, rule))?;
    let mut words = rest.iter().map(String::as_str);
    while let Some(w) = words.next() {
        match w {
            "-m" => {
                let method = words.next().unwrap_or("");
                if !MATCH_METHODS.contains(&method) {
                    return refuse(method, "not a match method HAProxy knows");
                }
            }
            "--" => break,
            "-f" | "-M" => return refuse(w, "patterns and maps from a file are not allowed"),
            f if ACL_FLAGS.contains(&f) => {}
            f if f.starts_with('-')
                && f.len() > 1
                && !f[1..].starts_with(|c: char| c.is_ascii_digit()) =>
            {
                return refuse(f, "not an ACL flag lbpool allows (-i, -m, -n, --)");
            }
            // The first value: the rest are values too.
            _ => break,
        }
    }
    if ip_typed(criterion, rest) {
        let values = rest
            .iter()
            .filter(|w| !w.starts_with('-') && !MATCH_METHODS.contains(&w.as_str()));
        if let Some(name) = values.clone().find(|v| !is_network(v)) {
            return refuse(
                name,
                "an address pattern is an IP address or network: names are not resolved",
            );
        }
    }
    Ok(())
}

/// The `if`/`unless` condition of a line, if any: ACL names, `!`, `||`,
/// `or`, and anonymous ACLs in braces.
fn conditions(words: &[String]) -> Verdict {
    let Some(at) = words.iter().position(|w| w == "if" || w == "unless") else {
        return Ok(());
    };
    let mut rest = words[at + 1..].iter();
    if rest.len() == 0 {
        return refuse(&words[at], "a condition names no ACL");
    }
    while let Some(w) = rest.next() {
        // `!{ ssl_fc }` negates an anonymous ACL written against its brace.
        match w.trim_start_matches('!') {
            "" | "||" | "or" => {}
            "{" => {
                let inner: Vec<String> = rest.by_ref().take_while(|w| *w != "}").cloned().collect();
                let Some((criterion, tail)) = inner.split_first() else {
                    return refuse("{", "an anonymous ACL names no criterion");
                };
                acl_expression(criterion, tail)?;
            }
            // `!name` is HAProxy's negation written together.
            name if is_name(name.trim_start_matches('!')) => {}
            other => return refuse(other, "not an ACL name or operator"),
        }
    }
    Ok(())
}

fn stick_table(args: &[String]) -> Verdict {
    if let Some(w) = args.iter().find(|w| *w == "peers" || *w == "write-to") {
        return refuse(w, "stick tables are not shared with other processes here");
    }
    Ok(())
}

fn http_check(args: &[String]) -> Verdict {
    match args.first().map(String::as_str) {
        Some(
            "send" | "expect" | "disable-on-404" | "send-state" | "comment" | "set-var"
            | "set-var-fmt" | "unset-var",
        ) => conditions(args),
        Some(c) if c.starts_with("set-var") || c.starts_with("unset-var") => Ok(()),
        Some("connect") => refuse(
            "connect",
            "a health check connects to the server it checks, nowhere else",
        ),
        _ => refuse(&args.join(" "), "not an http-check rule lbpool allows"),
    }
}

/// Actions of every kind of rule: variables, counters, captures, addresses.
const SHARED_ACTIONS: &[&str] = &[
    "set-var",
    "set-var-fmt",
    "unset-var",
    "set-log-level",
    "set-nice",
    "set-tos",
    "set-mark",
    "capture",
    "track-sc0",
    "track-sc1",
    "track-sc2",
    "sc-inc-gpc",
    "sc-inc-gpc0",
    "sc-inc-gpc1",
    "sc-set-gpt",
    "sc-set-gpt0",
    "sc-add-gpc",
    "silent-drop",
    "reject",
    "set-src",
    "set-src-port",
    "set-dst",
    "set-dst-port",
    "set-priority-class",
    "set-priority-offset",
];

/// Actions of `http-request`, `http-response`, `http-after-response` and
/// `stats http-request`, beside [`SHARED_ACTIONS`].
const HTTP_ACTIONS: &[&str] = &[
    "allow",
    "deny",
    "tarpit",
    "return",
    "redirect",
    "auth",
    "add-header",
    "set-header",
    "del-header",
    "replace-header",
    "replace-value",
    "set-path",
    "set-pathq",
    "set-query",
    "set-uri",
    "set-method",
    "replace-path",
    "replace-pathq",
    "replace-uri",
    "set-status",
    "disable-l7-retry",
    "early-hint",
    "normalize-uri",
    "set-timeout",
    "strict-mode",
    "wait-for-body",
    "wait-for-handshake",
];

/// Actions of `tcp-request` and `tcp-response`, beside [`SHARED_ACTIONS`].
const TCP_ACTIONS: &[&str] = &[
    "accept",
    "expect-proxy",
    "expect-netscaler-cip",
    "switch-mode",
    "close",
];

fn action_refusal(action: &str) -> Option<&'static str> {
    Some(match action {
        a if a.starts_with("lua.") => "lbpool runs no Lua",
        "use-service" => "only HAProxy's own services are allowed (prometheus-exporter)",
        "do-resolve" => "nothing is resolved over DNS",
        "set-map" | "del-map" | "add-acl" | "del-acl" => "it changes a file's patterns",
        "send-spoe-group" => "it talks to external agents",
        "cache-use" | "cache-store" => "caches are not a feature lbpool configures",
        "set-bandwidth-limit" => "it needs a filter, which lbpool does not allow",
        _ => return None,
    })
}

/// `<action>[(arg)] [args…] [if|unless <condition>]`.
fn rule(args: &[String]) -> Verdict {
    rule_with(args, HTTP_ACTIONS)
}

fn rule_with(args: &[String], allowed: &[&str]) -> Verdict {
    let Some(action) = args.first() else {
        return refuse("rule", "names no action");
    };
    let name = action.split('(').next().unwrap_or(action);
    if name == "use-service" && args.get(1).is_some_and(|s| s == "prometheus-exporter") {
        return conditions(args);
    }
    if let Some(why) = action_refusal(name) {
        return refuse(name, why);
    }
    if !allowed.contains(&name) && !SHARED_ACTIONS.contains(&name) {
        return refuse(name, "not an action lbpool allows");
    }
    if let Some(w) = args
        .iter()
        .find(|w| ["file", "lf-file", "errorfile", "errorfiles"].contains(&w.as_str()))
    {
        return refuse(
            w,
            "a response from a file is not allowed; use 'string' or 'lf-string'",
        );
    }
    conditions(args)
}

fn tcp_rule(args: &[String]) -> Verdict {
    match args.first().map(String::as_str) {
        Some("inspect-delay") => match args.get(1) {
            Some(d) if is_duration(d) && args.len() == 2 => Ok(()),
            _ => refuse(&args.join(" "), "inspect-delay takes a duration"),
        },
        Some("connection" | "content" | "session") => rule_with(&args[1..], TCP_ACTIONS),
        _ => refuse(&args.join(" "), "not a tcp rule lbpool allows"),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn refused(config: &str) -> Refusal {
        check(config, &LBPOOL).expect_err(config)
    }

    const HEAD: &str = "global\n    log stdout format raw local0\ndefaults\n    mode http\n    timeout connect 5s\nfrontend fe\n    bind :80\n    default_backend be\nbackend be\n";

    fn with(line: &str) -> String {
        format!("{HEAD}    {line}\n")
    }

    #[test]
    fn an_ordinary_config_passes() {
        let config = format!(
            "{HEAD}    balance roundrobin\n    option httpchk HEAD /healthz\n    http-request set-header X-Forwarded-Port %[dst_port]\n    cookie S insert indirect nocache\n    server a 10.0.0.1:8080 check cookie a weight 0\n    server b ipv6@2001:db8::1:8080 check\n    acl api path_beg /api\n    http-request deny if !api {{ src 10.0.0.0/8 }}\n    use_backend be if {{ req.hdr(host),lower -m str example.com }}\n"
        );
        assert_eq!(check(&config, &LBPOOL), Ok(()));
    }

    #[test]
    fn each_attack_is_refused_with_its_line_and_word() {
        let cases = [
            ("lua-load /proc/self/fd/3", "'lua-load'"),
            (
                "acl x src -f /var/run/secrets/kubernetes.io/serviceaccount/token",
                "'-f'",
            ),
            ("errorfile 503 /etc/passwd", "'errorfile'"),
            ("http-request return status 200 file /etc/passwd", "'file'"),
            (
                "http-request return status 200 lf-file /etc/passwd",
                "'lf-file'",
            ),
            (
                "http-request set-header X %[env(STATS_PASSWORD)]",
                "'%[env(STATS_PASSWORD)]'",
            ),
            (
                "http-request set-header X \"${STATS_PASSWORD}\"",
                "'${STATS_PASSWORD}'",
            ),
            ("http-request set-header X \"$HOME\"", "'${HOME}'"),
            ("http-request set-header X $HOME", "'${HOME}'"),
            (
                "use_backend %[req.hdr(host),map(/etc/hosts)]",
                "'%[req.hdr(host),map(/etc/hosts)]'",
            ),
            ("http-request lua.run", "'lua.run'"),
            ("http-request use-service lua.x", "'use-service'"),
            (
                "http-request do-resolve(txn.ip,dns) hdr(host)",
                "'do-resolve'",
            ),
            ("http-request set-var(txn.x) env(HOME)", "'env(HOME)'"),
            ("server s example.com:80", "'example.com:80'"),
            ("server s /run/x.sock", "'/run/x.sock'"),
            ("server s 10.0.0.1:80 init-addr libc", "'init-addr'"),
            ("server s 10.0.0.1:80 crt /etc/key.pem", "'crt'"),
            ("option external-check", "'external-check'"),
            ("external-check command /bin/sh", "'external-check'"),
            ("filter spoe config /etc/x", "'filter'"),
            ("stats admin if TRUE", "'admin'"),
            ("bind /tmp/x.sock", "'/tmp/x.sock'"),
            ("bind unix@/tmp/x.sock", "'unix@/tmp/x.sock'"),
            ("bind :443 ssl crt /etc/key.pem", "'ssl'"),
            ("log /dev/log local0", "'/dev/log'"),
            ("http-request add-acl(/etc/x) a", "'add-acl'"),
            ("stick-table type ip size 1k peers p", "'peers'"),
            ("http-check connect addr 10.0.0.1 port 80", "'connect'"),
            ("acl a lua.f -m found", "'lua.f'"),
            (
                "acl evil src exfil.attacker.example",
                "'exfil.attacker.example'",
            ),
            (
                "http-request deny if { src 10.0.0.0/8 exfil.example }",
                "'exfil.example'",
            ),
            (
                "http-request deny if { req.hdr(x) -m ip exfil.example }",
                "'exfil.example'",
            ),
            (
                "http-request deny if { hdr_ip(x) exfil.example }",
                "'exfil.example'",
            ),
            ("option forwardfor except exfil.example", "'exfil.example'"),
            ("option originalto except exfil.example", "'exfil.example'"),
            ("server a 2001:db8::80", "'2001:db8::80'"),
            (
                "http-request return status 200 content-type text/plain\\\tfile /etc/passwd",
                "line",
            ),
            (
                "http-request set-header X %[last_rule_file]",
                "'%[last_rule_file]'",
            ),
            ("http-request deny if { env(X) -m found }", "'env(X)'"),
        ];
        let at = HEAD.lines().count() + 1;
        for (line, word) in cases {
            let r = refused(&with(line));
            assert_eq!(r.line, at, "{line}: {r}");
            assert_eq!(r.word, word, "{line}: {r}");
        }
    }

    #[test]
    fn global_powers_are_refused() {
        for (line, word) in [
            ("lua-load /x.lua", "'lua-load'"),
            ("setenv A b", "'setenv'"),
            ("presetenv A b", "'presetenv'"),
            ("chroot /", "'chroot'"),
            ("user root", "'user'"),
            (
                "stats socket ipv4@0.0.0.0:9999 level admin",
                "'ipv4@0.0.0.0:9999'",
            ),
            (
                "stats socket /tmp/other.sock level admin",
                "'/tmp/other.sock'",
            ),
            ("server-state-file /etc/passwd", "'server-state-file'"),
            ("stats-file /etc/passwd", "'/etc/passwd'"),
            (
                "stats-file /run/haproxy/haproxy.stats extra",
                "'/run/haproxy/haproxy.stats'",
            ),
            ("ssl-engine rdrand", "'ssl-engine'"),
            ("insecure-fork-wanted", "'insecure-fork-wanted'"),
            ("ca-base /etc", "'ca-base'"),
        ] {
            let r = refused(&format!("global\n    {line}\n"));
            assert_eq!((r.line, r.word.as_str()), (2, word), "{line}: {r}");
        }
        let own = "global\n    stats socket /run/haproxy/admin.sock mode 600 level admin expose-fd listeners\n    stats-file /run/haproxy/haproxy.stats\n";
        assert_eq!(check(own, &LBPOOL), Ok(()));
        assert_eq!(LBPOOL.stats_file(), lbpool_wire::STATS_FILE);
    }

    #[test]
    fn sections_that_run_or_read_things_are_refused() {
        for (section, at) in [
            ("program x\n    command /bin/sh -c id", 1),
            ("userlist u\n    user a password x", 1),
            ("resolvers dns\n    nameserver a 10.0.0.1:53", 1),
            (".if defined(HOME)\n.endif", 1),
            (".diag \"x\"", 1),
            ("peers p", 1),
        ] {
            let r = refused(section);
            assert_eq!(r.line, at, "{section}: {r}");
        }
        assert_eq!(refused("maxconn 10").rule, "a keyword outside any section");
    }

    #[test]
    fn stats_auth_alone_may_use_lbpools_variables() {
        let ok = "listen stats\n    bind :1936\n    stats enable\n    stats auth \"${STATS_USERNAME}:${STATS_PASSWORD}\"\n";
        assert_eq!(check(ok, &LBPOOL), Ok(()));
        let guarded = format!("listen stats\n    {STATS_GUARD}\n");
        assert_eq!(check(&guarded, &LBPOOL), Ok(()));
        // Any other use of env() is refused, also a near copy of the guard.
        let near = STATS_GUARD.replace("-m len gt 0 }", "-m str x }");
        assert!(check(&format!("listen stats\n    {near}\n"), &LBPOOL).is_err());
        let other = "listen stats\n    stats auth \"${PATH}:x\"\n";
        assert_eq!(refused(other).word, "'${PATH}'");
    }

    #[test]
    fn escapes_cannot_disguise_a_keyword() {
        let r = refused(&with(r"lua\x2dload /x"));
        assert_eq!(r.word, "'lua-load'");
        let r = refused(&with(
            r#""http-request" "return" status 200 "fi"le /etc/passwd"#,
        ));
        assert_eq!(r.word, "'file'");
    }

    #[test]
    fn an_http_path_may_hold_parentheses() {
        assert_eq!(check(&with("option httpchk GET /a(b)"), &LBPOOL), Ok(()));
        assert!(check(&with("http-request set-path /a(b)"), &LBPOOL).is_err());
    }

    #[test]
    fn long_words_are_shortened_in_the_refusal() {
        let long = "a".repeat(500);
        let r = refused(&with(&format!("nosuchkeyword{long}")));
        assert!(r.word.len() < 100, "{}", r.word);
    }
    #[test]
    fn one_guid_per_section_and_server() {
        let proxy = "frontend fe\n    guid a\n    guid b\n";
        let r = refused(proxy);
        assert_eq!((r.line, r.word.as_str()), (3, "'guid'"), "{r}");
        let server = "backend be\n    server a 10.0.0.1:80 guid x guid y\n";
        assert_eq!(refused(server).word, "'guid'");
        let each_once =
            "frontend fe\n    guid a\nbackend be\n    guid b\n    server a 10.0.0.1:80 guid b.a\n";
        assert_eq!(check(each_once, &LBPOOL), Ok(()));
    }
}

#[cfg(test)]
mod disguises {
    use super::*;
    use proptest::prelude::*;

    /// Lines that reach beyond a pool's load balancer, by section.
    const GLOBAL_LINES: &[&str] = &[
        "lua-load /proc/self/fd/3",
        "setenv PATH /tmp",
        "chroot /",
        "stats socket ipv4@0.0.0.0:9999 level admin",
        "server-state-file /etc/passwd",
        "ca-base /etc",
    ];
    const PROXY_LINES: &[&str] = &[
        "acl x src -f /var/run/secrets/kubernetes.io/serviceaccount/token",
        "errorfile 503 /etc/passwd",
        "http-request return status 200 file /etc/passwd",
        "http-request set-header X %[env(STATS_PASSWORD)]",
        "use_backend %[req.hdr(host),map(/etc/hosts)]",
        "external-check command /bin/sh",
        "option external-check",
        "server s example.com:80",
        "bind unix@/tmp/x.sock",
        "log /dev/log local0",
        "http-request lua.run",
        "filter spoe config /etc/x",
    ];

    /// `word` spelled another way HAProxy reads the same: each character
    /// as is, hex-escaped, or in quotes.
    fn spelled(word: &str, how: &[u8]) -> String {
        word.chars()
            .zip(how.iter().cycle())
            .map(|(c, h)| match h % 4 {
                1 if c.is_ascii_graphic() => format!("\\x{:02x}", c as u32),
                2 if c != '\'' => format!("'{c}'"),
                3 if c != '"' && c != '$' => format!("\"{c}\""),
                _ => c.to_string(),
            })
            .collect()
    }

    proptest! {
        #[test]
        fn a_hostile_line_passes_in_no_spelling(
            global in any::<bool>(),
            pick in any::<prop::sample::Index>(),
            how in prop::collection::vec(any::<u8>(), 1..16),
            indent in "[ \t]{0,4}",
        ) {
            let lines = if global { GLOBAL_LINES } else { PROXY_LINES };
            let line = lines[pick.index(lines.len())];
            let disguised: Vec<String> = line.split(' ').map(|w| spelled(w, &how)).collect();
            let config = if global {
                format!("global\n{indent}{}\n", disguised.join(" "))
            } else {
                format!("frontend fe\n    bind :80\n{indent}{}\n", disguised.join(" "))
            };
            let verdict = check(&config, &LBPOOL);
            prop_assert!(verdict.is_err(), "passed: {config}");
            prop_assert_eq!(verdict.unwrap_err().line, if global { 2 } else { 3 });
        }
    }
}
