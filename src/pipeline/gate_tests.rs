//! Every transition of one gate's state machine (the table in `gate.rs`), on paused time.

use super::*;

const RETRY: Duration = Duration::from_secs(1);

fn gate(grace: Option<Duration>) -> Arc<Gate> {
    Arc::new(Gate::new(RETRY, grace))
}

fn project_gate() -> Arc<Gate> {
    gate(Some(Duration::from_secs(3600)))
}

/// What `record` may do within `within`; `None` when it still waits then.
async fn pass_within(g: &Arc<Gate>, record: &str, within: Duration) -> Option<(Pass, Probe)> {
    let mut probe = Probe::default();
    let pass = tokio::time::timeout(within, g.pass(record, &mut probe)).await;
    pass.ok().map(|p| (p, probe))
}

#[tokio::test(start_paused = true)]
async fn open_refuse_closes_and_the_first_probe_goes_after_halt_retry() {
    let g = project_gate();
    assert_eq!(pass_within(&g, "a", RETRY).await.unwrap().0, Pass::Open);
    assert!(g.refuse("r", "403"));
    assert!(g.is_closed());
    assert!(
        pass_within(&g, "a", RETRY / 2).await.is_none(),
        "no probe before halt_retry"
    );
    let (pass, probe) = pass_within(&g, "a", RETRY).await.unwrap();
    assert_eq!(pass, Pass::Probe);
    assert!(probe.holds(&g));
}

#[tokio::test(start_paused = true)]
async fn closed_refuse_clears_the_probe_and_sets_the_next_one_halt_retry_later() {
    let g = project_gate();
    g.refuse("r", "403");
    tokio::time::advance(RETRY).await;
    let (_, mut first) = pass_within(&g, "a", RETRY).await.unwrap();
    assert!(!g.refuse("a", "403 again"), "it was closed already");
    assert_eq!(g.detail().as_deref(), Some("403 again"));
    assert!(pass_within(&g, "b", RETRY / 2).await.is_none());
    let (pass, mut second) = pass_within(&g, "b", RETRY).await.unwrap();
    assert_eq!(pass, Pass::Probe);
    // The first claim was overtaken by the refusal: giving it back frees nothing.
    first.release();
    assert!(pass_within(&g, "c", RETRY / 2).await.is_none());
    second.release();
    assert_eq!(
        pass_within(&g, "c", RETRY / 100).await.unwrap().0,
        Pass::Probe
    );
}

#[tokio::test(start_paused = true)]
async fn a_released_claim_lets_the_next_waiter_probe_at_once() {
    let g = project_gate();
    g.refuse("r", "403");
    tokio::time::advance(RETRY).await;
    let (_, first) = pass_within(&g, "a", RETRY).await.unwrap();
    // Abandoned (revoke, shutdown): dropped with the task.
    drop(first);
    let (pass, _) = pass_within(&g, "b", Duration::from_millis(1))
        .await
        .unwrap();
    assert_eq!(pass, Pass::Probe);
}

#[tokio::test(start_paused = true)]
async fn an_inconclusive_probe_frees_the_gate_for_a_probe_halt_retry_later() {
    let g = gate(None);
    g.refuse("r", "401");
    tokio::time::advance(RETRY).await;
    let (_, mut first) = pass_within(&g, "a", RETRY).await.unwrap();
    // A 503: nothing learned. Nobody probes at once, and then anybody may: the prober too.
    first.inconclusive();
    assert!(pass_within(&g, "b", RETRY / 2).await.is_none());
    let (pass, _) = pass_within(&g, "a", RETRY).await.unwrap();
    assert_eq!(pass, Pass::Probe);
}

