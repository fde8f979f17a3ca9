//! The in-place agent's core: what a new haproxy.cfg changes in a running
//! HAProxy, and how to apply it without restarting it.
//!
//! - [`config`] (pure) reads the parts of a config the agent acts on: the
//!   `server` lines of each backend, and everything else as one text.
//! - [`plan`] (pure) compares the config HAProxy runs with the next one: a
//!   change of server lines only is applied through the Runtime API (add,
//!   drain, delete, weight), anything else by a seamless reload.
//! - [`runtime`] speaks HAProxy's Runtime API and master CLI over their
//!   UNIX sockets.
//! - [`apply`] puts it together: check a new config with `haproxy -c`
//!   (not a change of server lines as lbpool renders them), try its new
//!   binds, apply it as planned, keep the config file in step, roll back
//!   what HAProxy cannot load, record what it runs and, after the agent's
//!   own restart, verify it before reporting it.
//! - [`run`] is the `lbpool-agent` process: the ConfigMap watch, the
//!   report on its pod, [`metrics`] and probes.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod apply;
pub mod config;
pub mod metrics;
pub mod plan;
pub mod run;
pub mod runtime;
