//! Ordering: events that share a lane (the same assessment, or the same correlation key
//! before its assessment is known) run one after another, in the order they entered;
//! different lanes run concurrently.

use std::sync::{Arc, Mutex};

use tokio_util::sync::CancellationToken;

/// The lanes in use. An idle lane takes no memory.
#[derive(Default)]
pub struct Lanes {
    tails: Mutex<crate::FastMap<String, (u64, CancellationToken)>>,
    next_id: std::sync::atomic::AtomicU64,
}

/// A place in a lane. Await [`LaneSlot::ready`] before working; dropping the slot (done,
/// failed or abandoned) lets the next one go.
pub struct LaneSlot {
    lanes: Arc<Lanes>,
    lane: String,
    id: u64,
    before: Option<CancellationToken>,
    mine: CancellationToken,
}

impl Lanes {
    /// Takes the next place in `lane`. Call in the order the events must run.
    pub fn enter(self: &Arc<Self>, lane: String) -> LaneSlot {
        let id = self
            .next_id
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed);
        let mine = CancellationToken::new();
        let before = self
            .tails
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .insert(lane.clone(), (id, mine.clone()))
            .map(|(_, token)| token);
        LaneSlot {
            lanes: Arc::clone(self),
            lane,
            id,
            before,
            mine,
        }
    }

    /// Lanes with work queued or running.
    pub fn len(&self) -> usize {
        self.tails
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .len()
    }

    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

impl LaneSlot {
    /// Waits until every earlier slot of the lane is released.
    pub async fn ready(&self) {
        if let Some(before) = &self.before {
            before.cancelled().await;
        }
    }
}

impl Drop for LaneSlot {
    fn drop(&mut self) {
        self.mine.cancel();
        let mut tails = self
            .lanes
            .tails
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if tails.get(&self.lane).is_some_and(|(id, _)| *id == self.id) {
            tails.remove(&self.lane);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::time::Duration;

    use super::*;

    #[tokio::test(start_paused = true)]
    async fn same_lane_runs_in_order_and_other_lanes_do_not_wait() {
        let lanes = Arc::new(Lanes::default());
        let log = Arc::new(Mutex::new(Vec::new()));
        let mut tasks = Vec::new();
        for (i, (lane, work_ms)) in [("a", 50), ("a", 10), ("b", 1), ("a", 1)]
            .into_iter()
            .enumerate()
        {
            let log = Arc::clone(&log);
            // Enter synchronously, in order, as the pipeline does.
            let slot = lanes.enter(lane.to_owned());
            tasks.push(tokio::spawn(async move {
                slot.ready().await;
                tokio::time::sleep(Duration::from_millis(work_ms)).await;
                log.lock().unwrap().push(i);
                drop(slot);
            }));
        }
        for t in tasks {
            t.await.unwrap();
        }
        assert_eq!(*log.lock().unwrap(), vec![2, 0, 1, 3]);
        assert!(lanes.is_empty());
    }
}
