//! The rules across gates (the table in `halts.rs`): every answer class to a probe of each
//! scope, the order of claims, and a 403's second try. Paused time.

use super::*;
use crate::failure::RetryCause;

const RETRY: Duration = Duration::from_secs(1);

fn gates() -> HaltGates {
    HaltGates::new(
        Arc::new(Health::default()),
        Metrics::new(),
        RETRY,
        Duration::from_secs(3600),
    )
}

fn halt(scope: HaltScope, status: u16) -> Failure {
    Failure::Halt(Halt {
        scope,
        status: Some(status),
        detail: format!("HTTP {status}"),
    })
}

fn service_halt() -> Failure {
    halt(HaltScope::Service, 401)
}

fn project_halt() -> Failure {
    halt(HaltScope::Project, 403)
}

fn rejected() -> Failure {
    Failure::DeadLetter(DeadLetter {
        reason: DeadLetterReason::Rejected,
        detail: "INVALID_ARGUMENT".into(),
        status: Some(400),
    })
}

fn retryable() -> Vec<Failure> {
    [
        RetryCause::RateLimited,
        RetryCause::ServerError,
        RetryCause::Timeout,
        RetryCause::Aborted,
        RetryCause::Connection,
    ]
    .into_iter()
    .map(|cause| Failure::retry(cause, None, cause.as_str()))
    .collect()
}

fn is_forbidden(result: &Result<(), Failure>) -> bool {
    matches!(
        result,
        Err(Failure::DeadLetter(DeadLetter {
            reason: DeadLetterReason::Forbidden,
            ..
        }))
    )
}

/// One call of `record` for `project` as `Sender::send` makes it: through the gates, the
/// snapshot of the project's accepted calls, then the answer `result`.
async fn call(
    g: &HaltGates,
    project: &str,
    record: &str,
    probe: &mut Probe,
    result: Result<(), Failure>,
) -> Result<(), Failure> {
    g.pass(project, record, probe).await?;
    probe.accepted_before = g.newest_accepted(project);
    let sent = Instant::now();
    g.resolve(project, record, result, probe, sent)
}

/// Where each closed gate stands: `Some(true)` when a probe may go now, `Some(false)` when
/// the next goes after `halt_retry`, `None` when it is open.
async fn standing<const N: usize>(gates: [Option<Arc<Gate>>; N]) -> [Option<bool>; N] {
    let gates = gates.map(|g| g.filter(|g| g.is_closed()));
    let now = gates
        .clone()
        .map(|g| g.map(|g| g.try_pass("someone", &mut Probe::default()) == Some(Pass::Probe)));
    // Those not due now must be after halt_retry (nothing else holds a claim here).
    tokio::time::advance(RETRY).await;
    for (gate, now) in gates.iter().zip(now) {
        if let (Some(gate), Some(false)) = (gate, now) {
            assert_eq!(
                gate.try_pass("someone", &mut Probe::default()),
                Some(Pass::Probe),
                "the next probe goes after halt_retry"
            );
        }
    }
    now
}

/// Lets spawned tasks run up to their next wait.
async fn settle() {
    for _ in 0..10 {
        tokio::task::yield_now().await;
    }
}

#[derive(Debug, Clone, Copy, PartialEq)]
enum Scope {
    Service,
    Project,
    Both,
}

#[tokio::test(start_paused = true)]
async fn every_answer_to_a_probe_of_each_scope() {
    let classes: Vec<(&str, Result<(), Failure>)> = [
        ("accepted", Ok(())),
        ("rejected", Err(rejected())),
        ("service halt", Err(service_halt())),
        ("project halt", Err(project_halt())),
    ]
    .into_iter()
    .chain(retryable().into_iter().map(|f| ("retryable", Err(f))))
    .collect();
    for scope in [Scope::Service, Scope::Project, Scope::Both] {
        for (class, answer) in &classes {
            let g = gates();
            if scope != Scope::Service {
                g.resolve(
                    "p",
                    "r0",
                    Err(project_halt()),
                    &mut Probe::default(),
                    Instant::now(),
                )
                .unwrap_err();
            }
            if scope != Scope::Project {
                g.resolve(
                    "p",
                    "r1",
                    Err(service_halt()),
                    &mut Probe::default(),
                    Instant::now(),
                )
                .unwrap_err();
            }
            tokio::time::advance(RETRY).await;
            let mut probe = Probe::default();
            g.pass("p", "e", &mut probe).await.unwrap();
            assert_eq!(probe.holds(&g.service), scope != Scope::Project);
            assert_eq!(
                g.project("p").is_some_and(|p| probe.holds(&p)),
                scope != Scope::Service
            );
            let result = g.resolve("p", "e", answer.clone(), &mut probe, Instant::now());
            assert_eq!(
                result.as_ref().err(),
                answer.as_ref().err(),
                "{scope:?} {class}"
            );
            assert!(
                !probe.holds(&g.service) && !g.project("p").is_some_and(|p| probe.holds(&p)),
                "{scope:?} {class}: every claim is resolved by the answer"
            );
            let [service, project] = standing([Some(Arc::clone(&g.service)), g.project("p")]).await;
            let expected = match *class {
                "accepted" | "rejected" => (None, None),
                // Nothing was learned of the project: its probe may go at once.
                "service halt" => (Some(false), (scope != Scope::Service).then_some(true)),
                // The credentials work; the project refuses.
                "project halt" => (None, Some(false)),
                _ => (
                    (scope != Scope::Project).then_some(false),
                    (scope != Scope::Service).then_some(false),
                ),
            };
            assert_eq!((service, project), expected, "{scope:?} {class}");
        }
    }
}

