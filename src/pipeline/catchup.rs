//! The catch-up rule: after start or a new assignment, the join grace period of parked
//! outcomes does not run out before this instance has stored every mapping that was already
//! in its `assessments` partitions at assignment (up to their end offsets then). A cold start
//! therefore does not dead-letter outcomes whose mapping is simply further back in the topic.

use std::collections::HashMap;
use std::sync::Mutex;
use std::time::Instant;

use super::offsets::{OffsetBook, TopicPartition};

#[derive(Default)]
struct State {
    /// Assessments partitions not caught up yet: the end offset at assignment, once known.
    targets: HashMap<TopicPartition, Option<i64>>,
    /// When the last target was reached.
    since: Option<Instant>,
}

#[derive(Default)]
pub struct CatchUp {
    state: Mutex<State>,
}

impl CatchUp {
    fn lock(&self) -> std::sync::MutexGuard<'_, State> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A new assessments partition: not caught up until its end offset is known and reached.
    pub fn assigned(&self, tp: TopicPartition) {
        let mut state = self.lock();
        state.targets.insert(tp, None);
        state.since = None;
    }

    /// The offsets of `tp` as of its assignment: `start`, where consumption begins (the
    /// group's commit), and `end`, the end offset. Nothing to read when `start >= end`; no
    /// message will then arrive to say so, which is why both are needed.
    pub fn target(&self, tp: &TopicPartition, start: i64, end: i64) {
        let mut state = self.lock();
        if start >= end {
            state.targets.remove(tp);
        } else if let Some(target) = state.targets.get_mut(tp) {
            *target = Some(end);
        }
    }

    pub fn revoked(&self, tp: &TopicPartition) {
        self.lock().targets.remove(tp);
    }

    /// `Some(instant)` once every owned assessments partition has been stored up to its
    /// target: the moment that happened. `None` while catching up.
    pub fn caught_up_since(&self, book: &OffsetBook) -> Option<Instant> {
        let mut state = self.lock();
        if !state.targets.is_empty() {
            state.targets.retain(|tp, target| match target {
                None => true,
                Some(end) => book.committable(tp).is_none_or(|c| c < *end),
            });
            if state.targets.is_empty() {
                state.since = Some(Instant::now());
            }
        }
        if state.targets.is_empty() {
            Some(*state.since.get_or_insert_with(Instant::now))
        } else {
            None
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn caught_up_only_when_every_target_is_stored() {
        let book = OffsetBook::default();
        let catch_up = CatchUp::default();
        assert!(
            catch_up.caught_up_since(&book).is_some(),
            "nothing to catch up"
        );
        let tp = TopicPartition::new("assessments", 0);
        book.assign(tp.clone());
        catch_up.assigned(tp.clone());
        assert!(
            catch_up.caught_up_since(&book).is_none(),
            "target unknown yet"
        );
        catch_up.target(&tp, 0, 2);
        let first = book.register(&tp, 0).unwrap();
        let second = book.register(&tp, 1).unwrap();
        book.done(&second);
        assert!(
            catch_up.caught_up_since(&book).is_none(),
            "offset 0 not stored"
        );
        book.done(&first);
        assert!(catch_up.caught_up_since(&book).is_some());
    }

    #[test]
    fn empty_partitions_are_caught_up_at_once() {
        let book = OffsetBook::default();
        let catch_up = CatchUp::default();
        let tp = TopicPartition::new("assessments", 1);
        catch_up.assigned(tp.clone());
        catch_up.target(&tp, 0, 0);
        assert!(catch_up.caught_up_since(&book).is_some());
    }

    #[test]
    fn partitions_committed_to_their_end_are_caught_up_at_once() {
        // After a restart the group's commit is already at the end: no message arrives.
        let book = OffsetBook::default();
        let catch_up = CatchUp::default();
        let tp = TopicPartition::new("assessments", 2);
        book.assign(tp.clone());
        catch_up.assigned(tp.clone());
        catch_up.target(&tp, 100, 100);
        assert!(catch_up.caught_up_since(&book).is_some());
        // Committed behind the end: waits for the rest.
        catch_up.assigned(tp.clone());
        catch_up.target(&tp, 40, 100);
        assert!(catch_up.caught_up_since(&book).is_none());
    }
}
