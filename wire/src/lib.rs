//! The wire contract: every key, path and format that one lbpool process
//! writes and another (or a user, or a manifest) reads. Its one owner.
//!
//! The controller writes the generated ConfigMap ([`CONFIG_KEY`], labels
//! [`MANAGED_BY_LABEL`] and [`POOL_LABEL`], annotation
//! [`CONFIG_HASH_ANNOTATION`]) and claims the HAProxy Deployment
//! ([`POOL_CLAIM_ANNOTATION`]); an `InPlace` agent reads that ConfigMap
//! and reports on its own pod ([`POOL_LABEL`], [`SERVED_ANNOTATION`],
//! [`REJECTED_ANNOTATION`] holding a [`Rejection`]); HAProxy's Runtime API
//! listens at [`RUNTIME_API_SOCKET`] in the volume HAProxy and the agent
//! share. No Kubernetes types here: the checker, which links no client,
//! reads it too.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

use std::fmt::{self, Write as _};

use sha2::{Digest as _, Sha256};

/// The field manager of every controller write, and the value of its
/// [`MANAGED_BY_LABEL`]: one owner for everything lbpool sets.
pub const FIELD_MANAGER: &str = "lbpool-controller";
/// The recommended label naming who manages an object.
pub const MANAGED_BY_LABEL: &str = "app.kubernetes.io/managed-by";
/// Label of a generated ConfigMap, and of an agent's pod, naming the pool.
pub const POOL_LABEL: &str = "lbpool.dev/pool";
/// Annotation of the HAProxy Deployment naming the pool that rolls it, set
/// with its first rollout: one Deployment, one pool.
pub const POOL_CLAIM_ANNOTATION: &str = "lbpool.dev/pool";
/// The hash ([`config_hash`]) of the config: on the generated ConfigMap,
/// and on the pod template of a Deployment rolled for it.
pub const CONFIG_HASH_ANNOTATION: &str = "lbpool.dev/config-hash";
/// The ConfigMap key HAProxy (or its agent) reads.
pub const CONFIG_KEY: &str = "haproxy.cfg";
/// Annotation of an agent's pod: the hash of the config its HAProxy serves.
pub const SERVED_ANNOTATION: &str = "lbpool.dev/served-hash";
/// Annotation of an agent's pod: the last config its agent refused, and
/// why ([`Rejection`]).
pub const REJECTED_ANNOTATION: &str = "lbpool.dev/rejected";
/// Annotation of an agent's pod: the version of the HAProxy it runs
/// (`show info`), e.g. `3.0.11-1+deb13u5`.
pub const HAPROXY_VERSION_ANNOTATION: &str = "lbpool.dev/haproxy-version";

/// PURE: the `<major>.<minor>` a version or image tag starts with
/// (`3.0.11-1+deb13u5` → `3.0`, `2.6-alpine` → `2.6`); `None` for one that
/// does not (`latest`, `local`).
pub fn major_minor(version: &str) -> Option<&str> {
    let digits = |s: &str| s.bytes().take_while(u8::is_ascii_digit).count();
    let major = digits(version);
    let rest = version.get(major..)?.strip_prefix('.')?;
    let minor = digits(rest);
    (major > 0 && minor > 0).then(|| &version[..major + 1 + minor])
}
/// Where HAProxy's Runtime API listens in an `InPlace` pod.
pub const RUNTIME_API_SOCKET: &str = "/run/haproxy/admin.sock";
/// Where HAProxy's master CLI listens in an `InPlace` pod.
pub const MASTER_SOCKET: &str = "/run/haproxy/master.sock";
/// The file an `InPlace` HAProxy loads, written by its agent.
pub const CONFIG_FILE: &str = "/run/haproxy/haproxy.cfg";
/// Where an `InPlace` HAProxy keeps its counters across reloads (its
/// `stats-file`, which the agent writes from `dump stats-file` before each
/// reload): beside the Runtime API socket.
pub const STATS_FILE: &str = "/run/haproxy/haproxy.stats";
/// The name of [`STATS_FILE`] in the Runtime API socket's directory.
pub const STATS_FILE_NAME: &str = "haproxy.stats";
/// The environment variables of the stats page's basic auth, set from the
/// pool's `spec.stats.authSecret` in the HAProxy container.
pub const STATS_ENV: [&str; 2] = ["STATS_USERNAME", "STATS_PASSWORD"];