#[tokio::test(start_paused = true)]
async fn a_service_probe_answered_by_a_projects_403_opens_the_service() {
    let g = gates();
    let mut probe = Probe::default();
    call(&g, "111", "r0", &mut probe, Err(service_halt()))
        .await
        .unwrap_err();
    tokio::time::advance(RETRY).await;
    // An event of project 222 (always 403) wins the service's probe.
    let mut probe = Probe::default();
    call(&g, "222", "e222", &mut probe, Err(project_halt()))
        .await
        .unwrap_err();
    assert!(!g.service.is_closed(), "the 403 shows the credentials work");
    // Project 111's events flow at once.
    let flows = tokio::time::timeout(
        Duration::from_millis(1),
        call(&g, "111", "e111", &mut Probe::default(), Ok(())),
    )
    .await;
    assert!(matches!(flows, Ok(Ok(()))), "{flows:?}");
    assert!(g.project("222").is_some_and(|p| p.is_closed()));
}

#[tokio::test(start_paused = true)]
async fn after_401_then_503_the_next_probe_goes_and_a_200_opens() {
    let g = gates();
    let mut probe = Probe::default();
    let answers = [Err(service_halt()), Err(retryable()[1].clone()), Ok(())];
    let started = tokio::time::Instant::now();
    for answer in answers {
        let sent = tokio::time::timeout(10 * RETRY, call(&g, "p", "e", &mut probe, answer)).await;
        assert!(sent.is_ok(), "no probe went within 10 halt_retry");
    }
    assert!(!g.service.is_closed());
    assert_eq!(started.elapsed(), 2 * RETRY, "a probe per halt_retry");
}

#[tokio::test(start_paused = true)]
async fn no_event_holds_a_claim_while_it_waits_at_the_other_gate() {
    let g = Arc::new(gates());
    // Both close; p is refused again half a retry later, so the service's probe is due
    // first.
    call(&g, "p", "r0", &mut Probe::default(), Err(project_halt()))
        .await
        .unwrap_err();
    call(&g, "q", "r1", &mut Probe::default(), Err(service_halt()))
        .await
        .unwrap_err();
    tokio::time::advance(RETRY / 2).await;
    g.project("p").unwrap().refuse("r2", "HTTP 403");
    tokio::time::advance(RETRY / 2).await;
    // E (project p) would take the service's probe, then wait at p's gate: it gives the
    // service's claim back.
    let e = {
        let g = Arc::clone(&g);
        tokio::spawn(async move {
            let mut probe = Probe::default();
            g.pass("p", "e", &mut probe).await.map(|()| probe)
        })
    };
    settle().await;
    // F (project q) probes the service meanwhile.
    let mut f = Probe::default();
    let passed = tokio::time::timeout(Duration::from_millis(1), g.pass("q", "f", &mut f)).await;
    assert!(matches!(passed, Ok(Ok(()))), "{passed:?}");
    assert!(f.holds(&g.service));
    // F's answer opens the service; E goes on at p's next probe, holding p's claim.
    g.resolve("q", "f", Ok(()), &mut f, Instant::now()).unwrap();
    let e = e.await.unwrap().unwrap();
    assert!(g.project("p").is_some_and(|p| e.holds(&p)));
    assert!(!e.holds(&g.service));
}

