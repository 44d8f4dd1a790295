//! The one commit routine: the periodic tick ([`Committer::commit_moved`]) and revocation
//! and shutdown ([`Committer::commit_final`]) all commit through `Committer::commit`; the
//! broker's answers come back through [`Committer::on_result`].

use std::sync::Arc;

use rdkafka::consumer::{CommitMode, Consumer, ConsumerContext};
use rdkafka::error::KafkaResult;
use rdkafka::{Offset, TopicPartitionList};

use super::offsets::{OffsetBook, TopicPartition};
use crate::telemetry::Metrics;

/// Builds the list to commit; `offset` is already the commit offset (next to read).
fn commit_list(commits: &[(TopicPartition, i64)]) -> KafkaResult<TopicPartitionList> {
    let mut tpl = TopicPartitionList::with_capacity(commits.len());
    for (tp, offset) in commits {
        tpl.add_partition_offset(&tp.topic, tp.partition, Offset::Offset(*offset))?;
    }
    Ok(tpl)
}

pub struct Committer {
    /// Which offsets are finished, and which commits were sent and confirmed.
    book: Arc<OffsetBook>,
    /// `annotator_committed_offset`.
    metrics: Metrics,
}

impl Committer {
    pub fn new(book: Arc<OffsetBook>, metrics: Metrics) -> Self {
        Self { book, metrics }
    }

    /// The periodic commit: the finished offsets that moved since they were last handed out,
    /// of every owned partition, sent asynchronously. It is recorded when sent; a failure
    /// reported later hands the offsets out again.
    pub fn commit_moved<C: ConsumerContext, K: Consumer<C>>(&self, consumer: &K) {
        self.commit(consumer, self.book.take_commits(None), CommitMode::Async);
    }

    /// The final commit of partitions this instance lets go (revoke, shutdown): every one of
    /// `tps` at its finished offset, moved or not, synchronously.
    pub fn commit_final<C: ConsumerContext, K: Consumer<C>>(
        &self,
        consumer: &K,
        tps: &[TopicPartition],
    ) {
        self.commit(consumer, self.book.final_commits(tps), CommitMode::Sync);
    }

    /// The one commit routine both go through.
    fn commit<C: ConsumerContext, K: Consumer<C>>(
        &self,
        consumer: &K,
        commits: Vec<(TopicPartition, i64)>,
        mode: CommitMode,
    ) {
        if commits.is_empty() {
            return;
        }
        match commit_list(&commits).and_then(|tpl| consumer.commit(&tpl, mode)) {
            Ok(()) => self.record_committed(&commits),
            Err(e) => {
                tracing::warn!(error = %e, mode = ?mode, "offset commit failed");
                let tps: Vec<_> = commits.into_iter().map(|(tp, _)| tp).collect();
                self.book.commit_failed(&tps);
            }
        }
    }

    /// Records committed offsets in the book (for lag) and the metrics.
    fn record_committed(&self, commits: &[(TopicPartition, i64)]) {
        for (tp, offset) in self.book.confirm_committed(commits) {
            self.metrics
                .committed_offset
                .with_label_values(&[tp.topic.as_ref(), tp.partition.to_string().as_str()])
                .set(offset);
        }
    }

    /// The broker's answer to an asynchronous commit. The request can succeed while single
    /// partitions fail (e.g. ILLEGAL_GENERATION during a rebalance): each one is checked and
    /// failed ones are handed out again.
    pub fn on_result(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
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
