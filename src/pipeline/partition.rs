//! One event from its Kafka message to its release: plan (decode, rules, reference), then
//! the asynchronous part (join, annotate with retries, dead letter), then the offset is
//! marked finished.

use std::sync::Arc;
use std::time::{Duration, Instant};

use bytes::Bytes;
use tokio::sync::{OwnedMutexGuard, Semaphore, watch};
use tokio_util::sync::CancellationToken;

use super::lanes::{LaneSlot, Lanes};
use super::offsets::{OffsetBook, Ticket, TopicPartition};
use crate::annotate::{AnnotateClient, Backoff, Delivery};
use crate::cache::{Cache, Lookup};
use crate::config::DeliveryConfig;
use crate::dead_letter::{DeadLetter, DeadLetterReason, DeadLetterWriter, Source};
use crate::domain::assessment::{
    AssessmentId, AssessmentName, CorrelationKey, ProjectAllowList, ProjectRef, ReferenceError,
    resolve_inline,
};
use crate::domain::event::{AssessmentEvent, OutcomeEvent};
use crate::domain::rules::{OutcomeTopic, Rules};
use crate::health::Health;
use crate::telemetry::Metrics;

/// Tries to remember an annotated event id before giving up (its offset is not held for it).
const REMEMBER_ATTEMPTS: u32 = 3;

/// Which of the consumed topics a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    Assessments,
    Outcome(OutcomeTopic),
}

impl TopicKind {
    /// Bounded metric label.
    pub fn label(self) -> &'static str {
        match self {
            Self::Assessments => "assessments",
            Self::Outcome(t) => t.as_str(),
        }
    }
}

/// A Kafka message, copied out of librdkafka's buffer.
#[derive(Debug, Clone)]
pub struct Message {
    pub tp: TopicPartition,
    pub kind: TopicKind,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Producer or log-append time, for the end-to-end latency metric.
    pub timestamp_ms: Option<i64>,
    /// `annotator.replay_count` of a message re-published by `dead-letter replay`.
    pub replay_count: Option<u32>,
}

impl Message {
    /// The Kafka record this message is (topic, partition, offset, timestamp): the same
    /// for a redelivery, different for a new record that reuses an `event_id`.
    fn identity(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.tp.topic,
            self.tp.partition,
            self.offset,
            self.timestamp_ms.unwrap_or(-1)
        )
    }

    fn source(&self) -> Source<'_> {
        Source {
            topic: &self.tp.topic,
            partition: self.tp.partition,
            offset: self.offset,
            key: self.key.as_deref(),
            payload: self.payload.as_deref(),
            replay_count: self.replay_count,
        }
    }

    fn kafka_key(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }
}

/// Where an annotation goes.
#[derive(Debug, Clone)]
pub enum Target {
    Known(AssessmentName),
    Join(CorrelationKey),
}

/// What the synchronous part decided.
#[derive(Debug)]
pub enum Plan {
    /// A tombstone (no value): nothing to do.
    Skip,
    DeadLetter(DeadLetter),
    Store {
        key: CorrelationKey,
        name: AssessmentName,
    },
    Annotate {
        event_id: String,
        target: Target,
        body: Bytes,
    },
}

impl Plan {
    /// The lane that orders this event against others, if any.
    pub fn lane(&self) -> Option<String> {
        match self {
            Self::Skip | Self::DeadLetter(_) => None,
            // Writes for one key keep their order; they never wait behind the joins that
            // need them.
            Self::Store { key, .. } => Some(format!("store\u{0}{}", key.as_str())),
            Self::Annotate {
                target: Target::Join(key),
                ..
            } => Some(format!("key\u{0}{}", key.as_str())),
            Self::Annotate {
                target: Target::Known(name),
                ..
            } => Some(name.as_str().to_owned()),
        }
    }
}

fn dead(reason: DeadLetterReason, detail: impl Into<String>) -> Plan {
    Plan::DeadLetter(DeadLetter {
        reason,
        detail: detail.into(),
        status: None,
    })
}

fn invalid_reference(field: &str, err: &ReferenceError) -> Plan {
    dead(
        DeadLetterReason::InvalidReference,
        format!("{field}: {err}"),
    )
}

