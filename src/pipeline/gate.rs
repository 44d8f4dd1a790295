//! Halt gates: calls stop while the service is misconfigured (one gate for every call) or
//! while a project answers 403 (one gate per project, so the other projects flow).
//!
//! A closed gate is probed: every `delivery.halt_retry` one waiting event may go through.
//! The probe is *claimed* by whichever event waits, and a claim that is dropped unresolved
//! (its task abandoned on revoke or shutdown) frees the next probe at once, so probing never
//! depends on one task staying alive. A 403 can be about one event rather than its project
//! (an assessment Google does not show us): the event refused last does not probe while
//! others wait, and when another event's probe is accepted, the refused one is condemned
//! (dead-lettered `forbidden`) instead of closing the gate again. After
//! `delivery.forbidden_grace` of refusals a project gate turns *forbidden*: its waiting and
//! new events are dead-lettered `forbidden` without a call, while one probe per
//! `halt_retry` keeps testing; the first accepted probe opens it.

use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use tokio::sync::watch;
use tokio::time::Instant;

/// What a waiting event may do.
#[derive(Debug, PartialEq, Eq)]
pub enum Pass {
    /// The gate is open: call.
    Open,
    /// Call as the gate's probe (the claim is held in the event's [`Probe`]).
    Probe,
    /// Set the event aside as `forbidden`.
    Forbidden,
}

#[derive(Debug, Clone)]
struct Closed {
    /// The first refusal since the gate was last open.
    since: Instant,
    /// When the next probe may go.
    next_probe: Instant,
    /// A probe is out.
    probing: bool,
    /// The Kafka record of the event refused last.
    refused: Option<String>,
    /// The last refusal, for the log and `/readyz`.
    detail: String,
}

#[derive(Debug, Clone, Default)]
struct State {
    closed: Option<Closed>,
    /// The event refused last before another event's probe was accepted: it is set aside.
    condemned: Option<String>,
}

/// One gate.
pub struct Gate {
    state: watch::Sender<State>,
    /// Events waiting at the gate now.
    waiters: AtomicUsize,
    /// `delivery.halt_retry`.
    retry: Duration,
    /// `delivery.forbidden_grace` for a project gate; `None` for the service gate.
    grace: Option<Duration>,
}

/// Counts a waiting event for as long as it waits.
struct Waiting<'a>(&'a AtomicUsize);

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::AcqRel);
    }
}

/// The probe claims one event holds. Dropped unresolved (abandoned, or retried for another
/// reason), a claim lets the next waiting event probe.
#[derive(Default)]
pub struct Probe {
    claims: Vec<Arc<Gate>>,
}

impl Probe {
    /// The claimed gates, taken (resolved by the caller).
    pub fn take(&mut self) -> Vec<Arc<Gate>> {
        std::mem::take(&mut self.claims)
    }
}

impl Drop for Probe {
    fn drop(&mut self) {
        for gate in self.claims.drain(..) {
            gate.release();
        }
    }
}

impl Gate {
    pub fn new(retry: Duration, grace: Option<Duration>) -> Self {
        Self {
            state: watch::Sender::new(State::default()),
            waiters: AtomicUsize::new(0),
            retry,
            grace,
        }
    }

    pub fn is_closed(&self) -> bool {
        self.state.borrow().closed.is_some()
    }

