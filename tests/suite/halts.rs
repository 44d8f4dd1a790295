//! Fault combinations at the halt gates, black-box against the sandbox: a probe that meets
//! a 503 after a 401, and a project refused for a while with several events waiting.
//! (The races between the two scopes are forced in `pipeline::halts`' unit tests.)

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;
use recaptcha_annotator::health::unix_ms as now_ms;

/// 401, then 503, then 200 for every call: the 503 answers the probe, and the next probe
/// goes a `halt_retry` later (it used to leave the gate marked as probed for ever).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_401_then_a_503_every_event_is_annotated() {
    let env = TestEnv::with_partitions("halt-503", 1).await;
    env.script(
        vec![scripted(401, 1), scripted(503, 1)],
        Some(answer(200, 0)),
    );
    // One assessment: its events go one after another (offset order), so the second
    // call is the probe that meets the 503.
    let events: Vec<(String, String)> = (0..11)
        .map(|i| (format!("s-{i}"), "same".to_owned()))
        .collect();
    let items: Vec<(&str, &str, &str)> = events
        .iter()
        .map(|(e, id)| (e.as_str(), PROJECT, id.as_str()))
        .collect();
    env.produce_bulk(inline_events(&items)).await;
    let mut config = env.config();
    config.delivery.halt_retry = Duration::from_secs(1);
    let service = env.start(config);
    env.wait_accepted(11, Duration::from_secs(40)).await;
    env.wait_all_committed(Duration::from_secs(30)).await;
    service.stop().await;
    let statuses: Vec<u16> = env.sandbox.attempts().iter().map(|a| a.status).collect();
    assert_eq!(&statuses[..2], [401, 503], "{statuses:?}");
    assert_eq!(env.sandbox.accepted_count(), 11, "{statuses:?}");
    assert!(env.dead_letters(0, Duration::from_millis(100)).is_empty());
}

/// A project refused for 5 s with two of its events waiting: when access comes back, both
/// are annotated (none is condemned `forbidden`), and the other project flows all along.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_refused_for_a_while_loses_no_event_to_forbidden() {
    let env = TestEnv::with_partitions("project-episode", 1).await;
    env.forbid(&["projects/222/".to_owned()]);
    env.produce_bulk(inline_events(&[("w-1", "222", "w1"), ("w-2", "222", "w2")]))
        .await;
    let mut config = env.config();
    config.delivery.halt_retry = Duration::from_secs(1);
    let service = env.start(config);
    // The other project flows while 222 is refused.
    let others: Vec<(String, String)> = (0..10)
        .map(|i| (format!("o-{i}"), format!("o{i}")))
        .collect();
    let items: Vec<(&str, &str, &str)> = others
        .iter()
        .map(|(e, id)| (e.as_str(), PROJECT, id.as_str()))
        .collect();
    env.produce_bulk(inline_events(&items)).await;
    env.wait_accepted(10, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(5)).await;
    assert_eq!(env.sandbox.accepted_count(), 10, "222 was refused");
    env.forbid(&[]);
    env.wait_all_committed(Duration::from_secs(30)).await;
    service.stop().await;
    let letters = env.dead_letters(0, Duration::from_millis(500));
    assert!(letters.is_empty(), "{letters:?}");
    let names: BTreeSet<_> = env.sandbox.recorded().into_iter().map(|r| r.name).collect();
    assert!(names.contains("projects/222/assessments/w1"), "{names:?}");
    assert!(names.contains("projects/222/assessments/w2"), "{names:?}");
}

/// Produces a batch: four events of the healthy project, two of project 222; returns
/// their assessment names.
async fn produce_batch(env: &TestEnv, next: &mut usize) -> Vec<String> {
    let mut items = Vec::new();
    for project in [PROJECT, PROJECT, PROJECT, PROJECT, "222", "222"] {
        items.push((format!("c-{next}"), project.to_owned(), format!("c{next}")));
        *next += 1;
    }
    let refs: Vec<(&str, &str, &str)> = items
        .iter()
        .map(|(e, p, id)| (e.as_str(), p.as_str(), id.as_str()))
        .collect();
    env.produce_bulk(inline_events(&refs)).await;
    items
        .into_iter()
        .map(|(_, p, id)| format!("projects/{p}/assessments/{id}"))
        .collect()
}

