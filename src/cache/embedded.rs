//! Embedded persistent backend (redb): the default for a single instance.
//!
//! redb is a pure-Rust, ACID, copy-on-write B-tree store with no C dependencies and a stable
//! file format. Values are `expires_at (u64 unix seconds, big endian) || payload`.
//!
//! Writes go through one writer thread that commits each batch of waiting writes in one
//! durable transaction (group commit): a write is acknowledged only once it is on disk, so an
//! offset is never committed for a mapping that a crash could lose, and one fsync serves many
//! writes. Reads run concurrently on the blocking pool.
//!
//! Disk policy: expired entries read as misses and the writer sweeps them every
//! `SWEEP_EVERY`, so the file holds at most one TTL's worth of mappings (and of remembered
//! event ids); redb reuses freed pages, so the file stops growing once writes and expiry
//! balance.

use std::path::Path;
use std::sync::Arc;
use std::sync::mpsc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use async_trait::async_trait;
use redb::{Database, ReadableDatabase as _, TableDefinition};
use tokio::sync::oneshot;

use super::{Cache, CacheError, Lookup, parse_stored};
use crate::domain::assessment::{AssessmentName, CorrelationKey};

const MAPPINGS: TableDefinition<&str, &[u8]> = TableDefinition::new("mappings");
const DONE: TableDefinition<&str, &[u8]> = TableDefinition::new("done_events");

/// How often expired entries are removed.
const SWEEP_EVERY: Duration = Duration::from_secs(600);
/// Most writes committed in one transaction.
const MAX_BATCH: usize = 4096;

/// Which table a write goes to.
#[derive(Clone, Copy, PartialEq, Eq)]
enum Kind {
    Mapping,
    Done,
}

impl Kind {
    fn table(self) -> TableDefinition<'static, &'static str, &'static [u8]> {
        match self {
            Self::Mapping => MAPPINGS,
            Self::Done => DONE,
        }
    }
}

struct Write {
    kind: Kind,
    key: String,
    value: Vec<u8>,
    done: oneshot::Sender<Result<(), CacheError>>,
}

pub struct EmbeddedCache {
    db: Arc<Database>,
    writes: mpsc::SyncSender<Write>,
    /// The writer thread; joined on drop, so the file is free once the cache is gone.
    writer: Option<std::thread::JoinHandle<()>>,
}

impl Drop for EmbeddedCache {
    fn drop(&mut self) {
        // Only this handle's sender is left once every write has returned; replacing it with
        // a sender of a dead channel disconnects the writer, which then ends.
        let (dead, _) = mpsc::sync_channel(0);
        drop(std::mem::replace(&mut self.writes, dead));
        if let Some(writer) = self.writer.take() {
            let _ = writer.join();
        }
    }
}

fn db_error(err: impl std::fmt::Display) -> CacheError {
    CacheError(format!("embedded store: {err}"))
}

fn now_secs() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| d.as_secs())
}

fn expiry(value: &[u8]) -> u64 {
    value
        .get(..8)
        .and_then(|b| b.try_into().ok())
        .map_or(0, u64::from_be_bytes)
}

/// `payload` behind its expiry time in whole seconds, rounded up: an entry lives at least
/// `ttl` (at most a second longer), never less.
fn with_expiry(ttl: Duration, payload: &[u8]) -> Vec<u8> {
    let at = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap_or_default()
        .saturating_add(ttl);
    let secs = at
        .as_secs()
        .saturating_add(u64::from(at.subsec_nanos() > 0));
    let mut value = secs.to_be_bytes().to_vec();
    value.extend_from_slice(payload);
    value
}

fn commit_batch(db: &Database, batch: &[Write]) -> Result<(), CacheError> {
    let txn = db.begin_write().map_err(db_error)?;
    {
        let mut mappings = txn.open_table(MAPPINGS).map_err(db_error)?;
        let mut done = txn.open_table(DONE).map_err(db_error)?;
        for w in batch {
            let table = if w.kind == Kind::Mapping {
                &mut mappings
            } else {
                &mut done
            };
            table
                .insert(w.key.as_str(), w.value.as_slice())
                .map_err(db_error)?;
        }
    }
    txn.commit().map_err(db_error)
}

fn sweep(db: &Database) -> Result<(), CacheError> {
    let now = now_secs();
    let txn = db.begin_write().map_err(db_error)?;
    for table in [MAPPINGS, DONE] {
        txn.open_table(table)
            .map_err(db_error)?
            .retain(|_, v| expiry(v) > now)
            .map_err(db_error)?;
    }
    txn.commit().map_err(db_error)
}

