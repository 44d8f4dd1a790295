//! The producers' kit: `schemas` (the JSON Schemas of the events), `validate` (a topic or a
//! file checked against the contract, the service's own decoder and rules) and `publish`
//! (a JSON Lines or CSV file, validated, produced to a topic: history becomes annotations
//! through the same rules, quota and dead letters as live events).

use std::collections::{BTreeMap, VecDeque};
use std::io::{BufRead as _, Write as _};
use std::path::{Path, PathBuf};
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::Message as _;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};
use serde_json::{Map, Value};

use crate::config::Config;
use crate::domain::assessment::{AssessmentId, AssessmentName};
use crate::domain::rules::OutcomeTopic;
use crate::domain::schema;
use crate::kafka;
use crate::pipeline::message::{Message, TopicKind};
use crate::pipeline::offsets::TopicPartition;
use crate::pipeline::plan::Planner;

/// `schemas`: every schema for the config's rules, printed, or written into `out`.
pub fn schemas(config: &Config, out: Option<&Path>) -> anyhow::Result<()> {
    let validated = config.validate()?;
    for (file, schema) in schema::all(&validated.rules) {
        let text = format!("{}\n", serde_json::to_string_pretty(&schema)?);
        match out {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                std::fs::write(dir.join(&file), text)?;
                println!("wrote {}", dir.join(&file).display());
            }
            None => print!("{text}"),
        }
    }
    Ok(())
}

/// One topic's contract: the service's planner for the topic's kind.
pub struct Contract {
    planner: Planner,
    kind: TopicKind,
    /// The Kafka topic's name.
    pub topic: String,
}

impl Contract {
    /// `topic`: a configured Kafka topic name, or a logical one (`assessments`, `logins`,
    /// `registrations`, `fraud-signals`).
    pub fn new(config: &Config, topic: &str) -> anyhow::Result<Self> {
        let validated = config.validate()?;
        let t = &config.kafka.topics;
        let logical = topic.replace('_', "-");
        let kind = if topic == t.assessments || logical == "assessments" {
            TopicKind::Assessments
        } else if let Some(o) = OutcomeTopic::ALL
            .into_iter()
            .find(|o| topic == t.outcome(*o) || logical == o.as_str().replace('_', "-"))
        {
            TopicKind::Outcome(o)
        } else {
            anyhow::bail!(
                "{topic} is none of the consumed topics ({}, {}, {}, {}), so it has no contract",
                t.assessments,
                t.logins,
                t.registrations,
                t.fraud_signals
            );
        };
        let name = match kind {
            TopicKind::Assessments => t.assessments.clone(),
            TopicKind::Outcome(o) => t.outcome(o).to_owned(),
        };
        let planner = Planner::new(
            validated.rules.clone(),
            validated.project.clone(),
            validated.allowed.clone(),
            config.delivery.max_event_bytes,
        );
        Ok(Self {
            planner,
            kind,
            topic: name,
        })
    }

    /// `Ok` when the service would take the record (annotate it, store it or wait for its
    /// key), else the dead-letter reason and why.
    pub fn check(&self, key: Option<&[u8]>, value: &[u8]) -> Result<(), (String, String)> {
        let msg = Message {
            tp: TopicPartition::new(&self.topic, 0),
            kind: self.kind,
            offset: 0,
            key: key.map(<[u8]>::to_vec),
            payload: Some(value.to_vec()),
            timestamp_ms: None,
            replay_count: None,
        };
        self.planner
            .plan(&msg)
            .map(|_| ())
            .map_err(|d| (d.reason.as_str().to_owned(), d.detail))
    }
}

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
        let result = contract.check(None, line.as_bytes());
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
        .set("enable.partition.eof", "false")
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
        let mut idle = std::time::Instant::now();
        while !ends.is_empty() {
            match reader.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    idle = std::time::Instant::now();
                    let Some(&end) = ends.get(&m.partition()) else {
                        continue;
                    };
                    if m.offset() >= end {
                        ends.remove(&m.partition());
                        continue;
                    }
                    // A tombstone is skipped by the service: nothing to check.
                    if let Some(value) = m.payload() {
                        let result = contract.check(m.key(), value);
                        report(
                            &format!("{}/{}/{}", m.topic(), m.partition(), m.offset()),
                            &result,
                        );
                        tally.add(&result);
                    }
                    if m.offset() + 1 >= end {
                        ends.remove(&m.partition());
                    }
                }
                Some(Err(e)) => anyhow::bail!("reading {}: {e}", contract.topic),
                None if idle.elapsed() > Duration::from_secs(10) => {
                    // Tansu reads its watermarks low with batched produce: stop when
                    // nothing more arrives.
                    break;
                }
                None => {}
            }
        }
    }
    println!("{}: {}", contract.topic, tally.summary());
    Ok(tally.failures() == 0)
}

