//! The consumer context: assignment and revocation of partitions, and commit results.
//!
//! librdkafka calls these synchronously on the thread that polls the consumer. On revoke we
//! block there (bounded by `delivery.rebalance_timeout`) until the revoked partitions'
//! events finish, abandon the rest, commit synchronously, and forget the partitions, so a
//! late completion can never store an offset for a partition we no longer own.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _, ConsumerContext, Rebalance};
use rdkafka::error::KafkaResult;
use rdkafka::{ClientContext, Offset, TopicPartitionList};
use tokio_util::sync::CancellationToken;

use super::catchup::CatchUp;
use super::offsets::{OffsetBook, TopicPartition};
use crate::health::Health;
use crate::telemetry::Metrics;

/// A cancellation token per owned partition: cancelled to abandon its in-flight events.
#[derive(Default)]
pub struct PartitionTokens {
    tokens: Mutex<HashMap<TopicPartition, CancellationToken>>,
}

impl PartitionTokens {
    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<TopicPartition, CancellationToken>> {
        self.tokens
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    pub fn get(&self, tp: &TopicPartition) -> Option<CancellationToken> {
        self.lock().get(tp).cloned()
    }

    fn insert(&self, tp: TopicPartition, parent: &CancellationToken) {
        self.lock().insert(tp, parent.child_token());
    }

    fn remove(&self, tp: &TopicPartition) -> Option<CancellationToken> {
        self.lock().remove(tp)
    }

    pub fn cancel_all(&self) {
        for token in self.lock().values() {
            token.cancel();
        }
    }
}

/// Builds the list to commit; `offset` is already the commit offset (next to read).
pub fn commit_list(commits: &[(TopicPartition, i64)]) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::with_capacity(commits.len());
    for (tp, offset) in commits {
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset))?;
    }
    Ok(tpl)
}

pub struct AnnotatorContext {
    pub book: Arc<OffsetBook>,
    pub tokens: Arc<PartitionTokens>,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub rebalance_timeout: Duration,
    /// Parent of every partition token.
    pub abandon_all: CancellationToken,
    pub catch_up: Arc<CatchUp>,
    pub assessments_topic: Arc<str>,
    /// A plain client (no group) for watermarks and metadata, queried off the poll thread.
    pub watermarks: Arc<BaseConsumer>,
    /// The consumed topics, for the partial-assignment check.
    pub topics: Vec<String>,
    /// The cache is local to this instance (embedded, memory): warn when other members own
    /// partitions, since joins then need a shared backend.
    pub local_cache: bool,
    /// Raised after every rebalance (the poll loop re-applies a backpressure pause).
    pub assignment_changed: Arc<std::sync::atomic::AtomicBool>,
    /// `auto.offset.reset` points at the end: a partition without a commit starts there.
    pub starts_at_end: bool,
}

/// Longest wait for one watermark or metadata answer.
const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

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
fn catch_up_range(client: &BaseConsumer, tp: &TopicPartition, starts_at_end: bool) -> (i64, i64) {
    let (low, high) = match client.fetch_watermarks(&tp.topic, tp.partition, QUERY_TIMEOUT) {
        Ok(watermarks) => watermarks,
        Err(e) => {
            tracing::warn!(error = %e, partition = tp.partition, "no end offset for catch-up; not waiting for it");
            return (0, 0);
        }
    };
    let wanted = (tp.topic.to_string(), tp.partition);
    let committed = match crate::kafka::committed_offsets(client, std::slice::from_ref(&wanted)) {
        Ok(offsets) => offsets.get(&wanted).copied(),
        Err(e) => {
            tracing::warn!(error = %e, partition = tp.partition, "no committed offset for catch-up; not waiting for it");
            return (0, 0);
        }
    };
    let start = committed.unwrap_or(if starts_at_end { high } else { low });
    (start, high)
}

impl ClientContext for AnnotatorContext {}

fn partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

