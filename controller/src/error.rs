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
    Validator(#[from] lbpool_checker::ValidationError),
    /// The pool object has no namespace (a cluster-scoped watch bug).
    #[error("LoadBalancerPool {0} has no namespace")]
    MissingNamespace(String),
}

/// Attaches what the controller was doing to a kube error.
pub(crate) trait During<T> {
    fn during(self, action: impl FnOnce() -> String) -> Result<T, Error>;
}

impl<T> During<T> for Result<T, kube::Error> {
    fn during(self, action: impl FnOnce() -> String) -> Result<T, Error> {
        self.map_err(|source| Error::Kube {
            action: action(),
            source,
        })
    }
}

impl Error {
    /// A short, fixed name of the cause, for the error metric: the API
    /// status reason of a refused request, or what failed.
    pub fn reason(&self) -> &'static str {
        match self {
            Error::Kube { source, .. } => match source {
                kube::Error::Api(status) => match status.code {
                    400 => "BadRequest",
                    401 => "Unauthorized",
                    403 => "Forbidden",
                    404 => "NotFound",
                    409 => "Conflict",
                    422 => "Invalid",
                    429 => "TooManyRequests",
                    500 => "InternalError",
                    503 => "ServiceUnavailable",
                    504 => "Timeout",
                    _ => "ApiError",
                },
                _ => "Transport",
            },
            Error::Validator(_) => "ValidatorUnavailable",
            Error::MissingNamespace(_) => "MissingNamespace",
        }
    }

    /// The API server refused a write because the pool's namespace is being
    /// deleted: the end of the pool, not a failure.
    pub fn namespace_terminating(&self) -> bool {
        match self {
            Error::Kube { source, .. } => namespace_terminating(source),
            _ => false,
        }
    }
}

/// Whether the API server refused a request because its namespace is being
/// deleted.
pub fn namespace_terminating(error: &kube::Error) -> bool {
    match error {
        kube::Error::Api(status) => status.details.as_ref().is_some_and(|d| {
            d.causes
                .iter()
                .any(|c| c.reason == NAMESPACE_TERMINATING_CAUSE)
        }),
        _ => false,
    }
}

/// The cause the API server gives when it refuses a change in a namespace
/// being deleted.
const NAMESPACE_TERMINATING_CAUSE: &str = "NamespaceTerminating";

#[cfg(test)]
mod tests {
    use super::*;

    fn api_error(json: serde_json::Value) -> Error {
        let status: kube::core::Status = serde_json::from_value(json).expect("status");
        Error::Kube {
            action: "apply ConfigMap demo/webapp-haproxy".into(),
            source: kube::Error::Api(Box::new(status)),
        }
    }

    #[test]
    fn a_refusal_in_a_terminating_namespace_is_recognised() {
        let refused = api_error(serde_json::json!({
            "status": "Failure", "code": 403, "reason": "Forbidden",
            "message": "configmaps \"webapp-haproxy\" is forbidden: unable to create new content in namespace demo because it is being terminated",
            "details": {"name": "webapp-haproxy", "kind": "configmaps",
                        "causes": [{"reason": "NamespaceTerminating", "message": "namespace demo is being terminated", "field": "metadata.namespace"}]}
        }));
        assert!(refused.namespace_terminating());
        assert_eq!(refused.reason(), "Forbidden");
        let rbac = api_error(serde_json::json!({
            "status": "Failure", "code": 403, "reason": "Forbidden", "message": "no"
        }));
        assert!(!rbac.namespace_terminating());
    }
}
