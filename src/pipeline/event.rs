//! One event's run, after planning: wait for its lane, then store the mapping, or join,
//! skip a duplicate and annotate; set it aside when it fails for good; remember it; release
//! its offset. Every failure is settled in [`Runner::settle`], the one place that matches
//! on the failure class.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use futures::FutureExt as _;
use tokio_util::sync::CancellationToken;

use super::deliver::Sender;
use super::gate::Probe;
use super::join::Joiner;
use super::lanes::LaneSlot;
use super::message::Message;
use super::offsets::{OffsetBook, Ticket};
use super::plan::{Plan, Target};
use super::store::Store;
use crate::dead_letter::DeadLetterWriter;
use crate::domain::assessment::{AssessmentName, CorrelationKey};
use crate::failure::{Backoff, DeadLetter, Failure};
use crate::health::Health;
use crate::telemetry::Metrics;

/// One event's state across the retries of its steps.
struct Attempt {
    backoff: Backoff,
    /// The halt gates this event's task probes, if any.
    probe: Probe,
}

/// Runs events; one per process, shared by every event task (built in `app.rs`).
pub struct Runner {
    /// Mapping writes and duplicate checks.
    pub store: Arc<Store>,
    /// Outcomes that name their assessment by key.
    pub joiner: Joiner,
    /// The annotate calls.
    pub sender: Sender,
    /// Where failed events are set aside.
    pub dead_letters: DeadLetterWriter,
    /// Marks offsets finished.
    pub book: Arc<OffsetBook>,
    /// Events finished by result, retries, dead letters.
    pub metrics: Metrics,
    /// Partitions stalled by a crashed event show in `/readyz`.
    pub health: Arc<Health>,
    /// `delivery.retry_initial` and `delivery.retry_max`.
    pub retry: (Duration, Duration),
    /// Decide and log every annotation, call nothing.
    pub dry_run: bool,
}

