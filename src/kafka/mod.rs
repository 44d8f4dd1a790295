//! Every rdkafka client the service and its commands create, the offset queries, and the
//! librdkafka properties the service owns or keeps secret.
//!
//! One place builds clients, so every one of them reaches the cluster the same way: the
//! deployment's connection properties (`security.*`, `sasl.*`, `ssl.*`, ...) first, then
//! `bootstrap.servers` and whatever the client's role fixes.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::{BorrowedHeaders, Headers as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

use crate::config::KafkaConfig;

mod log;

pub use self::log::{KafkaLog, LogContext, REPORT_EVERY, Reader};

/// Longest wait for one metadata, watermark or committed-offset answer.
pub const QUERY_TIMEOUT: Duration = Duration::from_secs(5);

/// The librdkafka keys the service owns: set after `kafka.properties`, never overridden.
pub const RESERVED_PROPERTIES: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
];

/// Prefixes of `kafka.properties` that say how to reach the cluster (TLS, SASL, client id,
/// sockets): every client the service or a command creates gets them.
const CONNECTION_PROPERTY_PREFIXES: [&str; 6] = [
    "security.",
    "sasl.",
    "ssl.",
    "client.id",
    "socket.",
    "broker.address.family",
];

/// Header that counts how often `dead-letter replay` re-published an event.
pub const REPLAY_COUNT: &str = "annotator.replay_count";

/// The `kafka.properties` that say how to reach the cluster.
pub fn connection_properties(config: &KafkaConfig) -> Vec<(&str, &str)> {
    config
        .properties
        .iter()
        .filter(|(k, _)| {
            CONNECTION_PROPERTY_PREFIXES
                .iter()
                .any(|p| k.starts_with(p))
        })
        .map(|(k, v)| (k.as_str(), v.as_str()))
        .collect()
}

/// A client config that reaches the cluster: `brokers` and the connection properties.
pub fn client(config: &KafkaConfig) -> ClientConfig {
    let mut client = ClientConfig::new();
    for (k, v) in connection_properties(config) {
        client.set(k, v);
    }
    client.set("bootstrap.servers", &config.brokers);
    client
}

/// A client config for a plain local broker given by its address (tests, demo, bench).
fn plain(brokers: &str) -> ClientConfig {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", brokers);
    client
}

/// The client-side group settings of the classic protocol, which the consumer protocol of
/// KIP-848 moves to the broker (`group.consumer.*`): librdkafka refuses them with it.
pub const CLASSIC_GROUP_PROPERTIES: [&str; 3] = [
    "session.timeout.ms",
    "heartbeat.interval.ms",
    "partition.assignment.strategy",
];

/// Whether `kafka.properties."group.protocol"` asks for KIP-848's consumer protocol.
pub fn consumer_protocol(config: &KafkaConfig) -> bool {
    config
        .properties
        .get("group.protocol")
        .is_some_and(|p| p.eq_ignore_ascii_case("consumer"))
}

/// The service's group consumer config: passthrough properties first, then the keys that
/// define offset semantics, which cannot be overridden.
pub fn consumer_config(config: &KafkaConfig) -> ClientConfig {
    let mut cc = ClientConfig::new();
    // Defaults the deployment may override: start new groups at the beginning, rebalance
    // incrementally (the consumer protocol always does, the broker assigning), and bound
    // librdkafka's prefetch queue (64 MiB per partition by default), which would otherwise
    // dominate memory with a backlog.
    cc.set("auto.offset.reset", "earliest")
        .set("queued.min.messages", "20000")
        .set("queued.max.messages.kbytes", "8192")
        // librdkafka's statistics, of which a subset becomes metrics (telemetry's
        // `KafkaStats`); `kafka.properties` may change the interval, "0" turns them off.
        .set("statistics.interval.ms", "15000");
    if !consumer_protocol(config) {
        cc.set("partition.assignment.strategy", "cooperative-sticky");
    }
    for (key, value) in &config.properties {
        if RESERVED_PROPERTIES.contains(&key.as_str()) {
            tracing::warn!(key = %key, "kafka.properties cannot override this key; ignored");
            continue;
        }
        cc.set(key, value);
    }
    cc.set("bootstrap.servers", &config.brokers)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false");
    cc
}

/// Whether a group without a committed offset starts at the end (`auto.offset.reset`).
pub fn starts_at_end(config: &KafkaConfig) -> bool {
    config
        .properties
        .get("auto.offset.reset")
        .is_some_and(|v| matches!(v.as_str(), "latest" | "largest" | "end"))
}

