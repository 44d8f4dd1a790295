//! `validate`: every record of a topic or a JSON Lines file judged as the service would
//! take it, with a verdict each and a summary by dead-letter reason.

use std::collections::BTreeMap;
use std::io::BufRead as _;
use std::path::Path;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::Message as _;
use rdkafka::{Offset, TopicPartitionList};

use super::Contract;
use crate::config::Config;
use crate::kafka;

/// Failures by reason, for the summaries.
#[derive(Default)]
struct Tally {
    ok: u64,
    failed: BTreeMap<String, u64>,
}

impl Tally {
    fn add(&mut self, result: &Result<(), (String, String)>) {
        match result {
            Ok(()) => self.ok += 1,
            Err((reason, _)) => *self.failed.entry(reason.clone()).or_default() += 1,
        }
    }

    fn failures(&self) -> u64 {
        self.failed.values().sum()
    }

    fn summary(&self) -> String {
        let mut text = format!(
            "{} checked: {} ok, {} failed",
            self.ok + self.failures(),
            self.ok,
            self.failures()
        );
        for (reason, n) in &self.failed {
            text.push_str(&format!("\n  {reason}: {n}"));
        }
        text
    }
}

fn report(place: &str, result: &Result<(), (String, String)>) {
    match result {
        Ok(()) => println!("{place}: ok"),
        Err((reason, detail)) => println!("{place}: {reason}: {detail}"),
    }
}

/// `validate --file`: each non-empty line of a JSON Lines file is one value.
pub fn validate_file(contract: &Contract, file: &Path) -> anyhow::Result<bool> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(file).with_context(|| format!("opening {}", file.display()))?,
    );
    let mut tally = Tally::default();
    for (i, line) in reader.lines().enumerate() {
        let line = line.with_context(|| format!("reading {}", file.display()))?;
        if line.trim().is_empty() {
            continue;
        }
        let result = contract.check(None, Some(line.as_bytes()));
        report(&format!("line {}", i + 1), &result);
        tally.add(&result);
    }
    println!("{}: {}", file.display(), tally.summary());
    Ok(tally.failures() == 0)
}

/// `validate` of a topic: read from the beginning (or the last `last` records of each
/// partition) up to the end offsets at start, as a plain reader: partitions assigned by
/// hand, never joining a consumer group, so no offset is committed anywhere.
pub fn validate_topic(
    config: &Config,
    contract: &Contract,
    last: Option<i64>,
) -> anyhow::Result<bool> {
    // librdkafka wants a group id even to assign partitions by hand; this one never joins
    // (no subscribe) and never commits (auto-commit off, no commit call).
    let reader: BaseConsumer<kafka::LogContext> = kafka::client(&config.kafka)
        .set(
            "group.id",
            format!("{}-validate-{}", config.kafka.group_id, std::process::id()),
        )
        .set("enable.auto.commit", "false")
        .set("enable.auto.offset.store", "false")
        // The end of a partition is where its records end: a transaction's commit marker
        // or a compacted gap before the high watermark is never waited for.
        .set("enable.partition.eof", "true")
        .create_with_context(kafka::LogContext::new(&config.kafka.brokers))
        .context("creating the reader")?;
    let partitions = kafka::partitions_of(&reader, &contract.topic)
        .with_context(|| format!("reading the metadata of {}", contract.topic))?;
    anyhow::ensure!(
        !partitions.is_empty(),
        "topic {} does not exist",
        contract.topic
    );
    let mut assignment = TopicPartitionList::new();
    let mut ends = BTreeMap::new();
    for &p in &partitions {
        let (low, high) = reader.fetch_watermarks(&contract.topic, p, kafka::QUERY_TIMEOUT)?;
        let start = last.map_or(low, |n| (high - n).max(low));
        if start < high {
            assignment.add_partition_offset(&contract.topic, p, Offset::Offset(start))?;
            ends.insert(p, high);
        }
    }
    let mut tally = Tally::default();
    if !ends.is_empty() {
        reader.assign(&assignment)?;
        while !ends.is_empty() {
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let Some(&end) = ends.get(&m.partition()) else {
                        continue;
                    };
                    if m.offset() >= end {
                        ends.remove(&m.partition());
                        continue;
                    }
                    // A tombstone is skipped on `assessments` and dead-lettered on an
                    // outcome topic (docs/EVENTS.md): the contract says which.
                    let result = contract.check(m.key(), m.payload());
                    report(
                        &format!("{}/{}/{}", m.topic(), m.partition(), m.offset()),
                        &result,
                    );
                    tally.add(&result);
                    if m.offset() + 1 >= end {
                        ends.remove(&m.partition());
                    }
                }
                Some(Err(KafkaError::PartitionEOF(p))) => {
                    ends.remove(&p);
                }
                Some(Err(e)) => anyhow::bail!("reading {}: {e}", contract.topic),
                None => {}
            }
        }
    }
    println!("{}: {}", contract.topic, tally.summary());
    Ok(tally.failures() == 0)
}
