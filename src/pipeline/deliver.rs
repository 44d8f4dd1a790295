//! Sending one annotation: the halt gate, the rate limit and an in-flight slot, then the
//! call. What a failed call means is decided by [`crate::failure::classify`] and
//! handled by the event runner; this file only sends, and opens and closes the gate.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::{Mutex, OwnedMutexGuard, Semaphore, SemaphorePermit, watch};

use crate::annotate::AnnotateClient;
use crate::domain::assessment::AssessmentName;
use crate::failure::{Failure, Halt};
use crate::health::Health;
use crate::telemetry::Metrics;

/// Stops every call while the service is halted (401, 403, an invalid API key, no
/// credentials, a wrong endpoint). One task
/// at a time probes every `delivery.halt_retry`; the first call that is not refused reopens
/// the gate.
pub struct HaltGate {
    /// `true` while halted; tasks wait for `false`.
    halted: watch::Sender<bool>,
    /// Held by the one task that probes while halted.
    probe: Arc<Mutex<()>>,
    /// Readiness: `halted` while closed.
    health: Arc<Health>,
    /// `annotator_halted`, and the halt and resume log lines.
    metrics: Metrics,
    /// `delivery.halt_retry`: the probe interval.
    retry: Duration,
}

/// Whether this task is the one that probes a closed gate.
#[derive(Default)]
pub struct Probe(Option<OwnedMutexGuard<()>>);

impl Probe {
    pub fn is_probing(&self) -> bool {
        self.0.is_some()
    }
}

impl HaltGate {
    pub fn new(health: Arc<Health>, metrics: Metrics, retry: Duration) -> Self {
        Self {
            halted: watch::Sender::new(false),
            probe: Arc::new(Mutex::new(())),
            health,
            metrics,
            retry,
        }
    }

    /// Returns once calls may go out: at once when open, or for the task that probes.
    async fn wait_open(&self, probe: &Probe) {
        if probe.is_probing() || !*self.halted.borrow() {
            return;
        }
        let mut halted = self.halted.subscribe();
        // The sender lives as long as `self`. Boxed: the rare path, kept out of the size of
        // every call's future.
        let _ = Box::pin(halted.wait_for(|h| !*h)).await;
    }

    /// Closes the gate after `halt`; the first task to get here becomes the prober. The
    /// prober then waits `delivery.halt_retry`; every other task waits for the gate.
    pub async fn halt(&self, halt: &Halt, probe: &mut Probe) {
        if !self.health.halted() {
            self.metrics.halted(halt.status, &halt.detail);
        }
        self.halted.send_replace(true);
        self.health.set_halted(Some(halt.detail.clone()));
        if !probe.is_probing() {
            probe.0 = Arc::clone(&self.probe).try_lock_owned().ok();
        }
        if probe.is_probing() {
            tokio::time::sleep(self.retry).await;
        }
    }

    /// A probe was answered (accepted, or refused for the event itself): reopens the gate.
    fn reopen(&self, probe: &Probe) {
        if !probe.is_probing() {
            return;
        }
        if self.health.halted() {
            self.metrics.resumed();
        }
        self.health.set_halted(None);
        self.halted.send_replace(false);
    }
}

/// Sends annotate calls within the in-flight bound and the rate limit.
pub struct Sender {
    /// The HTTP clients, the endpoint and the credentials.
    client: AnnotateClient,
    /// `delivery.max_in_flight` slots, shared by every partition.
    in_flight: Semaphore,
    /// `delivery.rate_limit`, when set.
    limiter: Option<governor::DefaultDirectRateLimiter>,
    /// Closed while halted.
    gate: HaltGate,
    /// Calls by status class, their duration, calls in flight.
    metrics: Metrics,
}

impl Sender {
    pub fn new(
        client: AnnotateClient,
        max_in_flight: usize,
        rate_limit: u32,
        gate: HaltGate,
        metrics: Metrics,
    ) -> Self {
        let limiter = std::num::NonZeroU32::new(rate_limit)
            .map(|rate| governor::RateLimiter::direct(governor::Quota::per_second(rate)));
        Self {
            client,
            in_flight: Semaphore::new(max_in_flight),
            limiter,
            gate,
            metrics,
        }
    }

    /// The gate every call passes.
    pub fn gate(&self) -> &HaltGate {
        &self.gate
    }

    /// One call for `name`. On a 2xx the in-flight slot comes back still held, so the
    /// caller can remember the event before another call starts in its place.
    pub async fn send(
        &self,
        name: &AssessmentName,
        body: &Bytes,
        probe: &Probe,
    ) -> Result<Option<SemaphorePermit<'_>>, Failure> {
        self.gate.wait_open(probe).await;
        if let Some(limiter) = &self.limiter {
            limiter.until_ready().await;
        }
        // The semaphore is never closed.
        let slot = self.in_flight.acquire().await.ok();
        self.metrics.in_flight.inc();
        let call = self.client.annotate(name, body.clone()).await;
        self.metrics.in_flight.dec();
        self.metrics.call_finished(call.status, call.elapsed);
        match call.result {
            Ok(()) => {
                self.gate.reopen(probe);
                Ok(slot)
            }
            Err(failure @ Failure::DeadLetter(_)) => {
                self.gate.reopen(probe);
                Err(failure)
            }
            Err(failure) => Err(failure),
        }
    }
}