/// A plain client (it never joins the group: no subscribe) for watermarks, metadata and the
/// group's committed offsets, queried off the poll thread.
pub fn group_reader(
    config: &KafkaConfig,
    log: &LogContext,
) -> Result<BaseConsumer<LogContext>, KafkaError> {
    client(config)
        .set("group.id", &config.group_id)
        .set("enable.auto.commit", "false")
        .create_with_context(log.clone())
}

/// A client without a group, for metadata only (`check`).
pub fn metadata_client(config: &KafkaConfig) -> Result<BaseConsumer, KafkaError> {
    client(config).create()
}

/// librdkafka's default `message.max.bytes`.
const DEFAULT_MESSAGE_MAX_BYTES: usize = 1_000_000;

/// The largest record the dead-letter producer sends: `kafka.properties."message.max.bytes"`
/// when given (match it to the dead-letter topic's `max.message.bytes`), else librdkafka's
/// default.
pub fn max_message_bytes(config: &KafkaConfig) -> usize {
    config
        .properties
        .get("message.max.bytes")
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_MESSAGE_MAX_BYTES)
}

/// The dead-letter producer: waits for every in-sync replica, idempotent (a retry after a
/// lost acknowledgement, a leader's failover, never writes a dead letter twice).
pub fn dead_letter_producer(
    config: &KafkaConfig,
    log: &LogContext,
) -> Result<FutureProducer<LogContext>, KafkaError> {
    client(config)
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "30000")
        .set("linger.ms", "5")
        .set("message.max.bytes", max_message_bytes(config).to_string())
        .create_with_context(log.clone())
}

/// The reader of `dead-letter replay`: its own group, commits only what it replayed.
pub fn replay_reader(
    config: &KafkaConfig,
    group: &str,
) -> Result<BaseConsumer<LogContext>, KafkaError> {
    client(config)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        .set("auto.offset.reset", "earliest")
        .set("enable.partition.eof", "true")
        .set("isolation.level", "read_uncommitted")
        .create_with_context(LogContext::new(&config.brokers))
}

/// The producer of `dead-letter replay`.
pub fn replay_producer(config: &KafkaConfig) -> Result<FutureProducer, KafkaError> {
    client(config).set("acks", "all").create()
}

/// Reads `annotator.replay_count` from a message's headers.
pub fn replay_count(headers: &BorrowedHeaders) -> Option<u32> {
    headers
        .iter()
        .find(|h| h.key == REPLAY_COUNT)
        .and_then(|h| std::str::from_utf8(h.value?).ok()?.parse().ok())
}

/// Creates `topics` with `partitions` partitions on a plain local broker.
pub async fn create_topics(brokers: &str, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
    create_topics_with(&plain(brokers), topics, partitions).await
}

/// Creates `topics` with `partitions` partitions through `client` (TLS, SASL ...), each
/// replicated as the broker's `default.replication.factor` says; existing topics are left as
/// they are.
pub async fn create_topics_with(
    client: &ClientConfig,
    topics: &[&str],
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client.create().context("creating the Kafka admin client")?;
    let new: Vec<_> = topics
        .iter()
        // -1: the broker's default (KIP-464), so a cluster's topics are replicated as its
        // operators chose, and a single local broker's are not.
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(-1)))
        .collect();
    let opts = AdminOptions::new().operation_timeout(Some(Duration::from_secs(10)));
    for result in admin
        .create_topics(&new, &opts)
        .await
        .context("creating topics")?
    {
        match result {
            Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, code)) => anyhow::bail!("creating topic {topic}: {code}"),
        }
    }
    Ok(())
}

/// A producer that sends one record per batch and waits for every acknowledgement (tests and
/// the demo, where each record's offset is wanted).
pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    plain(brokers)
        .set("acks", "all")
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .create()
        .context("creating a producer")
}

/// A producer that batches, as real producers do (`bench`).
pub fn batched_producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    plain(brokers)
        .set("linger.ms", "5")
        .create()
        .context("creating a batching producer")
}

/// Produces one record and waits for the broker; returns its partition and offset.
pub async fn produce(
    producer: &FutureProducer,
    topic: &str,
    key: Option<&str>,
    value: Option<&[u8]>,
) -> anyhow::Result<(i32, i64)> {
    let mut record: FutureRecord<'_, str, [u8]> = FutureRecord::to(topic);
    if let Some(k) = key {
        record = record.key(k);
    }
    if let Some(v) = value {
        record = record.payload(v);
    }
    let delivery = producer
        .send(record, Duration::from_secs(10))
        .await
        .map_err(|(e, _)| anyhow::anyhow!("producing to {topic}: {e}"))?;
    Ok((delivery.partition, delivery.offset))
}

