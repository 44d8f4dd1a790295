//! Halt gates: calls stop while the service is misconfigured (one gate for every call) or
//! while a project answers 403 (one gate per project, so the other projects flow).
//!
//! One gate is a small state machine. `now` is tokio's clock; `retry` is
//! `delivery.halt_retry`; `grace` is `delivery.forbidden_grace` (project gates only).
//!
//! | state                          | on                                  | becomes                                   |
//! |--------------------------------|-------------------------------------|-------------------------------------------|
//! | Open                           | `refuse(r)`                         | Closed { since: now, next: now + retry }  |
//! | Closed                         | `refuse(r)`                         | Closed { next: now + retry, no probe, refused: r } |
//! | Closed, no probe, `now ≥ next` | a waiting event claims (`pass`)     | Closed, probe `n` out                     |
//! | Closed, probe `n` out          | `release(n)` (claim dropped unused) | Closed, no probe, `next` unchanged (at once) |
//! | Closed, probe `n` out          | `inconclusive(n)` (429, 5xx, 408, 409, timeout, connection; the other scope's halt) | Closed, no probe, next: now + retry |
//! | Closed                         | `answered()` (any call's answer that shows the scope works) | Open                        |
//! | Closed, `now ≥ since + grace`  | (time)                              | forbidden: waiting events are set aside; one probe per `retry` still goes |
//!
//! `release` and `inconclusive` only act on the claim they name: a claim overtaken by a
//! refusal (which clears the probe) and a later claim of another event are told apart.
//! Waiting events sleep until the state changes, the next probe is due or the grace ends,
//! never on a timer while a probe is out. The event refused last does not probe while
//! others wait (a 403 can be about one event: an assessment Google does not show us).
//!
//! The rules across gates (an event passes the service gate, then its project's; it never
//! holds one gate's claim while it waits at the other) and what each answer does to each
//! gate are in `deliver.rs`.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// What an event at a gate may do.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Pass {
    /// The gate is open: call.
    Open,
    /// Call as the gate's probe (the claim is held in the event's [`Probe`]).
    Probe,
    /// The project has refused our calls for longer than its grace: set the event aside.
    Forbidden,
}

#[derive(Debug, Clone)]
struct Closed {
    /// The first refusal since the gate was last open.
    since: Instant,
    /// When the next probe may go.
    next_probe: Instant,
    /// The claim of the probe that is out, if one is.
    probe: Option<u64>,
    /// The Kafka record of the event refused last.
    refused: Option<String>,
    /// The last refusal, for the log and `/readyz`.
    detail: String,
}

#[derive(Debug, Clone, Default)]
struct State {
    closed: Option<Closed>,
    /// Events waiting in [`Gate::pass`] now. Changing it wakes nobody, except when it falls
    /// to one: the event refused last may then probe.
    waiters: usize,
}

/// One gate.
pub struct Gate {
    state: watch::Sender<State>,
    /// Numbers the claims.
    claims: AtomicU64,
    /// `delivery.halt_retry`.
    retry: Duration,
    /// `delivery.forbidden_grace` for a project gate; `None` for the service gate.
    grace: Option<Duration>,
    /// How often waiting events looked at the state (tests: waiters must not spin).
    #[cfg(test)]
    looks: std::sync::atomic::AtomicUsize,
}

/// One event's standing at the gates, kept across its retries: the probe claims it holds,
/// and (for a 403's second try, see `deliver.rs`) when its project last refused it.
#[derive(Default)]
pub struct Probe {
    claims: Vec<(Arc<Gate>, u64)>,
    /// When a 403 last refused this event's call.
    pub refused_at: Option<std::time::Instant>,
    /// The send time of the newest call its project had accepted when this event's current
    /// call was sent.
    pub accepted_before: Option<std::time::Instant>,
}

impl Probe {
    /// Whether it holds the probe of `gate`.
    pub fn holds(&self, gate: &Arc<Gate>) -> bool {
        self.claims.iter().any(|(g, _)| Arc::ptr_eq(g, gate))
    }

    /// Gives back every claim unused: the next waiting event may probe at once.
    pub fn release(&mut self) {
        for (gate, claim) in self.claims.drain(..) {
            gate.release(claim);
        }
    }

    /// Gives back the claim of `gate`, if it holds it, unused.
    pub fn release_of(&mut self, gate: &Arc<Gate>) {
        self.claims.retain(|(g, claim)| {
            let of = Arc::ptr_eq(g, gate);
            if of {
                g.release(*claim);
            }
            !of
        });
    }

    /// The probes learned nothing (a retryable answer): the next goes in `halt_retry`.
    pub fn inconclusive(&mut self) {
        for (gate, claim) in self.claims.drain(..) {
            gate.inconclusive(claim);
        }
    }

    /// The claims were resolved by an answer (the gates were told directly).
    pub fn resolved(&mut self) {
        self.claims.clear();
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        // Its task was abandoned (revoke, shutdown): the next waiting event probes at once.
        self.release();
    }
}

/// Counts a waiting event for as long as it waits.
struct Waiting<'a>(&'a watch::Sender<State>);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.send_if_modified(|s| {
            s.waiters -= 1;
            s.waiters == 1 && s.closed.is_some()
        });
    }
}