/// Everything the event path needs, shared by all tasks.
pub struct Shared {
    pub rules: Rules,
    pub project: Option<ProjectRef>,
    pub allowed: ProjectAllowList,
    pub dry_run: bool,
    pub delivery: DeliveryConfig,
    pub cache_ttl: Duration,
    /// How long annotated event ids are remembered; zero = no duplicate suppression.
    pub dedup_ttl: Duration,
    pub catch_up: Arc<super::catchup::CatchUp>,
    pub cache: Arc<dyn Cache>,
    pub client: AnnotateClient,
    pub dead_letter: DeadLetterWriter,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    pub book: Arc<OffsetBook>,
    pub lanes: Arc<Lanes>,
    pub in_flight: Semaphore,
    pub limiter: Option<governor::DefaultDirectRateLimiter>,
    /// `true` while halted on credentials.
    pub halted: watch::Sender<bool>,
    /// Held by the one task that probes the endpoint while halted.
    pub probe: Arc<tokio::sync::Mutex<()>>,
}

impl Shared {
    /// Decode, rules and reference checks: everything that needs no IO.
    pub fn plan(&self, msg: &Message) -> Plan {
        let Some(payload) = msg.payload.as_deref() else {
            return Plan::Skip;
        };
        match msg.kind {
            TopicKind::Assessments => self.plan_assessment(msg, payload),
            TopicKind::Outcome(topic) => self.plan_outcome(msg, topic, payload),
        }
    }

    fn plan_assessment(&self, msg: &Message, payload: &[u8]) -> Plan {
        let event = match AssessmentEvent::decode(payload) {
            Ok(e) => e,
            Err(e) => return dead(DeadLetterReason::Decode, e.to_string()),
        };
        let Some(raw_key) = event.key.as_deref().or(msg.kafka_key()) else {
            return dead(
                DeadLetterReason::InvalidReference,
                "no key field and no Kafka message key",
            );
        };
        let key = match CorrelationKey::parse(raw_key) {
            Ok(k) => k,
            Err(e) => return invalid_reference("key", &e),
        };
        let name = match AssessmentName::parse(&event.assessment) {
            Ok(n) => n,
            Err(e) => return invalid_reference("assessment", &e),
        };
        if let Err(e) = self.allowed.check(&name) {
            return invalid_reference("assessment", &e);
        }
        Plan::Store { key, name }
    }

    fn plan_outcome(&self, msg: &Message, topic: OutcomeTopic, payload: &[u8]) -> Plan {
        let event = match OutcomeEvent::decode(payload) {
            Ok(e) => e,
            Err(e) => return dead(DeadLetterReason::Decode, e.to_string()),
        };
        let Some(request) = self.rules.decide(topic, &event) else {
            let outcome: String = event.outcome.chars().take(64).collect();
            return dead(
                DeadLetterReason::UnknownOutcome,
                format!("no rule for outcome {outcome:?} on {topic}"),
            );
        };
        let target = if let Some(raw) = &event.assessment {
            match resolve_inline(raw, self.project.as_ref()) {
                Ok(name) => Target::Known(name),
                Err(e) => return invalid_reference("assessment", &e),
            }
        } else if let Some(token) = &event.recaptcha_token {
            let id = match AssessmentId::from_waf_token(token) {
                Ok(id) => id,
                Err(e) => return invalid_reference("recaptcha_token", &e),
            };
            let Some(project) = &self.project else {
                return invalid_reference("recaptcha_token", &ReferenceError::NoProject);
            };
            Target::Known(AssessmentName::from_parts(project, &id))
        } else if let Some(raw) = event.key.as_deref().or(msg.kafka_key()) {
            match CorrelationKey::parse(raw) {
                Ok(key) => Target::Join(key),
                Err(e) => return invalid_reference("key", &e),
            }
        } else {
            return dead(
                DeadLetterReason::InvalidReference,
                "no assessment, recaptcha_token, key or Kafka key",
            );
        };
        if let Target::Known(name) = &target
            && let Err(e) = self.allowed.check(name)
        {
            return invalid_reference("assessment", &e);
        }
        Plan::Annotate {
            event_id: event.event_id,
            target,
            body: AnnotateClient::body(&request),
        }
    }

