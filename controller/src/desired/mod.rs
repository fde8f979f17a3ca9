//! PURE: what the reconciler writes, one file per object it writes.
//!
//! [`config_map`] (the generated ConfigMap and who may write it),
//! [`deployment`] (the HAProxy Deployment's claim, rollout patch and stats
//! credentials), [`rollout`] (at most one rollout per interval, and the
//! times it is measured with), [`served`] (what HAProxy serves, read off
//! the Deployment) and [`status`] (the pool's status, one function per
//! condition).

pub mod config_map;
pub mod deployment;
pub mod rollout;
pub mod served;
pub mod status;
