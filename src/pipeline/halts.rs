//! The halt gates every call passes, and what each answer does to them: one gate for the
//! service (credentials, endpoint) and one per project that answered 403 (`gate.rs` is one
//! gate's state machine).

use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use super::gate::{Gate, Pass, Probe};
use crate::FastMap;
use crate::failure::{DeadLetter, DeadLetterReason, Failure, Halt, HaltScope};
use crate::health::Health;
use crate::telemetry::Metrics;

/// Most projects held closed at once; beyond it, a refused event of yet another project is
/// set aside at once (state stays bounded whatever the events name).
const MAX_CLOSED_PROJECTS: usize = 1000;

/// The gates every call passes: one for the service (credentials, endpoint), one per
/// project that answered 403.
///
/// Across the two gates: an event passes the service gate, then its project's, and never
/// holds one gate's probe while it waits at the other (it gives the claim back and goes
/// round), so two events can never each hold what the other waits for. What one answer does
/// to each gate the event passed ([`HaltGates::resolve`]):
///
/// | answer                                       | service gate   | project gate    |
/// |----------------------------------------------|----------------|-----------------|
/// | 2xx, or Google's 400/404 about the event     | opens          | opens           |
/// | a service halt (401, a bad key, the endpoint)| refused        | claim released  |
/// | a project's 403                              | opens          | refused (below) |
/// | 429, 5xx, 408, 409, timeout, connection      | inconclusive   | inconclusive    |
///
/// A 403 can be about one event (an assessment Google does not show us) rather than its
/// project. An event is condemned (dead-lettered `forbidden`) only when it is refused again
/// after its project accepted another call sent after the event's previous refusal; until
/// then it waits at the gate like the others. A 403 for a call while the project accepted
/// another call does not close the project's gate: the event just tries again. After
/// `delivery.forbidden_grace` of refusals a project is *forbidden*: its waiting and new
/// events are dead-lettered without a call, while one probe per `halt_retry` keeps testing.
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
    /// Per project (at most [`MAX_CLOSED_PROJECTS`]): its accepted calls.
    accepted: Mutex<FastMap<String, Accepted>>,
}

/// A project's accepted calls.
#[derive(Debug, Clone, Copy)]
struct Accepted {
    /// When the last one was accepted.
    at: Instant,
    /// The send time of the newest one.
    sent: Instant,
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

    fn accepted(&self) -> std::sync::MutexGuard<'_, FastMap<String, Accepted>> {
        self.accepted
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// `project` accepted a call sent at `sent`, now.
    fn project_accepted(&self, project: &str, sent: Instant) {
        let now = Instant::now();
        let mut accepted = self.accepted();
        if let Some(a) = accepted.get_mut(project) {
            a.at = now;
            a.sent = a.sent.max(sent);
            return;
        }
        if accepted.len() >= MAX_CLOSED_PROJECTS {
            let oldest = accepted.values().map(|a| a.at).min();
            accepted.retain(|_, a| Some(a.at) != oldest);
        }
        accepted.insert(project.to_owned(), Accepted { at: now, sent });
    }

    /// Whether `project` accepted a call after `sent`.
    fn accepted_since(&self, project: &str, sent: Instant) -> bool {
        self.accepted().get(project).is_some_and(|a| a.at >= sent)
    }

