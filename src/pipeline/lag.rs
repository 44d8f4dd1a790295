//! Consumer lag per owned partition: the high watermark minus the offset last sent to the
//! broker as a commit, never negative. Watermarks are network calls, so they are read off
//! the poll loop, one reading at a time.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use rdkafka::consumer::Consumer as _;

use super::offsets::OffsetBook;
use crate::kafka::{self, QUERY_TIMEOUT};
use crate::telemetry::Metrics;

pub struct Lag {
    /// A plain client for watermarks.
    client: Arc<crate::kafka::Reader>,
    /// Owned partitions and their committed offsets.
    book: Arc<OffsetBook>,
    /// `annotator_consumer_lag`.
    metrics: Metrics,
    /// Set while a reading runs, so readings never pile up behind a slow broker.
    running: Arc<AtomicBool>,
    /// `auto.offset.reset` points at the end (a partition without a commit has no lag).
    starts_at_end: bool,
}

impl Lag {
    pub fn new(
        client: Arc<crate::kafka::Reader>,
        book: Arc<OffsetBook>,
        metrics: Metrics,
        starts_at_end: bool,
    ) -> Self {
        Self {
            client,
            book,
            metrics,
            running: Arc::default(),
            starts_at_end,
        }
    }

    /// Starts a reading on the blocking pool unless one is running.
    pub fn update(&self) {
        if self.running.swap(true, Ordering::AcqRel) {
            return;
        }
        let running = Arc::clone(&self.running);
        let client = Arc::clone(&self.client);
        let book = Arc::clone(&self.book);
        let metrics = self.metrics.clone();
        let starts_at_end = self.starts_at_end;
        tokio::task::spawn_blocking(move || {
            for tp in book.owned() {
                let Ok((low, high)) =
                    client.fetch_watermarks(&tp.topic, tp.partition, QUERY_TIMEOUT)
                else {
                    continue;
                };
                // The broker answers: a quiet instance notices it is back too.
                client.context().0.reachable();
                // Read the committed offset after the watermark, so a busy partition reads
                // low, never negative. A partition nothing arrived on since the assignment
                // (a quiet restart) is measured from the group's commit at the broker.
                let labels = [tp.topic.to_string(), tp.partition.to_string()];
                let position = book.lag_position(&tp).or_else(|| {
                    let wanted = (tp.topic.to_string(), tp.partition);
                    let committed =
                        kafka::committed_offsets(&client, std::slice::from_ref(&wanted))
                            .ok()?
                            .get(&wanted)
                            .copied();
                    if let Some(committed) = committed
                        && book.owns(&tp)
                    {
                        // The group's commit, until this instance commits one itself.
                        metrics
                            .committed_offset
                            .with_label_values(&[labels[0].as_str(), labels[1].as_str()])
                            .set(committed);
                    }
                    Some(committed.unwrap_or(if starts_at_end { high } else { low }))
                });
                let Some(position) = position else {
                    continue;
                };
                if !book.owns(&tp) {
                    continue;
                }
                let labels = [labels[0].as_str(), labels[1].as_str()];
                metrics
                    .consumer_lag
                    .with_label_values(&labels)
                    .set((high - position).max(0));
                // Revoked while this reading ran: its series were removed after the book let
                // the partition go, so looking again after setting never leaves one behind.
                if !book.owns(&tp) {
                    let _ = metrics.consumer_lag.remove_label_values(&labels);
                    let _ = metrics.committed_offset.remove_label_values(&labels);
                }
            }
            running.store(false, Ordering::Release);
        });
    }
}
