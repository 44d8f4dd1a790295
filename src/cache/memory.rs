//! In-process cache: lost on restart. For tests, demos and benchmarks.

use std::borrow::Borrow;
use std::hash::Hash;
use std::sync::{Mutex, MutexGuard};
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Cache, CacheError, Lookup};
use crate::domain::assessment::{AssessmentName, CorrelationKey};

/// Entries swept only when the map has doubled since the last sweep, so expiry costs
/// amortised O(1) per insert.
const FIRST_SWEEP: usize = 100_000;

/// A map whose entries expire.
struct Expiring<K, V> {
    entries: crate::FastMap<K, (V, Instant)>,
    sweep_at: usize,
}

impl<K, V> Default for Expiring<K, V> {
    fn default() -> Self {
        Self {
            entries: crate::FastMap::default(),
            sweep_at: FIRST_SWEEP,
        }
    }
}

impl<K: Hash + Eq, V: Clone> Expiring<K, V> {
    fn get<Q: Hash + Eq + ?Sized>(&self, key: &Q) -> Option<V>
    where
        K: Borrow<Q>,
    {
        self.entries
            .get(key)
            .filter(|(_, expires)| *expires > Instant::now())
            .map(|(v, _)| v.clone())
    }

    fn insert(&mut self, key: K, value: V, ttl: Duration) {
        let now = Instant::now();
        if self.entries.len() >= self.sweep_at {
            self.entries.retain(|_, (_, expires)| *expires > now);
            self.sweep_at = (self.entries.len() * 2).max(FIRST_SWEEP);
        }
        self.entries.insert(key, (value, now + ttl));
    }
}

/// A 64-bit hash, the same for the same text within the process (the map is in-process only).
fn hash(text: &str) -> u64 {
    use std::hash::{BuildHasher as _, BuildHasherDefault, DefaultHasher};
    BuildHasherDefault::<DefaultHasher>::default().hash_one(text)
}

#[derive(Default)]
pub struct MemoryCache {
    mappings: Mutex<Expiring<String, AssessmentName>>,
    /// A hash of the event id -> a hash of the record it came from: 32 bytes an entry
    /// instead of a copy of the id. An event is taken for done only when both hashes match
    /// (about one in 2^64 for two different events), and the entries of a long backlog no
    /// longer dominate the process's memory (README, Benchmark).
    done: Mutex<Expiring<u64, u64>>,
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
        lock(&self.mappings)?.insert(key.as_str().to_owned(), assessment.clone(), ttl);
        Ok(())
    }

    async fn remove(&self, key: &CorrelationKey) -> Result<(), CacheError> {
        lock(&self.mappings)?.entries.remove(key.as_str());
        Ok(())
    }

    async fn is_done(&self, event_id: &str, record: &str) -> Result<bool, CacheError> {
        Ok(lock(&self.done)?
            .get(&hash(event_id))
            .is_some_and(|r| r == hash(record)))
    }

    async fn mark_done(
        &self,
        event_id: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        lock(&self.done)?.insert(hash(event_id), hash(record), ttl);
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
            map.insert(i.to_string(), i, Duration::from_secs(60));
        }
        map.insert("short".to_owned(), 0, Duration::ZERO);
        map.insert("next".to_owned(), 1, Duration::from_secs(60));
        assert_eq!(
            map.sweep_at,
            2 * FIRST_SWEEP,
            "swept once, next at twice the live size"
        );
        assert_eq!(map.get("5"), Some(5));
        assert_eq!(map.get("short"), None);
    }
}
