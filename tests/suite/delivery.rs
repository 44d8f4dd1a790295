//! Delivery under faults, load, rebalances and process death, against the real broker.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use crate::common::*;
use recaptcha_annotator::sandbox::{DefaultAnswer, Scripted};
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retry_after_is_honoured() {
    let env = TestEnv::new("retry-after").await;
    env.script(
        vec![Scripted {
            status: 429,
            times: 1,
            retry_after: Some(2),
            delay_ms: 0,
        }],
        None,
    );
    env.produce_bulk(unique_events("ra", 1)).await;
    let service = env.start(env.config());
    env.wait_all_committed(Duration::from_secs(30)).await;
    service.stop().await;
    let attempts = env.sandbox.attempts();
    assert_eq!(
        attempts.iter().map(|a| a.status).collect::<Vec<_>>(),
        [429, 200]
    );
    let gap = attempts[1].at_ms - attempts[0].at_ms;
    assert!(gap >= 2000, "retried after {gap} ms, before Retry-After: 2");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn credentials_refused_halts_without_dead_letters_then_resumes() {
    let env = TestEnv::new("halt").await;
    env.script(vec![], Some(answer(401, 0)));
    env.produce_bulk(unique_events("h", 20)).await;
    let service = env.start(env.config());
    // Halted: not ready with the reason, nothing committed, nothing dead-lettered.
    env.wait_not_ready("halted", Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    let calls_while_halted = env.sandbox.attempts().len();
    // One probe per halt_retry (500 ms), plus what was in flight when the first 401 came.
    assert!(
        calls_while_halted < 40,
        "kept hammering while halted: {calls_while_halted} calls"
    );
    let (_, metrics) = env.http_get("/metrics").await;
    assert!(metrics.contains("annotator_halted 1"), "halted gauge");
    assert!(
        env.dead_letters(0, Duration::from_millis(100)).is_empty(),
        "no dead letters while halted"
    );
    let (ends, committed) = tokio::task::block_in_place(|| env.offsets());
    for (tp, end) in &ends {
        assert!(
            *end == 0 || committed.get(tp).is_none_or(|c| c < end),
            "committed while halted"
        );
    }
    // Credentials work again: it resumes by itself.
    env.script(vec![], Some(answer(200, 0)));
    env.wait_all_committed(Duration::from_secs(30)).await;
    let (status, _) = env.http_get("/readyz").await;
    assert_eq!(status, 200);
    let names: BTreeSet<_> = env.sandbox.recorded().into_iter().map(|r| r.name).collect();
    assert_eq!(names.len(), 20);
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn same_assessment_annotations_keep_offset_order_under_random_latency() {
    let env = TestEnv::with_partitions("order", 1).await;
    env.script(
        vec![],
        Some(DefaultAnswer {
            status: 200,
            delay_ms: 0,
            jitter_ms: 20,
            retry_after: None,
        }),
    );
    let mut records = Vec::new();
    for i in 0..400 {
        let assessment = format!("projects/{PROJECT}/assessments/ord{}", i % 7);
        let event = json!({"event_id": format!("o-{i}"), "outcome": "password_correct", "assessment": assessment,
                           "account_id": format!("{i}")});
        records.push(("logins".to_owned(), None, event.to_string()));
    }
    env.produce_bulk(records).await;
    let mut config = env.config();
    config.delivery.max_in_flight = 512;
    let service = env.start(config);
    env.wait_all_committed(Duration::from_secs(60)).await;
    service.stop().await;
    let mut per_assessment: BTreeMap<String, Vec<u32>> = BTreeMap::new();
    for r in env.sandbox.recorded() {
        let seq = r.body["accountId"].as_str().unwrap().parse().unwrap();
        per_assessment.entry(r.name).or_default().push(seq);
    }
    assert_eq!(per_assessment.len(), 7);
    for (name, seqs) in per_assessment {
        let mut sorted = seqs.clone();
        sorted.sort_unstable();
        assert_eq!(seqs, sorted, "{name} out of order");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_joining_and_leaving_lose_nothing() {
    joining_and_leaving(false).await;
}

/// The same churn with KIP-848's consumer protocol: the broker assigns, incrementally.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn instances_joining_and_leaving_lose_nothing_with_the_consumer_protocol() {
    joining_and_leaving(true).await;
}

async fn joining_and_leaving(consumer_protocol: bool) {
    let mut env = TestEnv::with_partitions("group", 6).await;
    env.consumer_protocol = consumer_protocol;
    env.script(vec![], Some(answer(200, 2)));
    let total = 3000;
    let events = unique_events("g", total);
    let (first, rest) = events.split_at(total / 3);
    env.produce_bulk(first.to_vec()).await;
    // Each instance gets its own admin port, to see when it holds an assignment.
    let start = |env: &TestEnv| {
        let port = free_port();
        let mut c = env.config();
        c.admin.listen = format!("127.0.0.1:{port}");
        (env.start(c), port)
    };
    let (a, a_port) = start(&env);
    let (b, b_port) = start(&env);
    env.wait_accepted(300, Duration::from_secs(60)).await;
    let (c, c_port) = start(&env);
    let (second, third) = rest.split_at(total / 3);
    env.produce_bulk(second.to_vec()).await;
    // Membership changes one at a time, each once the group has settled, so each change is
    // one rebalance to check.
    wait_assigned(c_port, Duration::from_secs(60)).await;
    wait_group_settled(&[a_port, b_port, c_port], Duration::from_secs(60)).await;
    a.stop().await; // one leaves mid-stream
    wait_group_settled(&[b_port, c_port], Duration::from_secs(60)).await;
    let (d, _) = start(&env); // one joins
    env.produce_bulk(third.to_vec()).await;
    env.wait_all_committed(Duration::from_secs(90)).await;
    for s in [b, c, d] {
        s.stop().await;
    }
    let names: BTreeSet<_> = env.sandbox.recorded().into_iter().map(|r| r.name).collect();
    assert_eq!(names.len(), total, "every event annotated at least once");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_commits_so_a_restart_sends_nothing_twice() {
    sigterm_drains(false).await;
}

/// The same revoke-drain with KIP-848's consumer protocol.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_drains_and_commits_with_the_consumer_protocol() {
    sigterm_drains(true).await;
}

async fn sigterm_drains(consumer_protocol: bool) {
    let mut env = TestEnv::with_partitions("sigterm", 3).await;
    env.consumer_protocol = consumer_protocol;
    env.script(vec![], Some(answer(200, 20)));
    let total = 6000;
    env.produce_bulk(unique_events("t", total)).await;
    let file = env.config_file("[delivery]\nmax_in_flight = 64\nmax_pending = 500");
    let mut child = spawn_binary(file.path());
    env.wait_accepted(500, Duration::from_secs(60)).await;
    signal(&child, "TERM");
    let status = tokio::task::block_in_place(|| child.wait()).unwrap();
    assert!(status.success(), "exit status {status}");
    let after_first = env.sandbox.accepted_count();
    assert!(after_first < total as u64, "stopped mid-stream");
    let mut child = spawn_binary(file.path());
    env.wait_all_committed(Duration::from_secs(90)).await;
    signal(&child, "TERM");
    tokio::task::block_in_place(|| child.wait()).unwrap();
    let recorded = env.sandbox.recorded();
    let names: BTreeSet<_> = recorded.iter().map(|r| r.name.clone()).collect();
    assert_eq!(names.len(), total);
    assert_eq!(
        recorded.len(),
        total,
        "an event was sent twice after SIGTERM"
    );
}

/// SIGKILL after 5,000 of 20,000 events were annotated, then a restart; returns the
/// duplicate calls. With `dedup` the group's shared cache (Redis) remembers annotated events.
async fn sigkill_duplicates(dedup: bool, max_in_flight: usize) -> usize {
    let env = TestEnv::with_partitions(if dedup { "sigkill" } else { "sigkill-nodedup" }, 3).await;
    env.script(vec![], Some(answer(200, 5)));
    let total = 20_000;
    env.produce_bulk(unique_events("x", total)).await;
    let file = env.config_file(&format!(
        "{}dedup_ttl = \"{}\"\n[delivery]\nmax_in_flight = {max_in_flight}\nmax_pending = 500",
        env.redis_toml(&redis_url()),
        if dedup { "1h" } else { "0s" }
    ));
    env.sigkill_and_restart(
        file.path(),
        &[],
        (5_000, Duration::from_secs(120)),
        total,
        Duration::from_secs(180),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigkill_mid_stream_loses_nothing_and_duplicates_stay_bounded() {
    let max_in_flight = 128;
    let with = sigkill_duplicates(true, max_in_flight).await;
    let without = sigkill_duplicates(false, max_in_flight).await;
    eprintln!(
        "sigkill: {with} duplicate calls after the restart with suppression, {without} without"
    );
    // Only calls in flight at the kill can be repeated: each holds its slot until its
    // event id is stored.
    assert!(
        with <= max_in_flight,
        "{with} duplicates, more than the {max_in_flight} in flight"
    );
}

/// Waits until every instance is ready and none has had a rebalance for 3 s.
async fn wait_group_settled(ports: &[u16], within: Duration) {
    let started = std::time::Instant::now();
    let mut last: Option<(f64, std::time::Instant)> = None;
    loop {
        let mut rebalances = 0.0;
        let mut ready = true;
        for port in ports {
            let address = format!("127.0.0.1:{port}");
            ready &= admin_get(&address, "/readyz").await.0 == 200;
            rebalances += metric_sum(
                &admin_get(&address, "/metrics").await.1,
                "annotator_rebalances_total",
            );
        }
        match last {
            Some((seen, since)) if ready && seen == rebalances => {
                if since.elapsed() >= Duration::from_secs(3) {
                    return;
                }
            }
            _ => last = Some((rebalances, std::time::Instant::now())),
        }
        assert!(
            started.elapsed() < within,
            "the group on {ports:?} never settled"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_refused_with_403_waits_while_the_other_projects_flow() {
    let env = TestEnv::new("project-403").await;
    env.forbid(&["projects/222/".to_owned()]);
    let mut items = vec![("blocked", "222", "b0")];
    let ids: Vec<String> = (0..20).map(|i| format!("a{i}")).collect();
    let event_ids: Vec<String> = (0..20).map(|i| format!("ok-{i}")).collect();
    for (id, event_id) in ids.iter().zip(&event_ids) {
        items.push((event_id, PROJECT, id));
    }
    env.produce_bulk(inline_events(&items)).await;
    let service = env.start(env.config());
    env.wait_accepted(20, Duration::from_secs(30)).await;
    // The instance stays ready and says which project is halted.
    let started = std::time::Instant::now();
    let (status, body) = loop {
        let (status, body) = env.http_get("/readyz").await;
        if body.contains("project 222 halted") || started.elapsed() > Duration::from_secs(10) {
            break (status, body);
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert_eq!(status, 200, "{body}");
    assert!(body.contains("project 222 halted"), "{body}");
    let (_, metrics) = env.http_get("/metrics").await;
    assert_eq!(
        metric(&metrics, "annotator_halted_projects", &[]),
        Some(1.0)
    );
    assert_eq!(metric(&metrics, "annotator_halted", &[]), Some(0.0));
    // Access is granted: the waiting event's probe goes through.
    env.forbid(&[]);
    env.wait_all_committed(Duration::from_secs(30)).await;
    let (_, metrics) = env.http_get("/metrics").await;
    service.stop().await;
    assert_eq!(
        metric(&metrics, "annotator_halted_projects", &[]),
        Some(0.0)
    );
    let names: BTreeSet<_> = env.sandbox.recorded().into_iter().map(|r| r.name).collect();
    assert_eq!(names.len(), 21);
    assert!(env.dead_letters(0, Duration::from_millis(100)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_assessment_refused_with_403_costs_one_dead_letter() {
    let env = TestEnv::with_partitions("event-403", 1).await;
    let bad = format!("projects/{PROJECT}/assessments/bad");
    env.forbid(std::slice::from_ref(&bad));
    let good = |from: usize| -> Vec<(String, String)> {
        (from..from + 10)
            .map(|i| (format!("good-{i}"), format!("g{i}")))
            .collect()
    };
    let inline = |items: &[(String, String)]| {
        let refs: Vec<(&str, &str, &str)> = items
            .iter()
            .map(|(e, id)| (e.as_str(), PROJECT, id.as_str()))
            .collect();
        inline_events(&refs)
    };
    let mut first = inline_events(&[("bad-1", PROJECT, "bad")]);
    first.extend(inline(&good(0)));
    env.produce_bulk(first).await;
    let service = env.start(env.config());
    // The bad event's first 403 ...
    let started = std::time::Instant::now();
    while !env.sandbox.attempts().iter().any(|a| a.status == 403) {
        assert!(started.elapsed() < Duration::from_secs(30), "no 403");
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    // ... then calls of the project sent after it are accepted: its next 403 is about the
    // event, which is set aside.
    env.produce_bulk(inline(&good(10))).await;
    env.wait_all_committed(Duration::from_secs(30)).await;
    service.stop().await;
    assert_eq!(env.sandbox.accepted_count(), 20);
    let letters = env.dead_letters(1, Duration::from_secs(10));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].headers["annotator.error"], "forbidden");
    assert_eq!(letters[0].headers["annotator.status"], "403");
    assert!(letters[0].value.as_deref().unwrap().contains("bad-1"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_project_refused_past_the_grace_is_set_aside_until_a_probe_goes_through() {
    let env = TestEnv::new("project-grace").await;
    env.forbid(&["projects/222/".to_owned()]);
    let items: Vec<(String, String)> = (0..5)
        .map(|i| (format!("f-{i}"), format!("f{i}")))
        .collect();
    let refs: Vec<(&str, &str, &str)> = items
        .iter()
        .map(|(e, id)| (e.as_str(), "222", id.as_str()))
        .collect();
    env.produce_bulk(inline_events(&refs)).await;
    let mut config = env.config();
    config.delivery.forbidden_grace = Duration::from_secs(2);
    let service = env.start(config);
    env.wait_all_committed(Duration::from_secs(30)).await;
    let letters = env.dead_letters(5, Duration::from_secs(10));
    assert_eq!(letters.len(), 5);
    assert!(
        letters
            .iter()
            .all(|l| l.headers["annotator.error"] == "forbidden")
    );
    // Access fixed: the next event of the project probes and goes through.
    env.forbid(&[]);
    env.produce_bulk(inline_events(&[("after", "222", "after")]))
        .await;
    env.wait_all_committed(Duration::from_secs(30)).await;
    service.stop().await;
    assert_eq!(env.sandbox.accepted_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn oversized_events_are_dead_lettered_and_cut_to_fit_the_topic() {
    let env = TestEnv::with_partitions("oversized", 1).await;
    // Larger than delivery.max_event_bytes (64 KiB), and larger than the dead-letter
    // producer's message.max.bytes (1,000,000) too.
    let big = format!(
        r#"{{"event_id":"big","outcome":"chargeback","pad":"{}"}}"#,
        "x".repeat(100 * 1024)
    );
    let huge = format!(
        r#"{{"event_id":"huge","outcome":"chargeback","pad":"{}"}}"#,
        "y".repeat(1_200_000)
    );
    // The source topic takes it (Kafka's default max.message.bytes is about 1 MB); the
    // dead-letter topic keeps the default.
    env.set_topic_config("fraud-signals", "max.message.bytes", "2000000")
        .await;
    let producer: rdkafka::producer::FutureProducer = rdkafka::ClientConfig::new()
        .set("bootstrap.servers", brokers())
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    for (key, value) in [("k1", &big), ("k2", &huge)] {
        env.produce_with(&producer, "fraud-signals", key, value)
            .await;
    }
    env.produce_bulk(unique_events("after", 1)).await;
    let service = env.start(env.config());
    env.wait_all_committed(Duration::from_secs(60)).await;
    service.stop().await;
    let letters = env.dead_letters(2, Duration::from_secs(10));
    assert_eq!(
        letters.len(),
        2,
        "{:?}",
        letters.iter().map(|l| &l.headers).collect::<Vec<_>>()
    );
    for letter in &letters {
        assert_eq!(letter.headers["annotator.error"], "decode");
        assert!(letter.headers["annotator.detail"].contains("delivery.max_event_bytes"));
    }
    // Written concurrently: find each by its size.
    let by_source = |id: &str| {
        letters
            .iter()
            .find(|l| l.headers["annotator.detail"].contains(id))
            .unwrap()
    };
    let whole = by_source(&format!("event of {} bytes", big.len() + 2));
    assert!(!whole.headers.contains_key("annotator.truncated"));
    assert_eq!(whole.value.as_deref(), Some(big.as_str()));
    let cut = by_source(&format!("event of {} bytes", huge.len() + 2));
    assert_eq!(cut.headers["annotator.truncated"], huge.len().to_string());
    assert_eq!(cut.key.as_deref(), Some("k2"), "a small key is kept whole");
    let kept = cut.value.as_deref().unwrap();
    assert!(
        kept.len() < 1_000_000 && huge.starts_with(kept),
        "{}",
        kept.len()
    );
    assert_eq!(env.sandbox.accepted_count(), 1, "the stream went on");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn parked_large_events_stay_within_the_memory_bound() {
    let env = TestEnv::with_partitions("parked-bytes", 2).await;
    // 4,096 outcomes of 60 KiB whose keys never arrive: all of them would wait for
    // join_grace, 240 MB of values.
    let pad = "z".repeat(60 * 1024);
    let events: Vec<_> = (0..4096)
        .map(|i| {
            let event = json!({"event_id": format!("p{i}"), "outcome": "chargeback", "key": format!("never-{i}"), "pad": pad});
            ("fraud-signals".to_owned(), Some(format!("never-{i}")), event.to_string())
        })
        .collect();
    env.produce_bulk(events).await;
    let file = env.config_file("[delivery]\njoin_grace = \"10m\"");
    let mut child = spawn_binary(file.path());
    // Long enough to take in all it is allowed to, and to pause fetching.
    tokio::time::sleep(Duration::from_secs(20)).await;
    let status = std::fs::read_to_string(format!("/proc/{}/status", child.id())).unwrap();
    signal(&child, "KILL");
    tokio::task::block_in_place(|| child.wait()).unwrap();
    let peak_kib: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
        .unwrap();
    eprintln!(
        "peak RSS with 4,096 parked 60 KiB events: {} MB",
        peak_kib / 1024
    );
    assert!(peak_kib < 100 * 1024, "peak RSS {} MB", peak_kib / 1024);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_endpoint_never_lets_rate_tokens_pile_up_into_a_burst() {
    let env = TestEnv::with_partitions("stall-burst", 4).await;
    env.produce_bulk(unique_events("s", 1200)).await;
    let mut config = env.config();
    config.delivery.rate_limit = 100;
    config.delivery.rate_burst = Some(10);
    config.delivery.max_in_flight = 32;
    let service = env.start(config);
    env.wait_accepted(200, Duration::from_secs(60)).await;
    // The endpoint stalls for 6 s under the backlog, then answers at once again.
    env.script(vec![], Some(answer(200, 6000)));
    tokio::time::sleep(Duration::from_secs(6)).await;
    env.script(vec![], Some(answer(200, 0)));
    env.wait_all_committed(Duration::from_secs(90)).await;
    service.stop().await;
    let busiest = env.sandbox.busiest_second();
    eprintln!("busiest second at the endpoint: {busiest} calls (rate 100, burst 10)");
    // Taking the token before the slot (the defect) measured 669 here.
    assert!(
        busiest <= busiest_allowed(100, 10),
        "{busiest} calls in one second, above rate + burst"
    );
    assert_eq!(env.sandbox.accepted_count(), 1200);
}

/// A record dead-lettered once and delivered again (its commit lost to a rebalance, a
/// coordinator's failover, or here an offset moved back) is not written to the dead-letter
/// topic twice: a replay of the topic would otherwise send its events twice.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_letter_delivered_again_is_not_written_twice() {
    let env = TestEnv::with_partitions("dl-once", 1).await;
    env.produce("fraud-signals", Some("bad"), Some("not json"))
        .await;
    env.produce_bulk(unique_events("ok", 1)).await;
    let config = || {
        recaptcha_annotator::config::Config::from_toml(
            &env.config_toml(&env.redis_toml(&redis_url())),
        )
        .unwrap()
    };
    let service = env.start(config());
    env.wait_all_committed(Duration::from_secs(30)).await;
    service.stop().await;
    assert_eq!(env.dead_letters(1, Duration::from_secs(5)).len(), 1);

    // The group's commit goes back to the start: both records come again.
    {
        use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
        let consumer: BaseConsumer = rdkafka::ClientConfig::new()
            .set("bootstrap.servers", &env.brokers)
            .set("group.id", &env.config_base.group)
            .create()
            .unwrap();
        let mut tpl = rdkafka::TopicPartitionList::new();
        tpl.add_partition_offset(&env.topic("fraud-signals"), 0, rdkafka::Offset::Offset(0))
            .unwrap();
        tokio::task::block_in_place(|| consumer.commit(&tpl, CommitMode::Sync)).unwrap();
    }
    let service = env.start(config());
    env.wait_all_committed(Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    service.stop().await;
    assert_eq!(
        env.dead_letters(1, Duration::from_secs(5)).len(),
        1,
        "the dead letter was written again"
    );
    assert_eq!(
        env.sandbox.accepted_count(),
        1,
        "the annotation was sent again"
    );
}
