//! The partitions this instance owns: assignment, revocation and the drain both revocation
//! and shutdown end with.
//!
//! librdkafka calls the context synchronously on the thread that polls the consumer. On
//! revoke we block there (bounded by `delivery.rebalance_timeout`) until the revoked
//! partitions' events finish, then [`Partitions::close`] them: abandon the rest, commit
//! synchronously, forget them, so a late completion can never store an offset for a
//! partition we no longer own. Shutdown waits on the poll loop instead (it keeps polling)
//! and closes every partition the same way.

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::catchup::CatchUp;
use super::commit::Committer;
use super::offsets::{OffsetBook, TopicPartition};
use crate::health::Health;
use crate::kafka::{self, QUERY_TIMEOUT};
use crate::telemetry::Metrics;

/// A cancellation token per owned partition: cancelled to abandon its in-flight events.
#[derive(Default)]
pub struct PartitionTokens {
    tokens: Mutex<crate::FastMap<TopicPartition, CancellationToken>>,
}

impl PartitionTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, crate::FastMap<TopicPartition, CancellationToken>> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<CancellationToken> {
        self.lock().get(tp).cloned()
    }

    fn insert(&self, tp: TopicPartition) {
        self.lock().insert(tp, CancellationToken::new());
    }

    fn remove(&self, tp: &TopicPartition) -> Option<CancellationToken> {
        self.lock().remove(tp)
    }
}

/// The partitions this instance owns, and how it lets them go.
pub struct Partitions {
    /// Finished and unfinished offsets of every owned partition.
    pub book: Arc<OffsetBook>,
    /// One token per owned partition, to abandon its events.
    pub tokens: PartitionTokens,
    /// The catch-up of owned assessments partitions.
    pub catch_up: Arc<CatchUp>,
    /// The one commit routine.
    pub committer: Committer,
    /// Lag and committed-offset series of partitions no longer owned are removed.
    metrics: Metrics,
    /// A partition stalled by a crashed event is no longer stalled once let go.
    health: Arc<Health>,
    /// Whether any partition was ever assigned (the instance joined the group).
    joined: std::sync::atomic::AtomicBool,
}

impl Partitions {
    /// Whether the instance ever held an assignment (for a true shutdown line).
    pub fn joined(&self) -> bool {
        self.joined.load(std::sync::atomic::Ordering::Relaxed)
    }

    pub fn new(
        book: Arc<OffsetBook>,
        catch_up: Arc<CatchUp>,
        metrics: Metrics,
        health: Arc<Health>,
    ) -> Self {
        Self {
            committer: Committer::new(Arc::clone(&book), metrics.clone()),
            book,
            tokens: PartitionTokens::default(),
            catch_up,
            metrics,
            health,
            joined: std::sync::atomic::AtomicBool::new(false),
        }
    }

    fn assign(&self, tp: &TopicPartition) {
        self.joined
            .store(true, std::sync::atomic::Ordering::Relaxed);
        self.tokens.insert(tp.clone());
        self.book.assign(tp.clone());
    }

    /// Blocks until `tps` have no unfinished event, or `timeout` passes; true when drained.
    fn drain(&self, tps: &[TopicPartition], timeout: Duration) -> bool {
        let deadline = Instant::now() + timeout;
        tokio::task::block_in_place(|| self.book.wait_drained(tps, deadline))
    }

    /// Lets `tps` go (revoked, or every partition at shutdown), after their drain: abandons
    /// their unfinished events unless `drained` (they are redelivered to the next owner),
    /// commits their finished offsets synchronously, and forgets them.
    pub fn close<C: ConsumerContext, K: Consumer<C>>(
        &self,
        consumer: &K,
        tps: &[TopicPartition],
        drained: bool,
    ) {
        if !drained {
            tracing::warn!(
                pending = self.book.pending(Some(tps)),
                "partitions did not drain in time; abandoning their unfinished events (they will be redelivered)"
            );
            for tp in tps {
                if let Some(token) = self.tokens.get(tp) {
                    token.cancel();
                }
            }
        }
        self.committer.commit_final(consumer, tps);
        for tp in tps {
            self.book.revoke(tp);
            self.catch_up.revoked(tp);
            if let Some(token) = self.tokens.remove(tp) {
                token.cancel();
            }
            let labels = [tp.topic.as_ref(), &tp.partition.to_string()];
            let _ = self.metrics.consumer_lag.remove_label_values(&labels);
            let _ = self.metrics.committed_offset.remove_label_values(&labels);
            let _ = self
                .metrics
                .kafka
                .partition_lag
                .remove_label_values(&labels);
            let stalled = self
                .health
                .remove_stalled(&format!("{}/{}", tp.topic, tp.partition));
            self.metrics
                .stalled_partitions
                .set(i64::try_from(stalled).unwrap_or(i64::MAX));
        }
    }
}