/// How `publish` reads its file.
pub struct PublishArgs {
    pub file: PathBuf,
    /// CSV (else JSON Lines); by default from the file's extension.
    pub csv: bool,
    /// CSV column -> event field (`field=column`, dotted fields for nested ones). Without
    /// a map, the header names are the fields.
    pub map: Vec<(String, String)>,
    /// Fields every CSV record gets (`outcome=chargeback` for an export of chargebacks).
    pub set: Vec<(String, String)>,
    /// Data lines to skip (a re-run after an error: the last line acknowledged).
    pub skip: u64,
    /// At most this many data lines after the skipped ones.
    pub limit: Option<u64>,
    /// Where rejected lines go (default `<file>.rejected.jsonl`).
    pub rejected: Option<PathBuf>,
    /// How long a record may wait for the broker's acknowledgement before publish stops.
    pub delivery_timeout: Duration,
}

/// One record of the file: its line number and value (or why it could not be read).
struct Record {
    line: u64,
    value: Result<Vec<u8>, String>,
    text: String,
}

/// Fields whose CSV text becomes a JSON number, or a list.
const NUMBER_FIELDS: &[&str] = &["transaction.value"];
const LIST_FIELDS: &[&str] = &["reasons"];

fn csv_records(args: &PublishArgs) -> anyhow::Result<Vec<Record>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let headers = reader.headers()?.clone();
    let map: Vec<(String, usize)> = if args.map.is_empty() {
        headers
            .iter()
            .enumerate()
            .map(|(i, h)| (h.to_owned(), i))
            .collect()
    } else {
        args.map
            .iter()
            .map(|(field, column)| {
                headers
                    .iter()
                    .position(|h| h == column)
                    .map(|i| (field.clone(), i))
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--map {field}={column}: no column {column} in {}",
                            args.file.display()
                        )
                    })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut records = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let line = i as u64 + 1;
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                records.push(Record {
                    line,
                    value: Err(format!("not CSV: {e}")),
                    text: String::new(),
                });
                continue;
            }
        };
        let text = row.iter().collect::<Vec<_>>().join(",");
        let mut object = Map::new();
        for (field, value) in &args.set {
            insert_dotted(&mut object, field, Value::from(value.as_str()));
        }
        let mut problem = None;
        for (field, column) in &map {
            let Some(cell) = row.get(*column).filter(|c| !c.is_empty()) else {
                continue;
            };
            let value = if NUMBER_FIELDS.contains(&field.as_str()) {
                match cell
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                {
                    Some(n) => Value::Number(n),
                    None => {
                        problem = Some(format!("{field}: {cell:?} is not a number"));
                        break;
                    }
                }
            } else if LIST_FIELDS.contains(&field.as_str()) {
                Value::Array(
                    cell.split(['|', ';'])
                        .map(|s| Value::from(s.trim()))
                        .collect(),
                )
            } else {
                Value::from(cell)
            };
            insert_dotted(&mut object, field, value);
        }
        records.push(Record {
            line,
            value: match problem {
                Some(p) => Err(p),
                None => Ok(serde_json::to_vec(&Value::Object(object))?),
            },
            text,
        });
    }
    Ok(records)
}

fn insert_dotted(object: &mut Map<String, Value>, field: &str, value: Value) {
    match field.split_once('.') {
        None => {
            object.insert(field.to_owned(), value);
        }
        Some((head, rest)) => {
            let inner = object
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(inner) = inner {
                insert_dotted(inner, rest, value);
            }
        }
    }
}

fn jsonl_records(args: &PublishArgs) -> anyhow::Result<Vec<Record>> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(&args.file)
            .with_context(|| format!("opening {}", args.file.display()))?,
    );
    let mut records = Vec::new();
    let mut line = 0;
    for text in reader.lines() {
        let text = text?;
        if text.trim().is_empty() {
            continue;
        }
        line += 1;
        records.push(Record {
            line,
            value: Ok(text.clone().into_bytes()),
            text,
        });
    }
    Ok(records)
}

