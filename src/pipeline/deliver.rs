//! Sending one annotation: the halt gates, an in-flight slot and the quota budget, then the
//! call. What an answer means is decided by [`crate::failure::classify`]; the gates learn
//! from it here (a refusal closes one, an answer opens it), and the event runner settles
//! the failure.

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::concurrency::{Concurrency, Signal, Slot};
use super::gate::{Gate, Pass, Probe};
use crate::FastMap;
use crate::annotate::AnnotateClient;
use crate::budget::Budget;
use crate::domain::assessment::AssessmentName;
use crate::failure::{DeadLetter, DeadLetterReason, Failure, Halt, HaltScope, RetryCause};
use crate::health::Health;
use crate::telemetry::Metrics;
use bytes::Bytes;

/// Most projects held closed at once; beyond it, a refused event of yet another project is
/// set aside at once (state stays bounded whatever the events name).
const MAX_CLOSED_PROJECTS: usize = 1000;

/// The gates every call passes: one for the service (credentials, endpoint), one per
/// project that answered 403.
pub struct HaltGates {
    /// Closed on 401, an invalid API key, no credentials, a wrong endpoint.
    service: Arc<Gate>,
    /// Closed project gates by project; open ones are dropped.
    projects: Mutex<FastMap<String, Arc<Gate>>>,
    /// `delivery.halt_retry`.
    retry: Duration,
    /// `delivery.forbidden_grace`.
    grace: Duration,
    /// Readiness: halted (service) or a note per closed project.
    health: Arc<Health>,
    /// `annotator_halted`, `annotator_halted_projects`, the halt and resume lines.
    metrics: Metrics,
    /// When each project last accepted a call (at most [`MAX_CLOSED_PROJECTS`] projects):
    /// a 403 for a call sent before that is about the event, not the project.
    accepted: Mutex<FastMap<String, Instant>>,
}

impl HaltGates {
    pub fn new(health: Arc<Health>, metrics: Metrics, retry: Duration, grace: Duration) -> Self {
        Self {
            service: Arc::new(Gate::new(retry, None)),
            projects: Mutex::default(),
            retry,
            grace,
            health,
            metrics,
            accepted: Mutex::default(),
        }
    }

    /// `project` accepted a call now.
    fn project_accepted(&self, project: &str) {
        let now = Instant::now();
        let mut accepted = self
            .accepted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if let Some(at) = accepted.get_mut(project) {
            *at = now;
            return;
        }
        if accepted.len() >= MAX_CLOSED_PROJECTS {
            let oldest = accepted.values().min().copied();
            accepted.retain(|_, at| Some(*at) != oldest);
        }
        accepted.insert(project.to_owned(), now);
    }

    /// Whether `project` accepted a call after `sent`.
    fn accepted_since(&self, project: &str, sent: Instant) -> bool {
        self.accepted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .get(project)
            .is_some_and(|at| *at >= sent)
    }

    fn projects(&self) -> std::sync::MutexGuard<'_, FastMap<String, Arc<Gate>>> {
        self.projects
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    fn project(&self, project: &str) -> Option<Arc<Gate>> {
        self.projects().get(project).cloned()
    }

    /// Waits until the event may call; `Err` when it is to be set aside instead.
    async fn pass(&self, project: &str, record: &str, probe: &mut Probe) -> Result<(), Failure> {
        if self.service.pass(record, probe).await == Pass::Forbidden {
            // The service gate has no grace: only a condemned event ends here.
            return Err(forbidden(
                "refused while the service was halted; another event went through",
            ));
        }
        if let Some(gate) = self.project(project)
            && gate.pass(record, probe).await == Pass::Forbidden
        {
            let why = gate
                .detail()
                .unwrap_or_else(|| "403 for this event while others went through".into());
            return Err(forbidden(&format!(
                "project {project} refuses our calls: {why}"
            )));
        }
        Ok(())
    }

