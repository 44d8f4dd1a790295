//! Redis backend: shared by every instance of the consumer group.
//!
//! Contract for producers that write mappings themselves:
//! `SET <cache.redis_prefix><key> <assessment name> EX <ttl seconds>`; the value is the full
//! name `projects/<p>/assessments/<id>`. Annotated event ids are kept as
//! `<cache.redis_done_prefix><event_id>` with `cache.dedup_ttl`.

use std::time::Duration;

use async_trait::async_trait;
use redis::AsyncCommands as _;

use super::link::{Patience, RedisConn, RedisTarget};
use super::{Cache, CacheError, Lookup, parse_stored};
use crate::domain::assessment::{AssessmentName, CorrelationKey};

pub struct RedisCache {
    conn: RedisConn,
    /// `host:port` of the server, for log lines.
    address: String,
    prefix: String,
    done_prefix: String,
}

/// Redis errors can quote the URL; keep only the kind and the server's category.
fn redis_error(err: &redis::RedisError) -> CacheError {
    CacheError(format!("redis {:?}: {}", err.kind(), err.category()))
}

/// `WRONGTYPE`: the key holds a hash, list or set where a string belongs.
fn is_wrong_type(err: &redis::RedisError) -> bool {
    err.code() == Some("WRONGTYPE")
}

impl RedisCache {
    pub async fn connect(
        target: &RedisTarget,
        prefix: &str,
        done_prefix: &str,
    ) -> Result<Self, CacheError> {
        let conn = target
            .connect(Patience {
                connect: Duration::from_secs(2),
                response: Duration::from_secs(5),
                retries: 1,
            })
            .await
            .map_err(|e| redis_error(&e))?;
        Ok(Self {
            conn,
            address: target.address(),
            prefix: prefix.to_owned(),
            done_prefix: done_prefix.to_owned(),
        })
    }

    fn key(&self, key: &CorrelationKey) -> String {
        format!("{}{}", self.prefix, key.as_str())
    }
}

#[async_trait]
impl Cache for RedisCache {
    async fn get(&self, key: &CorrelationKey) -> Result<Lookup, CacheError> {
        let mut conn = self.conn.clone();
        // Values are written by producers too: one that is not UTF-8, or a key of another
        // type, is an invalid mapping (a dead letter), not a cache failure (retried forever).
        match conn.get::<_, Option<Vec<u8>>>(self.key(key)).await {
            Ok(None) => Ok(Lookup::Miss),
            Ok(Some(bytes)) => {
                Ok(std::str::from_utf8(&bytes).map_or(Lookup::Invalid, parse_stored))
            }
            Err(e) if is_wrong_type(&e) => Ok(Lookup::Invalid),
            Err(e) => Err(redis_error(&e)),
        }
    }

    async fn put(
        &self,
        key: &CorrelationKey,
        assessment: &AssessmentName,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let () = conn
            .set_ex(self.key(key), assessment.as_str(), ttl.as_secs().max(1))
            .await
            .map_err(|e| redis_error(&e))?;
        Ok(())
    }

    async fn remove(&self, key: &CorrelationKey) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let _: u64 = conn.del(self.key(key)).await.map_err(|e| redis_error(&e))?;
        Ok(())
    }

    async fn is_done(&self, event_id: &str, record: &str) -> Result<bool, CacheError> {
        let mut conn = self.conn.clone();
        // Anything but this record under the id (another value, another type) is not a
        // redelivery of it: the event is sent.
        match conn
            .get::<_, Option<Vec<u8>>>(format!("{}{event_id}", self.done_prefix))
            .await
        {
            Ok(stored) => Ok(stored.is_some_and(|r| r == record.as_bytes())),
            Err(e) if is_wrong_type(&e) => Ok(false),
            Err(e) => Err(redis_error(&e)),
        }
    }

    async fn mark_done(
        &self,
        event_id: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let () = conn
            .set_ex(
                format!("{}{event_id}", self.done_prefix),
                record,
                ttl.as_secs().max(1),
            )
            .await
            .map_err(|e| redis_error(&e))?;
        Ok(())
    }

    async fn ping(&self) -> Result<(), CacheError> {
        let mut conn = self.conn.clone();
        let _: String = redis::cmd("PING")
            .query_async(&mut conn)
            .await
            .map_err(|e| redis_error(&e))?;
        Ok(())
    }

    fn shared(&self) -> bool {
        true
    }

    fn name(&self) -> &'static str {
        "redis"
    }

    fn location(&self) -> String {
        format!("redis at {}", self.address)
    }
}