#[tokio::test(start_paused = true)]
async fn the_mirror_an_event_with_the_projects_probe_waits_at_a_closed_service_without_it() {
    let g = Arc::new(gates());
    call(&g, "p", "r0", &mut Probe::default(), Err(project_halt()))
        .await
        .unwrap_err();
    let e = {
        let g = Arc::clone(&g);
        tokio::spawn(async move {
            let mut probe = Probe::default();
            g.pass("p", "e", &mut probe).await.map(|()| probe)
        })
    };
    tokio::time::advance(RETRY / 2).await;
    settle().await;
    // The service closes while E waits at p's gate.
    call(&g, "q", "r1", &mut Probe::default(), Err(service_halt()))
        .await
        .unwrap_err();
    // At p's probe time E gets p's claim, finds the service closed and gives p's claim back.
    tokio::time::advance(RETRY / 2 + Duration::from_millis(10)).await;
    settle().await;
    let p = g.project("p").unwrap();
    assert_eq!(
        p.try_pass("other", &mut Probe::default()),
        Some(Pass::Probe)
    );
    assert!(!e.is_finished());
    e.abort();
}

#[tokio::test(start_paused = true)]
async fn when_access_comes_back_the_events_refused_meanwhile_are_not_condemned() {
    let g = gates();
    let mut a = Probe::default();
    let mut b = Probe::default();
    call(&g, "p", "a", &mut a, Err(project_halt()))
        .await
        .unwrap_err();
    call(&g, "p", "b", &mut b, Err(project_halt()))
        .await
        .unwrap_err();
    tokio::time::advance(RETRY).await;
    // The project accepts a probe again...
    call(&g, "p", "c", &mut Probe::default(), Ok(()))
        .await
        .unwrap();
    // ... and the events refused before are sent again and accepted: neither is condemned.
    assert_eq!(call(&g, "p", "b", &mut b, Ok(())).await, Ok(()));
    assert_eq!(call(&g, "p", "a", &mut a, Ok(())).await, Ok(()));
}

#[tokio::test(start_paused = true)]
async fn an_event_refused_again_after_its_project_accepted_a_later_call_is_condemned() {
    let g = gates();
    let mut bad = Probe::default();
    call(&g, "p", "bad", &mut bad, Err(project_halt()))
        .await
        .unwrap_err();
    tokio::time::advance(RETRY).await;
    call(&g, "p", "good", &mut Probe::default(), Ok(()))
        .await
        .unwrap();
    let again = call(&g, "p", "bad", &mut bad, Err(project_halt())).await;
    assert!(is_forbidden(&again), "{again:?}");
    assert!(
        !g.project("p").is_some_and(|p| p.is_closed()),
        "the project flows"
    );
}

#[tokio::test(start_paused = true)]
async fn while_access_is_revoked_a_403_beside_an_accepted_call_is_tried_again_not_condemned() {
    let g = gates();
    let mut r = Probe::default();
    g.pass("p", "r", &mut r).await.unwrap();
    let r_sent = Instant::now();
    // X, sent just after R, is accepted (a server with the old policy)...
    g.resolve("p", "x", Ok(()), &mut Probe::default(), Instant::now())
        .unwrap();
    // ... and R is refused: it is not dead-lettered, and the project is not halted.
    let first = g.resolve("p", "r", Err(project_halt()), &mut r, r_sent);
    assert!(matches!(first, Err(Failure::Halt(_))), "{first:?}");
    assert!(g.project("p").is_none());
    // Its second try is refused too, with no call accepted since: the project halts now,
    // and still nothing is condemned.
    let second = call(&g, "p", "r", &mut r, Err(project_halt())).await;
    assert!(matches!(second, Err(Failure::Halt(_))), "{second:?}");
    assert!(g.project("p").is_some_and(|p| p.is_closed()));
}

#[tokio::test(start_paused = true)]
async fn a_403_for_a_call_while_the_project_accepted_another_does_not_halt_the_project() {
    let g = gates();
    let mut bad = Probe::default();
    g.pass("p", "bad", &mut bad).await.unwrap();
    let sent = Instant::now();
    g.resolve("p", "good", Ok(()), &mut Probe::default(), Instant::now())
        .unwrap();
    let refused = g.resolve("p", "bad", Err(project_halt()), &mut bad, sent);
    assert!(matches!(refused, Err(Failure::Halt(_))), "{refused:?}");
    assert!(g.project("p").is_none(), "the project was halted");
    // Another call is accepted after the refusal; the bad event's second try is refused.
    call(&g, "p", "good2", &mut Probe::default(), Ok(()))
        .await
        .unwrap();
    let again = call(&g, "p", "bad", &mut bad, Err(project_halt())).await;
    assert!(is_forbidden(&again), "{again:?}");
}