    /// Whether the gate is closed, or open with a condemned event still to set aside: either
    /// way it must be kept.
    pub fn is_needed(&self) -> bool {
        let state = self.state.borrow();
        state.closed.is_some() || state.condemned.is_some()
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

    /// Waits until the event of Kafka record `record` may call, as the probe or through an
    /// open gate, or is to be set aside.
    pub async fn pass(self: &Arc<Self>, record: &str, probe: &mut Probe) -> Pass {
        {
            // The common case, on every call: open, nobody condemned.
            let state = self.state.borrow();
            if state.closed.is_none() && state.condemned.is_none() {
                return Pass::Open;
            }
        }
        self.waiters.fetch_add(1, Ordering::AcqRel);
        let _waiting = Waiting(&self.waiters);
        let mut changes = self.state.subscribe();
        loop {
            let now = Instant::now();
            let wake_at = {
                let state = changes.borrow_and_update();
                let Some(closed) = &state.closed else {
                    if state.condemned.as_deref() == Some(record) {
                        drop(state);
                        self.state.send_modify(|s| s.condemned = None);
                        return Pass::Forbidden;
                    }
                    return Pass::Open;
                };
                let others_wait = self.waiters.load(Ordering::Acquire) > 1;
                let may_probe = !closed.probing
                    && now >= closed.next_probe
                    && (closed.refused.as_deref() != Some(record) || !others_wait);
                let forbidden = self.forbidden(Some(closed), now);
                if may_probe {
                    None
                } else if forbidden {
                    return Pass::Forbidden;
                } else {
                    let grace_end = self.grace.map(|g| closed.since + g);
                    Some(grace_end.map_or(closed.next_probe, |g| g.min(closed.next_probe)))
                }
            };
            match wake_at {
                None => {
                    if self.claim(now) {
                        probe.claims.push(Arc::clone(self));
                        return Pass::Probe;
                    }
                }
                Some(at) => {
                    // Wake when the state changes, the next probe is due, or the grace ends.
                    let at = at.max(now + Duration::from_millis(1));
                    tokio::select! {
                        _ = changes.changed() => {}
                        () = tokio::time::sleep_until(at) => {}
                    }
                }
            }
        }
    }

    fn claim(&self, now: Instant) -> bool {
        self.state.send_if_modified(|s| match &mut s.closed {
            Some(c) if !c.probing && now >= c.next_probe => {
                c.probing = true;
                true
            }
            _ => false,
        })
    }

    /// A claim given back unresolved: the next waiting event may probe at once.
    fn release(&self) {
        self.state.send_if_modified(|s| match &mut s.closed {
            Some(c) if c.probing => {
                c.probing = false;
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
                c.probing = false;
                detail.clone_into(&mut c.detail);
            }
            None => {
                opened_before = true;
                s.closed = Some(Closed {
                    since: now,
                    next_probe: now + self.retry,
                    probing: false,
                    refused: Some(record.to_owned()),
                    detail: detail.to_owned(),
                });
            }
        });
        opened_before
    }

    /// A call from the event of `record` was answered (accepted, or refused for the event
    /// itself): the gate opens. When the event refused last was another one, it is
    /// condemned. Returns true when this opened a closed gate.
    pub fn answered(&self, record: &str) -> bool {
        let mut was_closed = false;
        self.state.send_if_modified(|s| {
            let Some(closed) = s.closed.take() else {
                return false;
            };
            was_closed = true;
            // Only a project's refusal can be about one event; a service halt never is.
            s.condemned = closed
                .refused
                .filter(|r| self.grace.is_some() && r != record);
            true
        });
        was_closed
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gate(grace: Option<Duration>) -> Arc<Gate> {
        Arc::new(Gate::new(Duration::from_secs(1), grace))
    }

    #[tokio::test(start_paused = true)]
    async fn an_abandoned_probe_lets_the_next_waiting_event_probe() {
        let g = gate(Some(Duration::from_secs(3600)));
        g.refuse("r1", "403");
        let mut first = Probe::default();
        assert_eq!(g.pass("r2", &mut first).await, Pass::Probe);
        // The prober's task is abandoned (revoked partition): its claim goes with it.
        drop(first);
        let mut second = Probe::default();
        let waited = tokio::time::timeout(Duration::from_secs(5), g.pass("r3", &mut second)).await;
        assert_eq!(waited.ok(), Some(Pass::Probe));
        // Accepted: the gate opens, and r1 (refused, then another event went through) is
        // condemned.
        assert!(g.answered("r3"));
        assert_eq!(g.pass("r4", &mut Probe::default()).await, Pass::Open);
        assert_eq!(g.pass("r1", &mut Probe::default()).await, Pass::Forbidden);
        assert_eq!(g.pass("r1", &mut Probe::default()).await, Pass::Open);
    }

    #[tokio::test(start_paused = true)]
    async fn the_refused_event_probes_only_when_it_waits_alone() {
        let g = gate(Some(Duration::from_secs(3600)));
        g.refuse("bad", "403");
        let other = {
            let g = Arc::clone(&g);
            tokio::spawn(async move {
                let mut p = Probe::default();
                let pass = g.pass("good", &mut p).await;
                let won = !p.take().is_empty();
                (pass, won)
            })
        };
        tokio::task::yield_now().await;
        let mut bad = Probe::default();
        let bad_pass = tokio::spawn({
            let g = Arc::clone(&g);
            async move { g.pass("bad", &mut bad).await }
        });
        assert_eq!(other.await.unwrap(), (Pass::Probe, true));
        g.answered("good");
        assert_eq!(bad_pass.await.unwrap(), Pass::Forbidden);
    }

    #[tokio::test(start_paused = true)]
    async fn past_the_grace_waiting_events_are_forbidden_and_one_probe_keeps_testing() {
        let g = gate(Some(Duration::from_secs(10)));
        g.refuse("r1", "403");
        let started = Instant::now();
        let mut probe = Probe::default();
        // Probes every second are refused...
        loop {
            match g.pass("rx", &mut probe).await {
                Pass::Probe => {
                    probe.take();
                    g.refuse("rx", "403");
                }
                Pass::Forbidden => break,
                Pass::Open => panic!("never accepted"),
            }
        }
        assert!(started.elapsed() >= Duration::from_secs(10));
        assert!(g.is_forbidden());
        // ... and still one goes per second once forbidden; accepted, it opens the gate.
        tokio::time::sleep(Duration::from_secs(1)).await;
        assert_eq!(g.pass("ry", &mut probe).await, Pass::Probe);
        assert_eq!(g.pass("rz", &mut Probe::default()).await, Pass::Forbidden);
        probe.take();
        assert!(g.answered("ry"));
        assert_eq!(g.pass("rz", &mut Probe::default()).await, Pass::Open);
    }
}