/// The consumer's context: what librdkafka calls back on assignment, revocation and commits.
pub struct AnnotatorContext {
    /// Owned partitions: offsets, tokens, catch-up, commits.
    pub partitions: Arc<Partitions>,
    /// `annotator_rebalances_total`.
    pub metrics: Metrics,
    /// Readiness: `assigned` after every rebalance.
    pub health: Arc<Health>,
    /// `delivery.rebalance_timeout`: how long revoked partitions may drain.
    pub rebalance_timeout: Duration,
    /// The assessments topic: its partitions are caught up on assignment.
    pub assessments_topic: Arc<str>,
    /// A plain client (no group) for watermarks and metadata, queried off the poll thread.
    pub watermarks: Arc<crate::kafka::Reader>,
    /// The consumed topics, for the partial-assignment check.
    pub topics: Vec<String>,
    /// The cache is shared by the group; when it is not, warn when other members own
    /// partitions, since joins then need a shared backend.
    pub shared_cache: bool,
    /// Raised after every rebalance (the poll loop re-applies a backpressure pause).
    pub assignment_changed: Arc<AtomicBool>,
    /// `auto.offset.reset` points at the end: a partition without a commit starts there.
    pub starts_at_end: bool,
    /// librdkafka's lines, shared with the service's other clients.
    pub log: Arc<crate::kafka::KafkaLog>,
}

/// Runs `f` on the blocking pool when a runtime is there (rebalance callbacks also run while
/// the consumer closes).
fn off_the_poll_thread(f: impl FnOnce() + Send + 'static) {
    if let Ok(handle) = tokio::runtime::Handle::try_current() {
        handle.spawn_blocking(f);
    }
}

/// Where consumption of an assessments partition starts (the group's commit, or the reset
/// position without one) and its end offset, as of now. When either cannot be read the
/// catch-up is not waited for (`(0, 0)`), so a broker hiccup cannot park outcomes forever.
fn catch_up_range(
    client: &crate::kafka::Reader,
    tp: &TopicPartition,
    starts_at_end: bool,
) -> (i64, i64) {
    let (low, high) = match client.fetch_watermarks(&tp.topic, tp.partition, QUERY_TIMEOUT) {
        Ok(watermarks) => watermarks,
        Err(e) => {
            tracing::warn!(error = %e, partition = tp.partition, "no end offset for catch-up; not waiting for it");
            return (0, 0);
        }
    };
    let wanted = (tp.topic.to_string(), tp.partition);
    let committed = match kafka::committed_offsets(client, std::slice::from_ref(&wanted)) {
        Ok(offsets) => offsets.get(&wanted).copied(),
        Err(e) => {
            tracing::warn!(error = %e, partition = tp.partition, "no committed offset for catch-up; not waiting for it");
            return (0, 0);
        }
    };
    let start = match committed {
        Some(c) if c >= low => c,
        // None, or below the log start (retention or a deletion removed the records): the
        // consumer starts where `auto.offset.reset` puts it, so that is what is read.
        _ if starts_at_end => high,
        _ => low,
    };
    (start, high)
}

impl ClientContext for AnnotatorContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.log.log(level, fac, message);
    }

    fn error(&self, error: rdkafka::error::KafkaError, reason: &str) {
        self.log.error(&error, reason);
    }

    fn stats(&self, statistics: rdkafka::Statistics) {
        let book = &self.partitions.book;
        self.metrics.kafka.update(&statistics, |topic, partition| {
            book.owns(&TopicPartition::new(topic, partition))
        });
    }
}

fn partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

impl AnnotatorContext {
    fn revoke(&self, consumer: &BaseConsumer<Self>, tps: &[TopicPartition]) {
        self.metrics.rebalances.with_label_values(&["revoke"]).inc();
        // At shutdown the partitions were let go already (drained or abandoned, and
        // committed); the revocation that leaving the group brings has nothing to add.
        let owned: Vec<TopicPartition> = tps
            .iter()
            .filter(|tp| self.partitions.book.owns(tp))
            .cloned()
            .collect();
        if owned.is_empty() {
            return;
        }
        let drained = self.partitions.drain(&owned, self.rebalance_timeout);
        // When not drained, `close` says how many events it abandons.
        self.partitions.close(consumer, &owned, drained);
        tracing::info!(
            partitions = owned.len(),
            drained,
            "partitions revoked and committed"
        );
    }

