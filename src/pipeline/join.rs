//! The join: an outcome that names its assessment only by correlation key waits (parked,
//! without an in-flight slot and without blocking other lanes) until the key is in the
//! cache, or until `delivery.join_grace` runs out after catch-up: then it is `unjoined`.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::catchup::CatchUp;
use super::offsets::OffsetBook;
use super::store::Store;
use crate::cache::Lookup;
use crate::domain::assessment::{AssessmentName, CorrelationKey, ProjectAllowList};
use crate::failure::{DeadLetterReason, Failure};
use crate::telemetry::Metrics;

pub struct Joiner {
    /// Where the mappings are.
    pub store: Arc<Store>,
    /// Whether the owned `assessments` partitions are read up to their end at assignment.
    pub catch_up: Arc<CatchUp>,
    /// Commit positions, which the catch-up compares with its targets.
    pub book: Arc<OffsetBook>,
    /// A cached name must belong to an allowed project too.
    pub allowed: ProjectAllowList,
    /// `delivery.join_grace`: how long an outcome waits after catch-up.
    pub grace: Duration,
    /// `delivery.join_retry`: how often a parked outcome looks again.
    pub retry: Duration,
    /// `annotator_join_total`, `annotator_parked`, `annotator_join_wait_seconds`.
    pub metrics: Metrics,
}

/// One outcome's wait for its key; counted as parked from its first miss until dropped.
pub struct JoinWait<'a> {
    started: Instant,
    parked: bool,
    metrics: &'a Metrics,
}

impl Drop for JoinWait<'_> {
    fn drop(&mut self) {
        if self.parked {
            self.metrics.parked.dec();
            self.metrics
                .join_wait
                .observe(self.started.elapsed().as_secs_f64());
        }
    }
}

impl Joiner {
    /// Counts an outcome whose assessment was named inline.
    pub fn inline(&self) {
        self.metrics.joins.with_label_values(&["inline"]).inc();
    }

    /// A new wait, starting now.
    pub fn wait(&self) -> JoinWait<'_> {
        JoinWait {
            started: Instant::now(),
            parked: false,
            metrics: &self.metrics,
        }
    }

    /// Looks `key` up until it is found or the grace period ends (a dead letter). A cache
    /// failure returns at once (to be retried with the same `wait`).
    pub async fn join(
        &self,
        key: &CorrelationKey,
        wait: &mut JoinWait<'_>,
    ) -> Result<AssessmentName, Failure> {
        loop {
            // The grace period counts from when this instance has read its assessments
            // partitions up to where they ended at assignment; the state is taken before the
            // lookup, so a miss after catch-up is real.
            let caught_up_before = self.catch_up.caught_up_since(&self.book);
            match self.store.get(key).await? {
                Lookup::Hit(name) => {
                    let label = if wait.parked { "waited" } else { "hit" };
                    self.metrics.joins.with_label_values(&[label]).inc();
                    return self.allowed.check(&name).map(|()| name).map_err(|e| {
                        Failure::dead_letter(
                            DeadLetterReason::InvalidReference,
                            format!("cached assessment: {e}"),
                        )
                    });
                }
                Lookup::Invalid => {
                    return Err(Failure::dead_letter(
                        DeadLetterReason::InvalidReference,
                        "cached value for the key is not a valid assessment name",
                    ));
                }
                Lookup::Miss => {
                    let expired = caught_up_before
                        .is_some_and(|since| wait.started.max(since).elapsed() >= self.grace);
                    if expired {
                        self.metrics.joins.with_label_values(&["unjoined"]).inc();
                        return Err(Failure::dead_letter(
                            DeadLetterReason::Unjoined,
                            format!(
                                "key not in the cache after {}",
                                humantime::format_duration(self.grace)
                            ),
                        ));
                    }
                    if !wait.parked {
                        wait.parked = true;
                        self.metrics.parked.inc();
                    }
                    tokio::time::sleep(self.retry).await;
                }
            }
        }
    }
}
