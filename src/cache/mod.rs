//! The key-value cache behind the join: `correlation key -> assessment name`.
//!
//! Three backends behind one trait: [`memory`] (tests, demos), [`embedded`] (redb, one
//! instance, survives restarts) and [`redis`] (shared by every instance of a group).
//! Values are re-validated when read, since producers may write mappings directly. The same
//! store remembers the `event_id`s already annotated, to suppress duplicates on redelivery.

pub mod embedded;
pub mod link;
pub mod memory;
pub mod redis;

use std::sync::Arc;
use std::time::Duration;

use async_trait::async_trait;
use thiserror::Error;

use crate::config::{CacheBackend, CacheConfig};
use crate::domain::assessment::{AssessmentName, CorrelationKey};

/// The cache could not be reached or failed; the caller retries and keeps the commit point.
#[derive(Debug, Error)]
#[error("cache unavailable: {0}")]
pub struct CacheError(pub String);

/// What a lookup found.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Lookup {
    Hit(AssessmentName),
    Miss,
    /// A value is stored but is not a valid assessment name (written by hand, or corrupted).
    Invalid,
}

#[async_trait]
pub trait Cache: Send + Sync + 'static {
    /// Looks up the assessment mapped to `key`.
    async fn get(&self, key: &CorrelationKey) -> Result<Lookup, CacheError>;
    /// Maps `key` to `assessment` for `ttl`, replacing any earlier mapping.
    async fn put(
        &self,
        key: &CorrelationKey,
        assessment: &AssessmentName,
        ttl: Duration,
    ) -> Result<(), CacheError>;
    /// Forgets the mapping of `key` (a tombstone on a compacted `assessments` topic).
    async fn remove(&self, key: &CorrelationKey) -> Result<(), CacheError>;
    /// Whether `event_id` was annotated already from the same Kafka record `record`
    /// (duplicate suppression after redelivery). Another record with the same id (a new
    /// run of a producer, a re-created topic) is not a redelivery and is sent.
    async fn is_done(&self, event_id: &str, record: &str) -> Result<bool, CacheError>;
    /// Remembers that `event_id` was annotated from `record`, for `ttl`.
    async fn mark_done(
        &self,
        event_id: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<(), CacheError>;
    /// Checks that the backend answers (readiness).
    async fn ping(&self) -> Result<(), CacheError>;
    /// Backend name for logs and metrics.
    fn name(&self) -> &'static str;
    /// Where it is, for log lines (never a password).
    fn location(&self) -> String {
        self.name().to_owned()
    }
    /// Whether every instance of the group sees the same store (joins across instances
    /// need it).
    fn shared(&self) -> bool {
        false
    }
}

pub(crate) fn parse_stored(value: &str) -> Lookup {
    AssessmentName::parse(value).map_or(Lookup::Invalid, Lookup::Hit)
}

/// Opens the backend named by `cache.backend`.
pub async fn open(config: &CacheConfig) -> Result<Arc<dyn Cache>, CacheError> {
    Ok(match config.backend {
        CacheBackend::Memory => Arc::new(memory::MemoryCache::default()),
        CacheBackend::Embedded => Arc::new(embedded::EmbeddedCache::open(&config.path)?),
        CacheBackend::Redis => Arc::new(
            redis::RedisCache::connect(
                &link::RedisTarget::from_config(config).map_err(CacheError)?,
                &config.redis_prefix,
                &config.redis_done_prefix,
            )
            .await?,
        ),
    })
}