fn writer(db: Arc<Database>, rx: mpsc::Receiver<Write>) {
    let mut next_sweep = std::time::Instant::now() + SWEEP_EVERY;
    loop {
        let first = match rx
            .recv_timeout(next_sweep.saturating_duration_since(std::time::Instant::now()))
        {
            Ok(w) => w,
            Err(mpsc::RecvTimeoutError::Timeout) => {
                if let Err(e) = sweep(&db) {
                    tracing::warn!(error = %e, "embedded store sweep failed");
                }
                next_sweep = std::time::Instant::now() + SWEEP_EVERY;
                continue;
            }
            Err(mpsc::RecvTimeoutError::Disconnected) => return,
        };
        let mut batch = vec![first];
        while batch.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(w) => batch.push(w),
                Err(_) => break,
            }
        }
        let result = commit_batch(&db, &batch);
        for w in batch {
            let _ = w.done.send(
                result
                    .as_ref()
                    .map(|_| ())
                    .map_err(|e| CacheError(e.0.clone())),
            );
        }
    }
}

impl EmbeddedCache {
    pub fn open(path: &Path) -> Result<Self, CacheError> {
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(db_error)?;
        }
        let db = Arc::new(Database::create(path).map_err(db_error)?);
        let txn = db.begin_write().map_err(db_error)?;
        txn.open_table(MAPPINGS).map_err(db_error)?;
        txn.open_table(DONE).map_err(db_error)?;
        txn.commit().map_err(db_error)?;
        let (writes, rx) = mpsc::sync_channel(MAX_BATCH);
        let writer_db = Arc::clone(&db);
        let writer = std::thread::Builder::new()
            .name("embedded-cache-writer".into())
            .spawn(move || writer(writer_db, rx))
            .map_err(db_error)?;
        Ok(Self {
            db,
            writes,
            writer: Some(writer),
        })
    }

    async fn write(&self, kind: Kind, key: String, value: Vec<u8>) -> Result<(), CacheError> {
        let (done, wait) = oneshot::channel();
        let writes = self.writes.clone();
        let write = Write {
            kind,
            key,
            value,
            done,
        };
        // The channel is bounded: a full queue blocks, so send from the blocking pool.
        tokio::task::spawn_blocking(move || writes.send(write))
            .await
            .map_err(db_error)?
            .map_err(|_| CacheError("embedded store writer stopped".into()))?;
        wait.await
            .map_err(|_| CacheError("embedded store writer stopped".into()))?
    }

    async fn read(&self, kind: Kind, key: String) -> Result<Option<Vec<u8>>, CacheError> {
        let db = Arc::clone(&self.db);
        tokio::task::spawn_blocking(move || {
            let txn = db.begin_read().map_err(db_error)?;
            let table = txn.open_table(kind.table()).map_err(db_error)?;
            let value = table.get(key.as_str()).map_err(db_error)?;
            Ok(value
                .map(|v| v.value().to_vec())
                .filter(|v| expiry(v) > now_secs()))
        })
        .await
        .map_err(db_error)?
    }
}

#[async_trait]
impl Cache for EmbeddedCache {
    async fn get(&self, key: &CorrelationKey) -> Result<Lookup, CacheError> {
        Ok(
            match self.read(Kind::Mapping, key.as_str().to_owned()).await? {
                None => Lookup::Miss,
                Some(value) => {
                    std::str::from_utf8(&value[8..]).map_or(Lookup::Invalid, parse_stored)
                }
            },
        )
    }

    async fn put(
        &self,
        key: &CorrelationKey,
        assessment: &AssessmentName,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        self.write(
            Kind::Mapping,
            key.as_str().to_owned(),
            with_expiry(ttl, assessment.as_str().as_bytes()),
        )
        .await
    }

    /// An entry that has already expired: reads miss it, and it goes through the writer's
    /// queue, so it stays in order with the puts before and after it.
    async fn remove(&self, key: &CorrelationKey) -> Result<(), CacheError> {
        self.write(
            Kind::Mapping,
            key.as_str().to_owned(),
            0_u64.to_be_bytes().to_vec(),
        )
        .await
    }

    async fn is_done(&self, event_id: &str, record: &str) -> Result<bool, CacheError> {
        let stored = self.read(Kind::Done, event_id.to_owned()).await?;
        Ok(stored.is_some_and(|v| v.get(8..) == Some(record.as_bytes())))
    }

    async fn mark_done(
        &self,
        event_id: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        self.write(
            Kind::Done,
            event_id.to_owned(),
            with_expiry(ttl, record.as_bytes()),
        )
        .await
    }

    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }

    fn name(&self) -> &'static str {
        "embedded"
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn expiry_rounds_up_so_an_entry_lives_its_whole_ttl() {
        for _ in 0..1000 {
            let before = SystemTime::now().duration_since(UNIX_EPOCH).unwrap();
            let at = expiry(&with_expiry(Duration::from_secs(1), b""));
            // Seconds since the epoch at or after `before + 1 s`, not more than a second later.
            assert!(Duration::from_secs(at) >= before + Duration::from_secs(1));
            assert!(Duration::from_secs(at) <= before + Duration::from_secs(3));
        }
    }
}
