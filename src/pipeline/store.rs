//! The cache as the event path uses it: mapping writes and lookups, and the annotated event
//! ids of duplicate suppression. Every answer marks the cache reachable; every error is a
//! [`Failure`] to retry.

use std::sync::Arc;
use std::time::Duration;

use crate::cache::{Cache, CacheError, Lookup};
use crate::domain::assessment::{AssessmentName, CorrelationKey};
use crate::failure::{Failure, RetryCause};
use crate::health::Health;

pub struct Store {
    /// The backend (`cache.backend`).
    cache: Arc<dyn Cache>,
    /// `cache.ttl`: how long a mapping is kept.
    ttl: Duration,
    /// `cache.dedup_ttl`: how long an annotated event id is remembered; zero = off.
    dedup_ttl: Duration,
    /// Readiness: `cache unreachable` while operations fail.
    health: Arc<Health>,
}

impl Store {
    pub fn new(
        cache: Arc<dyn Cache>,
        ttl: Duration,
        dedup_ttl: Duration,
        health: Arc<Health>,
    ) -> Self {
        Self {
            cache,
            ttl,
            dedup_ttl,
            health,
        }
    }

    fn answered<T>(&self, result: Result<T, CacheError>) -> Result<T, Failure> {
        match result {
            Ok(value) => {
                self.health.set_cache_down(false);
                Ok(value)
            }
            Err(e) => {
                self.health.set_cache_down(true);
                Err(Failure::retry(
                    RetryCause::Cache,
                    None,
                    format!("{} backend: {e}", self.cache.name()),
                ))
            }
        }
    }

    /// Maps `key` to `name` for `cache.ttl`.
    pub async fn put(&self, key: &CorrelationKey, name: &AssessmentName) -> Result<(), Failure> {
        self.answered(self.cache.put(key, name, self.ttl).await)
    }

    /// Forgets the mapping of `key`.
    pub async fn remove(&self, key: &CorrelationKey) -> Result<(), Failure> {
        self.answered(self.cache.remove(key).await)
    }

    /// The mapping of `key`.
    pub async fn get(&self, key: &CorrelationKey) -> Result<Lookup, Failure> {
        self.answered(self.cache.get(key).await)
    }

    /// Whether duplicate suppression is on.
    pub fn remembers(&self) -> bool {
        !self.dedup_ttl.is_zero()
    }

    /// Whether `event_id` was annotated from the same Kafka `record` already (a redelivery).
    pub async fn is_done(&self, event_id: &str, record: &str) -> Result<bool, Failure> {
        if !self.remembers() {
            return Ok(false);
        }
        self.answered(self.cache.is_done(event_id, record).await)
    }

    /// Remembers that `event_id` was annotated from `record`.
    pub async fn remember(&self, event_id: &str, record: &str) -> Result<(), Failure> {
        if !self.remembers() {
            return Ok(());
        }
        self.answered(self.cache.mark_done(event_id, record, self.dedup_ttl).await)
    }
}
