//! Leader election through a `coordination.k8s.io/v1` Lease, with
//! `kube-lease-manager`: of the replicas, only the holder of the Lease runs
//! the controller (watches and writes). The others wait, ready, to take over
//! once the Lease expires or is released.
//!
//! A leader that loses the Lease stops reconciling and exits, so its pod
//! restarts as a candidate with fresh caches; it never writes again on a
//! stale belief that it leads.

use std::time::Duration;

use anyhow::Context as _;
use kube::Client;
use kube_lease_manager::{LeaseManagerBuilder, LeaseParams};
use tokio::sync::watch;
use tokio::task::JoinHandle;
use tracing::{debug, warn};

use lbpool_wire::FIELD_MANAGER as MANAGER;

/// Where the Lease lives and how long it holds.
#[derive(Clone, Debug)]
pub struct LeaseConfig {
    pub name: String,
    pub namespace: String,
    /// Unique among the candidates (the pod name in a cluster).
    pub identity: String,
    /// How long a Lease holds after its last renewal; a successor waits at
    /// most this long after the leader dies.
    pub duration: Duration,
}

impl LeaseConfig {
    /// The Lease duration in whole seconds, at least 3.
    fn duration_seconds(&self) -> u64 {
        self.duration.as_secs().max(3)
    }

    /// Seconds before expiry at which the holder renews: two thirds of the
    /// duration, so a renewal may fail once and be retried before anyone
    /// else may take the Lease (15 s → renewed every 5 s).
    fn grace_seconds(&self) -> u64 {
        self.duration_seconds() * 2 / 3
    }
}

/// This replica's place in the election.
#[derive(Debug)]
pub struct Candidate {
    holder: watch::Receiver<bool>,
    task: JoinHandle<kube_lease_manager::Result<kube_lease_manager::LeaseManager>>,
    identity: String,
}

impl Candidate {
    /// Joins the election (creates the Lease if there is none yet).
    pub async fn join(client: Client, config: &LeaseConfig) -> anyhow::Result<Self> {
        let params = LeaseParams::new(
            config.identity.clone(),
            config.duration_seconds(),
            config.grace_seconds(),
        )
        .with_field_manager(format!("{MANAGER}/{}", config.identity));
        let manager = LeaseManagerBuilder::new(client, &config.name)
            .with_namespace(&config.namespace)
            .with_parameters(params)
            .build()
            .await
            .with_context(|| {
                format!(
                    "cannot use Lease {}/{} for leader election",
                    config.namespace, config.name
                )
            })?;
        let (holder, task) = manager.watch().await;
        Ok(Self {
            holder,
            task,
            identity: config.identity.clone(),
        })
    }

    /// The name this replica holds the Lease under.
    pub fn identity(&self) -> &str {
        &self.identity
    }

    /// Returns once this replica holds the Lease.
    pub async fn elected(&mut self) -> anyhow::Result<()> {
        self.holder
            .wait_for(|holds| *holds)
            .await
            .map(drop)
            .context("the leader election stopped")
    }

    /// Returns once this replica no longer holds the Lease.
    pub async fn deposed(&mut self) {
        // A closed channel means the election task ended: not a leader.
        let _ = self.holder.wait_for(|holds| !*holds).await;
    }

    /// Leaves the election, releasing the Lease if this replica holds it,
    /// so that a successor need not wait for it to expire.
    pub async fn resign(self) {
        let Self { holder, task, .. } = self;
        drop(holder);
        match tokio::time::timeout(Duration::from_secs(5), task).await {
            Ok(Ok(Ok(_))) => debug!("left the leader election"),
            Ok(Ok(Err(e))) => {
                warn!(error = %e, "could not release the leader Lease; it expires by itself")
            }
            Ok(Err(e)) => warn!(error = %e, "leader election task failed"),
            Err(_) => warn!("releasing the leader Lease took over 5 s; it expires by itself"),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_holder_renews_twice_before_anyone_may_take_over() {
        let config = |secs| LeaseConfig {
            name: "lbpool-controller".into(),
            namespace: "lbpool-system".into(),
            identity: "a".into(),
            duration: Duration::from_secs(secs),
        };
        assert_eq!(config(15).grace_seconds(), 10);
        assert_eq!(config(6).grace_seconds(), 4);
        // Too short a Lease is raised to 3 s.
        assert_eq!(config(1).grace_seconds(), 2);
    }
}