    /// An answer to a call of `record` for `project` (accepted, or refused for the event
    /// itself): the credentials and the project work, so both gates it passed open, whether
    /// the call was their probe or was in flight when they closed.
    fn answered(&self, project: &str, record: &str, probe: &mut Probe) {
        // Its claims are resolved by the answer, not released for another probe.
        drop(probe.take());
        self.project_accepted(project);
        if self.service.answered(record) {
            self.health.set_halted(None);
            self.metrics.resumed();
        }
        if let Some(gate) = self.project(project)
            && gate.answered(record)
        {
            self.project_opened(project);
        }
    }

    fn project_opened(&self, project: &str) {
        let left = {
            let mut projects = self.projects();
            // An open gate stays while the event it condemned has not come back to it.
            projects.retain(|_, g| g.is_needed());
            projects.values().filter(|g| g.is_closed()).count()
        };
        self.health.set_project_halted(project, None);
        self.metrics.project_resumed(project, left);
    }

    /// A refusal of `record`: closes the gate of its scope. For a project past its grace
    /// the event is set aside (`Err`); otherwise it waits at the gate.
    fn refused(
        &self,
        project: &str,
        record: &str,
        halt: &Halt,
        probe: &mut Probe,
        sent: Instant,
    ) -> Result<(), Failure> {
        drop(probe.take());
        match halt.scope {
            HaltScope::Service => {
                if self.service.refuse(record, &halt.detail) {
                    self.metrics.halted(halt.status, &halt.detail);
                }
                self.health.set_halted(Some(halt.detail.clone()));
                Ok(())
            }
            // The project accepted another call while this one was out: the 403 is about
            // this event (its assessment), and the project stays open.
            HaltScope::Project if self.accepted_since(project, sent) => Err(forbidden(&format!(
                "403 for this event while other calls of project {project} went through: {}",
                halt.detail
            ))),
            HaltScope::Project => {
                let gate = {
                    let mut projects = self.projects();
                    if !projects.contains_key(project) && projects.len() >= MAX_CLOSED_PROJECTS {
                        projects.retain(|_, g| g.is_needed());
                    }
                    if !projects.contains_key(project) && projects.len() >= MAX_CLOSED_PROJECTS {
                        projects.retain(|_, g| g.is_closed());
                    }
                    if !projects.contains_key(project) && projects.len() >= MAX_CLOSED_PROJECTS {
                        return Err(forbidden(&format!(
                            "project {project} refuses our calls and {MAX_CLOSED_PROJECTS} other projects are halted already"
                        )));
                    }
                    projects
                        .entry(project.to_owned())
                        .or_insert_with(|| Arc::new(Gate::new(self.retry, Some(self.grace))))
                        .clone()
                };
                if gate.refuse(record, &halt.detail) {
                    let closed = self.projects().values().filter(|g| g.is_closed()).count();
                    self.metrics.project_halted(project, &halt.detail, closed);
                }
                self.health.set_project_halted(
                    project,
                    Some(format!(
                        "{} (events wait; one probe every {})",
                        halt.detail,
                        humantime::format_duration(self.retry)
                    )),
                );
                if gate.is_forbidden() {
                    return Err(forbidden(&format!(
                        "project {project} refuses our calls: {}",
                        halt.detail
                    )));
                }
                Ok(())
            }
        }
    }
}

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

