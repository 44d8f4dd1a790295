//! Named events: where a fact is both logged and counted, one call does both, so the log
//! line and the metric cannot drift apart. Lines about one event are written inside its
//! `event` span, which carries topic, partition, offset and `event_id`: they do not repeat
//! them.

use std::time::Duration;

use super::Metrics;
use crate::failure::{DeadLetter, RetryCause};

impl Metrics {
    /// An event finished with `result` (a label of `annotator_events_total`).
    pub fn event_finished(&self, topic: &str, result: &str, timestamp_ms: Option<i64>) {
        self.events.with_label_values(&[topic, result]).inc();
        if let Some(ts) = timestamp_ms {
            let age = chrono::Utc::now()
                .timestamp_millis()
                .saturating_sub(ts)
                .max(0);
            #[allow(clippy::cast_precision_loss)]
            self.end_to_end
                .with_label_values(&[topic])
                .observe(age as f64 / 1000.0);
        }
    }

    /// One annotate call answered (`status`) or failed without an answer (`None`).
    pub fn call_finished(&self, status: Option<u16>, elapsed: Duration) {
        self.requests
            .with_label_values(&[Self::status_class(status)])
            .inc();
        self.request_duration.observe(elapsed.as_secs_f64());
    }

    /// A step failed and is tried again after `delay`.
    pub fn retrying(&self, cause: RetryCause, detail: &str, delay: Duration) {
        let delay_ms = u64::try_from(delay.as_millis()).unwrap_or(u64::MAX);
        match cause {
            RetryCause::Cache => {
                // Once, then at most every 30 s: each event's retry would repeat it (the
                // cache watch reports a server that stops answering; this also catches one
                // that answers pings but fails operations: READONLY, OOM, ACLs).
                self.cache_errors.inc();
                if self.cache_warn.due() {
                    tracing::warn!(error = %detail, delay_ms, "cache operation failed; events that need it are retried (said at most every 30 s)");
                } else {
                    tracing::debug!(error = %detail, delay_ms, "cache operation failed; retrying");
                }
            }
            RetryCause::DeadLetterWrite => {
                self.retries.with_label_values(&[cause.as_str()]).inc();
                tracing::warn!(error = %detail, delay_ms, "dead-letter write failed; retrying");
            }
            _ => {
                self.retries.with_label_values(&[cause.as_str()]).inc();
                tracing::debug!(cause = cause.as_str(), detail = %detail, delay_ms, "annotate failed; retrying");
            }
        }
    }

    /// An event task panicked: its offset stays unfinished, so its partition's commit point
    /// stops there until the partition is let go.
    pub fn event_crashed(&self, place: &str, panic: &str, stalled: usize) {
        self.event_crashes.inc();
        self.stalled_partitions
            .set(i64::try_from(stalled).unwrap_or(i64::MAX));
        tracing::error!(place = %place, panic = %panic, "an event crashed; its partition's commit point stays before it until the partition is revoked or the service restarts (it is then retried)");
    }

    /// An event was written to the dead-letter topic and acknowledged.
    /// `source` is the event's `topic/partition/offset`.
    pub fn dead_lettered(&self, letter: &DeadLetter, source: &str) {
        self.dead_letters
            .with_label_values(&[letter.reason.as_str()])
            .inc();
        self.remember_dead_letter(super::RecentDeadLetter {
            at_ms: crate::health::unix_ms(),
            reason: letter.reason.as_str().to_owned(),
            detail: letter.detail.clone(),
            source: source.to_owned(),
        });
        tracing::warn!(
            reason = letter.reason.as_str(), detail = %letter.detail, status = letter.status,
            "event dead-lettered"
        );
    }

    /// The service is misconfigured (credentials refused or unavailable, a wrong endpoint):
    /// every call stops.
    pub fn halted(&self, status: Option<u16>, detail: &str) {
        self.halted.set(1);
        tracing::error!(status, detail = %detail, "annotate calls halted: the endpoint refuses our credentials, none could be had, or recaptcha.endpoint is wrong; probing until a call goes through");
    }

    /// A probe was answered: calls go out again.
    pub fn resumed(&self) {
        self.halted.set(0);
        tracing::info!("annotate endpoint answers again; resuming");
    }

    /// A project answered 403: its calls stop, the other projects flow.
    pub fn project_halted(&self, project: &str, detail: &str, halted: usize) {
        self.halted_projects
            .set(i64::try_from(halted).unwrap_or(i64::MAX));
        tracing::error!(project = %project, detail = %detail, "annotate calls for this project halted: the endpoint answers 403; its events wait and are probed, the other projects flow");
    }

    /// A project's probe was answered: its calls go out again.
    pub fn project_resumed(&self, project: &str, halted: usize) {
        self.halted_projects
            .set(i64::try_from(halted).unwrap_or(i64::MAX));
        tracing::info!(project = %project, "annotate endpoint answers for this project again; resuming it");
    }

    /// The periodic cache ping changed its answer (`error` is `None` when it answers again).
    pub fn cache_ping_changed(&self, cache: &str, error: Option<&str>) {
        match error {
            Some(error) => {
                tracing::warn!(cache = %cache, error = %error, "cache unreachable; events that need it wait (reported again at most every 30 s)")
            }
            None => tracing::info!(cache = %cache, "cache reachable again"),
        }
    }

    /// The cache still does not answer.
    pub fn cache_still_down(&self, cache: &str, down: std::time::Duration, failures: u64) {
        tracing::warn!(cache = %cache, down_s = down.as_secs(), failed_pings = failures, "cache still unreachable");
    }

    /// The quota budget granted a call after `waited`.
    pub fn budget_granted(&self, waited: Duration) {
        self.budget_granted.inc();
        self.budget_wait.inc_by(waited.as_secs_f64());
    }

    /// The budget's Redis call failed: this instance spends its `share` locally.
    pub fn budget_fallback(&self, error: &str, share: f64) {
        self.budget_fallback.set(1);
        tracing::warn!(error = %error, share_per_second = share, "quota budget: Redis unreachable; this instance spends its share of the budget locally until Redis answers");
    }

    /// The budget's Redis answers again.
    pub fn budget_shared_again(&self) {
        self.budget_fallback.set(0);
        tracing::info!("quota budget: Redis answers again; the group shares one budget");
    }

    /// A 429 for a project (`project`: its label).
    pub fn throttled(&self, project: &str) {
        self.throttled.with_label_values(&[project]).inc();
    }

    /// A project's own rate after 429s changed to `rate` calls per second.
    pub fn budget_throttle_changed(&self, project: &str, rate: f64) {
        self.effective_rate.with_label_values(&[project]).set(rate);
        tracing::debug!(project = %project, rate, "rate after 429s");
    }

    /// The rate this instance may spend for `project` (`all`: the budget).
    pub fn effective_rate(&self, project: &str, rate: f64) {
        self.effective_rate.with_label_values(&[project]).set(rate);
    }
}

/// A log line said at most once per period.
#[derive(Clone)]
pub struct Every {
    period: std::time::Duration,
    last: std::sync::Arc<std::sync::Mutex<Option<std::time::Instant>>>,
}

impl Every {
    pub fn new(period: std::time::Duration) -> Self {
        Self {
            period,
            last: std::sync::Arc::default(),
        }
    }

    /// Whether the line is due now (then it is not again for a period).
    pub fn due(&self) -> bool {
        let mut last = self
            .last
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if last.is_some_and(|t| t.elapsed() < self.period) {
            return false;
        }
        *last = Some(std::time::Instant::now());
        true
    }
}
