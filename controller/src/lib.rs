//! lbpool's controller: keeps an HAProxy Deployment's haproxy.cfg in step with
//! the ready endpoints of a Service.
//!
//! Pure modules turn data into data: [`model`] (pool + EndpointSlices →
//! backend model), [`render`] (model → haproxy.cfg + hash), [`desired`] (what
//! to write), [`strategy`] (how a config reaches HAProxy), [`agents`] (what
//! `InPlace` agents report) and [`conditions`]. Every config passes
//! `lbpool_checker` (the allowlist, then `haproxy -c`). [`reconcile`] is
//! the only module that calls the API; [`run`] wires the watches, the admin
//! server and shutdown.
#![deny(warnings, rust_2018_idioms)]
#![forbid(unsafe_code)]

pub mod admin;
pub mod agents;
pub mod cache;
pub mod conditions;
pub mod desired;
pub mod error;
pub mod leader;
pub mod metrics;
pub mod model;
pub mod reconcile;
pub mod render;
pub mod run;
pub mod strategy;
pub mod triggers;

#[cfg(test)]
mod golden;
#[cfg(test)]
mod testing;

pub use error::Error;
