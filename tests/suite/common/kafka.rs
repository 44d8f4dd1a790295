//! Producing into the test's topics and reading offsets and dead letters back from the
//! broker.

use std::collections::{BTreeMap, BTreeSet};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use recaptcha_annotator::kafka;

use super::{Offsets, TestEnv};

impl TestEnv {
    /// Produces one record with `producer` (one built for the test's own needs).
    pub async fn produce_with(
        &self,
        producer: &rdkafka::producer::FutureProducer,
        topic_short: &str,
        key: &str,
        value: &str,
    ) {
        let topic = self.topic(topic_short);
        let at = kafka::produce(producer, &topic, Some(key), Some(value.as_bytes()))
            .await
            .unwrap();
        self.produced(&topic, at);
    }

    /// Sets one config of a test topic (`AlterConfigs`: its other settings go back to the
    /// broker's defaults).
    pub async fn set_topic_config(&self, topic_short: &str, key: &str, value: &str) {
        use rdkafka::admin::{AdminClient, AdminOptions, AlterConfig, ResourceSpecifier};
        let admin: AdminClient<rdkafka::client::DefaultClientContext> =
            rdkafka::ClientConfig::new()
                .set("bootstrap.servers", &self.brokers)
                .create()
                .unwrap();
        let topic = self.topic(topic_short);
        let change = AlterConfig::new(ResourceSpecifier::Topic(&topic)).set(key, value);
        let results = admin
            .alter_configs(&[change], &AdminOptions::new())
            .await
            .unwrap();
        assert!(results.iter().all(Result::is_ok), "{results:?}");
    }

    pub async fn produce(&self, topic_short: &str, key: Option<&str>, value: Option<&str>) {
        let producer = kafka::producer(&self.brokers).unwrap();
        let topic = self.topic(topic_short);
        let at = kafka::produce(&producer, &topic, key, value.map(str::as_bytes))
            .await
            .unwrap();
        self.produced(&topic, at);
    }

    /// Records a produced offset: the end offsets the tests wait for are at least these (a
    /// watermark read before the produce's acknowledgement reaches the reader is low).
    pub(super) fn produced(&self, topic: &str, (partition, offset): (i32, i64)) {
        let mut ends = self.produced.lock().unwrap();
        let end = ends.entry((topic.to_owned(), partition)).or_insert(0);
        *end = (*end).max(offset + 1);
    }

    pub async fn produce_many(&self, records: &[(String, Option<String>, Option<String>)]) {
        let producer = kafka::producer(&self.brokers).unwrap();
        for (topic, key, value) in records {
            let topic = self.topic(topic);
            let at = kafka::produce(
                &producer,
                &topic,
                key.as_deref(),
                value.as_deref().map(str::as_bytes),
            )
            .await
            .unwrap();
            self.produced(&topic, at);
        }
    }

    /// (end offsets, committed offsets) of the consumed topics.
    pub fn offsets(&self) -> (Offsets, Offsets) {
        self.try_offsets().unwrap()
    }

    pub(super) fn try_offsets(&self) -> anyhow::Result<(Offsets, Offsets)> {
        let reader = kafka::offset_reader(&self.brokers, &self.config_base.group)?;
        let topics: Vec<&str> = self.config_base.topics[..4]
            .iter()
            .map(String::as_str)
            .collect();
        let mut ends = kafka::end_offsets(&reader, &topics)?;
        for (tp, end) in self.produced.lock().unwrap().iter() {
            let e = ends.entry(tp.clone()).or_insert(0);
            *e = (*e).max(*end);
        }
        let parts: Vec<_> = ends.keys().cloned().collect();
        let committed = kafka::committed_offsets(&reader, &parts)?;
        drop(reader);
        Ok((ends, committed))
    }

    /// Waits until every consumed partition's committed offset reaches its end offset.
    pub async fn wait_all_committed(&self, within: Duration) {
        let started = Instant::now();
        loop {
            // A slow broker answer is "not yet", not a failure.
            let state = tokio::task::block_in_place(|| self.try_offsets());
            if let Ok((ends, committed)) = &state {
                let done = ends
                    .iter()
                    .all(|(tp, end)| *end == 0 || committed.get(tp).is_some_and(|c| c >= end));
                if done {
                    return;
                }
            }
            assert!(
                started.elapsed() < within,
                "not committed within {within:?}: {state:?}{}",
                self.service_error()
                    .map_or_else(String::new, |e| format!(" (the service stopped: {e})"))
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the sandbox accepted `n` calls.
    pub async fn wait_accepted(&self, n: u64, within: Duration) {
        let started = Instant::now();
        while self.sandbox.accepted_count() < n {
            if let Some(error) = self.service_error() {
                panic!(
                    "only {} of {n} accepted: the service stopped: {error}",
                    self.sandbox.accepted_count()
                );
            }
            assert!(
                started.elapsed() < within,
                "only {} of {n} accepted",
                self.sandbox.accepted_count()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every record of the dead-letter topic (at least `expect`, waiting up to `within`).
    pub fn dead_letters(&self, expect: usize, within: Duration) -> Vec<DeadLetterRecord> {
        self.read_topic(&self.dead_letter_topic(), expect, within)
    }

    /// Every record of `topic`: reads from the beginning until every partition reports its
    /// end (and at least `expect` records, within `within`).
    pub fn read_topic(
        &self,
        topic: &str,
        expect: usize,
        within: Duration,
    ) -> Vec<DeadLetterRecord> {
        self.read_partitions(topic, self.partitions, expect, within)
    }

    /// Every record of partitions `0..partitions` of `topic` (see [`TestEnv::read_topic`]).
    pub fn read_partitions(
        &self,
        topic: &str,
        partitions: i32,
        expect: usize,
        within: Duration,
    ) -> Vec<DeadLetterRecord> {
        let consumer: BaseConsumer =
            kafka::topic_reader(&self.brokers, &format!("{}reader", self.prefix)).unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let started = Instant::now();
        let mut out = Vec::new();
        let mut at_end = BTreeSet::new();
        while (out.len() < expect || at_end.len() < partitions as usize)
            && started.elapsed() < within.max(Duration::from_secs(5))
        {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let mut headers = BTreeMap::new();
                    if let Some(h) = m.headers() {
                        for header in h.iter() {
                            headers.insert(
                                header.key.to_owned(),
                                String::from_utf8_lossy(header.value.unwrap_or_default())
                                    .into_owned(),
                            );
                        }
                    }
                    out.push(DeadLetterRecord {
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        value: m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
                        headers,
                    });
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                _ => {}
            }
        }
        assert_eq!(
            at_end.len(),
            partitions as usize,
            "{topic} not read to its end"
        );
        out
    }

    /// Produces many records fast: pipelined, still one record per batch.
    pub async fn produce_bulk(&self, records: Vec<(String, Option<String>, String)>) {
        let producer = kafka::producer(&self.brokers).unwrap();
        for chunk in records.chunks(2000) {
            let sends = chunk.iter().map(|(topic, key, value)| {
                let topic = self.topic(topic);
                let producer = &producer;
                async move {
                    let mut record =
                        rdkafka::producer::FutureRecord::<str, str>::to(&topic).payload(value);
                    if let Some(k) = key {
                        record = record.key(k);
                    }
                    let delivery = producer
                        .send(record, Duration::from_secs(30))
                        .await
                        .map_err(|(e, _)| e)
                        .unwrap();
                    self.produced(&topic, (delivery.partition, delivery.offset));
                }
            });
            futures::future::join_all(sends).await;
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeadLetterRecord {
    pub key: Option<String>,
    pub value: Option<String>,
    pub headers: BTreeMap<String, String>,
}
