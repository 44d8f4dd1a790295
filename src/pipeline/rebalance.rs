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

use super::offsets::{OffsetBook, TopicPartition};
use crate::admin::Health;
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
}

impl ClientContext for AnnotatorContext {}

fn partitions(tpl: &TopicPartitionList) -> Vec<TopicPartition> {
    tpl.elements()
        .iter()
        .map(|e| TopicPartition::new(e.topic(), e.partition()))
        .collect()
}

impl AnnotatorContext {
    /// Records committed offsets in the metrics.
    pub fn record_committed(&self, commits: &[(TopicPartition, i64)]) {
        for (tp, offset) in commits {
            self.metrics
                .committed_offset
                .with_label_values(&[tp.topic.as_ref(), tp.partition.to_string().as_str()])
                .set(*offset);
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
            if let Some(token) = self.tokens.remove(tp) {
                token.cancel();
            }
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
                for tp in partitions(tpl) {
                    self.tokens.insert(tp.clone(), &self.abandon_all);
                    self.book.assign(tp);
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
        self.health.set_assigned(!self.book.owned().is_empty());
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
