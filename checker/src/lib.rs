//! lbpool's config checker: every haproxy.cfg the controller publishes or
//! an agent applies passes it first. No Kubernetes here: the controller, the
//! agent and the checker container link it alike.
//!
//! - [`lexer`] (pure) reads a config as HAProxy's parser does.
//! - [`allowlist`] (pure) admits only the sections, keywords, arguments,
//!   expressions ([`samples`]) and declared variables and paths a pool's
//!   load balancer needs, and names the line and the rule of a refusal.
//! - [`haproxy`] runs `haproxy -c` after the allowlist, with nothing of the
//!   caller's, and repeats only what HAProxy says about the config itself.
//! - [`service`] serves those checks on a UNIX socket, for a checker
//!   container that holds no credential.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod allowlist;
pub mod haproxy;
pub mod lexer;
pub mod samples;
pub mod service;

pub use allowlist::{Declared, LBPOOL, Refusal, check};
pub use haproxy::{HaproxyValidator, ValidationError, Validator};
pub use service::RemoteValidator;
