//! `recaptcha-annotator dead-letter replay`: re-publishes dead-lettered events to the topic
//! they came from, after a rule, a mapping or a permission was fixed.
//!
//! - Filters: `annotator.error` reason(s) and the record time window.
//! - Each replayed record carries `annotator.replay_count` (previous + 1); the service copies
//!   it onto a new dead letter, and records at `--max-replays` are not replayed again.
//! - The command reads the dead-letter topic as its own consumer group and commits what it
//!   has read, so a record is never replayed twice by the command: a second run starts where
//!   the first ended. The default group is named after the filters
//!   ([`default_group`]), so records one filter passed over stay there for another (replaying
//!   `unjoined` today does not use up the `rejected` records for tomorrow).
//! - A failed publish stops the run after committing what was done before it.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use rdkafka::consumer::{BaseConsumer, CommitMode, Consumer as _};
use rdkafka::error::KafkaError;
use rdkafka::message::{Header, Headers as _, Message as _, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::{Offset, TopicPartitionList};

use crate::config::Config;
use crate::failure::DeadLetterReason;
use crate::kafka::{self, REPLAY_COUNT};

pub struct ReplayArgs {
    /// Only these `annotator.error` reasons; all when empty.
    pub reasons: Vec<String>,
    /// Only records written at or after this time.
    pub since: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// Only records written before this time.
    pub until: Option<chrono::DateTime<chrono::FixedOffset>>,
    /// Consumer group that remembers what was read.
    pub group: String,
    /// Records replayed this many times already are left alone.
    pub max_replays: u32,
    /// Count what would be replayed; publish and commit nothing.
    pub dry_run: bool,
}

#[derive(Debug, Default, PartialEq, Eq)]
pub struct ReplayReport {
    pub read: u64,
    pub replayed: u64,
    /// Skipped, by why.
    pub skipped: BTreeMap<&'static str, u64>,
}

/// How long the topic may stay quiet before the command considers it read.
const QUIET: Duration = Duration::from_secs(3);

pub async fn run(config: &Config, args: &ReplayArgs) -> anyhow::Result<ReplayReport> {
    let topics = &config.kafka.topics;
    let consumer: BaseConsumer<kafka::LogContext> =
        kafka::replay_reader(&config.kafka, &args.group)
            .context("creating the dead-letter reader")?;
    let partitions = kafka::partitions_of(&consumer, &topics.dead_letter)
        .context("reading dead-letter topic metadata")?;
    anyhow::ensure!(
        !partitions.is_empty(),
        "dead-letter topic {} not found",
        topics.dead_letter
    );
    let mut wanted = TopicPartitionList::new();
    for p in &partitions {
        wanted.add_partition(&topics.dead_letter, *p);
    }
    let committed = consumer.committed_offsets(wanted, Duration::from_secs(10))?;
    let mut start = TopicPartitionList::new();
    for e in committed.elements() {
        let offset = match e.offset() {
            Offset::Offset(o) => Offset::Offset(o),
            _ => Offset::Beginning,
        };
        start.add_partition_offset(&topics.dead_letter, e.partition(), offset)?;
    }
    drop(committed);
    consumer.assign(&start)?;

    let producer: FutureProducer =
        kafka::replay_producer(&config.kafka).context("creating the replay producer")?;
    let sources = config.kafka.topics.consumed();
    let mut report = ReplayReport::default();
    let mut failure = None;
    let mut next_offsets: BTreeMap<i32, i64> = BTreeMap::new();
    let mut at_end = std::collections::BTreeSet::new();
    let mut last_message = Instant::now();
    while at_end.len() < partitions.len() || last_message.elapsed() < QUIET {
        if at_end.len() == partitions.len() && last_message.elapsed() >= QUIET {
            break;
        }
        let message = match consumer.poll(Duration::from_millis(200)) {
            None => {
                if last_message.elapsed() >= QUIET {
                    break;
                }
                continue;
            }
            Some(Err(KafkaError::PartitionEOF(p))) => {
                at_end.insert(p);
                continue;
            }
            Some(Err(e)) => {
                // Stop, but commit what was replayed before it, so a rerun does not
                // replay it again.
                failure = Some(anyhow::Error::new(e).context("reading the dead-letter topic"));
                break;
            }
            Some(Ok(m)) => m,
        };
        last_message = Instant::now();
        at_end.remove(&message.partition());
        report.read += 1;
        let header = |key: &str| -> Option<String> {
            let headers = message.headers()?;
            let h = headers.iter().find(|h| h.key == key)?;
            Some(String::from_utf8_lossy(h.value?).into_owned())
        };
        let reason = header("annotator.error").unwrap_or_default();
        let source_topic = header("annotator.source").and_then(|s| {
            let mut parts = s.rsplitn(3, '/');
            let (_, _, topic) = (parts.next()?, parts.next()?, parts.next()?);
            Some(topic.to_owned())
        });
        let replays: u32 = header(REPLAY_COUNT)
            .and_then(|v| v.parse().ok())
            .unwrap_or(0);
        let when = message
            .timestamp()
            .to_millis()
            .and_then(chrono::DateTime::from_timestamp_millis);
        let skip = if !args.reasons.is_empty() && !args.reasons.contains(&reason) {
            Some("reason")
        } else if args.since.is_some_and(|s| when.is_none_or(|w| w < s))
            || args.until.is_some_and(|u| when.is_none_or(|w| w >= u))
        {
            Some("time")
        } else if replays >= args.max_replays {
            Some("max_replays")
        } else if source_topic
            .as_deref()
            .is_none_or(|t| !sources.contains(&t))
        {
            Some("unknown_source")
        } else {
            None
        };
        if let Some(why) = skip {
            *report.skipped.entry(why).or_default() += 1;
            next_offsets.insert(message.partition(), message.offset() + 1);
            continue;
        }
        let Some(topic) = source_topic else { continue };
        if !args.dry_run {
            let count = (replays + 1).to_string();
            let mut headers = OwnedHeaders::new();
            if let Some(original) = message.headers() {
                for h in original.iter().filter(|h| !h.key.starts_with("annotator.")) {
                    headers = headers.insert(Header {
                        key: h.key,
                        value: h.value,
                    });
                }
            }
            headers = headers.insert(Header {
                key: REPLAY_COUNT,
                value: Some(count.as_str()),
            });
            let mut record: FutureRecord<'_, [u8], [u8]> =
                FutureRecord::to(&topic).headers(headers);
            if let Some(k) = message.key() {
                record = record.key(k);
            }
            if let Some(v) = message.payload() {
                record = record.payload(v);
            }
            if let Err((e, _)) = producer.send(record, Duration::from_secs(30)).await {
                failure = Some(anyhow::Error::new(e).context(format!("re-publishing to {topic}")));
                break;
            }
        }
        next_offsets.insert(message.partition(), message.offset() + 1);
        report.replayed += 1;
        if report.read.is_multiple_of(1000) {
            eprintln!(
                "read {} dead letters, replayed {}",
                report.read, report.replayed
            );
        }
    }
    if !args.dry_run && !next_offsets.is_empty() {
        let mut tpl = TopicPartitionList::new();
        for (p, o) in &next_offsets {
            tpl.add_partition_offset(&topics.dead_letter, *p, Offset::Offset(*o))?;
        }
        consumer
            .commit(&tpl, CommitMode::Sync)
            .context("committing what was replayed")?;
    }
    match failure {
        Some(e) => Err(e),
        None => Ok(report),
    }
}

/// The command line of `dead-letter replay`, before it is checked.
pub struct ReplayFlags {
    pub reasons: Vec<String>,
    pub since: Option<String>,
    pub until: Option<String>,
    pub group: Option<String>,
    pub max_replays: u32,
    pub dry_run: bool,
}

/// An RFC 3339 time (`2026-11-25T08:00:00Z`, `2026-11-25T09:00:00+01:00`) or a date
/// (`2026-11-25`, its midnight UTC).
fn parse_time(
    flag: &str,
    value: Option<&str>,
) -> anyhow::Result<Option<chrono::DateTime<chrono::FixedOffset>>> {
    value
        .map(|v| {
            let v = v.trim();
            if let Ok(t) = chrono::DateTime::parse_from_rfc3339(v) {
                return Ok(t);
            }
            chrono::NaiveDate::parse_from_str(v, "%Y-%m-%d")
                .ok()
                .and_then(|d| d.and_hms_opt(0, 0, 0))
                .map(|t| t.and_utc().fixed_offset())
                .ok_or_else(|| {
                    anyhow::anyhow!(
                        "--{flag} {v:?}: not a date or time; give a date (2026-11-25, midnight UTC) or an RFC 3339 time (2026-11-25T08:00:00Z, 2026-11-25T09:00:00+01:00)"
                    )
                })
        })
        .transpose()
}

/// `dead-letter replay`: checks the flags, replays, prints the summary.
pub async fn main(config: &Config, flags: ReplayFlags) -> anyhow::Result<()> {
    let known: Vec<&str> = DeadLetterReason::ALL.iter().map(|r| r.as_str()).collect();
    if let Some(bad) = flags.reasons.iter().find(|r| !known.contains(&r.as_str())) {
        anyhow::bail!("--reason {bad:?}: must be one of {}", known.join(", "));
    }
    let since = parse_time("since", flags.since.as_deref())?;
    let until = parse_time("until", flags.until.as_deref())?;
    let group = flags.group.unwrap_or_else(|| {
        default_group(
            &config.kafka.group_id,
            &flags.reasons,
            since.as_ref(),
            until.as_ref(),
        )
    });
    let args = ReplayArgs {
        reasons: flags.reasons,
        since,
        until,
        group,
        max_replays: flags.max_replays,
        dry_run: flags.dry_run,
    };
    let report = run(config, &args).await?;
    let skipped: Vec<String> = report
        .skipped
        .iter()
        .map(|(k, v)| format!("{k} {v}"))
        .collect();
    println!(
        "read {} dead letters; {} {}; skipped: {}",
        report.read,
        if args.dry_run {
            "would replay"
        } else {
            "replayed"
        },
        report.replayed,
        if skipped.is_empty() {
            "none".into()
        } else {
            skipped.join(", ")
        }
    );
    Ok(())
}

/// The consumer group a replay keeps its position in unless `--group` is given:
/// `<group_id>-replay`, plus the reasons and time window when filtered. Runs with the same
/// filters continue one another; runs with other filters start from the beginning.
pub fn default_group(
    group_id: &str,
    reasons: &[String],
    since: Option<&chrono::DateTime<chrono::FixedOffset>>,
    until: Option<&chrono::DateTime<chrono::FixedOffset>>,
) -> String {
    let mut group = format!("{group_id}-replay");
    if !reasons.is_empty() {
        let mut sorted = reasons.to_vec();
        sorted.sort();
        sorted.dedup();
        group.push('-');
        group.push_str(&sorted.join("+"));
    }
    if let Some(since) = since {
        // In UTC, so one instant written two ways is one group.
        group.push_str(&format!("-since-{}", since.to_utc().to_rfc3339()));
    }
    if let Some(until) = until {
        group.push_str(&format!("-until-{}", until.to_utc().to_rfc3339()));
    }
    group
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn since_takes_a_date_or_an_rfc3339_time_and_says_which_when_neither() {
        let date = parse_time("since", Some("2026-11-25")).unwrap().unwrap();
        assert_eq!(date.to_rfc3339(), "2026-11-25T00:00:00+00:00");
        let time = parse_time("since", Some("2026-11-25T09:00:00+01:00"))
            .unwrap()
            .unwrap();
        assert_eq!(time.to_rfc3339(), "2026-11-25T09:00:00+01:00");
        let err = parse_time("until", Some("yesterday"))
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("--until \"yesterday\"") && err.contains("RFC 3339"),
            "{err}"
        );
    }

    #[test]
    fn the_default_group_follows_the_filters() {
        let t = chrono::DateTime::parse_from_rfc3339("2026-11-25T00:00:00Z").unwrap();
        assert_eq!(default_group("g", &[], None, None), "g-replay");
        let a = default_group("g", &["unjoined".into(), "rejected".into()], None, None);
        let b = default_group("g", &["rejected".into(), "unjoined".into()], None, None);
        assert_eq!(a, "g-replay-rejected+unjoined");
        assert_eq!(a, b, "order of --reason does not matter");
        let same = chrono::DateTime::parse_from_rfc3339("2026-11-25T01:00:00+01:00").unwrap();
        assert_eq!(
            default_group("g", &[], Some(&same), None),
            default_group("g", &[], Some(&t), None),
            "one instant written two ways is one group"
        );
        assert_eq!(
            default_group("g", &["unjoined".into()], Some(&t), None),
            "g-replay-unjoined-since-2026-11-25T00:00:00+00:00"
        );
    }
}