/// `sha256:<hex>` of a config's bytes: what [`CONFIG_HASH_ANNOTATION`] and
/// [`SERVED_ANNOTATION`] hold.
pub fn config_hash(text: &str) -> String {
    let digest = Sha256::digest(text.as_bytes());
    let mut out = String::with_capacity(7 + 64);
    out.push_str("sha256:");
    for b in digest {
        let _ = write!(out, "{b:02x}");
    }
    out
}

/// A config's short name in status, Events and logs: the first 10 hex
/// digits of its hash.
pub fn revision(hash: &str) -> &str {
    let hex = hash.strip_prefix("sha256:").unwrap_or(hash);
    let end = hex.char_indices().nth(10).map_or(hex.len(), |(i, _)| i);
    &hex[..end]
}

/// What [`REJECTED_ANNOTATION`] holds: `<hash> <message>`, the message on
/// one line and at most [`Rejection::MESSAGE_MAX`] characters.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Rejection<'a> {
    /// The hash of the refused config.
    pub hash: &'a str,
    pub message: std::borrow::Cow<'a, str>,
}

impl<'a> Rejection<'a> {
    /// The longest message kept, in characters.
    pub const MESSAGE_MAX: usize = 512;

    /// A rejection of `hash`, its message folded onto one line and cut to
    /// [`Self::MESSAGE_MAX`].
    pub fn new(hash: &'a str, message: &str) -> Self {
        let line: String = message
            .split_whitespace()
            .collect::<Vec<_>>()
            .join(" ")
            .chars()
            .take(Self::MESSAGE_MAX)
            .collect();
        Self {
            hash,
            message: line.into(),
        }
    }

    /// Reads an annotation's value. A value without a message is a
    /// rejection with an empty one.
    pub fn parse(value: &'a str) -> Self {
        let (hash, message) = value.split_once(' ').unwrap_or((value, ""));
        Self {
            hash,
            message: message.into(),
        }
    }
}

impl fmt::Display for Rejection<'_> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{} {}", self.hash, self.message)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn a_hash_names_the_bytes_and_its_revision_is_short() {
        let h = config_hash("global\n");
        assert!(h.starts_with("sha256:") && h.len() == 7 + 64, "{h}");
        assert_eq!(h, config_hash("global\n"));
        assert_ne!(h, config_hash("global\n\n"));
        assert_eq!(revision(&h), &h[7..17]);
        assert_eq!(revision("sha256:abc"), "abc");
        assert_eq!(revision("no-prefix-at-all"), "no-prefix-");
    }

    #[test]
    fn a_rejection_is_one_line_and_bounded() {
        let long = format!("line 3:\n\t{}", "x".repeat(2000));
        let r = Rejection::new("sha256:ab", &long);
        assert!(!r.message.contains(['\n', '\t']));
        assert_eq!(r.message.chars().count(), Rejection::MESSAGE_MAX);
        assert_eq!(
            Rejection::parse("sha256:ab"),
            Rejection::new("sha256:ab", "")
        );
    }

    proptest! {
        #[test]
        fn a_rejection_reads_back_as_written(hash in "sha256:[0-9a-f]{1,64}", message in "\\PC{0,600}") {
            let written = Rejection::new(&hash, &message);
            let value = written.to_string();
            let read = Rejection::parse(&value);
            prop_assert_eq!(read.hash, hash.as_str());
            prop_assert_eq!(read.message, written.message);
        }
    }

    #[test]
    fn major_minor_is_read_off_versions_and_tags() {
        assert_eq!(major_minor("3.0.11-1+deb13u5"), Some("3.0"));
        assert_eq!(major_minor("2.6-alpine"), Some("2.6"));
        assert_eq!(major_minor("3.2"), Some("3.2"));
        assert_eq!(major_minor("10.12.1"), Some("10.12"));
        for none in ["latest", "local", "3", "3.", ".0", "v3.0", ""] {
            assert_eq!(major_minor(none), None, "{none}");
        }
    }
}
