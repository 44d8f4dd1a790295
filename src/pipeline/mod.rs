//! The only place that knows Kafka: the consumer, the poll loop, commits, backpressure and
//! shutdown.
//!
//! - [`offsets`]: which offsets are finished; the commit offset.
//! - [`catchup`]: the join grace waits until owned assessments partitions are read.
//! - [`lanes`]: per-assessment ordering.
//! - [`partition`]: one event from decode to release.
//! - [`rebalance`]: assignment, revocation, commit results.

pub mod catchup;
pub mod lanes;
pub mod offsets;
pub mod partition;
pub mod rebalance;

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{CommitMode, Consumer as _, StreamConsumer};
use rdkafka::message::{BorrowedMessage, Message as _};
use tokio::sync::{Semaphore, watch};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use self::catchup::CatchUp;
use self::lanes::Lanes;
use self::offsets::{OffsetBook, TopicPartition};
use self::partition::{Message, Shared, TopicKind};
use self::rebalance::{AnnotatorContext, PartitionTokens, commit_list};
use crate::annotate::AnnotateClient;
use crate::cache::Cache;
use crate::config::{CacheBackend, Config, Validated};
use crate::dead_letter::DeadLetterWriter;
use crate::domain::rules::OutcomeTopic;
use crate::health::Health;
use crate::kafka;
use crate::telemetry::Metrics;

type Consumer = StreamConsumer<AnnotatorContext>;

/// How long the pending limit may hold before fetching is paused.
const PAUSE_AFTER: Duration = Duration::from_secs(1);

/// Every this many commit ticks, every owned partition is committed again even if unchanged.
const RECOMMIT_EVERY_TICKS: u64 = 10;

/// Everything built from the config before the loop starts.
pub struct Service {
    consumer: Consumer,
    assessments_topic: Arc<str>,
    /// Set by the context after every rebalance, so a pause covers new partitions too.
    assignment_changed: Arc<std::sync::atomic::AtomicBool>,
    watermarks: Arc<rdkafka::consumer::BaseConsumer>,
    shared: Arc<Shared>,
    tokens: Arc<PartitionTokens>,
    abandon_all: CancellationToken,
    kinds: Vec<(Arc<str>, TopicKind)>,
    config: ServiceTuning,
}

struct ServiceTuning {
    commit_interval: Duration,
    max_pending: usize,
    shutdown_timeout: Duration,
    lag_interval: Duration,
}

impl Service {
    pub fn build(
        config: &Config,
        validated: &Validated,
        cache: Arc<dyn Cache>,
        client: AnnotateClient,
        metrics: Metrics,
        health: Arc<Health>,
    ) -> anyhow::Result<Self> {
        let book = Arc::new(OffsetBook::default());
        let tokens = Arc::new(PartitionTokens::default());
        let catch_up = Arc::new(CatchUp::default());
        let assignment_changed = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let watermarks: Arc<rdkafka::consumer::BaseConsumer> =
            Arc::new(kafka::group_reader(&config.kafka).context("creating the watermark client")?);
        let abandon_all = CancellationToken::new();
        let context = AnnotatorContext {
            book: Arc::clone(&book),
            tokens: Arc::clone(&tokens),
            metrics: metrics.clone(),
            health: Arc::clone(&health),
            rebalance_timeout: config.delivery.rebalance_timeout,
            abandon_all: abandon_all.clone(),
            catch_up: Arc::clone(&catch_up),
            assessments_topic: Arc::from(config.kafka.topics.assessments.as_str()),
            watermarks: Arc::clone(&watermarks),
            topics: config
                .kafka
                .topics
                .consumed()
                .iter()
                .map(|t| (*t).to_owned())
                .collect(),
            local_cache: config.cache.backend != CacheBackend::Redis,
            assignment_changed: Arc::clone(&assignment_changed),
            starts_at_end: kafka::starts_at_end(&config.kafka),
        };
        let consumer: Consumer = kafka::consumer_config(&config.kafka)
            .create_with_context(context)
            .context("creating the Kafka consumer")?;
        let topics = &config.kafka.topics;
        consumer
            .subscribe(&topics.consumed())
            .context("subscribing to the topics")?;
        let dead_letter =
            DeadLetterWriter::new(&config.kafka).context("creating the dead-letter producer")?;
        let limiter = std::num::NonZeroU32::new(config.delivery.rate_limit)
            .map(|rate| governor::RateLimiter::direct(governor::Quota::per_second(rate)));
        let mut kinds = vec![(
            Arc::from(topics.assessments.as_str()),
            TopicKind::Assessments,
        )];
        for t in OutcomeTopic::ALL {
            kinds.push((Arc::from(topics.outcome(t)), TopicKind::Outcome(t)));
        }
        let shared = Arc::new(Shared {
            rules: validated.rules.clone(),
            project: validated.project.clone(),
            allowed: validated.allowed.clone(),
            dry_run: config.dry_run,
            delivery: config.delivery.clone(),
            cache_ttl: config.cache.ttl,
            dedup_ttl: config.cache.dedup_ttl,
            catch_up,
            cache,
            client,
            dead_letter,
            metrics,
            health,
            book,
            lanes: Arc::new(Lanes::default()),
            in_flight: Semaphore::new(config.delivery.max_in_flight),
            limiter,
            halted: watch::Sender::new(false),
            probe: Arc::new(tokio::sync::Mutex::new(())),
        });
        Ok(Self {
            consumer,
            assessments_topic: Arc::from(config.kafka.topics.assessments.as_str()),
            assignment_changed,
            watermarks,
            shared,
            tokens,
            abandon_all,
            kinds,
            config: ServiceTuning {
                commit_interval: config.kafka.commit_interval,
                max_pending: config.delivery.max_pending,
                shutdown_timeout: config.delivery.shutdown_timeout,
                lag_interval: config.admin.lag_interval,
            },
        })
    }

