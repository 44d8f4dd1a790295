//! What only Apache Kafka shows: every compression codec, transactions, a compacted
//! `assessments` topic cleaned by the broker's log cleaner, a commit below the log start, and
//! `validate`'s counts after batched produce. (A broker restarting under load:
//! `tests/suite/broker_restart.rs`.)

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use crate::common::*;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};
use serde_json::json;

/// A producer as a producer team writes one: batching, idempotent, and patient enough to
/// outlast a broker restart.
fn team_producer(brokers: &str, extra: &[(&str, &str)]) -> FutureProducer {
    let mut config = ClientConfig::new();
    config
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("message.timeout.ms", "180000");
    for (k, v) in extra {
        config.set(*k, *v);
    }
    config.create().unwrap()
}

async fn send(producer: &FutureProducer, topic: &str, key: &str, value: Option<&str>) {
    let mut record: FutureRecord<'_, str, str> = FutureRecord::to(topic).key(key);
    if let Some(v) = value {
        record = record.payload(v);
    }
    producer
        .send(record, Duration::from_secs(180))
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// Producers pick their codec: gzip, snappy, lz4 and zstd (the one Kafka recommends) are
/// all read and annotated.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_compressed_with_every_codec_are_annotated() {
    let env = TestEnv::new("codecs").await;
    let codecs = ["gzip", "snappy", "lz4", "zstd"];
    for codec in codecs {
        let producer = team_producer(&env.brokers, &[("compression.type", codec)]);
        for (_, key, value) in unique_events(codec, 20) {
            send(
                &producer,
                &env.topic("fraud-signals"),
                key.as_deref().unwrap(),
                Some(&value),
            )
            .await;
        }
    }
    let service = env.start(env.config());
    env.wait_all_committed(Duration::from_secs(120)).await;
    service.stop().await;
    let names: BTreeSet<_> = env.sandbox.recorded().into_iter().map(|r| r.name).collect();
    for codec in codecs {
        let annotated = names
            .iter()
            .filter(|n| n.contains(&format!("/assessments/{codec}")))
            .count();
        assert_eq!(annotated, 20, "{codec}: {annotated} of 20 annotated");
    }
}

/// Only what a transaction commits is annotated: librdkafka reads `read_committed` by
/// default, and the commit point moves past the transaction markers.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn events_of_an_aborted_transaction_are_never_annotated() {
    let env = TestEnv::new("txn").await;
    let producer = team_producer(
        &env.brokers,
        &[
            ("transactional.id", &format!("{}txn", env.prefix)),
            ("message.timeout.ms", "60000"),
        ],
    );
    let topic = env.topic("fraud-signals");
    tokio::task::block_in_place(|| producer.init_transactions(Duration::from_secs(30))).unwrap();
    for (tag, commit) in [("aborted", false), ("committed", true)] {
        producer.begin_transaction().unwrap();
        for (_, key, value) in unique_events(tag, 5) {
            send(&producer, &topic, key.as_deref().unwrap(), Some(&value)).await;
        }
        tokio::task::block_in_place(|| {
            if commit {
                producer.commit_transaction(Duration::from_secs(30))
            } else {
                producer.abort_transaction(Duration::from_secs(30))
            }
        })
        .unwrap();
    }
    let service = env.start(env.config());
    // Committed to the high watermark: past the last commit marker, which no message
    // carries.
    env.wait_all_committed(Duration::from_secs(60)).await;
    service.stop().await;
    let names: BTreeSet<_> = env.sandbox.recorded().into_iter().map(|r| r.name).collect();
    assert_eq!(names.len(), 5, "{names:?}");
    assert!(
        names.iter().all(|n| n.contains("/assessments/committed")),
        "{names:?}"
    );
}

