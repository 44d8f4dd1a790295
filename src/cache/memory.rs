//! In-process cache: lost on restart. For tests, demos and benchmarks.

use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Cache, CacheError, Lookup};
use crate::domain::assessment::{AssessmentName, CorrelationKey};

/// Entries swept only when the map has doubled since the last sweep, so expiry costs
/// amortised O(1) per insert.
const FIRST_SWEEP: usize = 100_000;

/// A map whose entries expire.
struct Expiring<V> {
    entries: crate::FastMap<String, (V, Instant)>,
    sweep_at: usize,
}

impl<V> Default for Expiring<V> {
    fn default() -> Self {
        Self {
            entries: crate::FastMap::default(),
            sweep_at: FIRST_SWEEP,
        }
    }
}

impl<V: Clone> Expiring<V> {
    fn get(&self, key: &str) -> Option<V> {
        self.entries
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(v, _)| v.clone())
    }

    fn insert(&mut self, key: &str, value: V, ttl: Duration) {
        let now = Instant::now();
        if self.entries.len() >= self.sweep_at {
            self.entries.retain(|_, (_, expires)| *expires > now);
            self.sweep_at = (self.entries.len() * 2).max(FIRST_SWEEP);
        }
        self.entries.insert(key.to_owned(), (value, now + ttl));
    }
}

fn record_hash(record: &str) -> u64 {
    use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(record)
}

#[derive(Default)]
pub struct MemoryCache {
    mappings: Mutex<Expiring<AssessmentName>>,
    /// Event id -> a hash of the record it came from (in-process only, so any hash will do).
    done: Mutex<Expiring<u64>>,
}

fn lock<T>(m: &Mutex<T>) -> Result<MutexGuard<'_, T>, CacheError> {
    m.lock()
        .map_err(|_| CacheError("memory cache lock poisoned".into()))
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &CorrelationKey) -> Result<Lookup, CacheError> {
        Ok(lock(&self.mappings)?
            .get(key.as_str())
            .map_or(Lookup::Miss, Lookup::Hit))
    }

    async fn put(
        &self,
        key: &CorrelationKey,
        assessment: &AssessmentName,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        lock(&self.mappings)?.insert(key.as_str(), assessment.clone(), ttl);
        Ok(())
    }

    async fn is_done(&self, event_id: &str, record: &str) -> Result<bool, CacheError> {
        Ok(lock(&self.done)?
            .get(event_id)
            .is_some_and(|r| r == record_hash(record)))
    }

    async fn mark_done(
        &self,
        event_id: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        lock(&self.done)?.insert(event_id, record_hash(record), ttl);
        Ok(())
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sweeps_are_amortised_and_drop_only_expired_entries() {
        let mut map = Expiring::default();
        for i in 0..FIRST_SWEEP {
            map.insert(&i.to_string(), i, Duration::from_secs(60));
        }
        map.insert("short", 0, Duration::ZERO);
        map.insert("next", 1, Duration::from_secs(60));
        assert_eq!(
            map.sweep_at,
            2 * FIRST_SWEEP,
            "swept once, next at twice the live size"
        );
        assert_eq!(map.get("5"), Some(5));
        assert_eq!(map.get("short"), None);
    }
}