/// A plain consumer for offset queries, in `group` (it never joins: no subscribe).
pub fn offset_reader(brokers: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    plain(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating an offset reader")
}

/// A consumer that reads assigned partitions to their end (it reports partition EOF) and
/// commits nothing.
pub fn topic_reader(brokers: &str, group: &str) -> anyhow::Result<BaseConsumer> {
    plain(brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .set("enable.partition.eof", "true")
        .create()
        .context("creating a topic reader")
}

/// Partition -> high watermark for each topic.
pub fn end_offsets<C: rdkafka::consumer::ConsumerContext>(
    reader: &BaseConsumer<C>,
    topics: &[&str],
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let mut out = BTreeMap::new();
    for topic in topics {
        let metadata = reader.fetch_metadata(Some(topic), QUERY_TIMEOUT)?;
        for t in metadata.topics() {
            for p in t.partitions() {
                let (_, high) = reader.fetch_watermarks(topic, p.id(), QUERY_TIMEOUT)?;
                out.insert(((*topic).to_owned(), p.id()), high);
            }
        }
    }
    Ok(out)
}

/// The partition ids of `topic`; empty when the broker does not know it.
pub fn partitions_of<C: rdkafka::consumer::ConsumerContext>(
    reader: &BaseConsumer<C>,
    topic: &str,
) -> Result<Vec<i32>, KafkaError> {
    let metadata = reader.fetch_metadata(Some(topic), QUERY_TIMEOUT)?;
    Ok(metadata
        .topics()
        .iter()
        .flat_map(|t| t.partitions().iter().map(|p| p.id()))
        .collect())
}

/// Partition -> committed offset of the reader's group (absent when none).
pub fn committed_offsets<C: rdkafka::consumer::ConsumerContext>(
    reader: &BaseConsumer<C>,
    partitions: &[(String, i32)],
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        tpl.add_partition(topic, *partition);
    }
    let committed = reader.committed_offsets(tpl, QUERY_TIMEOUT)?;
    let out = committed
        .elements()
        .iter()
        .filter_map(|e| match e.offset() {
            Offset::Offset(o) => Some(((e.topic().to_owned(), e.partition()), o)),
            _ => None,
        })
        .collect();
    // Drop the list before the consumer can be dropped (rdkafka hangs otherwise).
    drop(committed);
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::Config;

    #[test]
    fn tls_and_sasl_properties_are_supported_by_the_kafka_client() {
        // librdkafka is built with OpenSSL: SASL_SSL with SCRAM is accepted (creating the
        // client does not wait for the broker).
        let config = Config::from_toml(
            "[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"u\"\n\"sasl.password\" = \"p\"\n\"session.timeout.ms\" = \"6000\"",
        )
        .unwrap();
        let connection = connection_properties(&config.kafka);
        assert_eq!(connection.len(), 4, "{connection:?}");
        let client = metadata_client(&config.kafka);
        assert!(client.is_ok(), "{:?}", client.err());
    }

    #[test]
    fn the_consumer_protocol_leaves_the_assignment_to_the_broker() {
        let classic = Config::from_toml("").unwrap();
        assert_eq!(
            consumer_config(&classic.kafka).get("partition.assignment.strategy"),
            Some("cooperative-sticky")
        );
        let kip848 =
            Config::from_toml("[kafka.properties]\n\"group.protocol\" = \"consumer\"").unwrap();
        let cc = consumer_config(&kip848.kafka);
        assert_eq!(cc.get("partition.assignment.strategy"), None);
        assert_eq!(cc.get("group.protocol"), Some("consumer"));
        assert!(cc.create::<BaseConsumer>().is_ok());
    }

    #[test]
    fn offset_semantics_cannot_be_overridden() {
        let config = Config::from_toml(
            "[kafka.properties]\n\"enable.auto.commit\" = \"true\"\n\"group.id\" = \"other\"\n\"fetch.min.bytes\" = \"10\"",
        )
        .unwrap();
        let cc = consumer_config(&config.kafka);
        assert_eq!(cc.get("enable.auto.commit"), Some("false"));
        assert_eq!(cc.get("enable.auto.offset.store"), Some("false"));
        assert_eq!(cc.get("group.id"), Some("recaptcha-annotator"));
        assert_eq!(cc.get("fetch.min.bytes"), Some("10"));
    }
}