/// A compacted `assessments` topic, after the broker's log cleaner ran: the embedded
/// store's catch-up reads what is left (the newest mapping of each key), a tombstone
/// forgets its key, and a record without a value on an outcome topic is dead-lettered
/// `decode`.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_compacted_assessments_topic_is_caught_up_and_its_tombstones_forget() {
    let env = TestEnv::new("compacted").await;
    let topic = env.topic("compacted-assessments");
    let admin_config = {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", &env.brokers);
        c
    };
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        admin_config.create().unwrap();
    let new = rdkafka::admin::NewTopic::new(&topic, 1, rdkafka::admin::TopicReplication::Fixed(1))
        .set("cleanup.policy", "compact")
        .set("segment.ms", "100")
        .set("min.cleanable.dirty.ratio", "0.01")
        .set("delete.retention.ms", "100")
        .set("min.compaction.lag.ms", "0");
    let created = admin
        .create_topics(&[new], &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();
    assert!(created.iter().all(Result::is_ok), "{created:?}");
    let name = |id: &str| format!("projects/{PROJECT}/assessments/{id}");
    let mapping = |id: &str| json!({"assessment": name(id)}).to_string();
    let producer = kafka_producer(&env.brokers);
    // Old mappings, replaced and deleted; then records that roll the segment so the
    // cleaner can take the first.
    send(&producer, &topic, "k1", Some(&mapping("old1"))).await;
    send(&producer, &topic, "k2", Some(&mapping("only2"))).await;
    send(&producer, &topic, "k3", Some(&mapping("gone3"))).await;
    send(&producer, &topic, "k1", Some(&mapping("new1"))).await;
    send(&producer, &topic, "k3", None).await;
    let started = Instant::now();
    let mut filler = 0;
    loop {
        tokio::time::sleep(Duration::from_millis(300)).await;
        filler += 1;
        send(
            &producer,
            &topic,
            &format!("f{filler}"),
            Some(&mapping(&format!("f{filler}"))),
        )
        .await;
        let (low, high, keys) = tokio::task::block_in_place(|| read_keys(&env, &topic));
        // Cleaned: k1's old record and k3's records are gone (the tombstone too, past
        // delete.retention.ms), so fewer records than offsets remain.
        if !keys.contains(&"k3".to_owned()) && keys.iter().filter(|k| *k == "k1").count() == 1 {
            eprintln!(
                "cleaned after {:?}: offsets {low}..{high}, {} records",
                started.elapsed(),
                keys.len()
            );
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(90),
            "the log cleaner never ran: {keys:?}"
        );
    }

    // A fresh instance with an embedded store catches up from the cleaned log.
    let dir = tempfile::tempdir().unwrap();
    let config = recaptcha_annotator::config::Config::from_toml(&env.config_toml(&format!(
        "[kafka.topics]\nassessments = \"{topic}\"\n[cache]\nbackend = \"embedded\"\npath = \"{}\"\n[delivery]\njoin_grace = \"2s\"\n",
        dir.path().join("store.redb").display()
    )))
    .unwrap();
    let outcome = |id: &str, key: &str| {
        json!({"event_id": id, "outcome": "chargeback", "key": key}).to_string()
    };
    for (id, key) in [("o1", "k1"), ("o2", "k2"), ("o3", "k3")] {
        env.produce("fraud-signals", Some(key), Some(&outcome(id, key)))
            .await;
    }
    env.produce("fraud-signals", Some("nothing"), None).await;
    let service = env.start(config);
    env.wait_all_committed(Duration::from_secs(60)).await;
    let names: BTreeSet<_> = env.sandbox.recorded().into_iter().map(|r| r.name).collect();
    assert_eq!(names, BTreeSet::from([name("new1"), name("only2")]));

    // A tombstone on the running instance forgets k2: a later outcome for it is unjoined.
    send(&producer, &topic, "k2", None).await;
    tokio::time::sleep(Duration::from_secs(1)).await;
    env.produce("fraud-signals", Some("k2"), Some(&outcome("o2b", "k2")))
        .await;
    env.wait_all_committed(Duration::from_secs(60)).await;
    service.stop().await;
    assert_eq!(env.sandbox.recorded().len(), 2, "nothing more annotated");
    let letters = env.dead_letters(3, Duration::from_secs(10));
    let mut reasons: Vec<_> = letters
        .iter()
        .map(|l| l.headers["annotator.error"].clone())
        .collect();
    reasons.sort();
    assert_eq!(reasons, ["decode", "unjoined", "unjoined"], "{letters:?}");
    let tombstone = letters
        .iter()
        .find(|l| l.headers["annotator.error"] == "decode")
        .unwrap();
    assert!(
        tombstone.headers["annotator.detail"].contains("no value"),
        "{tombstone:?}"
    );
}