/// The message key of a record: its `key` field, else its assessment's id (from the name,
/// or a WAF token), so every event of one assessment lands on one partition.
pub fn message_key(value: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(value).ok()?;
    if let Some(key) = v.get("key").and_then(Value::as_str) {
        return Some(key.to_owned());
    }
    if let Some(name) = v.get("assessment").and_then(Value::as_str) {
        return Some(
            AssessmentName::parse(name).map_or_else(|_| name.to_owned(), |n| n.id().to_owned()),
        );
    }
    v.get("recaptcha_token")
        .and_then(Value::as_str)
        .and_then(|t| AssessmentId::from_waf_token(t).ok())
        .map(|id| id.as_str().to_owned())
}

/// What `publish` did.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Published {
    pub published: u64,
    pub rejected: u64,
    /// The last data line the broker acknowledged (or rejected as bad input), in order.
    pub last_line: u64,
}

/// `publish`: validates each record, produces the good ones in order with an idempotent
/// producer, writes the rejected ones with their reasons. On a produce error it stops and
/// reports the last line acknowledged: a re-run with `--skip` that number resumes without
/// duplicates.
pub async fn publish(
    config: &Config,
    contract: &Contract,
    args: &PublishArgs,
) -> anyhow::Result<Published> {
    let csv = args.csv
        || args
            .file
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("csv"));
    let records = if csv {
        csv_records(args)?
    } else {
        jsonl_records(args)?
    };
    let take = args.limit.unwrap_or(u64::MAX);
    let records: Vec<Record> = records
        .into_iter()
        .filter(|r| r.line > args.skip)
        .take(usize::try_from(take).unwrap_or(usize::MAX))
        .collect();
    let rejected_path = args.rejected.clone().unwrap_or_else(|| {
        let mut p = args.file.clone().into_os_string();
        p.push(".rejected.jsonl");
        PathBuf::from(p)
    });
    let producer: FutureProducer<kafka::LogContext> = kafka::client(&config.kafka)
        .set("enable.idempotence", "true")
        .set("acks", "all")
        .set("linger.ms", "5")
        .set(
            "message.timeout.ms",
            args.delivery_timeout.as_millis().to_string(),
        )
        .create_with_context(kafka::LogContext::new(&config.kafka.brokers))
        .context("creating the idempotent producer")?;
    let bar = progress(records.len() as u64);
    let mut rejected_out: Option<std::io::BufWriter<std::fs::File>> = None;
    let mut done = Published {
        last_line: args.skip,
        ..Published::default()
    };
    // In flight, in line order: a line counts as done once it and every line before it are.
    let mut pending: VecDeque<(u64, Option<DeliveryFuture>)> = VecDeque::new();
    let mut failure = None;
    for record in &records {
        let checked = match &record.value {
            Ok(value) => contract.check(None, value).map(|()| value),
            Err(e) => Err(("decode".to_owned(), e.clone())),
        };
        match checked {
            Ok(value) => {
                let key = message_key(value);
                let mut future = FutureRecord::<String, [u8]>::to(&contract.topic).payload(value);
                if let Some(key) = &key {
                    future = future.key(key);
                }
                let delivery = loop {
                    match producer.send_result(future) {
                        Ok(d) => break d,
                        Err((e, back))
                            if matches!(
                                e.rdkafka_error_code(),
                                Some(rdkafka::types::RDKafkaErrorCode::QueueFull)
                            ) =>
                        {
                            future = back;
                            settle(&mut pending, &mut done, &mut failure).await;
                            tokio::time::sleep(Duration::from_millis(5)).await;
                        }
                        Err((e, _)) => anyhow::bail!("producing line {}: {e}", record.line),
                    }
                };
                pending.push_back((record.line, Some(delivery)));
            }
            Err((reason, detail)) => {
                let out = match &mut rejected_out {
                    Some(out) => out,
                    // A resumed run (--skip) adds to the first run's file.
                    None => rejected_out.insert(std::io::BufWriter::new(
                        std::fs::OpenOptions::new()
                            .create(true)
                            .write(true)
                            .append(args.skip > 0)
                            .truncate(args.skip == 0)
                            .open(&rejected_path)
                            .with_context(|| format!("creating {}", rejected_path.display()))?,
                    )),
                };
                let line = serde_json::json!({"line": record.line, "reason": reason, "detail": detail, "record": record.text});
                writeln!(out, "{line}")?;
                done.rejected += 1;
                pending.push_back((record.line, None));
            }
        }
        while pending.len() > 10_000 || pending.front().is_some_and(|(_, d)| d.is_none()) {
            settle_one(&mut pending, &mut done, &mut failure).await;
            if failure.is_some() {
                break;
            }
        }
        if failure.is_some() {
            break;
        }
        if let Some(bar) = &bar {
            bar.set_position(done.last_line - args.skip);
        }
    }
    while !pending.is_empty() && failure.is_none() {
        settle_one(&mut pending, &mut done, &mut failure).await;
    }
    if let Some(out) = &mut rejected_out {
        out.flush()?;
    }
    if let Some(bar) = bar {
        bar.finish_and_clear();
    }
    let rejected_note = if done.rejected > 0 {
        format!(
            " ({} rejected: see {})",
            done.rejected,
            rejected_path.display()
        )
    } else {
        String::new()
    };
    if let Some(e) = failure {
        anyhow::bail!(
            "stopped: {e}. {} published{rejected_note}; the broker acknowledged every line up to {} and nothing after it was counted: fix the cause and re-run with --skip {}",
            done.published,
            done.last_line,
            done.last_line
        );
    }
    println!(
        "{} published to {}{rejected_note}; last line acknowledged: {} (a later run resumes with --skip {})",
        done.published, contract.topic, done.last_line, done.last_line
    );
    Ok(done)
}