    fn copy(&self, m: &BorrowedMessage<'_>) -> Option<Message> {
        let (topic, kind) = self.kinds.iter().find(|(name, _)| **name == *m.topic())?;
        Some(Message {
            tp: TopicPartition {
                topic: Arc::clone(topic),
                partition: m.partition(),
            },
            kind: *kind,
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
            replay_count: m.headers().and_then(kafka::replay_count),
        })
    }

    fn commit(&self, mode: CommitMode) {
        let commits = self.shared.book.take_commits(None);
        if commits.is_empty() {
            return;
        }
        let result = commit_list(&commits).and_then(|tpl| self.consumer.commit(&tpl, mode));
        match result {
            // An asynchronous commit is recorded when sent; a failure reported later hands
            // the offsets out again, and the retry records them anew.
            Ok(()) => self.consumer.context().record_committed(&commits),
            Err(e) => {
                tracing::warn!(error = %e, "offset commit failed; it will be retried");
                let tps: Vec<_> = commits.into_iter().map(|(tp, _)| tp).collect();
                self.shared.book.commit_failed(&tps);
            }
        }
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
                self.shared
                    .book
                    .advance(&TopicPartition::new(e.topic(), e.partition()), position);
            }
        }
    }

    /// Updates the per-partition lag gauges off the poll loop (watermarks are network calls):
    /// high watermark minus the committed offset, never negative.
    fn spawn_lag_update(&self, running: &Arc<std::sync::atomic::AtomicBool>) {
        if running.swap(true, Ordering::AcqRel) {
            return;
        }
        let running = Arc::clone(running);
        let client = Arc::clone(&self.watermarks);
        let book = Arc::clone(&self.shared.book);
        let metrics = self.shared.metrics.clone();
        tokio::task::spawn_blocking(move || {
            for tp in book.owned() {
                let Ok((_, high)) =
                    client.fetch_watermarks(&tp.topic, tp.partition, Duration::from_secs(5))
                else {
                    continue;
                };
                // Read the committed offset after the watermark, so a busy partition reads
                // low, never negative.
                let Some(position) = book.lag_position(&tp) else {
                    continue;
                };
                if !book.owns(&tp) {
                    continue;
                }
                metrics
                    .consumer_lag
                    .with_label_values(&[tp.topic.as_ref(), &tp.partition.to_string()])
                    .set((high - position).max(0));
            }
            running.store(false, Ordering::Release);
        });
    }

    /// Pauses the outcome partitions (`Paused::Outcomes`), every partition
    /// (`Paused::All`), or resumes everything (`Paused::No`).
    fn set_paused(&self, state: Paused) {
        let result = self.consumer.assignment().and_then(|assigned| {
            let mut pause = rdkafka::TopicPartitionList::new();
            let mut resume = rdkafka::TopicPartitionList::new();
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
            self.consumer.pause(&pause)?;
            self.consumer.resume(&resume)
        });
        if let Err(e) = result {
            tracing::warn!(error = %e, state = ?state, "could not pause or resume fetching");
        }
    }

    /// Consumes until `shutdown` is cancelled, then drains within `shutdown_timeout`,
    /// commits synchronously and leaves the group.
    pub async fn run(self, shutdown: CancellationToken) -> anyhow::Result<()> {
        let tasks = TaskTracker::new();
        let pending = Arc::new(Pending::default());
        let mut commit_tick = tokio::time::interval(self.config.commit_interval);
        commit_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut ticks: u64 = 0;
        let mut lag_tick = tokio::time::interval(self.config.lag_interval);
        lag_tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let lag_running = Arc::new(std::sync::atomic::AtomicBool::new(false));
        // Backpressure: at `max_pending` the loop stops taking messages. If that lasts
        // `PAUSE_AFTER` (a stalled endpoint, a long halt, outcomes parked for their keys) it
        // pauses the outcome partitions and polls on, so it stays a live group member and
        // keeps reading `assessments` (the mappings parked outcomes wait for); at twice the
        // limit it pauses those too, until back under one and a half times the limit (parked
        // outcomes alone never hold `assessments` paused). Everything resumes at half the limit. Short waits never
        // pause, which would make librdkafka drop and re-fetch its queue.
        let mut pause_tick = tokio::time::interval(Duration::from_millis(50));
        let mut paused = Paused::No;
        // Full is normal under a backlog (fetching outpaces delivery); only a full pipeline
        // that finishes nothing for `PAUSE_AFTER` is stalled.
        let mut last_progress = tokio::time::Instant::now();
        let mut last_finished = pending.finished();
        let limit = self.config.max_pending;
        tracing::info!("consuming");
        loop {
            let count = pending.count();
            let room = count < limit;
            if room {
                last_progress = tokio::time::Instant::now();
            }
            let receiving = room || paused != Paused::No;
            tokio::select! {
                biased;
                () = shutdown.cancelled() => break,
                _ = commit_tick.tick() => {
                    ticks += 1;
                    if ticks.is_multiple_of(RECOMMIT_EVERY_TICKS) {
                        self.shared.book.recommit_all();
                    }
                    self.advance_positions();
                    self.commit(CommitMode::Async);
                    self.shared.metrics.pending.set(i64::try_from(count).unwrap_or(i64::MAX));
                }
                _ = lag_tick.tick() => self.spawn_lag_update(&lag_running),
                () = pending.freed.notified(), if !receiving => {}
                _ = pause_tick.tick(), if paused != Paused::No || !room => {
                    let finished = pending.finished();
                    if finished != last_finished {
                        last_finished = finished;
                        last_progress = tokio::time::Instant::now();
                    }
                    let stalled = !room && last_progress.elapsed() >= PAUSE_AFTER;
                    let next = next_pause(paused, count, limit, stalled);
                    if next != paused {
                        tracing::info!(pending = count, from = ?paused, to = ?next, "fetch pause changed");
                        self.set_paused(next);
                        paused = next;
                    } else if paused != Paused::No && self.assignment_changed.swap(false, Ordering::AcqRel) {
                        // Partitions assigned since the pause started come unpaused.
                        self.set_paused(paused);
                    }
                }
                received = self.consumer.recv(), if receiving => {
                    let m = match received {
                        Ok(m) => m,
                        Err(e) => {
                            tracing::warn!(error = %e, "kafka consumer error");
                            continue;
                        }
                    };
                    let Some(msg) = self.copy(&m) else { continue };
                    drop(m);
                    let Some(ticket) = self.shared.book.register(&msg.tp, msg.offset) else { continue };
                    let Some(abandon) = self.tokens.get(&msg.tp) else { continue };
                    let plan = self.shared.plan(&msg);
                    let slot = plan.lane().map(|lane| self.shared.lanes.enter(lane));
                    let counter = PendingGuard::new(&pending, limit);
                    let shared = Arc::clone(&self.shared);
                    tasks.spawn(async move {
                        shared.run(msg, ticket, plan, slot, abandon).await;
                        drop(counter);
                    });
                }
            }
        }

        tracing::info!(pending = pending.count(), "shutting down: draining");
        // Stop fetching, but keep polling while draining, so the instance still answers the
        // group protocol (a rebalance started meanwhile must not wait for it). A message that
        // still arrives is not registered: it stays uncommitted and is redelivered.
        self.set_paused(Paused::All);
        tasks.close();
        let deadline = tokio::time::sleep(self.config.shutdown_timeout);
        tokio::pin!(deadline);
        loop {
            tokio::select! {
                biased;
                () = tasks.wait() => break,
                () = &mut deadline => {
                    tracing::warn!(
                        pending = pending.count(),
                        "drain deadline passed; abandoning unfinished events (they will be redelivered)"
                    );
                    self.abandon_all.cancel();
                    tasks.wait().await;
                    break;
                }
                _ = self.consumer.recv() => {}
            }
        }
        self.commit(CommitMode::Sync);
        // Abandoned events stay unfinished in the book; forget every partition so the
        // revocation that closing the consumer triggers has nothing left to wait for.
        for tp in self.shared.book.owned() {
            self.shared.book.revoke(&tp);
        }
        self.consumer.unsubscribe();
        drop(self.consumer);
        tracing::info!("left the group; stopped");
        Ok(())
    }
}

/// Which partitions are paused for backpressure.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
enum Paused {
    No,
    Outcomes,
    All,
}

/// The backpressure state after `paused`, with `count` events pending against `limit`.
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
struct Pending {
    count: AtomicUsize,
    /// Events finished so far (progress, to tell a full pipeline from a stalled one).
    finished: std::sync::atomic::AtomicU64,
    /// Signalled when the count falls below the limit.
    freed: tokio::sync::Notify,
}

impl Pending {
    fn count(&self) -> usize {
        self.count.load(Ordering::Relaxed)
    }

    fn finished(&self) -> u64 {
        self.finished.load(Ordering::Relaxed)
    }
}

/// Counts an event as pending for as long as it lives.
struct PendingGuard {
    pending: Arc<Pending>,
    limit: usize,
}

impl PendingGuard {
    fn new(pending: &Arc<Pending>, limit: usize) -> Self {
        pending.count.fetch_add(1, Ordering::Relaxed);
        Self {
            pending: Arc::clone(pending),
            limit,
        }
    }
}

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.pending.finished.fetch_add(1, Ordering::Relaxed);
        if self.pending.count.fetch_sub(1, Ordering::AcqRel) == self.limit {
            self.pending.freed.notify_one();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::{Paused, next_pause};

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
}
