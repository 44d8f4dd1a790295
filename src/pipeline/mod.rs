//! The poll loop: the only place that consumes Kafka. One event's path through the files
//! of this folder:
//!
//! - [`message`]: the message copied out of librdkafka, its topic kind;
//! - [`plan`]: decode, rules, reference checks (no IO) -> a [`plan::Plan`] or a dead letter;
//! - [`lanes`]: its place among events for the same assessment (offset order);
//! - [`event`]: its run, where every failure is settled: [`join`] (cache lookups through
//!   [`store`], after [`catchup`]), [`deliver`] (the [`halts`] gates, each a [`gate`]; the call), the dead letter;
//! - [`offsets`]: its offset marked finished; [`commit`]: the finished prefix committed.
//!
//! Beside them: [`backpressure`] (pausing when full), [`lag`], and [`rebalance`]
//! (assignment, revocation, and the drain revocation and shutdown share).

pub mod backpressure;
pub mod catchup;
pub mod commit;
pub mod concurrency;
pub mod deliver;
pub mod event;
pub mod gate;
pub mod halts;
pub mod join;
pub mod lag;
pub mod lanes;
pub mod message;
pub mod offsets;
pub mod plan;
pub mod rebalance;
pub mod store;

use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use futures::FutureExt as _;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use tokio::time::{Instant, MissedTickBehavior};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::backpressure::{Backpressure, PAUSE_CHECK_EVERY, Paused};
use self::event::Runner;
use self::lag::Lag;
use self::lanes::Lanes;
use self::message::Topics;
use self::offsets::TopicPartition;
use self::plan::Planner;
use self::rebalance::{AnnotatorContext, Partitions};
use crate::telemetry::Metrics;

/// The group member the poll loop drives.
pub type Consumer = StreamConsumer<AnnotatorContext>;

/// Every this many commit ticks, every owned partition is committed again even if unchanged.
const RECOMMIT_EVERY_TICKS: u64 = 10;

/// Most messages taken per turn of the poll loop: after one `recv`, those librdkafka already
/// holds are taken without another turn through the loop's `select!` (its timers and
/// notifications are looked at between batches, so a batch delays them by microseconds).
const RECV_BATCH: usize = 64;

/// Timing and bounds of the poll loop.
pub struct Tuning {
    /// `kafka.commit_interval`.
    pub commit_interval: Duration,
    /// `delivery.max_pending`.
    pub max_pending: usize,
    /// `delivery.max_pending_bytes`.
    pub max_pending_bytes: usize,
    /// `delivery.shutdown_timeout`: the drain on SIGTERM/SIGINT.
    pub shutdown_timeout: Duration,
    /// `admin.lag_interval`.
    pub lag_interval: Duration,
}

/// The poll loop and what it hands each message to.
pub struct Pipeline {
    /// The group member (subscribed).
    consumer: Consumer,
    /// Which consumed topic a message is from.
    topics: Topics,
    /// Decides what each message asks for.
    planner: Planner,
    /// Runs each event after planning.
    runner: Arc<Runner>,
    /// Per-assessment ordering.
    lanes: Arc<Lanes>,
    /// Consumer lag readings.
    lag: Lag,
    /// `annotator_pending`.
    metrics: Metrics,
    /// Intervals and bounds from the config.
    tuning: Tuning,
}

/// Where the loop is: taking messages, or draining until a deadline.
enum State {
    Consuming,
    Draining { deadline: Instant },
}