/// Waits for the oldest line in flight.
async fn settle_one(
    pending: &mut VecDeque<(u64, Option<DeliveryFuture>)>,
    done: &mut Published,
    failure: &mut Option<String>,
) {
    let Some((line, delivery)) = pending.pop_front() else {
        return;
    };
    match delivery {
        None => done.last_line = line,
        Some(d) => match d.await {
            Ok(Ok(_)) => {
                done.published += 1;
                done.last_line = line;
            }
            Ok(Err((e, _))) => *failure = Some(format!("line {line} was not acknowledged: {e}")),
            Err(_) => *failure = Some(format!("line {line}: the producer went away")),
        },
    }
}

/// Settles what is already acknowledged, so a full queue drains.
async fn settle(
    pending: &mut VecDeque<(u64, Option<DeliveryFuture>)>,
    done: &mut Published,
    failure: &mut Option<String>,
) {
    if !pending.is_empty() {
        settle_one(pending, done, failure).await;
    }
}

/// A progress bar on a terminal only.
fn progress(total: u64) -> Option<indicatif::ProgressBar> {
    use std::io::IsTerminal as _;
    if !std::io::stderr().is_terminal() {
        return None;
    }
    let bar = indicatif::ProgressBar::new(total);
    bar.set_style(
        indicatif::ProgressStyle::with_template("{bar:40} {pos}/{len} lines {per_sec} eta {eta}")
            .unwrap_or_else(|_| indicatif::ProgressStyle::default_bar()),
    );
    Some(bar)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_key_is_the_key_else_the_assessment_id() {
        assert_eq!(
            message_key(br#"{"key":"k1","assessment":"projects/p/assessments/a"}"#).as_deref(),
            Some("k1")
        );
        assert_eq!(
            message_key(br#"{"assessment":"projects/p/assessments/a1"}"#).as_deref(),
            Some("a1")
        );
        assert_eq!(
            message_key(br#"{"recaptcha_token":"x:U=AAAABBBBCCCCDDDD"}"#).as_deref(),
            Some("AAAABBBBCCCCDDDD")
        );
        assert_eq!(message_key(br#"{"event_id":"e"}"#), None);
    }

    #[test]
    fn dotted_csv_fields_become_nested_objects() {
        let mut object = Map::new();
        insert_dotted(&mut object, "transaction.value", Value::from(1.5));
        insert_dotted(
            &mut object,
            "transaction.event_type",
            Value::from("CHARGEBACK"),
        );
        insert_dotted(&mut object, "event_id", Value::from("e"));
        assert_eq!(
            Value::Object(object),
            serde_json::json!({"event_id": "e", "transaction": {"value": 1.5, "event_type": "CHARGEBACK"}})
        );
    }
}