/// A plain producer of single records (the mappings of the compaction test).
fn kafka_producer(brokers: &str) -> FutureProducer {
    team_producer(brokers, &[("linger.ms", "0")])
}

/// The low and high offsets of partition 0 of `topic`, and the keys of the records still
/// in it.
fn read_keys(env: &TestEnv, topic: &str) -> (i64, i64, Vec<String>) {
    use rdkafka::consumer::Consumer as _;
    let reader =
        recaptcha_annotator::kafka::offset_reader(&env.brokers, &format!("{}keys", env.prefix))
            .unwrap();
    let (low, high) = reader
        .fetch_watermarks(topic, 0, Duration::from_secs(5))
        .unwrap();
    drop(reader);
    let records = env.read_partitions(topic, 1, 0, Duration::from_secs(5));
    (
        low,
        high,
        records.into_iter().filter_map(|r| r.key).collect(),
    )
}

/// `validate --topic` counts every record of a topic written in batches (and through a
/// transaction, whose commit marker ends the partition).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_counts_exactly_after_batched_and_transactional_produce() {
    let env = TestEnv::new("validate-batched").await;
    let batched = team_producer(&env.brokers, &[("linger.ms", "50")]);
    let topic = env.topic("fraud-signals");
    let sends = unique_events("b", 120).into_iter().map(|(_, key, value)| {
        let batched = batched.clone();
        let topic = topic.clone();
        async move { send(&batched, &topic, key.as_deref().unwrap(), Some(&value)).await }
    });
    futures::future::join_all(sends).await;
    let txn = team_producer(
        &env.brokers,
        &[
            ("transactional.id", &format!("{}vtxn", env.prefix)),
            ("message.timeout.ms", "60000"),
        ],
    );
    tokio::task::block_in_place(|| txn.init_transactions(Duration::from_secs(30))).unwrap();
    txn.begin_transaction().unwrap();
    for (_, key, value) in unique_events("t", 7) {
        send(&txn, &topic, key.as_deref().unwrap(), Some(&value)).await;
    }
    tokio::task::block_in_place(|| txn.commit_transaction(Duration::from_secs(30))).unwrap();
    let file = env.config_file("");
    let started = Instant::now();
    let (ok, out) = tokio::task::block_in_place(|| {
        run_binary(
            &[
                "validate",
                "--config",
                file.path().to_str().unwrap(),
                "--topic",
                "fraud-signals",
            ],
            &[],
        )
    });
    assert!(ok, "{out}");
    assert!(out.contains("127 checked: 127 ok, 0 failed"), "{out}");
    // It stops at the end of each partition, not after a quiet spell.
    assert!(
        started.elapsed() < Duration::from_secs(8),
        "{:?}",
        started.elapsed()
    );
}

