//! Operator and demo helpers that talk to the broker: topic creation, producing events,
//! reading committed and end offsets.

use std::collections::BTreeMap;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::ClientConfig;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;
use rdkafka::{Offset, TopicPartitionList};

/// Creates `topics` with `partitions` partitions; existing topics are left as they are.
pub async fn create_topics(brokers: &str, topics: &[&str], partitions: i32) -> anyhow::Result<()> {
    let mut client = ClientConfig::new();
    client.set("bootstrap.servers", brokers);
    create_topics_with(&client, topics, partitions).await
}

/// [`create_topics`] through a client config (TLS, SASL ...).
pub async fn create_topics_with(
    client: &ClientConfig,
    topics: &[&str],
    partitions: i32,
) -> anyhow::Result<()> {
    let admin: AdminClient<DefaultClientContext> =
        client.create().context("creating the Kafka admin client")?;
    let new: Vec<_> = topics
        .iter()
        .map(|t| NewTopic::new(t, partitions, TopicReplication::Fixed(1)))
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

/// A producer that sends one record per batch (so Tansu's watermarks stay exact) and waits
/// for every acknowledgement.
pub fn producer(brokers: &str) -> anyhow::Result<FutureProducer> {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("acks", "all")
        .set("batch.num.messages", "1")
        .set("linger.ms", "0")
        .create()
        .context("creating a producer")
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
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("group.id", group)
        .set("enable.auto.commit", "false")
        .create()
        .context("creating an offset reader")
}

/// Partition -> high watermark for each topic.
pub fn end_offsets(
    reader: &BaseConsumer,
    topics: &[&str],
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let mut out = BTreeMap::new();
    for topic in topics {
        let metadata = reader.fetch_metadata(Some(topic), Duration::from_secs(5))?;
        for t in metadata.topics() {
            for p in t.partitions() {
                let (_, high) = reader.fetch_watermarks(topic, p.id(), Duration::from_secs(5))?;
                out.insert(((*topic).to_owned(), p.id()), high);
            }
        }
    }
    Ok(out)
}

/// Partition -> committed offset of the reader's group (absent when none).
pub fn committed_offsets(
    reader: &BaseConsumer,
    partitions: &[(String, i32)],
) -> anyhow::Result<BTreeMap<(String, i32), i64>> {
    let mut tpl = TopicPartitionList::new();
    for (topic, partition) in partitions {
        tpl.add_partition(topic, *partition);
    }
    let committed = reader.committed_offsets(tpl, Duration::from_secs(5))?;
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
