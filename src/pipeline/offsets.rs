//! Offset bookkeeping: which offsets of each owned partition are finished, and the offset
//! that may be committed.
//!
//! Kafka convention, kept in this file only: a *message offset* is the offset of a record;
//! the *commit offset* is the next offset to read, i.e. the last finished message offset + 1.
//! Only offsets that were actually delivered are awaited, so gaps (compaction, transaction
//! markers) never stall the commit point.

use std::collections::BTreeSet;
use std::sync::{Arc, Condvar, Mutex, MutexGuard};
use std::time::{Duration, Instant};

use crate::FastMap;

/// A topic and partition.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct TopicPartition {
    pub topic: Arc<str>,
    pub partition: i32,
}

impl TopicPartition {
    pub fn new(topic: &str, partition: i32) -> Self {
        Self {
            topic: Arc::from(topic),
            partition,
        }
    }
}

/// One partition's finished and unfinished offsets.
#[derive(Debug, Default, Clone)]
pub struct PartitionOffsets {
    pending: BTreeSet<i64>,
    /// One past the highest message offset seen.
    next: Option<i64>,
    /// The commit offset last handed out for committing.
    committed: Option<i64>,
    /// The highest commit offset the broker was sent (what consumer lag is measured from).
    confirmed: Option<i64>,
    /// The first offset seen in this assignment: where the group's commit stood.
    start: Option<i64>,
}

impl PartitionOffsets {
    /// Records a delivered message. Returns false for an offset at or below one already seen
    /// (a redelivery within the same assignment), which is not tracked twice.
    pub fn seen(&mut self, offset: i64) -> bool {
        if self.next.is_some_and(|next| offset < next) {
            return false;
        }
        self.pending.insert(offset);
        self.next = Some(offset + 1);
        self.start.get_or_insert(offset);
        true
    }

    /// The consumer's position moved to `position`: every message below it was delivered
    /// (and registered), so offsets below it that never came as messages (transaction
    /// markers, aborted or compacted records) are finished too. Pending messages still hold
    /// the commit offset.
    pub fn advance(&mut self, position: i64) {
        if self.next.is_none_or(|next| position > next) {
            self.next = Some(position);
            self.start.get_or_insert(position);
        }
    }

    /// Marks a message finished.
    pub fn done(&mut self, offset: i64) {
        self.pending.remove(&offset);
    }

    /// The commit offset: everything below it is finished.
    pub fn committable(&self) -> Option<i64> {
        self.pending.first().copied().or(self.next)
    }

    /// The commit offset if it moved since the last call.
    pub fn take_commit(&mut self) -> Option<i64> {
        let offset = self.committable()?;
        if self.committed.is_some_and(|c| c >= offset) {
            return None;
        }
        self.committed = Some(offset);
        Some(offset)
    }

    /// Forgets what was handed out, so the next [`Self::take_commit`] repeats it (after a
    /// failed commit).
    pub fn reset_committed(&mut self) {
        self.committed = None;
    }

    /// Records a commit offset sent to the broker.
    pub fn confirm(&mut self, offset: i64) {
        self.confirmed = Some(self.confirmed.map_or(offset, |c| c.max(offset)));
    }

    /// Where consumer lag is measured from: the offset committed to the broker, or, before
    /// the first commit of this assignment, the first offset fetched (where the group's
    /// commit stood). Finished but uncommitted events still count as lag.
    pub fn lag_position(&self) -> Option<i64> {
        self.confirmed.or(self.start)
    }

    pub fn pending(&self) -> usize {
        self.pending.len()
    }
}

/// Proof that a message was registered under one assignment of its partition.
#[derive(Debug, Clone)]
pub struct Ticket {
    pub tp: TopicPartition,
    pub offset: i64,
    generation: u64,
}

struct Owned {
    generation: u64,
    offsets: PartitionOffsets,
}

/// Every owned partition's offsets. Completions for a partition that was revoked (or revoked
/// and assigned again: a new generation) are ignored, so no offset is ever committed for a
/// partition this instance does not own.
#[derive(Default)]
pub struct OffsetBook {
    owned: Mutex<FastMap<TopicPartition, Owned>>,
    changed: Condvar,
    generation: std::sync::atomic::AtomicU64,
}

impl OffsetBook {
    fn lock(&self) -> MutexGuard<'_, FastMap<TopicPartition, Owned>> {
        // A panic while holding this lock leaves consistent data (every operation is one
        // map or set update), so a poisoned lock is still usable.
        self.owned
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn assign(&self, tp: TopicPartition) {
        let generation = self
            .generation
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            + 1;
        self.lock().insert(
            tp,
            Owned {
                generation,
                offsets: PartitionOffsets::default(),
            },
        );
    }

    /// Stops tracking `tp`; later completions for it are ignored. Returns its state.
    pub fn revoke(&self, tp: &TopicPartition) -> Option<PartitionOffsets> {
        let removed = self.lock().remove(tp).map(|o| o.offsets);
        self.changed.notify_all();
        removed
    }

    pub fn owns(&self, tp: &TopicPartition) -> bool {
        self.lock().contains_key(tp)
    }

