//! Backpressure: at `delivery.max_pending` unfinished events, or `delivery.max_pending_bytes`
//! of their keys and values, the poll loop stops taking messages. If that lasts [`PAUSE_AFTER`] with nothing finishing (a stalled endpoint, a
//! long halt, outcomes parked for their keys) it pauses the outcome partitions and polls
//! on, so it stays a live group member and keeps reading `assessments` (the mappings parked
//! outcomes wait for); at twice the limit it pauses those too, until back under one and a
//! half times the limit (parked outcomes alone never hold `assessments` paused). Everything
//! resumes at half the limit. Short waits never pause, which would make librdkafka drop and
//! re-fetch its queue.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;

use rdkafka::TopicPartitionList;
use rdkafka::consumer::{Consumer, ConsumerContext};
use tokio::time::Instant;

/// How long the pending limit may hold, with nothing finishing, before fetching is paused.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// How often the pause state is looked at while full or paused.
pub const PAUSE_CHECK_EVERY: Duration = Duration::from_millis(50);

/// Which partitions are paused.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub enum Paused {
    No,
    Outcomes,
    All,
}

/// The state after `paused`, with `count` events pending against `limit`.
fn next_pause(paused: Paused, count: usize, limit: usize, stalled: bool) -> Paused {
    if count <= limit / 2 {
        Paused::No
    } else if count >= 2 * limit || (paused == Paused::All && count > limit + limit / 2) {
        Paused::All
    } else if stalled || paused != Paused::No {
        Paused::Outcomes
    } else {
        Paused::No
    }
}

/// Events taken from Kafka and not finished.
#[derive(Default)]
pub struct Pending {
    count: AtomicUsize,
    /// Bytes of the pending events' keys and values.
    bytes: AtomicUsize,
    /// Events finished so far (progress, to tell a full pipeline from a stalled one).
    finished: AtomicU64,
    /// Signalled when the count falls below the limit.
    pub freed: tokio::sync::Notify,
}

impl Pending {
    pub fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn bytes(&self) -> usize {
        self.bytes.load(Ordering::Relaxed)
    }

    fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }
}

/// Counts an event as pending for as long as it lives.
pub struct PendingGuard {
    pending: Arc<Pending>,
    bytes: usize,
    /// `delivery.max_pending` and `delivery.max_pending_bytes`.
    limits: (usize, usize),
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.pending.finished.fetch_add(1, Ordering::Relaxed);
        let bytes = self.pending.bytes.fetch_sub(self.bytes, Ordering::AcqRel);
        let count = self.pending.count.fetch_sub(1, Ordering::AcqRel);
        // Wake the loop only when this event brings a bound back under its limit.
        let (limit, byte_limit) = self.limits;
        if count == limit || (bytes >= byte_limit && bytes - self.bytes < byte_limit) {
            self.pending.freed.notify_one();
        }
    }
}

/// The poll loop's backpressure state.
pub struct Backpressure {
    /// Unfinished events, shared with their tasks.
    pub pending: Arc<Pending>,
    /// `delivery.max_pending`.
    limit: usize,
    /// `delivery.max_pending_bytes`.
    byte_limit: usize,
    /// What is paused now.
    paused: Paused,
    /// The last moment the pipeline had room or finished something.
    last_progress: Instant,
    /// `finished` at `last_progress`.
    last_finished: u64,
    /// The assessments topic: paused last.
    assessments_topic: Arc<str>,
}

impl Backpressure {
    pub fn new(limit: usize, byte_limit: usize, assessments_topic: Arc<str>) -> Self {
        Self {
            pending: Arc::new(Pending::default()),
            limit,
            byte_limit,
            paused: Paused::No,
            last_progress: Instant::now(),
            last_finished: 0,
            assessments_topic,
        }
    }

    /// Counts one more pending event of `bytes` until the guard drops.
    pub fn enter(&self, bytes: usize) -> PendingGuard {
        self.pending.count.fetch_add(1, Ordering::Relaxed);
        self.pending.bytes.fetch_add(bytes, Ordering::Relaxed);
        PendingGuard {
            pending: Arc::clone(&self.pending),
            bytes,
            limits: (self.limit, self.byte_limit),
        }
    }

    /// Whether another message may be taken (under both bounds); notes the progress.
    pub fn room(&mut self) -> bool {
        let room = self.pending.count() < self.limit && self.pending.bytes() < self.byte_limit;
        if room {
            self.last_progress = Instant::now();
        }
        room
    }