impl Runner {
    /// The asynchronous part of one event. The offset is released when it finishes; when
    /// `abandon` fires first (revoked partition, shutdown deadline) it is not, and the event
    /// is redelivered to whoever owns the partition next.
    pub async fn run(
        self: Arc<Self>,
        msg: Message,
        ticket: Ticket,
        plan: Result<Plan, DeadLetter>,
        slot: Option<LaneSlot>,
        abandon: CancellationToken,
    ) {
        // Every log line inside (retries, cache trouble, halts, dead letters) carries the
        // event's place.
        // Known from the plan; for an event the plan refused (an unknown outcome, a bad
        // reference), read from its JSON if it has one. Absent (not "") when there is none.
        let event_id: Option<std::borrow::Cow<'_, str>> = match &plan {
            Ok(plan) => Some(plan.event_id())
                .filter(|id| !id.is_empty())
                .map(Into::into),
            // Not for an event refused for its size: it is set aside unread.
            Err(letter)
                if letter.reason != crate::failure::DeadLetterReason::Decode
                    || msg
                        .payload
                        .as_ref()
                        .is_some_and(|p| p.len() <= PEEK_AT_MOST) =>
            {
                peek_event_id(msg.payload.as_deref()).map(Into::into)
            }
            Err(_) => None,
        };
        let span = tracing::info_span!(
            "event",
            topic = %msg.tp.topic,
            partition = msg.tp.partition,
            offset = msg.offset,
            event_id = event_id.as_deref()
        );
        let work = async {
            if let Some(slot) = &slot {
                slot.ready().await;
            }
            let result = self.execute(&msg, plan).await;
            self.metrics
                .event_finished(&msg.tp.topic, result, msg.timestamp_ms);
            self.book.done(&ticket);
        };
        // A panic in one event must not take the stream down: it is caught here, its offset
        // stays unfinished (nothing says the annotation happened), and the stall is shown.
        let work = std::panic::AssertUnwindSafe(work).catch_unwind();
        tokio::select! {
            biased;
            finished = tracing::Instrument::instrument(work, span) => {
                if let Err(panic) = finished {
                    let partition = format!("{}/{}", msg.tp.topic, msg.tp.partition);
                    let stalled = self.health.add_stalled(partition.clone());
                    let text = panic
                        .downcast_ref::<&str>()
                        .map(|s| (*s).to_owned())
                        .or_else(|| panic.downcast_ref::<String>().cloned())
                        .unwrap_or_default();
                    self.metrics.event_crashed(&format!("{partition}/{}", msg.offset), &text, stalled);
                }
            }
            () = abandon.cancelled() => {
                // Outside the event's span (it went with the work), so the place is named.
                tracing::debug!(topic = %msg.tp.topic, partition = msg.tp.partition, offset = msg.offset, "event abandoned; it will be redelivered");
            }
        }
        drop(slot);
    }

    /// Returns the result label.
    async fn execute(&self, msg: &Message, plan: Result<Plan, DeadLetter>) -> &'static str {
        let result = match plan {
            Ok(Plan::Skip) => Ok("skipped"),
            // Boxed, like every path but the call's, to keep event tasks small.
            // A dry run writes nothing anywhere: a replayed old mapping could overwrite a
            // newer one that real runs join with.
            Ok(Plan::Store { key, name }) if self.dry_run => {
                tracing::info!(assessment = %name, key_len = key.as_str().len(), "dry run: would store the mapping");
                Ok("dry_run")
            }
            Ok(Plan::Forget { key }) if self.dry_run => {
                tracing::info!(
                    key_len = key.as_str().len(),
                    "dry run: would forget the mapping"
                );
                Ok("dry_run")
            }
            Ok(Plan::Forget { key }) => Box::pin(self.until_done(|| self.store.remove(&key)))
                .await
                .map(|()| "forgotten"),
            Ok(Plan::Store { key, name }) => {
                Box::pin(self.until_done(|| self.store.put(&key, &name)))
                    .await
                    .map(|()| "cached")
            }
            Ok(Plan::Annotate {
                event_id,
                target,
                body,
            }) => self.annotate(msg, &event_id, target, body).await,
            Err(letter) => Err(letter),
        };
        match result {
            Ok(label) => label,
            Err(letter) => {
                // Boxed: a rare path, kept out of every event task's size.
                Box::pin(self.write_dead_letter(msg, &letter)).await;
                if self.dry_run {
                    "dry_run"
                } else {
                    "dead_lettered"
                }
            }
        }
    }

    async fn annotate(
        &self,
        msg: &Message,
        event_id: &str,
        target: Target,
        body: Bytes,
    ) -> Result<&'static str, DeadLetter> {
        let name = match target {
            Target::Known(name) => {
                self.joiner.inline();
                name
            }
            // Boxed: a parked join's state would otherwise add to the size of every task.
            Target::Join(key) => Box::pin(self.join(&key)).await?,
        };
        if self.dry_run {
            // The decision only: account ids and phone numbers never reach the logs.
            let mut decision: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
            if let Some(fields) = decision.as_object_mut() {
                fields.retain(|k, _| matches!(k.as_str(), "annotation" | "reasons"));
            }
            tracing::info!(assessment = %name, decision = %decision, "dry run: would annotate");
            return Ok("dry_run");
        }
        let record = msg.identity();
        if self
            .until_done(|| self.store.is_done(event_id, &record))
            .await?
        {
            tracing::debug!("already annotated; not sent again");
            return Ok("duplicate");
        }
        let mut attempt = self.attempt();
        let slot = loop {
            let sent = self
                .sender
                .send(&name, &body, &record, &mut attempt.probe)
                .await;
            match sent {
                Ok(slot) => break slot,
                Err(failure) => self.settle(failure, &mut attempt).await?,
            }
        };
        // The in-flight slot is held until the event is remembered, so a crash repeats at
        // most `max_in_flight` annotated events.
        // Retried like every cache write: a later event of the same assessment must not be
        // suppressed on redelivery while this one is sent again.
        self.until_done(|| self.store.remember(event_id, &record))
            .await?;
        drop(slot);
        tracing::debug!("annotated");
        Ok("annotated")
    }

    /// Waits for the assessment of `key`; cache failures are settled like any other.
    async fn join(&self, key: &CorrelationKey) -> Result<AssessmentName, DeadLetter> {
        let mut attempt = self.attempt();
        let mut wait = self.joiner.wait();
        loop {
            let joined = self.joiner.join(key, &mut wait).await;
            match joined {
                Ok(name) => return Ok(name),
                Err(failure) => self.settle(failure, &mut attempt).await?,
            }
        }
    }

    fn attempt(&self) -> Attempt {
        Attempt {
            backoff: Backoff::new(self.retry.0, self.retry.1),
            probe: Probe::default(),
        }
    }

    /// What happens after `failure`: the one place that matches on the failure class.
    /// `Ok` when the step is to be tried again (after the wait this did), else why it stops.
    /// Boxed: failures are the rare path, and their waits would otherwise add to the size of
    /// every event task.
    async fn settle(&self, failure: Failure, attempt: &mut Attempt) -> Result<(), DeadLetter> {
        Box::pin(self.settle_inner(failure, attempt)).await
    }

    async fn settle_inner(
        &self,
        failure: Failure,
        attempt: &mut Attempt,
    ) -> Result<(), DeadLetter> {
        match failure {
            Failure::Retry(retry) => {
                let delay = attempt.backoff.next_delay(retry.after);
                self.metrics.retrying(retry.cause, &retry.detail, delay);
                tokio::time::sleep(delay).await;
                Ok(())
            }
            Failure::DeadLetter(letter) => Err(letter),
            // The sender closed the gate of the halt's scope; the next try waits there (one
            // probe per `delivery.halt_retry`), holding the commit point.
            Failure::Halt(_) => Ok(()),
        }
    }

    /// Runs `step` until it succeeds, settling each failure.
    async fn until_done<T, F, Fut>(&self, mut step: F) -> Result<T, DeadLetter>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut attempt = self.attempt();
        loop {
            let done = step().await;
            match done {
                Ok(value) => return Ok(value),
                Err(failure) => self.settle(failure, &mut attempt).await?,
            }
        }
    }

    /// Writes a dead letter, retrying until the broker acknowledges it. A record already
    /// dead-lettered (its commit was lost to a rebalance or a coordinator's failover, and it
    /// came again) is not written twice, so a replay cannot annotate it twice either.
    async fn write_dead_letter(&self, msg: &Message, letter: &DeadLetter) {
        if self.dry_run {
            tracing::info!(reason = letter.reason.as_str(), detail = %letter.detail, "dry run: would dead-letter the event");
            return;
        }
        let record = msg.identity();
        let id = format!("{DEAD_LETTERED}{record}");
        // Every step below only ever asks for a retry.
        if matches!(
            self.until_done(|| self.store.is_done(&id, &record)).await,
            Ok(true)
        ) {
            tracing::debug!("already dead-lettered; not written again");
            return;
        }
        let source = msg.source();
        if self
            .until_done(|| self.dead_letters.write(&source, letter))
            .await
            .is_ok()
        {
            let place = format!("{}/{}/{}", msg.tp.topic, msg.tp.partition, msg.offset);
            self.metrics.dead_lettered(letter, &place);
            let _ = self.until_done(|| self.store.remember(&id, &record)).await;
        }
    }
}

/// Prefix of the done-store ids of dead-lettered records (`<prefix><topic>/<partition>/
/// <offset>/<timestamp>`), apart from the `event_id`s of annotated events.
const DEAD_LETTERED: &str = "dead-lettered/";

/// Largest payload whose `event_id` is looked for after a decode failure.
const PEEK_AT_MOST: usize = 64 * 1024;

/// The `event_id` of a JSON payload, if it has a string one (only for events the plan
/// refused, so their log lines still name them).
fn peek_event_id(payload: Option<&[u8]>) -> Option<String> {
    #[derive(serde::Deserialize)]
    struct Id {
        event_id: Option<String>,
    }
    serde_json::from_slice::<Id>(payload?)
        .ok()?
        .event_id
        .filter(|id| !id.is_empty())
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;
