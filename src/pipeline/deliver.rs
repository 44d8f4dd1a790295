//! Sending one annotation: the halt gates, an in-flight slot and the quota budget, then the
//! call. What an answer means is decided by [`crate::failure::classify`]; the gates learn
//! from it here (a refusal closes one, an answer opens it), and the event runner settles
//! the failure.

use std::time::Instant;

use super::concurrency::{Concurrency, Signal, Slot};
use super::gate::Probe;
pub use super::halts::HaltGates;
use crate::annotate::AnnotateClient;
use crate::budget::Budget;
use crate::domain::assessment::AssessmentName;
use crate::failure::{Failure, RetryCause};
use crate::telemetry::Metrics;
use bytes::Bytes;

/// What an answer says of the endpoint's load. A 429 is one project's quota: when the budget
/// lowers that project's rate (`budgeted`), it says nothing of the endpoint, so one project's
/// spent quota does not cut every project's in-flight limit.
fn signal(status: Option<u16>, result: &Result<(), Failure>, budgeted: bool) -> Signal {
    match (status, result) {
        (Some(429), _) if budgeted => Signal::Neutral,
        (Some(429 | 503), _) => Signal::PushedBack,
        (_, Err(Failure::Retry(retry))) if retry.cause == RetryCause::Timeout => Signal::PushedBack,
        (_, Ok(()) | Err(Failure::DeadLetter(_))) => Signal::Answered,
        _ => Signal::Neutral,
    }
}

/// Counts one call in `annotator_in_flight` while it lives.
struct InFlight<'a>(&'a prometheus::IntGauge);

impl<'a> InFlight<'a> {
    fn new(gauge: &'a prometheus::IntGauge) -> Self {
        gauge.inc();
        Self(gauge)
    }
}

impl Drop for InFlight<'_> {
    fn drop(&mut self) {
        self.0.dec();
    }
}

/// Sends annotate calls within the in-flight limit and the quota budget.
pub struct Sender {
    /// The HTTP clients, the endpoint and the credentials.
    client: AnnotateClient,
    /// In-flight slots, shared by every partition: adaptive up to `delivery.max_in_flight`.
    in_flight: Concurrency,
    /// The quota budget (`delivery.rate_limit`, project caps), learning from 429s.
    budget: Budget,
    /// Closed while the service or a project is halted.
    gates: HaltGates,
    /// Calls by status class, their duration, calls in flight.
    metrics: Metrics,
}

impl Sender {
    pub fn new(
        client: AnnotateClient,
        in_flight: Concurrency,
        budget: Budget,
        gates: HaltGates,
        metrics: Metrics,
    ) -> Self {
        Self {
            client,
            in_flight,
            budget,
            gates,
            metrics,
        }
    }

    /// One call for `name`, from the event of Kafka record `record`. On a 2xx the in-flight
    /// slot comes back still held, so the caller can remember the event before another call
    /// starts in its place. A halt is returned once its gate knows; the next call waits.
    pub async fn send(
        &self,
        name: &AssessmentName,
        body: &Bytes,
        record: &str,
        probe: &mut Probe,
    ) -> Result<Slot<'_>, Failure> {
        let project = name.project();
        Box::pin(self.gates.pass(project, record, probe)).await?;
        // The token before the slot and the quota: a token source that fails or hangs holds
        // neither, and spends no quota.
        let headers = match self.client.credentials().await {
            Ok(headers) => headers,
            Err(failure) => {
                let sent = Instant::now();
                return Err(self
                    .gates
                    .resolve_failure(project, record, failure, probe, sent));
            }
        };
        // The slot first, then the token, then the call: a token is only taken when the call
        // can go out at once, so tokens never pile up behind a slow endpoint and go out in
        // one burst when it answers again.
        let slot = self
            .budget
            .admit(project, || self.in_flight.acquire())
            .await;
        probe.accepted_before = self.gates.newest_accepted(project);
        let sent = Instant::now();
        let call = {
            // Counted while out, and no longer when the call is abandoned (revoke, shutdown).
            let _out = InFlight::new(&self.metrics.in_flight);
            self.client
                .annotate_with(name, body.clone(), &headers)
                .await
        };
        self.metrics.call_finished(call.status, call.elapsed);
        self.budget.answered(project, call.status);
        let budgeted = self.budget.limited(project);
        self.in_flight
            .observe(call.elapsed, signal(call.status, &call.result, budgeted));
        let result = self
            .gates
            .resolve(project, record, call.result, probe, sent);
        result.map(|()| slot)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_429_cuts_the_in_flight_limit_only_when_no_budget_answers_it() {
        let throttled = Err(Failure::retry(RetryCause::RateLimited, None, "HTTP 429"));
        assert_eq!(signal(Some(429), &throttled, true), Signal::Neutral);
        assert_eq!(signal(Some(429), &throttled, false), Signal::PushedBack);
        let unavailable = Err(Failure::retry(RetryCause::ServerError, None, "HTTP 503"));
        assert_eq!(signal(Some(503), &unavailable, true), Signal::PushedBack);
        assert_eq!(signal(Some(200), &Ok(()), true), Signal::Answered);
    }
}