    /// Whether the hard bound (twice the limit, by count or bytes) is reached while not every
    /// partition is paused yet. Past the limit the loop polls on for `assessments`, and a
    /// message arrives every few microseconds: the bound is looked at per message, not only
    /// at the next check, or the pending events would run far past it (seen: 48,000 against a
    /// limit of 4,096, with outcomes parked for their mappings).
    pub fn beyond_hard_limit(&self) -> bool {
        let by_bytes = self.pending.bytes().saturating_mul(self.limit) / self.byte_limit.max(1);
        self.paused != Paused::All && self.pending.count().max(by_bytes) >= 2 * self.limit
    }

    /// Whether the loop should receive: with room, or while paused (polling on).
    pub fn receiving(&self, room: bool) -> bool {
        room || self.paused != Paused::No
    }

    /// Whether the pause state needs looking at.
    pub fn watching(&self, room: bool) -> bool {
        self.paused != Paused::No || !room
    }

    /// Moves the pause state on; `assignment_changed` re-applies a pause to new partitions.
    pub fn check<C: ConsumerContext, K: Consumer<C>>(
        &mut self,
        consumer: &K,
        room: bool,
        assignment_changed: bool,
    ) {
        let finished = self.pending.finished();
        if finished != self.last_finished {
            self.last_finished = finished;
            self.last_progress = Instant::now();
        }
        // The fuller of the two bounds, in events: bytes count as their share of the limit.
        let by_bytes = self.pending.bytes().saturating_mul(self.limit) / self.byte_limit.max(1);
        let count = self.pending.count().max(by_bytes);
        let stalled = !room && self.last_progress.elapsed() >= PAUSE_AFTER;
        let next = next_pause(self.paused, count, self.limit, stalled);
        if next != self.paused {
            tracing::info!(pending = count, from = ?self.paused, to = ?next, "fetch pause changed");
            self.set(consumer, next);
        } else if self.paused != Paused::No && assignment_changed {
            // Partitions assigned since the pause started come unpaused.
            self.set(consumer, self.paused);
        }
    }

    /// Pauses the outcome partitions (`Paused::Outcomes`), every partition (`Paused::All`),
    /// or resumes everything (`Paused::No`).
    pub fn set<C: ConsumerContext, K: Consumer<C>>(&mut self, consumer: &K, state: Paused) {
        self.paused = state;
        let result = consumer.assignment().and_then(|assigned| {
            let mut pause = TopicPartitionList::new();
            let mut resume = TopicPartitionList::new();
            for e in assigned.elements() {
                let is_assessments = *e.topic() == *self.assessments_topic;
                let paused = match state {
                    Paused::No => false,
                    Paused::Outcomes => !is_assessments,
                    Paused::All => true,
                };
                let list = if paused { &mut pause } else { &mut resume };
                list.add_partition(e.topic(), e.partition());
            }
            // Both lists, every time: going from All to Outcomes must resume `assessments`.
            consumer.pause(&pause)?;
            consumer.resume(&resume)
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, state = ?state, "could not pause or resume fetching");
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Backpressure, Paused, next_pause};

    #[test]
    fn pauses_only_when_stalled_and_resumes_at_half() {
        let limit = 100;
        assert_eq!(
            next_pause(Paused::No, 100, limit, false),
            Paused::No,
            "full but flowing"
        );
        assert_eq!(next_pause(Paused::No, 100, limit, true), Paused::Outcomes);
        assert_eq!(
            next_pause(Paused::Outcomes, 80, limit, false),
            Paused::Outcomes
        );
        assert_eq!(next_pause(Paused::Outcomes, 50, limit, false), Paused::No);
        assert_eq!(next_pause(Paused::Outcomes, 200, limit, false), Paused::All);
    }

    #[test]
    fn parked_outcomes_alone_never_keep_assessments_paused() {
        // Everything paused at twice the limit; once the assessment writes finish, only the
        // parked outcomes (at most about the limit) remain, and `assessments` must flow again.
        let limit = 100;
        assert_eq!(next_pause(Paused::All, 160, limit, true), Paused::All);
        assert_eq!(next_pause(Paused::All, 150, limit, true), Paused::Outcomes);
        assert_eq!(next_pause(Paused::All, 100, limit, true), Paused::Outcomes);
    }

    #[test]
    fn the_hard_bound_is_seen_per_message_by_count_and_by_bytes() {
        let mut bp = Backpressure::new(4, 1000, "assessments".into());
        bp.paused = Paused::Outcomes;
        let mut held: Vec<_> = (0..7).map(|_| bp.enter(10)).collect();
        assert!(!bp.beyond_hard_limit(), "7 of a hard bound of 8");
        held.push(bp.enter(10));
        assert!(bp.beyond_hard_limit(), "8 events: twice the limit");
        bp.paused = Paused::All;
        assert!(!bp.beyond_hard_limit(), "already all paused");
        held.clear();
        bp.paused = Paused::Outcomes;
        held.push(bp.enter(2000));
        assert!(bp.beyond_hard_limit(), "one event of twice the byte limit");
    }
}