    /// The send time of the newest call `project` has accepted.
    pub(super) fn newest_accepted(&self, project: &str) -> Option<Instant> {
        self.accepted().get(project).map(|a| a.sent)
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
    pub(super) async fn pass(
        &self,
        project: &str,
        record: &str,
        probe: &mut Probe,
    ) -> Result<(), Failure> {
        loop {
            // The service gate has no grace: it only ever lets the event through.
            self.service.pass(record, probe).await;
            let Some(gate) = self.project(project) else {
                return Ok(());
            };
            match gate.try_pass(record, probe) {
                Some(Pass::Open | Pass::Probe) => return Ok(()),
                Some(Pass::Forbidden) => return Err(self.forbidden_by(project, &gate)),
                None => {}
            }
            // Not now: wait at the project's gate without holding the service's probe.
            probe.release_of(&self.service);
            match gate.pass(record, probe).await {
                Pass::Forbidden => return Err(self.forbidden_by(project, &gate)),
                Pass::Open => {}
                Pass::Probe => {
                    if self.service.try_pass(record, probe).is_some() {
                        return Ok(());
                    }
                    // The service closed meanwhile: wait there without the project's probe.
                    probe.release_of(&gate);
                }
            }
        }
    }

    fn forbidden_by(&self, project: &str, gate: &Gate) -> Failure {
        let why = gate
            .detail()
            .unwrap_or_else(|| "403 while the project was halted".into());
        forbidden(&format!("project {project} refuses our calls: {why}"))
    }

    /// What the answer to a call of `record` for `project`, sent at `sent`, does to the
    /// gates (the table above). A 403 may turn into the event's `forbidden` dead letter.
    pub(super) fn resolve(
        &self,
        project: &str,
        record: &str,
        result: Result<(), Failure>,
        probe: &mut Probe,
        sent: Instant,
    ) -> Result<(), Failure> {
        match result {
            Ok(()) => {
                self.works(project, probe, sent);
                Ok(())
            }
            Err(failure) => Err(self.resolve_failure(project, record, failure, probe, sent)),
        }
    }

    /// [`Self::resolve`] for a failed call (or no call: no token).
    pub(super) fn resolve_failure(
        &self,
        project: &str,
        record: &str,
        failure: Failure,
        probe: &mut Probe,
        sent: Instant,
    ) -> Failure {
        match &failure {
            Failure::DeadLetter(_) => self.works(project, probe, sent),
            Failure::Halt(halt) if halt.scope == HaltScope::Service => {
                // Nothing was learned of the project.
                if let Some(gate) = self.project(project) {
                    probe.release_of(&gate);
                }
                probe.resolved();
                if self.service.refuse(record, &halt.detail) {
                    self.metrics.halted(halt.status, &halt.detail);
                }
                self.health.set_halted(Some(halt.detail.clone()));
            }
            Failure::Halt(halt) => {
                // The credentials and the endpoint work: Google refused one project.
                probe.release_of(&self.service);
                self.service_works();
                if let Err(letter) = self.project_refused(project, record, halt, probe, sent) {
                    return letter;
                }
            }
            Failure::Retry(_) => probe.inconclusive(),
        }
        failure
    }

    /// A call was answered in a way that shows the credentials, the endpoint and the
    /// project work: both gates open.
    fn works(&self, project: &str, probe: &mut Probe, sent: Instant) {
        probe.resolved();
        self.project_accepted(project, sent);
        self.service_works();
        self.project_works(project);
    }

    fn service_works(&self) {
        if self.service.answered() {
            self.health.set_halted(None);
            self.metrics.resumed();
        }
    }

    fn project_works(&self, project: &str) {
        let Some(gate) = self.project(project) else {
            return;
        };
        if !gate.answered() {
            return;
        }
        let left = {
            let mut projects = self.projects();
            projects.retain(|_, g| g.is_closed());
            projects.len()
        };
        self.health.set_project_halted(project, None);
        self.metrics.project_resumed(project, left);
    }

    /// A 403 for `record`'s call: a second try, a halt of its project, or (past the grace,
    /// or refused again after the project accepted a later call) its dead letter.
    fn project_refused(
        &self,
        project: &str,
        record: &str,
        halt: &Halt,
        probe: &mut Probe,
        sent: Instant,
    ) -> Result<(), Failure> {
        let again = probe
            .refused_at
            .zip(probe.accepted_before)
            .is_some_and(|(refused, accepted)| accepted >= refused);
        probe.refused_at = Some(Instant::now());
        let gate = self.project(project);
        if again {
            if let Some(gate) = &gate {
                probe.release_of(gate);
            }
            return Err(forbidden(&format!(
                "403 for this event again after project {project} accepted other calls: {}",
                halt.detail
            )));
        }
        if self.accepted_since(project, sent) {
            // Other calls of the project went through while this one was out: it tries
            // again rather than halt the project.
            probe.resolved();
            return Ok(());
        }
        let gate = match gate {
            Some(gate) => gate,
            None => {
                let mut projects = self.projects();
                if projects.len() >= MAX_CLOSED_PROJECTS {
                    projects.retain(|_, g| g.is_closed());
                }
                if projects.len() >= MAX_CLOSED_PROJECTS {
                    return Err(forbidden(&format!(
                        "project {project} refuses our calls and {MAX_CLOSED_PROJECTS} other projects are halted already"
                    )));
                }
                projects
                    .entry(project.to_owned())
                    .or_insert_with(|| Arc::new(Gate::new(self.retry, Some(self.grace))))
                    .clone()
            }
        };
        probe.resolved();
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

fn forbidden(detail: &str) -> Failure {
    Failure::DeadLetter(DeadLetter {
        reason: DeadLetterReason::Forbidden,
        detail: detail.to_owned(),
        status: Some(403),
    })
}

#[cfg(test)]
#[path = "halts_tests.rs"]
mod tests;
