//! The key-value cache: the real Redis server (each test under its own key prefix) and the
//! embedded store, with the real broker.

use std::collections::BTreeSet;
use std::sync::Arc;
use std::time::Duration;

use crate::common::*;
use recaptcha_annotator::cache::embedded::EmbeddedCache;
use recaptcha_annotator::cache::redis::RedisCache;
use recaptcha_annotator::cache::{Cache, Lookup};
use recaptcha_annotator::config::CacheBackend;
use recaptcha_annotator::domain::assessment::{AssessmentName, CorrelationKey};
use secrecy::SecretString;
use serde_json::json;

fn unique(tag: &str) -> String {
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_nanos();
    format!("t-{tag}-{nanos}-")
}

async fn backends(tag: &str, dir: &std::path::Path) -> Vec<Arc<dyn Cache>> {
    let prefix = unique(tag);
    let redis = RedisCache::connect(
        &recaptcha_annotator::cache::link::RedisTarget::single(&SecretString::from(redis_url())),
        &format!("{prefix}key:"),
        &format!("{prefix}done:"),
    )
    .await
    .unwrap();
    vec![
        Arc::new(redis),
        Arc::new(EmbeddedCache::open(&dir.join("c.redb")).unwrap()),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn both_backends_map_expire_and_remember_events() {
    let dir = tempfile::tempdir().unwrap();
    let key = CorrelationKey::parse("login-7f3a").unwrap();
    let name = AssessmentName::parse("projects/1/assessments/abc").unwrap();
    let later = AssessmentName::parse("projects/1/assessments/def").unwrap();
    for cache in backends("basic", dir.path()).await {
        let backend = cache.name();
        assert_eq!(cache.get(&key).await.unwrap(), Lookup::Miss, "{backend}");
        cache
            .put(&key, &name, Duration::from_secs(60))
            .await
            .unwrap();
        assert_eq!(
            cache.get(&key).await.unwrap(),
            Lookup::Hit(name.clone()),
            "{backend}"
        );
        cache
            .put(&key, &later, Duration::from_secs(1))
            .await
            .unwrap();
        assert_eq!(
            cache.get(&key).await.unwrap(),
            Lookup::Hit(later.clone()),
            "{backend}: later write replaces"
        );
        assert!(!cache.is_done("e-1", "t/0/5/1").await.unwrap());
        cache
            .mark_done("e-1", "t/0/5/1", Duration::from_secs(1))
            .await
            .unwrap();
        assert!(cache.is_done("e-1", "t/0/5/1").await.unwrap(), "{backend}");
        assert!(
            !cache.is_done("e-1", "t/0/9/2").await.unwrap(),
            "{backend}: another record with the same event id is not a redelivery"
        );
        tokio::time::sleep(Duration::from_millis(2100)).await;
        assert_eq!(
            cache.get(&key).await.unwrap(),
            Lookup::Miss,
            "{backend}: TTL expiry"
        );
        assert!(
            !cache.is_done("e-1", "t/0/5/1").await.unwrap(),
            "{backend}: TTL expiry"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_mappings_when_reopened() {
    let dir = tempfile::tempdir().unwrap();
    let key = CorrelationKey::parse("k").unwrap();
    let name = AssessmentName::parse("projects/1/assessments/kept").unwrap();
    {
        let cache = EmbeddedCache::open(&dir.path().join("c.redb")).unwrap();
        cache
            .put(&key, &name, Duration::from_secs(3600))
            .await
            .unwrap();
    }
    // The writer thread lets go of the file soon after the cache is dropped.
    let started = std::time::Instant::now();
    let cache = loop {
        match EmbeddedCache::open(&dir.path().join("c.redb")) {
            Ok(cache) => break cache,
            Err(e) if started.elapsed() < Duration::from_secs(10) => {
                eprintln!("not reopened yet: {e}");
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            Err(e) => panic!("reopening the store: {e}"),
        }
    };
    assert_eq!(cache.get(&key).await.unwrap(), Lookup::Hit(name));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_joins_mappings_from_the_topic_and_from_a_direct_set() {
    let env = TestEnv::new("redis-join").await;
    let mut config = env.config();
    env.use_redis(&mut config, &redis_url());
    // A producer that writes the mapping itself, with the documented command.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("SET")
        .arg(format!("{}key:direct-1", env.prefix))
        .arg(format!("projects/{PROJECT}/assessments/direct"))
        .arg("EX")
        .arg(3600)
        .query_async(&mut conn)
        .await
        .unwrap();
    let mapping = json!({"key": "topic-1", "assessment": format!("projects/{PROJECT}/assessments/fromtopic")});
    env.produce("assessments", Some("topic-1"), Some(&mapping.to_string()))
        .await;
    for key in ["direct-1", "topic-1"] {
        let event = json!({"event_id": key, "outcome": "verified", "key": key});
        env.produce("registrations", None, Some(&event.to_string()))
            .await;
    }
    let service = env.start(config);
    env.wait_all_committed(Duration::from_secs(60)).await;
    service.stop().await;
    let names: BTreeSet<_> = env.sandbox.recorded().into_iter().map(|r| r.name).collect();
    assert_eq!(
        names,
        BTreeSet::from([
            format!("projects/{PROJECT}/assessments/direct"),
            format!("projects/{PROJECT}/assessments/fromtopic")
        ])
    );
    assert!(env.dead_letters(0, Duration::from_millis(100)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_down_at_start_or_while_idle_is_waited_for_and_reported() {
    let env = TestEnv::new("redis-idle").await;
    let dir = tempfile::tempdir().unwrap();
    let mut redis = PrivateRedis::start(dir.path());
    redis.stop();
    let mut config = env.config();
    env.use_redis(&mut config, &redis.url());
    // Started before Redis: it waits, not ready, instead of exiting.
    let service = env.start(config);
    env.wait_not_ready("cache unreachable", Duration::from_secs(20))
        .await;
    assert!(!service.handle.is_finished(), "the service gave up");
    redis.restart();
    let mapping =
        json!({"key": "idle", "assessment": format!("projects/{PROJECT}/assessments/idle")});
    env.produce("assessments", Some("idle"), Some(&mapping.to_string()))
        .await;
    env.produce(
        "logins",
        Some("idle"),
        Some(&json!({"event_id": "i1", "outcome": "two_factor_passed", "key": "idle"}).to_string()),
    )
    .await;
    env.wait_all_committed(Duration::from_secs(60)).await;
    env.wait_ready(Duration::from_secs(20)).await;
    // Down while nothing flows: readiness still follows it, and comes back with it.
    redis.stop();
    env.wait_not_ready("cache unreachable", Duration::from_secs(20))
        .await;
    redis.restart();
    env.wait_ready(Duration::from_secs(20)).await;
    service.stop().await;
    assert_eq!(env.sandbox.accepted_count(), 1);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_and_restarted_mid_stream_loses_nothing() {
    let env = TestEnv::new("redis-down").await;
    let dir = tempfile::tempdir().unwrap();
    let mut redis = PrivateRedis::start(dir.path());
    let mut config = env.config();
    env.use_redis(&mut config, &redis.url());
    config.delivery.join_grace = Duration::from_secs(30);
    env.script(vec![], Some(answer(200, 5)));
    let total = 400;
    let mut records = Vec::new();
    for i in 0..total {
        let key = format!("k{i}");
        let mapping =
            json!({"key": key, "assessment": format!("projects/{PROJECT}/assessments/rd{i}")});
        records.push((
            "assessments".to_owned(),
            Some(key.clone()),
            mapping.to_string(),
        ));
        records.push((
            "logins".to_owned(),
            Some(key.clone()),
            json!({"event_id": key, "outcome": "two_factor_passed", "key": key}).to_string(),
        ));
    }
    let (first, second) = records.split_at(records.len() / 2);
    env.produce_bulk(first.to_vec()).await;
    let service = env.start(config);
    env.wait_accepted(20, Duration::from_secs(60)).await;
    redis.stop();
    env.produce_bulk(second.to_vec()).await;
    // Not ready while the cache is down, and nothing is dead-lettered.
    env.wait_not_ready("cache", Duration::from_secs(20)).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    redis.restart();
    env.wait_all_committed(Duration::from_secs(90)).await;
    let (status, _) = env.http_get("/readyz").await;
    assert_eq!(status, 200, "ready again once Redis is back");
    service.stop().await;
    let names: BTreeSet<_> = env.sandbox.recorded().into_iter().map(|r| r.name).collect();
    assert_eq!(names.len(), total, "every outcome annotated");
    assert!(
        env.dead_letters(0, Duration::from_millis(200)).is_empty(),
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_keeps_mappings_across_a_process_restart() {
    let env = TestEnv::new("embedded").await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("cache.redb");
    let extra = format!(
        "[cache]\nbackend = \"embedded\"\npath = \"{}\"\n[delivery]\njoin_grace = \"1s\"",
        store.display()
    );
    let file = env.config_file(&extra);
    let mapping = json!({"key": "persist", "assessment": format!("projects/{PROJECT}/assessments/persisted")});
    env.produce("assessments", Some("persist"), Some(&mapping.to_string()))
        .await;
    let mut child = spawn_binary(file.path());
    env.wait_all_committed(Duration::from_secs(60)).await;
    signal(&child, "TERM");
    assert!(
        tokio::task::block_in_place(|| child.wait())
            .unwrap()
            .success()
    );
    // The outcome arrives after the restart; the mapping must come from the file.
    let event = json!({"event_id": "after-restart", "outcome": "chargeback", "key": "persist"});
    env.produce("fraud-signals", None, Some(&event.to_string()))
        .await;
    let mut child = spawn_binary(file.path());
    env.wait_all_committed(Duration::from_secs(60)).await;
    signal(&child, "TERM");
    tokio::task::block_in_place(|| child.wait()).unwrap();
    let recorded = env.sandbox.recorded();
    assert_eq!(recorded.len(), 1);
    assert_eq!(
        recorded[0].name,
        format!("projects/{PROJECT}/assessments/persisted")
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cold_start_waits_for_mappings_already_in_the_topic() {
    let env = TestEnv::new("catchup").await;
    let total = 10_000;
    let mut records = Vec::with_capacity(2 * total);
    for i in 0..total {
        let key = format!("c{i}");
        let mapping =
            json!({"key": key, "assessment": format!("projects/{PROJECT}/assessments/cu{i}")});
        records.push(("assessments".to_owned(), Some(key), mapping.to_string()));
    }
    for i in 0..total {
        let key = format!("c{i}");
        records.push((
            "fraud-signals".to_owned(),
            None,
            json!({"event_id": key, "outcome": "refund", "key": key}).to_string(),
        ));
    }
    env.produce_bulk(records).await;
    let mut config = env.config();
    // Far shorter than reading 10,000 mappings takes: without the catch-up rule, outcomes
    // read early would be dead-lettered as unjoined.
    config.delivery.join_grace = Duration::from_millis(200);
    config.delivery.join_retry = Duration::from_millis(50);
    // A small pending limit fills with parked outcomes at once, so the backpressure passes
    // through every pause state (outcomes, all, outcomes, none) while it catches up.
    config.delivery.max_in_flight = 256;
    config.delivery.max_pending = 1000;
    let service = env.start(config);
    env.wait_all_committed(Duration::from_secs(120)).await;
    service.stop().await;
    assert!(
        env.dead_letters(0, Duration::from_millis(200)).is_empty(),
        "an outcome was dead-lettered during catch-up"
    );
    // Under load a call can time out after the sandbox accepted it and be retried, so count
    // distinct assessments.
    let names: BTreeSet<_> = env.sandbox.recorded().into_iter().map(|r| r.name).collect();
    assert_eq!(names.len(), total);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn restart_with_mappings_committed_to_the_end_still_expires_unjoined() {
    let env = TestEnv::new("recatchup").await;
    let mut records = Vec::new();
    for i in 0..20 {
        let key = format!("r{i}");
        let mapping =
            json!({"key": key, "assessment": format!("projects/{PROJECT}/assessments/rc{i}")});
        records.push(("assessments".to_owned(), Some(key), mapping.to_string()));
    }
    env.produce_bulk(records).await;
    let first = env.start(env.config());
    env.wait_all_committed(Duration::from_secs(60)).await;
    first.stop().await;

    // Restarted: every assessments partition is committed to its end, so no message arrives
    // to mark it caught up. The grace period must still run, and the cache (redelivered
    // nothing: memory backend, fresh) has no mapping for either key.
    let mut config = env.config();
    config.delivery.join_grace = Duration::from_millis(500);
    let second = env.start(config);
    env.produce(
        "fraud-signals",
        None,
        Some(
            &json!({"event_id": "never-mapped", "outcome": "refund", "key": "nobody"}).to_string(),
        ),
    )
    .await;
    let letters = tokio::task::block_in_place(|| env.dead_letters(1, Duration::from_secs(60)));
    assert_eq!(letters.len(), 1);
    assert_eq!(letters[0].headers["annotator.error"], "unjoined");
    env.wait_all_committed(Duration::from_secs(60)).await;
    second.stop().await;
    assert!(env.sandbox.recorded().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_record_reusing_an_event_id_is_sent_again() {
    let env = TestEnv::new("reuse").await;
    let dir = tempfile::tempdir().unwrap();
    let config = || {
        let mut config = env.config();
        config.cache.backend = CacheBackend::Embedded;
        config.cache.path = dir.path().join("c.redb");
        config
    };
    let event = json!({"event_id": "e-0001", "outcome": "refund",
        "assessment": format!("projects/{PROJECT}/assessments/reused")})
    .to_string();
    env.produce("fraud-signals", Some("k"), Some(&event)).await;
    let first = env.start(config());
    env.wait_all_committed(Duration::from_secs(60)).await;
    first.stop().await;
    assert_eq!(env.sandbox.accepted_count(), 1);
    // The same id in a new record, with the store (and its remembered ids) still on disk.
    env.produce("fraud-signals", Some("k"), Some(&event)).await;
    let second = env.start(config());
    env.wait_all_committed(Duration::from_secs(60)).await;
    second.stop().await;
    assert_eq!(
        env.sandbox.accepted_count(),
        2,
        "the new record was skipped"
    );
}

/// Runs the SIGKILL scenario once; returns the duplicate calls after the restart.
async fn duplicates_after_sigkill(dedup: bool) -> usize {
    let env = TestEnv::with_partitions(if dedup { "dedup-on" } else { "dedup-off" }, 3).await;
    env.script(vec![], Some(answer(200, 5)));
    let total = 6_000;
    env.produce_bulk(unique_events("d", total)).await;
    let extra = format!(
        "{}dedup_ttl = \"{}\"\n[delivery]\nmax_in_flight = 32\nmax_pending = 1000",
        env.redis_toml(&redis_url()),
        if dedup { "1h" } else { "0s" }
    );
    let file = env.config_file(&extra);
    // The first run commits nothing before it is killed, so all it annotated comes again
    // unless suppressed.
    let no_commits = [("ANNOTATOR__KAFKA__COMMIT_INTERVAL", "1h")];
    env.sigkill_and_restart(
        file.path(),
        &no_commits,
        (2_000, Duration::from_secs(60)),
        total,
        Duration::from_secs(120),
    )
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn duplicate_suppression_after_sigkill() {
    let without = duplicates_after_sigkill(false).await;
    let with = duplicates_after_sigkill(true).await;
    eprintln!("duplicate calls after SIGKILL: {without} without suppression, {with} with");
    // With suppression only events between their 2xx and storing their id can repeat, and
    // they hold their in-flight slot (32) until stored.
    assert!(with <= 32, "{with} duplicates with suppression");
    assert!(
        without >= 2_000,
        "the scenario did not leave annotated events uncommitted: {without}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn embedded_store_warns_when_other_members_share_the_partitions() {
    let env = TestEnv::with_partitions("partial", 4).await;
    let dirs = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let spawn = |dir: &tempfile::TempDir| {
        let extra = format!(
            "[cache]\nbackend = \"embedded\"\npath = \"{}\"",
            dir.path().join("c.redb").display()
        );
        let file = env.config_file(&extra);
        (spawn_logged(file.path(), "warn"), file)
    };
    let (first, _f1) = spawn(&dirs[0]);
    let (second, _f2) = spawn(&dirs[1]);
    // Once the group has settled, both members hold part of the partitions and warn.
    let warning = "joins need a shared cache";
    let both_warned = first.wait_for(warning, Duration::from_secs(60)).await
        && second.wait_for(warning, Duration::from_secs(30)).await;
    let logs = [first.stop("TERM"), second.stop("TERM")].concat();
    assert!(both_warned, "no warning from both members:\n{logs}");
    // Written to a pipe, not a terminal: no colour codes.
    assert!(
        !logs.contains('\u{1b}'),
        "escape codes in piped logs:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_values_of_another_type_or_not_utf8_are_invalid_references() {
    let env = TestEnv::new("redis-foreign").await;
    let mut config = env.config();
    env.use_redis(&mut config, &redis_url());
    // Written by someone else: a hash where a string belongs, and bytes that are not UTF-8.
    let client = redis::Client::open(redis_url()).unwrap();
    let mut conn = client.get_multiplexed_async_connection().await.unwrap();
    let () = redis::cmd("HSET")
        .arg(format!("{}key:hash-1", env.prefix))
        .arg("assessment")
        .arg(format!("projects/{PROJECT}/assessments/x"))
        .query_async(&mut conn)
        .await
        .unwrap();
    let () = redis::cmd("SET")
        .arg(format!("{}key:bytes-1", env.prefix))
        .arg(&[0xff_u8, 0xfe, b'p'][..])
        .query_async(&mut conn)
        .await
        .unwrap();
    for key in ["hash-1", "bytes-1"] {
        let event = json!({"event_id": key, "outcome": "verified", "key": key});
        env.produce("registrations", None, Some(&event.to_string()))
            .await;
    }
    let service = env.start(config);
    env.wait_all_committed(Duration::from_secs(30)).await;
    let (status, body) = env.http_get("/readyz").await;
    service.stop().await;
    assert_eq!(status, 200, "{body}");
    let letters = env.dead_letters(2, Duration::from_secs(10));
    let reasons: Vec<_> = letters
        .iter()
        .map(|l| l.headers["annotator.error"].as_str())
        .collect();
    assert_eq!(reasons, ["invalid_reference", "invalid_reference"]);
    assert!(env.sandbox.recorded().is_empty());
}
