//! In-process cache: lost on restart. For tests and demos.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use async_trait::async_trait;

use super::{Cache, CacheError, Lookup};
use crate::domain::assessment::{AssessmentName, CorrelationKey};

type Entries = HashMap<String, (AssessmentName, Instant)>;

#[derive(Default)]
pub struct MemoryCache {
    entries: Mutex<Entries>,
    done: Mutex<HashMap<String, Instant>>,
}

impl MemoryCache {
    fn lock(&self) -> Result<std::sync::MutexGuard<'_, Entries>, CacheError> {
        self.entries
            .lock()
            .map_err(|_| CacheError("memory cache lock poisoned".into()))
    }
}

#[async_trait]
impl Cache for MemoryCache {
    async fn get(&self, key: &CorrelationKey) -> Result<Lookup, CacheError> {
        let entries = self.lock()?;
        Ok(match entries.get(key.as_str()) {
            Some((name, expires)) if *expires > Instant::now() => Lookup::Hit(name.clone()),
            _ => Lookup::Miss,
        })
    }

    async fn put(
        &self,
        key: &CorrelationKey,
        assessment: &AssessmentName,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let mut entries = self.lock()?;
        let now = Instant::now();
        if entries.len() > 100_000 {
            entries.retain(|_, (_, expires)| *expires > now);
        }
        entries.insert(key.as_str().to_owned(), (assessment.clone(), now + ttl));
        Ok(())
    }

    async fn is_done(&self, event_id: &str) -> Result<bool, CacheError> {
        let done = self
            .done
            .lock()
            .map_err(|_| CacheError("memory cache lock poisoned".into()))?;
        Ok(done
            .get(event_id)
            .is_some_and(|expires| *expires > Instant::now()))
    }

    async fn mark_done(&self, event_id: &str, ttl: Duration) -> Result<(), CacheError> {
        let mut done = self
            .done
            .lock()
            .map_err(|_| CacheError("memory cache lock poisoned".into()))?;
        let now = Instant::now();
        if done.len() > 100_000 {
            done.retain(|_, expires| *expires > now);
        }
        done.insert(event_id.to_owned(), now + ttl);
        Ok(())
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "memory"
    }
}