/// The group's commit on `assessments` is below the partition's log start (retention or a
/// deletion removed the backlog): the catch-up starts at the log start, so it ends, and an
/// outcome without a mapping is dead-lettered `unjoined` after the grace period instead of
/// waiting for ever.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_below_the_log_start_does_not_hold_the_catch_up_for_ever() {
    use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
    let env = TestEnv::with_partitions("below-start", 1).await;
    let topic = env.topic("assessments");
    for i in 0..3 {
        let mapping = json!({"assessment": format!("projects/{PROJECT}/assessments/m{i}")});
        env.produce(
            "assessments",
            Some(&format!("k{i}")),
            Some(&mapping.to_string()),
        )
        .await;
    }
    // The group once committed offset 1; then the records up to offset 3 went.
    let consumer: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("group.id", &env.config_base.group)
        .create()
        .unwrap();
    let mut tpl = rdkafka::TopicPartitionList::new();
    tpl.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(1))
        .unwrap();
    tokio::task::block_in_place(|| consumer.commit(&tpl, CommitMode::Sync)).unwrap();
    drop(consumer);
    let admin: rdkafka::admin::AdminClient<rdkafka::client::DefaultClientContext> =
        ClientConfig::new()
            .set("bootstrap.servers", &env.brokers)
            .create()
            .unwrap();
    let mut upto = rdkafka::TopicPartitionList::new();
    upto.add_partition_offset(&topic, 0, rdkafka::Offset::Offset(3))
        .unwrap();
    admin
        .delete_records(&upto, &rdkafka::admin::AdminOptions::new())
        .await
        .unwrap();

    let outcome = json!({"event_id": "late", "outcome": "chargeback", "key": "never-mapped"});
    env.produce(
        "fraud-signals",
        Some("never-mapped"),
        Some(&outcome.to_string()),
    )
    .await;
    let config = recaptcha_annotator::config::Config::from_toml(
        &env.config_toml("[delivery]\njoin_grace = \"2s\"\n"),
    )
    .unwrap();
    let service = env.start(config);
    let letters = tokio::task::block_in_place(|| env.dead_letters(1, Duration::from_secs(30)));
    assert_eq!(letters.len(), 1, "{letters:?}");
    assert_eq!(letters[0].headers["annotator.error"], "unjoined");
    // (The assessments partition has no record left to commit past: its commit stays where
    // the group left it.)
    let started = Instant::now();
    while env.offsets().1.get(&(env.topic("fraud-signals"), 0)) != Some(&1) {
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "the outcome was not committed"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    service.stop().await;
}

/// A record whose key alone is larger than the dead-letter topic takes: its dead letter
/// keeps the key's start, its length and its hash, instead of being retried for ever while
/// it holds its partition.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_key_too_large_for_the_dead_letter_topic_is_cut_with_its_length_and_hash() {
    let env = TestEnv::with_partitions("huge-key", 1).await;
    env.set_topic_config("fraud-signals", "max.message.bytes", "2000000")
        .await;
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", env.brokers.as_str())
        .set("message.max.bytes", "2000000")
        .create()
        .unwrap();
    let key = "k".repeat(1_200_000);
    env.produce_with(&producer, "fraud-signals", &key, "not json")
        .await;
    env.produce_bulk(unique_events("after-key", 1)).await;
    let service = env.start(env.config());
    env.wait_all_committed(Duration::from_secs(60)).await;
    service.stop().await;
    let letters = env.dead_letters(1, Duration::from_secs(10));
    assert_eq!(letters.len(), 1);
    let letter = &letters[0];
    assert_eq!(letter.headers["annotator.error"], "decode");
    assert_eq!(
        letter.headers["annotator.key_truncated"],
        key.len().to_string()
    );
    let hash = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, key.as_bytes());
    let hex: String = hash.as_ref().iter().map(|b| format!("{b:02x}")).collect();
    assert_eq!(letter.headers["annotator.key_sha256"], hex);
    let kept = letter.key.as_deref().unwrap();
    assert!(
        kept.len() < 1_000_000 && key.starts_with(kept),
        "{}",
        kept.len()
    );
    assert_eq!(letter.value.as_deref(), Some("not json"));
    assert_eq!(env.sandbox.accepted_count(), 1, "the stream went on");
}