    fn assign(&self, tpl: &TopicPartitionList) {
        self.log.reachable();
        self.metrics.rebalances.with_label_values(&["assign"]).inc();
        let mut assessments = Vec::new();
        for tp in partitions(tpl) {
            self.partitions.assign(&tp);
            if tp.topic == self.assessments_topic {
                self.partitions.catch_up.assigned(tp.clone());
                assessments.push(tp);
            }
        }
        if !assessments.is_empty() {
            let client = Arc::clone(&self.watermarks);
            let catch_up = Arc::clone(&self.partitions.catch_up);
            let starts_at_end = self.starts_at_end;
            off_the_poll_thread(move || {
                for tp in assessments {
                    let (start, end) = catch_up_range(&client, &tp, starts_at_end);
                    tracing::info!(
                        partition = tp.partition,
                        start,
                        end,
                        "assessments partition: catching up to its end offset"
                    );
                    catch_up.target(&tp, start, end);
                }
            });
        }
        tracing::info!(partitions = tpl.count(), "partitions assigned");
    }

    /// With a cache of its own, warns when other members own partitions of the group.
    fn warn_if_partial(&self, owned: usize) {
        let client = Arc::clone(&self.watermarks);
        let topics = self.topics.clone();
        off_the_poll_thread(move || {
            let total: usize = topics
                .iter()
                .filter_map(|t| client.fetch_metadata(Some(t), QUERY_TIMEOUT).ok())
                .flat_map(|m| {
                    m.topics()
                        .iter()
                        .map(|t| t.partitions().len())
                        .collect::<Vec<_>>()
                })
                .sum();
            if owned < total {
                tracing::warn!(
                    owned,
                    total,
                    "this instance owns only part of the partitions: other members exist, and joins need a shared cache (cache.backend = \"redis\")"
                );
            }
        });
    }
}

impl ConsumerContext for AnnotatorContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let tps: Vec<_> = partitions(tpl)
                    .into_iter()
                    .filter(|tp| self.partitions.book.owns(tp))
                    .collect();
                self.revoke(consumer, &tps);
            }
            Rebalance::Assign(tpl) => self.assign(tpl),
            Rebalance::Error(e) => {
                self.metrics.rebalances.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        self.assignment_changed.store(true, Ordering::Release);
        let owned = self.partitions.book.owned().len();
        self.metrics
            .assigned_partitions
            .set(i64::try_from(owned).unwrap_or(i64::MAX));
        // A member with an empty assignment (more members than partitions) is a healthy
        // standby: ready. Only a member that lost everything to a revocation waits for its
        // next assignment.
        let member = owned > 0 || matches!(rebalance, Rebalance::Assign(_));
        self.health.set_assigned(member);
        if !self.shared_cache && owned > 0 {
            self.warn_if_partial(owned);
        }
    }

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        self.partitions.committer.on_result(result, offsets);
    }
}

#[cfg(test)]
mod tests {
    use rdkafka::ClientConfig;
    use rdkafka::consumer::DefaultConsumerContext;
    use rdkafka::mocking::MockCluster;

    use super::*;

    #[test]
    fn letting_a_partition_go_commits_its_finished_offset_even_if_it_was_handed_out_before() {
        let cluster = MockCluster::new(1).unwrap();
        cluster.create_topic("t", 1, 1).unwrap();
        let consumer: BaseConsumer<DefaultConsumerContext> = ClientConfig::new()
            .set("bootstrap.servers", cluster.bootstrap_servers())
            .set("group.id", "g")
            .set("enable.auto.commit", "false")
            .create()
            .unwrap();
        let book = Arc::new(OffsetBook::default());
        let partitions = Partitions::new(
            Arc::clone(&book),
            Arc::new(CatchUp::default()),
            Metrics::new(),
            Arc::new(Health::default()),
        );
        let tp = TopicPartition::new("t", 0);
        partitions.assign(&tp);
        for offset in 0..5 {
            let ticket = book.register(&tp, offset).unwrap();
            book.done(&ticket);
        }
        // An asynchronous commit took offset 5 and is still in flight (or failed silently).
        assert_eq!(book.take_commits(None), vec![(tp.clone(), 5)]);
        partitions.close(&consumer, std::slice::from_ref(&tp), true);
        let wanted = [("t".to_owned(), 0)];
        let committed = kafka::committed_offsets(&consumer, &wanted).unwrap();
        assert_eq!(committed.get(&wanted[0]), Some(&5));
        assert!(!book.owns(&tp));
    }
}