impl AnnotatorContext {
    /// Records committed offsets in the book (for lag) and the metrics.
    pub fn record_committed(&self, commits: &[(TopicPartition, i64)]) {
        for (tp, offset) in self.book.confirm_committed(commits) {
            self.metrics
                .committed_offset
                .with_label_values(&[tp.topic.as_ref(), tp.partition.to_string().as_str()])
                .set(offset);
        }
    }

    fn revoke(&self, consumer: &BaseConsumer<Self>, tps: &[TopicPartition]) {
        self.metrics.rebalances.with_label_values(&["revoke"]).inc();
        let deadline = Instant::now() + self.rebalance_timeout;
        let drained = tokio::task::block_in_place(|| self.book.wait_drained(tps, deadline));
        if !drained {
            tracing::warn!(
                pending = self.book.pending(Some(tps)),
                "revoked partitions did not drain in time; abandoning their unfinished events"
            );
            for tp in tps {
                if let Some(token) = self.tokens.get(tp) {
                    token.cancel();
                }
            }
        }
        let commits = self.book.take_commits(Some(tps));
        if !commits.is_empty() {
            match commit_list(&commits).and_then(|tpl| consumer.commit(&tpl, CommitMode::Sync)) {
                Ok(()) => self.record_committed(&commits),
                Err(e) => tracing::warn!(error = %e, "commit on revoke failed"),
            }
        }
        for tp in tps {
            self.book.revoke(tp);
            self.catch_up.revoked(tp);
            if let Some(token) = self.tokens.remove(tp) {
                token.cancel();
            }
            let labels = [tp.topic.as_ref(), &tp.partition.to_string()];
            let _ = self.metrics.consumer_lag.remove_label_values(&labels);
            let _ = self.metrics.committed_offset.remove_label_values(&labels);
        }
        tracing::info!(partitions = tps.len(), drained, "partitions revoked");
    }
}

impl ConsumerContext for AnnotatorContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        match rebalance {
            Rebalance::Revoke(tpl) => {
                let tps: Vec<_> = partitions(tpl)
                    .into_iter()
                    .filter(|tp| self.book.owns(tp))
                    .collect();
                self.revoke(consumer, &tps);
            }
            Rebalance::Assign(tpl) => {
                self.metrics.rebalances.with_label_values(&["assign"]).inc();
                let mut assessments = Vec::new();
                for tp in partitions(tpl) {
                    self.tokens.insert(tp.clone(), &self.abandon_all);
                    self.book.assign(tp.clone());
                    if tp.topic == self.assessments_topic {
                        self.catch_up.assigned(tp.clone());
                        assessments.push(tp);
                    }
                }
                if !assessments.is_empty() {
                    let client = Arc::clone(&self.watermarks);
                    let catch_up = Arc::clone(&self.catch_up);
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
            Rebalance::Error(e) => {
                self.metrics.rebalances.with_label_values(&["error"]).inc();
                tracing::warn!(error = %e, "rebalance error");
            }
        }
    }

    fn post_rebalance(&self, _consumer: &BaseConsumer<Self>, _rebalance: &Rebalance<'_>) {
        self.assignment_changed
            .store(true, std::sync::atomic::Ordering::Release);
        let owned = self.book.owned().len();
        self.health.set_assigned(owned > 0);
        if self.local_cache && owned > 0 {
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

    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        // The request can succeed while single partitions fail (e.g. ILLEGAL_GENERATION
        // during a rebalance): check each one and hand failed ones out again.
        let mut failed = Vec::new();
        let mut committed = Vec::new();
        for e in offsets.elements() {
            let tp = TopicPartition::new(e.topic(), e.partition());
            match (&result, e.error(), e.offset()) {
                (Ok(()), Ok(()), Offset::Offset(o)) => committed.push((tp, o)),
                (Ok(()), Ok(()), _) => {}
                _ => failed.push(tp),
            }
        }
        self.record_committed(&committed);
        if !failed.is_empty() {
            let error = result
                .err()
                .map_or_else(|| "partition error".to_owned(), |e| e.to_string());
            tracing::warn!(error = %error, partitions = failed.len(), "offset commit failed; it will be retried");
            self.book.commit_failed(&failed);
        }
    }
}
