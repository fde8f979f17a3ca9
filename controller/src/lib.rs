//! lbpool's controller: keeps an HAProxy Deployment's haproxy.cfg in step with
//! the ready endpoints of a Service.
//!
//! Pure modules turn data into data: [`model`] (pool + EndpointSlices →
//! backend model), [`render`] (model → haproxy.cfg + hash), [`desired`] (the
//! objects to write and the status), [`strategy`] (how a config reaches
//! HAProxy), [`agents`] (what `InPlace` agents report), [`conditions`],
//! [`triggers`] (which watch events start a reconcile, and of which pools)
//! and [`plan`] (one reconcile's decisions). Every config passes
//! `lbpool_checker` (the allowlist, then `haproxy -c`). [`reconcile`]
//! reads, plans and writes; [`memory`] is what it remembers of each pool;
//! [`cache`] holds the watched objects; [`leader`] holds the Lease; [`run`]
//! wires the watches, the admin server and shutdown.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod agents;
pub mod cache;
pub mod conditions;
pub mod desired;
pub mod error;
pub mod leader;
pub mod memory;
pub mod metrics;
pub mod model;
pub mod plan;
pub mod reconcile;
pub mod render;
pub mod run;
pub mod strategy;
pub mod triggers;

/// Fixtures of the controller's tests (feature `testing`): pools,
/// Services, EndpointSlices and models, shared by the unit, golden and
/// mock-API tests.
#[cfg(any(test, feature = "testing"))]
pub mod testing;

pub use error::Error;
