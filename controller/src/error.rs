//! Errors of a reconcile. Every one is transient: the pool is requeued with
//! backoff. A pool that cannot be served is not an error but a status
//! ([`crate::model::InvalidPool`]).

/// A failed reconcile.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A Kubernetes API call failed.
    #[error("{action}: {source}")]
    Kube {
        /// What the controller was doing, e.g. `apply ConfigMap demo/webapp-haproxy`.
        action: String,
        #[source]
        source: kube::Error,
    },
    /// `haproxy -c` could not be run; nothing was published.
    #[error(transparent)]
    Validator(#[from] crate::validate::ValidationError),
    /// The pool object has no namespace (a cluster-scoped watch bug).
    #[error("LoadBalancerPool {0} has no namespace")]
    MissingNamespace(String),
}

/// Attaches what the controller was doing to a kube error.
pub(crate) trait Context<T> {
    fn during(self, action: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> Context<T> for Result<T, kube::Error> {
    fn during(self, action: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Kube {
            action: action(),
            source,
        })
    }
}
