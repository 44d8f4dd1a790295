//! `publish`: a file validated line by line, the good records produced in order by an
//! idempotent producer, the rejected ones written with their reasons; on an error, the last
//! line the broker acknowledged, to resume from with `--skip`.

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::Context as _;
use rdkafka::producer::{DeliveryFuture, FutureProducer, FutureRecord};

use super::Contract;
use super::records::{Record, csv_records, jsonl_records, message_key};
use crate::config::Config;
use crate::kafka;

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
            Ok(value) => contract.check(None, Some(value)).map(|()| value),
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
                            settle_one(&mut pending, &mut done, &mut failure).await;
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