impl Gate {
    pub fn new(retry: Duration, grace: Option<Duration>) -> Self {
        Self {
            state: watch::Sender::new(State::default()),
            claims: AtomicU64::new(0),
            retry,
            grace,
            #[cfg(test)]
            looks: std::sync::atomic::AtomicUsize::new(0),
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state.borrow().closed.is_some()
    }

    /// Whether the gate has been closed longer than its grace (project gates only).
    pub fn is_forbidden(&self) -> bool {
        let state = self.state.borrow();
        self.forbidden(state.closed.as_ref(), Instant::now())
    }

    fn forbidden(&self, closed: Option<&Closed>, now: Instant) -> bool {
        closed
            .zip(self.grace)
            .is_some_and(|(c, g)| now >= c.since + g)
    }

    /// The last refusal, while closed.
    pub fn detail(&self) -> Option<String> {
        self.state
            .borrow()
            .closed
            .as_ref()
            .map(|c| c.detail.clone())
    }

    /// What the event of `record` may do now, without waiting: `None` when it must wait.
    /// A probe is claimed into `probe`. `waiting_self` says whether the caller is counted
    /// among the waiters.
    fn try_now(
        self: &Arc<Self>,
        record: &str,
        probe: &mut Probe,
        waiting_self: bool,
    ) -> Result<Pass, Instant> {
        let now = Instant::now();
        let mut claimed = None;
        let mut verdict = Err(now);
        self.state.send_if_modified(|s| {
            let others = s.waiters.saturating_sub(usize::from(waiting_self));
            let Some(closed) = &mut s.closed else {
                verdict = Ok(Pass::Open);
                return false;
            };
            let mine = closed.refused.as_deref() == Some(record);
            if closed.probe.is_none() && now >= closed.next_probe && (!mine || others == 0) {
                let claim = self.claims.fetch_add(1, Ordering::Relaxed);
                closed.probe = Some(claim);
                claimed = Some(claim);
                verdict = Ok(Pass::Probe);
                return true;
            }
            if self.forbidden(Some(closed), now) {
                verdict = Ok(Pass::Forbidden);
                return false;
            }
            // Wake at the next probe only if this event could take it; else on a change.
            let grace_end = self.grace.map(|g| closed.since + g);
            let probe_due =
                (closed.probe.is_none() && now < closed.next_probe).then_some(closed.next_probe);
            verdict = Err(match (probe_due, grace_end) {
                (Some(p), Some(g)) => p.min(g),
                (Some(p), None) => p,
                (None, Some(g)) => g,
                (None, None) => now + FOREVER,
            });
            false
        });
        if let Some(claim) = claimed {
            probe.claims.push((Arc::clone(self), claim));
        }
        verdict
    }

    /// What the event of `record` may do now; `None` when it would have to wait.
    pub fn try_pass(self: &Arc<Self>, record: &str, probe: &mut Probe) -> Option<Pass> {
        self.try_now(record, probe, false).ok()
    }

    /// Waits until the event of Kafka record `record` may call, as the probe or through an
    /// open gate, or is to be set aside.
    pub async fn pass(self: &Arc<Self>, record: &str, probe: &mut Probe) -> Pass {
        if self.state.borrow().closed.is_none() {
            // The common case, on every call.
            return Pass::Open;
        }
        let mut changes = self.state.subscribe();
        self.state.send_if_modified(|s| {
            s.waiters += 1;
            false
        });
        let _waiting = Waiting(&self.state);
        loop {
            changes.borrow_and_update();
            #[cfg(test)]
            self.looks.fetch_add(1, Ordering::Relaxed);
            match self.try_now(record, probe, true) {
                Ok(pass) => return pass,
                Err(wake_at) => {
                    tokio::select! {
                        _ = changes.changed() => {}
                        () = tokio::time::sleep_until(wake_at) => {}
                    }
                }
            }
        }
    }

    fn release(&self, claim: u64) {
        self.state.send_if_modified(|s| match &mut s.closed {
            Some(c) if c.probe == Some(claim) => {
                c.probe = None;
                true
            }
            _ => false,
        });
    }

    fn inconclusive(&self, claim: u64) {
        let now = Instant::now();
        self.state.send_if_modified(|s| match &mut s.closed {
            Some(c) if c.probe == Some(claim) => {
                c.probe = None;
                c.next_probe = now + self.retry;
                true
            }
            _ => false,
        });
    }

    /// The event of `record` was refused: the gate closes (or stays closed) and the next
    /// probe goes in `delivery.halt_retry`. Returns true when this closed an open gate.
    pub fn refuse(&self, record: &str, detail: &str) -> bool {
        let now = Instant::now();
        let mut opened_before = false;
        self.state.send_modify(|s| match &mut s.closed {
            Some(c) => {
                c.refused = Some(record.to_owned());
                c.next_probe = now + self.retry;
                c.probe = None;
                detail.clone_into(&mut c.detail);
            }
            None => {
                opened_before = true;
                s.closed = Some(Closed {
                    since: now,
                    next_probe: now + self.retry,
                    probe: None,
                    refused: Some(record.to_owned()),
                    detail: detail.to_owned(),
                });
            }
        });
        opened_before
    }

    /// A call showed the gate's scope works (accepted, refused for the event itself, or,
    /// for the service gate, refused by one project): the gate opens. Returns true when
    /// this opened a closed gate.
    pub fn answered(&self) -> bool {
        self.state.send_if_modified(|s| s.closed.take().is_some())
    }
}

/// A wait with nothing to wake it but a change.
const FOREVER: Duration = Duration::from_secs(86_400 * 365);

#[cfg(test)]
#[path = "gate_tests.rs"]
mod tests;
