//! Fault combinations at the halt gates, black-box against the sandbox: a probe that meets
//! a 503 after a 401, and a project refused for a while with several events waiting.
//! (The races between the two scopes are forced in `pipeline::halts`' unit tests.)
#![allow(clippy::unwrap_used)]

mod common;

use std::collections::BTreeSet;
use std::time::Duration;

use common::*;

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
