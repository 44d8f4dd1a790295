//! One event's run, after planning: wait for its lane, then store the mapping, or join,
//! skip a duplicate and annotate; set it aside when it fails for good; remember it; release
//! its offset. Every failure is settled in [`Runner::settle`], the one place that matches
//! on the failure class.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio_util::sync::CancellationToken;

use super::deliver::{Probe, Sender};
use super::join::Joiner;
use super::lanes::LaneSlot;
use super::message::Message;
use super::offsets::{OffsetBook, Ticket};
use super::plan::{Plan, Target};
use super::store::Store;
use crate::dead_letter::DeadLetterWriter;
use crate::domain::assessment::{AssessmentName, CorrelationKey};
use crate::failure::{Backoff, DeadLetter, Failure};
use crate::telemetry::Metrics;

/// Tries to remember an annotated event id before giving up (its offset is not held for it:
/// a failure only weakens duplicate suppression).
const REMEMBER_ATTEMPTS: u32 = 3;

/// How a step that keeps failing ends.
enum Stop {
    /// It failed for good: set the event aside.
    DeadLetter(DeadLetter),
    /// It ran out of tries (only for steps that may give up).
    GaveUp(Failure),
}

/// One event's state across the retries of its steps.
struct Attempt {
    backoff: Backoff,
    /// Whether this event's task probes a closed halt gate.
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
        let event_id = plan.as_ref().map_or("", Plan::event_id);
        let span = tracing::info_span!(
            "event",
            topic = %msg.tp.topic,
            partition = msg.tp.partition,
            offset = msg.offset,
            event_id = %event_id
        );
        let work = async {
            if let Some(slot) = &slot {
                slot.ready().await;
            }
            let result = self.execute(&msg, plan).await;
            self.metrics
                .event_finished(msg.kind.label(), result, msg.timestamp_ms);
            self.book.done(&ticket);
        };
        tokio::select! {
            biased;
            () = tracing::Instrument::instrument(work, span) => {}
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
            Ok(Plan::Store { key, name }) => {
                Box::pin(self.until_done(None, || self.store.put(&key, &name)))
                    .await
                    .map(|()| "cached")
            }
            Ok(Plan::Annotate {
                event_id,
                target,
                body,
            }) => self.annotate(msg, &event_id, target, body).await,
            Err(letter) => Err(Stop::DeadLetter(letter)),
        };
        match result {
            Ok(label) => label,
            Err(Stop::DeadLetter(letter)) => {
                // Boxed: a rare path, kept out of every event task's size.
                Box::pin(self.write_dead_letter(msg, &letter)).await;
                "dead_lettered"
            }
            // Only steps with a try limit give up, and none of them decides the result.
            Err(Stop::GaveUp(_)) => "skipped",
        }
    }

    async fn annotate(
        &self,
        msg: &Message,
        event_id: &str,
        target: Target,
        body: Bytes,
    ) -> Result<&'static str, Stop> {
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
            .until_done(None, || self.store.is_done(event_id, &record))
            .await?
        {
            tracing::debug!("already annotated; not sent again");
            return Ok("duplicate");
        }
        let mut attempt = self.attempt();
        let slot = loop {
            let sent = self.sender.send(&name, &body, &attempt.probe).await;
            match sent {
                Ok(slot) => break slot,
                Err(failure) => self.settle(failure, &mut attempt).await?,
            }
        };
        // The in-flight slot is held until the event is remembered, so a crash repeats at
        // most `max_in_flight` annotated events.
        if let Err(Stop::GaveUp(failure)) = self
            .until_done(Some(REMEMBER_ATTEMPTS), || {
                self.store.remember(event_id, &record)
            })
            .await
        {
            self.metrics.not_remembered(&failure);
        }
        drop(slot);
        tracing::debug!("annotated");
        Ok("annotated")
    }

    /// Waits for the assessment of `key`; cache failures are settled like any other.
    async fn join(&self, key: &CorrelationKey) -> Result<AssessmentName, Stop> {
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
    async fn settle(&self, failure: Failure, attempt: &mut Attempt) -> Result<(), Stop> {
        Box::pin(self.settle_inner(failure, attempt)).await
    }

    async fn settle_inner(&self, failure: Failure, attempt: &mut Attempt) -> Result<(), Stop> {
        match failure {
            Failure::Retry(retry) => {
                let delay = attempt.backoff.next_delay(retry.after);
                self.metrics.retrying(retry.cause, &retry.detail, delay);
                tokio::time::sleep(delay).await;
                Ok(())
            }
            Failure::DeadLetter(letter) => Err(Stop::DeadLetter(letter)),
            Failure::Halt(halt) => {
                self.sender.gate().halt(&halt, &mut attempt.probe).await;
                Ok(())
            }
        }
    }

    /// Runs `step` until it succeeds, settling each failure; with `tries`, gives up after
    /// that many.
    async fn until_done<T, F, Fut>(&self, tries: Option<u32>, mut step: F) -> Result<T, Stop>
    where
        F: FnMut() -> Fut,
        Fut: Future<Output = Result<T, Failure>>,
    {
        let mut attempt = self.attempt();
        loop {
            let done = step().await;
            match done {
                Ok(value) => return Ok(value),
                Err(failure) if tries.is_some_and(|n| attempt.backoff.attempts() + 1 >= n) => {
                    return Err(Stop::GaveUp(failure));
                }
                Err(failure) => self.settle(failure, &mut attempt).await?,
            }
        }
    }

    /// Writes a dead letter, retrying until the broker acknowledges it.
    async fn write_dead_letter(&self, msg: &Message, letter: &DeadLetter) {
        let source = msg.source();
        // The writer only ever asks for a retry.
        if self
            .until_done(None, || self.dead_letters.write(&source, letter))
            .await
            .is_ok()
        {
            self.metrics.dead_lettered(letter);
        }
    }
}
