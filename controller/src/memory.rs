//! What this process remembers of each pool between its reconciles, in one
//! place: one [`PoolMemory`] per pool, forgotten at once when the pool
//! goes, so memory follows the number of pools, not how many ever existed.

use std::collections::HashMap;
use std::sync::Mutex;

use jiff::Timestamp;
use kube::runtime::reflector::ObjectRef;
use lbpool_crds::LoadBalancerPool;

/// What this process remembers of one pool.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct PoolMemory {
    /// User template: the hash of the last config `haproxy -c` accepted,
    /// so that an unchanged one is not checked again.
    pub validated: Option<String>,
    /// Consecutive failed reconciles, for backoff.
    pub failures: u32,
    /// When this process last rolled (or published) it, exactly: the status
    /// stores it rounded up to the second, and the cached pool can lag
    /// behind the status this process just wrote; the rate limit must not.
    pub rolled: Option<Timestamp>,
    /// What this process last said of its validity, for the same reason: a
    /// stale cached status must not repeat an Event or a log line.
    pub verdict: Option<Verdict>,
}

/// The last word on a pool's validity.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Invalid, with this reason and message.
    Invalid(&'static str, String),
    /// Valid again, or valid since this process first saw it.
    Valid,
}

/// The memories of every pool.
#[derive(Debug, Default)]
pub struct Memories(Mutex<HashMap<ObjectRef<LoadBalancerPool>, PoolMemory>>);

impl Memories {
    /// A copy of what is remembered of `pool` (nothing: the default).
    pub fn of(&self, pool: &ObjectRef<LoadBalancerPool>) -> PoolMemory {
        self.lock().get(pool).cloned().unwrap_or_default()
    }

    /// Changes what is remembered of `pool`; returns what `change` returns.
    pub fn update<R>(
        &self,
        pool: &ObjectRef<LoadBalancerPool>,
        change: impl FnOnce(&mut PoolMemory) -> R,
    ) -> R {
        let mut all = self.lock();
        let memory = all.entry(pool.clone()).or_default();
        let out = change(memory);
        // Nothing left worth keeping: no entry.
        if *memory == PoolMemory::default() {
            all.remove(pool);
        }
        out
    }

    /// Forgets `pool`: it is gone.
    pub fn forget(&self, pool: &ObjectRef<LoadBalancerPool>) {
        self.lock().remove(pool);
    }

    /// How many pools something is remembered of.
    pub fn len(&self) -> usize {
        self.lock().len()
    }

    /// Nothing is remembered.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<ObjectRef<LoadBalancerPool>, PoolMemory>> {
        // A panic while holding the map leaves it usable: it is a cache.
        self.0
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_entry_per_pool_gone_when_forgotten_or_empty() {
        let memories = Memories::default();
        let (a, b) = (
            ObjectRef::new("a").within("demo"),
            ObjectRef::new("b").within("demo"),
        );
        memories.update(&a, |m| m.failures = 3);
        memories.update(&a, |m| m.validated = Some("sha256:x".into()));
        memories.update(&b, |m| m.verdict = Some(Verdict::Valid));
        assert_eq!(memories.len(), 2);
        assert_eq!(memories.of(&a).failures, 3);
        // Reading creates nothing.
        let _ = memories.of(&ObjectRef::new("c").within("demo"));
        assert_eq!(memories.len(), 2);
        memories.forget(&a);
        assert_eq!(memories.of(&a), PoolMemory::default());
        // Back to nothing remembered: no entry is kept.
        memories.update(&b, |m| m.verdict = None);
        assert!(memories.is_empty());
    }
}