impl Pipeline {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        consumer: Consumer,
        topics: Topics,
        planner: Planner,
        runner: Arc<Runner>,
        lag: Lag,
        metrics: Metrics,
        tuning: Tuning,
    ) -> Self {
        Self {
            consumer,
            topics,
            planner,
            runner,
            lanes: Arc::new(Lanes::default()),
            lag,
            metrics,
            tuning,
        }
    }

    fn partitions(&self) -> &Partitions {
        &self.consumer.context().partitions
    }

    /// Lets each partition's commit offset pass offsets that never arrive as messages
    /// (transaction markers, aborted or compacted records) once librdkafka's position has
    /// passed them. Called on the poll loop, between receives, so every message below the
    /// position has been registered.
    fn advance_positions(&self) {
        let Ok(positions) = self.consumer.position() else {
            return;
        };
        for e in positions.elements() {
            if let rdkafka::Offset::Offset(position) = e.offset() {
                self.partitions()
                    .book
                    .advance(&TopicPartition::new(e.topic(), e.partition()), position);
            }
        }
    }

    /// Registers one received message, plans it and spawns its task.
    fn take(
        &self,
        m: &rdkafka::message::BorrowedMessage<'_>,
        tasks: &TaskTracker,
        backpressure: &Backpressure,
    ) {
        let Some(msg) = self.topics.copy(m) else {
            return;
        };
        let partitions = self.partitions();
        let Some(ticket) = partitions.book.register(&msg.tp, msg.offset) else {
            return;
        };
        let Some(abandon) = partitions.tokens.get(&msg.tp) else {
            return;
        };
        let plan = self.planner.plan(&msg);
        let slot = plan
            .as_ref()
            .ok()
            .and_then(plan::Plan::lane)
            .map(|lane| self.lanes.enter(lane));
        let size = msg.payload.as_ref().map_or(0, Vec::len) + msg.key.as_ref().map_or(0, Vec::len);
        let counted = backpressure.enter(size);
        let runner = Arc::clone(&self.runner);
        tasks.spawn(async move {
            runner.run(msg, ticket, plan, slot, abandon).await;
            drop(counted);
        });
    }

    /// Takes up to [`RECV_BATCH`] more messages that are ready now, while there is room.
    fn take_ready(&self, tasks: &TaskTracker, backpressure: &mut Backpressure) {
        for _ in 1..RECV_BATCH {
            if !backpressure.room() {
                return;
            }
            match self.consumer.recv().now_or_never() {
                Some(Ok(m)) => self.take(&m, tasks, backpressure),
                Some(Err(e)) => self.consumer.context().log.consumer_error(&e),
                None => return,
            }
        }
    }

    /// Consumes until `shutdown` is cancelled, then drains within `shutdown_timeout`,
    /// commits synchronously and leaves the group.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let mut backpressure = Backpressure::new(
            self.tuning.max_pending,
            self.tuning.max_pending_bytes,
            Arc::clone(&self.consumer.context().assessments_topic),
        );
        let mut commit_tick = tokio::time::interval(self.tuning.commit_interval);
        commit_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        let mut lag_tick = tokio::time::interval(self.tuning.lag_interval);
        lag_tick.set_missed_tick_behavior(MissedTickBehavior::Delay);
        let mut pause_tick = tokio::time::interval(PAUSE_CHECK_EVERY);
        let mut state = State::Consuming;
        tracing::info!("consuming");
        while let State::Consuming = state {
            let room = backpressure.room();
            let receiving = backpressure.receiving(room);
            tokio::select! {
                biased;
                () = shutdown.cancelled() => {
                    state = State::Draining { deadline: Instant::now() + self.tuning.shutdown_timeout };
                }
                _ = commit_tick.tick() => {
                    ticks += 1;
                    if ticks.is_multiple_of(RECOMMIT_EVERY_TICKS) {
                        self.partitions().book.recommit_all();
                    }
                    self.advance_positions();
                    self.partitions().committer.commit_moved(&self.consumer);
                    let pending = backpressure.pending.count();
                    self.metrics.pending.set(i64::try_from(pending).unwrap_or(i64::MAX));
                }
                _ = lag_tick.tick() => self.lag.update(),
                () = backpressure.pending.freed.notified(), if !receiving => {}
                _ = pause_tick.tick(), if backpressure.watching(room) => {
                    let changed = self.consumer.context().assignment_changed.swap(false, Ordering::AcqRel);
                    backpressure.check(&self.consumer, room, changed);
                }
                received = self.consumer.recv(), if receiving => match received {
                    Ok(m) => {
                        self.consumer.context().log.reachable();
                        self.take(&m, &tasks, &backpressure);
                        drop(m);
                        self.take_ready(&tasks, &mut backpressure);
                        if backpressure.beyond_hard_limit() {
                            backpressure.check(&self.consumer, false, false);
                        }
                    }
                    Err(e) => self.consumer.context().log.consumer_error(&e),
                },
            }
        }
        let State::Draining { deadline } = state else {
            unreachable!("the loop ends only to drain")
        };
        tracing::info!(
            pending = backpressure.pending.count(),
            "shutting down: draining"
        );
        // Stop fetching, but keep polling while draining, so the instance still answers the
        // group protocol (a rebalance started meanwhile must not wait for it). A message that
        // still arrives is not registered: it stays uncommitted and is redelivered.
        backpressure.set(&self.consumer, Paused::All);
        tasks.close();
        let drained = loop {
            tokio::select! {
                biased;
                () = tasks.wait() => break true,
                () = tokio::time::sleep_until(deadline) => break false,
                _ = self.consumer.recv() => {}
            }
        };
        // The same end as a revocation: abandon what is left, commit, forget every partition,
        // so the revocation that closing the consumer triggers has nothing left to wait for.
        let owned = self.partitions().book.owned();
        self.partitions().close(&self.consumer, &owned, drained);
        tasks.wait().await;
        let joined = self.partitions().joined();
        self.consumer.unsubscribe();
        drop(self.consumer);
        if joined {
            tracing::info!("left the group; stopped");
        } else {
            tracing::info!("stopped (no partition was ever assigned: the group was never joined)");
        }
        Ok(())
    }
}
