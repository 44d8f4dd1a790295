//! The budget's own rules: turns, fallback shares, 429 feedback.

use super::*;

fn settings(rate: u32, caps: &[(&str, u32)]) -> Settings {
    Settings {
        rate,
        burst: Settings::default_burst(rate),
        project_caps: caps.iter().map(|(p, c)| ((*p).to_owned(), *c)).collect(),
        fallback: None,
        known_projects: HashSet::new(),
    }
}

#[tokio::test(start_paused = true)]
async fn a_capped_project_waits_without_holding_back_the_others() {
    let budget = Arc::new(Budget::new(
        settings(1000, &[("slow", 2)]),
        None,
        Arc::default(),
        Metrics::new(),
    ));
    // One slot: a project waiting for its cap must not sit on it.
    let slots = Arc::new(tokio::sync::Semaphore::new(1));
    let started = tokio::time::Instant::now();
    let mut slow = Vec::new();
    for _ in 0..4 {
        let (budget, slots) = (Arc::clone(&budget), Arc::clone(&slots));
        slow.push(tokio::spawn(async move {
            let _slot = budget
                .admit("slow", || Arc::clone(&slots).acquire_owned())
                .await;
            tokio::time::Instant::now()
        }));
    }
    tokio::task::yield_now().await;
    // The fast project still gets slots and tokens while "slow" waits for its cap.
    for _ in 0..50 {
        let _slot = budget.admit("fast", || slots.acquire()).await;
    }
    assert!(started.elapsed() < Duration::from_millis(100));
    let mut done = Vec::new();
    for task in slow {
        done.push(task.await.unwrap() - started);
    }
    done.sort();
    // 2/s with a burst of 1: one at once, then one per half second.
    assert!(done[3] >= Duration::from_millis(1500), "{done:?}");
}

#[tokio::test]
async fn redis_unreachable_falls_back_to_the_share_of_the_last_known_group() {
    let members = Arc::new(AtomicUsize::new(4));
    let metrics = Metrics::new();
    let budget = Budget::new(settings(400, &[]), None, members, metrics);
    // What the instance spends in fallback: a quarter of the budget.
    assert!((budget.fallback_share() - 0.25).abs() < 1e-9);
    let limits = budget.limits("p", Source::Fallback);
    assert_eq!(limits[0].1.per_second, 100.0);
    assert_eq!(limits[0].1.burst, 10);
    let explicit = Budget::new(
        Settings {
            fallback: Some(50),
            ..settings(400, &[])
        },
        None,
        Arc::default(),
        Metrics::new(),
    );
    assert_eq!(explicit.limits("p", Source::Fallback)[0].1.per_second, 50.0);
}

#[tokio::test]
async fn sustained_429s_lower_the_projects_rate_and_it_recovers() {
    let budget = Budget::new(settings(300, &[]), None, Arc::default(), Metrics::new());
    assert_eq!(budget.limits("p", Source::Local).len(), 1);
    budget.answered("p", Some(429));
    for _ in 0..3 {
        lock(&budget.throttles).get_mut("p").unwrap().window_start -= Duration::from_secs(1);
        budget.answered("p", Some(429));
    }
    let own = budget.limits("p", Source::Local)[1].1.per_second;
    assert!((own - 300.0 * 0.9f64.powi(3)).abs() < 1e-6, "{own}");
    // Other projects keep the whole budget.
    assert_eq!(budget.limits("q", Source::Local).len(), 1);
    for _ in 0..20 {
        if let Some(t) = lock(&budget.throttles).get_mut("p") {
            t.window_start -= Duration::from_secs(1);
        }
        budget.answered("p", Some(200));
    }
    assert!(!lock(&budget.throttles).contains_key("p"), "recovered");
    assert_eq!(budget.limits("p", Source::Local).len(), 1);
}