/// Produces a batch every 250 ms for `span`.
async fn produce_for(env: &TestEnv, span: Duration, next: &mut usize, names: &mut Vec<String>) {
    let started = std::time::Instant::now();
    while started.elapsed() < span {
        names.extend(produce_batch(env, next).await);
        tokio::time::sleep(Duration::from_millis(250)).await;
    }
}

/// Forty seconds of faults at the gates, in rounds: project 222 refused (403) for 3 s, a
/// 401 episode of 1.5 s whose probes then meet three 503s, and one assessment Google always
/// refuses per round. Nothing is lost, only the always-refused assessments are dead-lettered
/// (`forbidden`), and the healthy project flows while 222 is refused.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "long: scripts/test.sh --long runs it"]
async fn chaos_at_the_gates_loses_nothing_and_condemns_only_refused_assessments() {
    let env = TestEnv::with_partitions("gate-chaos", 4).await;
    let bad: Vec<String> = (0..5)
        .map(|i| format!("projects/{PROJECT}/assessments/bad{i}"))
        .collect();
    env.forbid(&bad);
    let mut config = env.config();
    config.delivery.forbidden_grace = Duration::from_secs(60);
    let service = env.start(config);
    let mut next = 0;
    let mut good = Vec::new();
    let mut refusals = Vec::new();
    for (round, bad_name) in bad.iter().enumerate() {
        let id = bad_name.rsplit('/').next().unwrap();
        env.produce_bulk(inline_events(&[(&format!("bad-{round}"), PROJECT, id)]))
            .await;
        let started = now_ms();
        env.forbid(&[bad.clone(), vec!["projects/222/".to_owned()]].concat());
        produce_for(&env, Duration::from_secs(3), &mut next, &mut good).await;
        refusals.push((started, now_ms()));
        env.forbid(&bad);
        produce_for(&env, Duration::from_secs(1), &mut next, &mut good).await;
        env.script(vec![], Some(answer(401, 0)));
        produce_for(&env, Duration::from_millis(1500), &mut next, &mut good).await;
        env.script(vec![scripted(503, 3)], Some(answer(200, 0)));
        produce_for(&env, Duration::from_millis(2500), &mut next, &mut good).await;
    }
    env.wait_all_committed(Duration::from_secs(120)).await;
    service.stop().await;

    let letters = env.dead_letters(bad.len(), Duration::from_secs(10));
    let condemned: BTreeSet<String> = letters
        .iter()
        .map(|l| {
            assert_eq!(l.headers["annotator.error"], "forbidden", "{l:?}");
            let value: serde_json::Value =
                serde_json::from_str(l.value.as_deref().unwrap()).unwrap();
            value["assessment"].as_str().unwrap().to_owned()
        })
        .collect();
    assert_eq!(condemned, bad.iter().cloned().collect(), "false forbidden");
    assert_eq!(letters.len(), bad.len(), "a dead letter written twice");
    let accepted: BTreeSet<String> = env.sandbox.recorded().into_iter().map(|r| r.name).collect();
    let lost: Vec<&String> = good.iter().filter(|n| !accepted.contains(*n)).collect();
    assert!(
        lost.is_empty(),
        "{} of {} lost: {lost:?}",
        lost.len(),
        good.len()
    );
    let attempts = env.sandbox.attempts();
    let healthy = format!("projects/{PROJECT}/");
    for (from, to) in refusals {
        let flowed = attempts
            .iter()
            .filter(|a| a.status == 200 && a.name.starts_with(&healthy))
            .filter(|a| (from..to).contains(&a.at_ms))
            .count();
        assert!(
            flowed > 0,
            "the healthy project stopped while 222 was refused"
        );
    }
    eprintln!(
        "gate chaos: {} events, {} attempts, {} dead letters",
        good.len() + bad.len(),
        attempts.len(),
        letters.len()
    );
}