fn forbidden(detail: &str) -> Failure {
    Failure::DeadLetter(DeadLetter {
        reason: DeadLetterReason::Forbidden,
        detail: detail.to_owned(),
        status: Some(403),
    })
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
        // The slot first, then the token, then the call: a token is only taken when the call
        // can go out at once, so tokens never pile up behind a slow endpoint and go out in
        // one burst when it answers again.
        let slot = self
            .budget
            .admit(project, || self.in_flight.acquire())
            .await;
        self.metrics.in_flight.inc();
        let sent = Instant::now();
        let call = self.client.annotate(name, body.clone()).await;
        self.metrics.in_flight.dec();
        self.metrics.call_finished(call.status, call.elapsed);
        self.budget.answered(project, call.status);
        let budgeted = self.budget.limited(project);
        self.in_flight
            .observe(call.elapsed, signal(call.status, &call.result, budgeted));
        match call.result {
            Ok(()) => {
                self.gates.answered(project, record, probe);
                Ok(slot)
            }
            Err(failure @ Failure::DeadLetter(_)) => {
                self.gates.answered(project, record, probe);
                Err(failure)
            }
            Err(Failure::Halt(halt)) => {
                self.gates.refused(project, record, &halt, probe, sent)?;
                Err(Failure::Halt(halt))
            }
            Err(failure) => Err(failure),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn a_403_for_a_call_sent_before_the_project_accepted_another_is_about_the_event() {
        let gates = HaltGates::new(
            Arc::new(Health::default()),
            Metrics::new(),
            Duration::from_secs(30),
            Duration::from_secs(900),
        );
        let halt = Halt {
            scope: HaltScope::Project,
            status: Some(403),
            detail: "PERMISSION_DENIED".into(),
        };
        let mut probe = Probe::default();
        let sent = Instant::now();
        // Another call of the project is accepted while this one is out...
        gates.answered("p", "good", &mut probe);
        // ... so its 403 sets this event aside and leaves the project open.
        let refused = gates.refused("p", "bad", &halt, &mut probe, sent);
        assert!(
            matches!(
                refused,
                Err(Failure::DeadLetter(DeadLetter {
                    reason: DeadLetterReason::Forbidden,
                    ..
                }))
            ),
            "{refused:?}"
        );
        assert!(gates.pass("p", "other", &mut probe).await.is_ok());
        assert!(gates.project("p").is_none(), "the project was halted");
        // A 403 for a call sent after the last accepted one halts the project as before.
        let refused = gates.refused("p", "bad", &halt, &mut probe, Instant::now());
        assert!(refused.is_ok());
        assert!(gates.project("p").is_some_and(|g| g.is_closed()));
    }

    #[test]
    fn a_429_cuts_the_in_flight_limit_only_when_no_budget_answers_it() {
        let throttled = Err(Failure::retry(RetryCause::RateLimited, None, "HTTP 429"));
        assert_eq!(signal(Some(429), &throttled, true), Signal::Neutral);
        assert_eq!(signal(Some(429), &throttled, false), Signal::PushedBack);
        let unavailable = Err(Failure::retry(RetryCause::ServerError, None, "HTTP 503"));
        assert_eq!(signal(Some(503), &unavailable, true), Signal::PushedBack);
        assert_eq!(signal(Some(200), &Ok(()), true), Signal::Answered);
    }

    #[tokio::test]
    async fn a_refused_event_is_set_aside_even_if_the_project_opened_before_it_came_back() {
        let gates = HaltGates::new(
            Arc::new(Health::default()),
            Metrics::new(),
            Duration::from_secs(30),
            Duration::from_secs(900),
        );
        let halt = Halt {
            scope: HaltScope::Project,
            status: Some(403),
            detail: "PERMISSION_DENIED".into(),
        };
        let mut probe = Probe::default();
        gates
            .refused("p", "bad", &halt, &mut probe, Instant::now())
            .unwrap();
        // A call that was in flight when the 403 came is accepted: the project opens...
        gates.answered("p", "good", &mut probe);
        // ... before the refused event is back at the gate: it is still set aside once.
        let pass = gates.pass("p", "bad", &mut probe).await;
        assert!(
            matches!(
                pass,
                Err(Failure::DeadLetter(DeadLetter {
                    reason: DeadLetterReason::Forbidden,
                    status: Some(403),
                    ..
                }))
            ),
            "{pass:?}"
        );
        assert!(gates.pass("p", "bad", &mut probe).await.is_ok());
        assert!(gates.pass("p", "other", &mut probe).await.is_ok());
    }
}