#[tokio::test(start_paused = true)]
async fn an_answer_opens_the_gate_and_wakes_every_waiter() {
    let g = project_gate();
    g.refuse("r", "403");
    let waiters: Vec<_> = (0..10)
        .map(|i| {
            let g = Arc::clone(&g);
            tokio::spawn(async move { g.pass(&format!("w{i}"), &mut Probe::default()).await })
        })
        .collect();
    tokio::time::advance(RETRY / 2).await;
    assert!(g.answered(), "it was closed");
    assert!(!g.answered(), "open already");
    for w in waiters {
        assert_eq!(w.await.unwrap(), Pass::Open);
    }
}

#[tokio::test(start_paused = true)]
async fn the_event_refused_last_probes_only_when_it_waits_alone() {
    let g = project_gate();
    g.refuse("bad", "403");
    tokio::time::advance(RETRY).await;
    let mut other = Probe::default();
    let good = {
        let g = Arc::clone(&g);
        tokio::spawn(async move {
            // Waits long enough for "bad" to be among the waiters when the probe is free.
            tokio::time::sleep(RETRY / 10).await;
            let pass = g.pass("good", &mut other).await;
            (pass, other)
        })
    };
    // A probe is out (somebody else's), so both wait.
    let (_, mut out) = pass_within(&g, "x", RETRY).await.unwrap();
    let bad = {
        let g = Arc::clone(&g);
        tokio::spawn(async move { g.pass("bad", &mut Probe::default()).await })
    };
    tokio::time::advance(RETRY / 5).await;
    out.release();
    let (pass, probe) = good.await.unwrap();
    assert_eq!(
        pass,
        Pass::Probe,
        "the other waiter probes, not the refused one"
    );
    // Left alone, the refused one probes once the claim is given back.
    drop(probe);
    assert_eq!(bad.await.unwrap(), Pass::Probe);
}

#[tokio::test(start_paused = true)]
async fn past_the_grace_waiters_are_forbidden_and_one_probe_per_halt_retry_still_goes() {
    let g = gate(Some(Duration::from_secs(10)));
    g.refuse("r1", "403");
    let started = Instant::now();
    let mut probe = Probe::default();
    loop {
        match g.pass("rx", &mut probe).await {
            Pass::Probe => {
                probe.resolved();
                g.refuse("rx", "403");
            }
            Pass::Forbidden => break,
            Pass::Open => panic!("never accepted"),
        }
    }
    assert!(started.elapsed() >= Duration::from_secs(10));
    assert!(g.is_forbidden());
    tokio::time::advance(RETRY).await;
    assert_eq!(g.pass("ry", &mut probe).await, Pass::Probe);
    assert_eq!(g.pass("rz", &mut Probe::default()).await, Pass::Forbidden);
    probe.resolved();
    assert!(g.answered());
    assert_eq!(g.pass("rz", &mut Probe::default()).await, Pass::Open);
    assert!(!g.is_forbidden());
}

#[tokio::test(start_paused = true)]
async fn waiters_sleep_while_a_probe_is_out() {
    let g = gate(None);
    g.refuse("r", "401");
    tokio::time::advance(RETRY).await;
    let (_, mut out) = pass_within(&g, "prober", RETRY).await.unwrap();
    let waiters: Vec<_> = (0..100)
        .map(|i| {
            let g = Arc::clone(&g);
            tokio::spawn(async move { g.pass(&format!("w{i}"), &mut Probe::default()).await })
        })
        .collect();
    tokio::time::sleep(Duration::from_millis(10)).await;
    let before = g.looks.load(Ordering::Relaxed);
    // Ten seconds with the probe out: nothing changes, so nobody looks again.
    for _ in 0..100 {
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let looked = g.looks.load(Ordering::Relaxed) - before;
    assert_eq!(
        looked, 0,
        "waiters woke {looked} times while nothing changed"
    );
    out.inconclusive();
    tokio::time::advance(RETRY).await;
    assert!(g.answered());
    for w in waiters {
        let pass = w.await.unwrap();
        assert!(matches!(pass, Pass::Open | Pass::Probe), "{pass:?}");
    }
}