    pub fn owned(&self) -> Vec<TopicPartition> {
        self.lock().keys().cloned().collect()
    }

    /// Registers a delivered message. `None` when the partition is not owned or the offset is
    /// a redelivery already tracked.
    pub fn register(&self, tp: &TopicPartition, offset: i64) -> Option<Ticket> {
        let mut owned = self.lock();
        let entry = owned.get_mut(tp)?;
        entry.offsets.seen(offset).then(|| Ticket {
            tp: tp.clone(),
            offset,
            generation: entry.generation,
        })
    }

    /// Marks a message finished; ignored when its assignment has ended.
    pub fn done(&self, ticket: &Ticket) {
        let mut owned = self.lock();
        if let Some(entry) = owned
            .get_mut(&ticket.tp)
            .filter(|e| e.generation == ticket.generation)
        {
            entry.offsets.done(ticket.offset);
        }
        drop(owned);
        self.changed.notify_all();
    }

    /// The commit offset of `tp` (everything below it is finished), if owned and any seen.
    pub fn committable(&self, tp: &TopicPartition) -> Option<i64> {
        self.lock().get(tp).and_then(|e| e.offsets.committable())
    }

    /// See [`PartitionOffsets::advance`]; ignored for partitions not owned.
    pub fn advance(&self, tp: &TopicPartition, position: i64) {
        if let Some(entry) = self.lock().get_mut(tp) {
            entry.offsets.advance(position);
        }
    }

    /// Records commit offsets sent to the broker. Returns each owned partition's highest
    /// committed offset (an acknowledgement can arrive after a later commit was sent).
    pub fn confirm_committed(
        &self,
        commits: &[(TopicPartition, i64)],
    ) -> Vec<(TopicPartition, i64)> {
        let mut owned = self.lock();
        commits
            .iter()
            .filter_map(|(tp, offset)| {
                let offsets = &mut owned.get_mut(tp)?.offsets;
                offsets.confirm(*offset);
                Some((tp.clone(), offsets.confirmed?))
            })
            .collect()
    }

    /// See [`PartitionOffsets::lag_position`]; `None` when not owned or nothing seen yet.
    pub fn lag_position(&self, tp: &TopicPartition) -> Option<i64> {
        self.lock().get(tp).and_then(|e| e.offsets.lag_position())
    }

    /// Commit offsets that moved since the last call, for `only` or every owned partition.
    pub fn take_commits(&self, only: Option<&[TopicPartition]>) -> Vec<(TopicPartition, i64)> {
        let mut owned = self.lock();
        owned
            .iter_mut()
            .filter(|(tp, _)| only.is_none_or(|o| o.contains(tp)))
            .filter_map(|(tp, e)| e.offsets.take_commit().map(|o| (tp.clone(), o)))
            .collect()
    }

    /// The commit offset of each of `tps` that has one, whether or not it moved since it was
    /// last handed out: the final commit of a partition this instance lets go (revoke,
    /// shutdown), which must not rely on an earlier asynchronous commit that may still be in
    /// flight or may have failed.
    pub fn final_commits(&self, tps: &[TopicPartition]) -> Vec<(TopicPartition, i64)> {
        let mut owned = self.lock();
        tps.iter()
            .filter_map(|tp| {
                let entry = owned.get_mut(tp)?;
                let offset = entry.offsets.committable()?;
                entry.offsets.committed = Some(offset);
                Some((tp.clone(), offset))
            })
            .collect()
    }

    /// Hands every owned partition's commit offset out again on the next call: a periodic
    /// refresh, so a commit lost without an error report is repaired.
    pub fn recommit_all(&self) {
        for entry in self.lock().values_mut() {
            entry.offsets.reset_committed();
        }
    }

    /// After a failed commit: hand the offsets out again next time.
    pub fn commit_failed(&self, tps: &[TopicPartition]) {
        for (tp, entry) in self.lock().iter_mut() {
            if tps.contains(tp) {
                entry.offsets.reset_committed();
            }
        }
    }

    /// Unfinished messages of `tps` (all owned partitions when `None`).
    pub fn pending(&self, tps: Option<&[TopicPartition]>) -> usize {
        self.lock()
            .iter()
            .filter(|(tp, _)| tps.is_none_or(|t| t.contains(tp)))
            .map(|(_, e)| e.offsets.pending())
            .sum()
    }

    /// Blocks the calling thread until `tps` have no unfinished message or `deadline` passes.
    /// Returns whether they drained. For the synchronous rebalance callback.
    pub fn wait_drained(&self, tps: &[TopicPartition], deadline: Instant) -> bool {
        let mut owned = self.lock();
        loop {
            let pending: usize = owned
                .iter()
                .filter(|(tp, _)| tps.contains(tp))
                .map(|(_, e)| e.offsets.pending())
                .sum();
            if pending == 0 {
                return true;
            }
            let left = deadline.saturating_duration_since(Instant::now());
            if left.is_zero() {
                return false;
            }
            owned = self
                .changed
                .wait_timeout(owned, left.min(Duration::from_millis(100)))
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        }
    }
}

#[cfg(test)]
#[path = "offsets_tests.rs"]
mod tests;
