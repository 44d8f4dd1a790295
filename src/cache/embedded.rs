//! Embedded persistent backend (redb): the default for a single instance.
//!
//! redb is a pure-Rust, ACID, copy-on-write B-tree store with no C dependencies and a stable
//! file format. Each value is `expires_at (u64 unix seconds) || assessment name`. Expired
//! entries read as misses and are swept on a timer, so disk use is bounded by the number of
//! live mappings (one TTL's worth of assessments).

use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase as _, ReadableTableMetadata as _, TableDefinition};

use super::{Cache, CacheError, Lookup, parse_stored};
use crate::domain::assessment::{AssessmentName, CorrelationKey};

const MAPPINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("mappings");

pub struct EmbeddedCache {
    db: Arc<Database>,
}

fn db_error(err: impl std::fmt::Display) -> CacheError {
    CacheError(format!("embedded store: {err}"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

impl EmbeddedCache {
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(db_error)?;
        }
        let db = Database::create(path).map_err(db_error)?;
        let txn = db.begin_write().map_err(db_error)?;
        txn.open_table(MAPPINGS).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        Ok(Self { db: Arc::new(db) })
    }

    /// Removes expired mappings; returns how many.
    pub async fn sweep(&self) -> Result<usize, CacheError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let now = now_secs();
            let txn = db.begin_write().map_err(db_error)?;
            let removed = {
                let mut table = txn.open_table(MAPPINGS).map_err(db_error)?;
                let before = table.len().map_err(db_error)?;
                table
                    .retain(|_, value| value.len() < 8 || expiry(value) > now)
                    .map_err(db_error)?;
                before - table.len().map_err(db_error)?
            };
            txn.commit().map_err(db_error)?;
            Ok(usize::try_from(removed).unwrap_or(usize::MAX))
        })
        .await
        .map_err(db_error)?
    }
}

fn expiry(value: &[u8]) -> u64 {
    let mut bytes = [0u8; 8];
    bytes.copy_from_slice(&value[..8]);
    u64::from_be_bytes(bytes)
}

#[async_trait]
impl Cache for EmbeddedCache {
    async fn get(&self, key: &CorrelationKey) -> Result<Lookup, CacheError> {
        let db = Arc::clone(&self.db);
        let key = key.as_str().to_owned();
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(db_error)?;
            let table = txn.open_table(MAPPINGS).map_err(db_error)?;
            let Some(value) = table.get(key.as_str()).map_err(db_error)? else {
                return Ok(Lookup::Miss);
            };
            let value = value.value();
            if value.len() < 8 || expiry(value) <= now_secs() {
                return Ok(Lookup::Miss);
            }
            Ok(std::str::from_utf8(&value[8..]).map_or(Lookup::Invalid, parse_stored))
        })
        .await
        .map_err(db_error)?
    }

    async fn put(
        &self,
        key: &CorrelationKey,
        assessment: &AssessmentName,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        let db = Arc::clone(&self.db);
        let key = key.as_str().to_owned();
        let mut value = (now_secs() + ttl.as_secs()).to_be_bytes().to_vec();
        value.extend_from_slice(assessment.as_str().as_bytes());
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_write().map_err(db_error)?;
            txn.open_table(MAPPINGS)
                .map_err(db_error)?
                .insert(key.as_str(), value.as_slice())
                .map_err(db_error)?;
            txn.commit().map_err(db_error)
        })
        .await
        .map_err(db_error)?
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}