    /// The asynchronous part of one event. The offset is released when it finishes; when
    /// `abandon` fires first (revoked partition, shutdown deadline) it is not, and the event
    /// is redelivered to whoever owns the partition next.
    pub async fn run(
        self: Arc<Self>,
        msg: Message,
        ticket: Ticket,
        plan: Plan,
        slot: Option<LaneSlot>,
        abandon: CancellationToken,
    ) {
        // Every log line inside (retries, cache trouble, halts) carries the event's place.
        let event_id = match &plan {
            Plan::Annotate { event_id, .. } => event_id.as_str(),
            _ => "",
        };
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
                .events
                .with_label_values(&[msg.kind.label(), result])
                .inc();
            if let Some(ts) = msg.timestamp_ms {
                let age = chrono::Utc::now()
                    .timestamp_millis()
                    .saturating_sub(ts)
                    .max(0);
                #[allow(clippy::cast_precision_loss)]
                self.metrics
                    .end_to_end
                    .with_label_values(&[msg.kind.label()])
                    .observe(age as f64 / 1000.0);
            }
            self.book.done(&ticket);
        };
        tokio::select! {
            biased;
            () = tracing::Instrument::instrument(work, span) => {}
            () = abandon.cancelled() => {
                tracing::debug!(topic = %msg.tp.topic, partition = msg.tp.partition, offset = msg.offset, "event abandoned; it will be redelivered");
            }
        }
        drop(slot);
    }

    /// Returns the result label.
    async fn execute(&self, msg: &Message, plan: Plan) -> &'static str {
        match plan {
            Plan::Skip => "skipped",
            Plan::DeadLetter(letter) => {
                self.write_dead_letter(msg, None, &letter).await;
                "dead_lettered"
            }
            Plan::Store { key, name } => {
                self.store(&key, &name).await;
                "cached"
            }
            Plan::Annotate {
                event_id,
                target,
                body,
            } => {
                let name = match target {
                    Target::Known(name) => {
                        self.metrics.joins.with_label_values(&["inline"]).inc();
                        name
                    }
                    Target::Join(key) => match self.join(&key).await {
                        Ok(name) => name,
                        Err(letter) => {
                            self.write_dead_letter(msg, Some(&event_id), &letter).await;
                            return "dead_lettered";
                        }
                    },
                };
                if self.dry_run {
                    // The decision only: account ids and phone numbers never reach the logs.
                    let mut decision: serde_json::Value =
                        serde_json::from_slice(&body).unwrap_or_default();
                    if let Some(fields) = decision.as_object_mut() {
                        fields.retain(|k, _| matches!(k.as_str(), "annotation" | "reasons"));
                    }
                    tracing::info!(
                        topic = %msg.tp.topic, partition = msg.tp.partition, offset = msg.offset, event_id = %event_id,
                        assessment = %name, decision = %decision,
                        "dry run: would annotate"
                    );
                    return "dry_run";
                }
                if self.already_done(&event_id, &msg.identity()).await {
                    tracing::debug!(topic = %msg.tp.topic, partition = msg.tp.partition, offset = msg.offset, event_id = %event_id, "already annotated; not sent again");
                    return "duplicate";
                }
                match self.deliver(&name, body).await {
                    Ok(slot) => {
                        // The in-flight slot is held until the event is remembered, so a
                        // crash repeats at most `max_in_flight` annotated events.
                        self.remember_done(&event_id, &msg.identity()).await;
                        drop(slot);
                        tracing::debug!(topic = %msg.tp.topic, partition = msg.tp.partition, offset = msg.offset, event_id = %event_id, "annotated");
                        "annotated"
                    }
                    Err(letter) => {
                        self.write_dead_letter(msg, Some(&event_id), &letter).await;
                        "dead_lettered"
                    }
                }
            }
        }
    }

    fn backoff(&self) -> Backoff {
        Backoff::new(self.delivery.retry_initial, self.delivery.retry_max)
    }

    /// Writes the mapping, retrying while the cache is down.
    async fn store(&self, key: &CorrelationKey, name: &AssessmentName) {
        let mut backoff = self.backoff();
        loop {
            match self.cache.put(key, name, self.cache_ttl).await {
                Ok(()) => {
                    self.health.set_cache_down(false);
                    return;
                }
                Err(e) => self.cache_failed(&e, &mut backoff).await,
            }
        }
    }

    async fn cache_failed(&self, err: &crate::cache::CacheError, backoff: &mut Backoff) {
        self.metrics.cache_errors.inc();
        self.health.set_cache_down(true);
        tracing::warn!(error = %err, backend = self.cache.name(), "cache operation failed; retrying");
        tokio::time::sleep(backoff.next_delay(None)).await;
    }

    /// Whether the event was annotated before (a redelivery); retried while the cache is down.
    async fn already_done(&self, event_id: &str, record: &str) -> bool {
        if self.dedup_ttl.is_zero() {
            return false;
        }
        let mut backoff = self.backoff();
        loop {
            match self.cache.is_done(event_id, record).await {
                Ok(done) => {
                    self.health.set_cache_down(false);
                    return done;
                }
                Err(e) => self.cache_failed(&e, &mut backoff).await,
            }
        }
    }

    /// Remembers an annotated event. A failure only weakens duplicate suppression (delivery
    /// stays at least once), so it is logged and the event finishes.
    async fn remember_done(&self, event_id: &str, record: &str) {
        if self.dedup_ttl.is_zero() {
            return;
        }
        let mut backoff = self.backoff();
        for attempt in 1..=REMEMBER_ATTEMPTS {
            match self.cache.mark_done(event_id, record, self.dedup_ttl).await {
                Ok(()) => return,
                Err(e) => {
                    self.metrics.cache_errors.inc();
                    if attempt == REMEMBER_ATTEMPTS {
                        tracing::warn!(error = %e, "could not remember an annotated event; a redelivery would be sent again");
                    } else {
                        tokio::time::sleep(backoff.next_delay(None)).await;
                    }
                }
            }
        }
    }

    /// Looks the key up until it is found or the grace period ends (`unjoined`).
    async fn join(&self, key: &CorrelationKey) -> Result<AssessmentName, DeadLetter> {
        let started = Instant::now();
        let mut parked = false;
        let mut backoff = self.backoff();
        let result = loop {
            let caught_up_before = self.catch_up.caught_up_since(&self.book);
            match self.cache.get(key).await {
                Ok(Lookup::Hit(name)) => {
                    self.health.set_cache_down(false);
                    let label = if parked { "waited" } else { "hit" };
                    self.metrics.joins.with_label_values(&[label]).inc();
                    break self
                        .allowed
                        .check(&name)
                        .map(|()| name)
                        .map_err(|e| DeadLetter {
                            reason: DeadLetterReason::InvalidReference,
                            detail: format!("cached assessment: {e}"),
                            status: None,
                        });
                }
                Ok(Lookup::Invalid) => {
                    self.health.set_cache_down(false);
                    break Err(DeadLetter {
                        reason: DeadLetterReason::InvalidReference,
                        detail: "cached value for the key is not a valid assessment name".into(),
                        status: None,
                    });
                }
                Ok(Lookup::Miss) => {
                    self.health.set_cache_down(false);
                    // The grace period counts from when this instance has read its
                    // assessments partitions up to where they ended at assignment; the
                    // state is taken before the lookup, so a miss after catch-up is real.
                    let expired = caught_up_before.is_some_and(|since| {
                        started.max(since).elapsed() >= self.delivery.join_grace
                    });
                    if expired {
                        self.metrics.joins.with_label_values(&["unjoined"]).inc();
                        break Err(DeadLetter {
                            reason: DeadLetterReason::Unjoined,
                            detail: format!(
                                "key not in the cache after {}",
                                humantime::format_duration(self.delivery.join_grace)
                            ),
                            status: None,
                        });
                    }
                    if !parked {
                        parked = true;
                        self.metrics.parked.inc();
                    }
                    tokio::time::sleep(self.delivery.join_retry).await;
                }
                Err(e) => self.cache_failed(&e, &mut backoff).await,
            }
        };
        if parked {
            self.metrics.parked.dec();
            self.metrics
                .join_wait
                .observe(started.elapsed().as_secs_f64());
        }
        result
    }

    /// Sends one annotation until it is accepted or refused. Retries 429/5xx/timeouts
    /// forever with backoff; on 401/403/invalid key halts all sending, and this task or one
    /// other probes every `halt_retry` until the credentials work again. Once accepted, the
    /// in-flight slot is handed back to the caller still held.
    async fn deliver(
        &self,
        name: &AssessmentName,
        body: Bytes,
    ) -> Result<Option<tokio::sync::SemaphorePermit<'_>>, DeadLetter> {
        let mut backoff = self.backoff();
        let mut probing: Option<OwnedMutexGuard<()>> = None;
        loop {
            if probing.is_none() {
                let mut halted = self.halted.subscribe();
                // The sender lives as long as `self`.
                let _ = halted.wait_for(|h| !*h).await;
            }
            if let Some(limiter) = &self.limiter {
                limiter.until_ready().await;
            }
            let (result, slot) = {
                // The semaphore is never closed.
                let slot = self.in_flight.acquire().await.ok();
                self.metrics.in_flight.inc();
                let result = self.client.annotate(name, body.clone()).await;
                self.metrics.in_flight.dec();
                (result, slot)
            };
            self.metrics
                .requests
                .with_label_values(&[Metrics::status_class(result.status)])
                .inc();
            self.metrics
                .request_duration
                .observe(result.elapsed.as_secs_f64());
            match result.delivery {
                Delivery::Accepted => {
                    if probing.is_some() {
                        self.resume();
                    }
                    return Ok(slot);
                }
                Delivery::Reject { status, detail } => {
                    if probing.is_some() {
                        self.resume();
                    }
                    return Err(DeadLetter {
                        reason: DeadLetterReason::Rejected,
                        detail,
                        status: Some(status),
                    });
                }
                Delivery::Retry { cause, after } => {
                    drop(slot);
                    self.metrics
                        .retries
                        .with_label_values(&[cause.as_str()])
                        .inc();
                    let delay = backoff.next_delay(after);
                    tracing::debug!(cause = cause.as_str(), status = ?result.status, delay_ms = delay.as_millis() as u64, "annotate failed; retrying");
                    tokio::time::sleep(delay).await;
                }
                Delivery::Halt { status, detail } => {
                    drop(slot);
                    if !self.health.halted() {
                        tracing::error!(status, detail = %detail, "annotate endpoint refuses our credentials; halting all sending until they work");
                    }
                    self.halted.send_replace(true);
                    self.health.set_halted(true);
                    self.metrics.halted.set(1);
                    if probing.is_none() {
                        probing = Arc::clone(&self.probe).try_lock_owned().ok();
                    }
                    if probing.is_some() {
                        tokio::time::sleep(self.delivery.halt_retry).await;
                    }
                }
            }
        }
    }

    fn resume(&self) {
        if self.health.halted() {
            tracing::info!("annotate endpoint accepts our credentials again; resuming");
        }
        self.health.set_halted(false);
        self.metrics.halted.set(0);
        self.halted.send_replace(false);
    }

    /// Writes a dead letter, retrying until the broker acknowledges it.
    async fn write_dead_letter(&self, msg: &Message, event_id: Option<&str>, letter: &DeadLetter) {
        tracing::warn!(
            topic = %msg.tp.topic, partition = msg.tp.partition, offset = msg.offset,
            event_id = event_id.unwrap_or(""), reason = letter.reason.as_str(), detail = %letter.detail, status = ?letter.status,
            "event dead-lettered"
        );
        let mut backoff = self.backoff();
        loop {
            match self.dead_letter.write(&msg.source(), letter).await {
                Ok(()) => {
                    self.metrics
                        .dead_letters
                        .with_label_values(&[letter.reason.as_str()])
                        .inc();
                    return;
                }
                Err(e) => {
                    tracing::warn!(error = %e, "dead-letter write failed; retrying");
                    tokio::time::sleep(backoff.next_delay(None)).await;
                }
            }
        }
    }
}
