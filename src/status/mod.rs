//! `/status.json` (and the `/status` page and `recaptcha-annotator top` built on it): one
//! snapshot of what an operator asks first: is it ready and why not, what flows in and out,
//! where calls are held back (in flight against the limit, the budget, halted projects and
//! since when, parked joins), each partition's lag, the last dead letters' reasons (never
//! their payloads) and the effective config with secrets redacted.
//!
//! A snapshot reads the metrics' atomics (through the registry) and the readiness facts;
//! it never takes a lock that an event's path holds across a wait. Counters are totals:
//! readers take rates from two snapshots (`at_ms` apart). The field list is stable and
//! documented in docs/DESIGN.md; `status_tests` checks every field is present.

use std::collections::BTreeMap;

use prometheus::proto::MetricFamily;
use serde::{Deserialize, Serialize};

use crate::health::{Health, unix_ms as now_ms};
use crate::telemetry::Metrics;
pub use crate::telemetry::{RECENT_DEAD_LETTERS, RecentDeadLetter};

/// The snapshot. Field names are the JSON's.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Status {
    /// The service's version and git revision.
    pub version: String,
    pub revision: String,
    /// When the snapshot was taken (ms since the Unix epoch).
    pub at_ms: u64,
    /// `/readyz`: ready, else why not; notes while ready (projects halted, partitions stalled).
    pub ready: bool,
    pub reasons: Vec<String>,
    pub notes: Vec<String>,
    /// Why every call is halted, while it is.
    pub halted: Option<String>,
    /// Projects whose calls are halted by 403: why and since when.
    pub halted_projects: Vec<HaltedProject>,
    /// Events finished, all results (`annotator_events_total`): the rate in.
    pub events_total: u64,
    /// Events annotated with a 2xx: the rate out.
    pub annotated_total: u64,
    /// Dead letters written, by reason.
    pub dead_letters_total: BTreeMap<String, u64>,
    /// Calls in flight, and the adaptive limit they are held to.
    pub in_flight: i64,
    pub in_flight_limit: i64,
    /// Outcomes parked for their assessment's mapping (join waits), and events pending.
    pub parked: i64,
    pub pending: i64,
    pub budget: Budget,
    /// Partitions this member owns.
    pub partitions: Vec<Partition>,
    /// The last dead letters (newest first, at most [`RECENT_DEAD_LETTERS`]).
    pub recent_dead_letters: Vec<RecentDeadLetter>,
    /// The effective config as TOML, secrets redacted.
    pub config: String,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct HaltedProject {
    pub project: String,
    pub reason: String,
    pub since_ms: u64,
}

/// The quota budget: the configured rate and burst, tokens granted, the fallback, and the
/// rates in force (`all`, and projects capped or slowed after 429s).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Budget {
    pub rate: u32,
    pub burst: u32,
    pub granted_total: u64,
    pub fallback: bool,
    pub effective: BTreeMap<String, f64>,
}

#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Partition {
    pub topic: String,
    pub partition: i32,
    /// The committed offset, the lag behind the end, and the end (committed + lag).
    pub committed: i64,
    pub lag: i64,
    pub end: i64,
}

/// What a snapshot needs besides the metrics and readiness: fixed at start.
#[derive(Debug, Clone, Default)]
pub struct Fixed {
    /// `delivery.rate_limit` and its burst.
    pub rate: u32,
    pub burst: u32,
    /// The effective config, secrets redacted.
    pub config: String,
}

/// Takes a snapshot.
pub fn snapshot(health: &Health, metrics: &Metrics, fixed: &Fixed) -> Status {
    let readiness = health.readiness();
    let families: BTreeMap<String, MetricFamily> = metrics
        .registry
        .gather()
        .into_iter()
        .map(|f| (f.name().to_owned(), f))
        .collect();
    let sum = |name: &str, wanted: &dyn Fn(&BTreeMap<&str, &str>) -> bool| -> f64 {
        series(&families, name)
            .filter(|(labels, _)| wanted(labels))
            .map(|(_, v)| v)
            .sum()
    };
    let all = |_: &BTreeMap<&str, &str>| true;
    let mut dead_letters_total = BTreeMap::new();
    for (labels, value) in series(&families, "annotator_dead_letters_total") {
        if let Some(reason) = labels.get("reason") {
            *dead_letters_total.entry((*reason).to_owned()).or_default() += as_u64(value);
        }
    }
    let mut effective = BTreeMap::new();
    for (labels, value) in series(&families, "annotator_rate_effective") {
        if let Some(project) = labels.get("project") {
            effective.insert((*project).to_owned(), value);
        }
    }
    let mut committed: BTreeMap<(String, i32), i64> = BTreeMap::new();
    for (labels, value) in series(&families, "annotator_committed_offset") {
        if let Some(key) = partition_key(&labels) {
            committed.insert(key, as_i64(value));
        }
    }
    let mut partitions = Vec::new();
    for (labels, value) in series(&families, "annotator_consumer_lag") {
        let Some(key) = partition_key(&labels) else {
            continue;
        };
        let lag = as_i64(value);
        let done = committed.get(&key).copied().unwrap_or_default();
        partitions.push(Partition {
            topic: key.0,
            partition: key.1,
            committed: done,
            lag,
            end: done.saturating_add(lag),
        });
    }
    partitions.sort_by(|a, b| (&a.topic, a.partition).cmp(&(&b.topic, b.partition)));
    Status {
        version: env!("CARGO_PKG_VERSION").to_owned(),
        revision: env!("ANNOTATOR_REVISION").to_owned(),
        at_ms: now_ms(),
        ready: readiness.ready(),
        reasons: readiness.reasons,
        notes: readiness.notes,
        halted: health.halted_reason(),
        halted_projects: health
            .halted_projects()
            .into_iter()
            .map(|(project, reason, since_ms)| HaltedProject {
                project,
                reason,
                since_ms,
            })
            .collect(),
        events_total: as_u64(sum("annotator_events_total", &all)),
        annotated_total: as_u64(sum("annotator_events_total", &|l| {
            l.get("result") == Some(&"annotated")
        })),
        dead_letters_total,
        in_flight: metrics.in_flight.get(),
        in_flight_limit: metrics.concurrency_limit.get(),
        parked: metrics.parked.get(),
        pending: metrics.pending.get(),
        budget: Budget {
            rate: fixed.rate,
            burst: fixed.burst,
            granted_total: metrics.budget_granted.get(),
            fallback: metrics.budget_fallback.get() == 1,
            effective,
        },
        partitions,
        recent_dead_letters: metrics.recent_dead_letters(),
        config: fixed.config.clone(),
    }
}

/// How long ago `then_ms` was at `now_ms`: "12 s", "5 min", "2 h".
pub fn ago(now_ms: u64, then_ms: u64) -> String {
    let s = now_ms.saturating_sub(then_ms) / 1000;
    match s {
        0..60 => format!("{s} s"),
        60..3600 => format!("{} min", s / 60),
        _ => format!("{} h", s / 3600),
    }
}

/// Every series of family `name`: its labels and value (counter or gauge).
fn series<'a>(
    families: &'a BTreeMap<String, MetricFamily>,
    name: &str,
) -> impl Iterator<Item = (BTreeMap<&'a str, &'a str>, f64)> + 'a {
    families
        .get(name)
        .into_iter()
        .flat_map(|f| f.get_metric().iter())
        .map(|m| {
            let labels = m
                .get_label()
                .iter()
                .map(|l| (l.name(), l.value()))
                .collect();
            let value = if m.counter.is_some() {
                m.counter.value()
            } else {
                m.gauge.value()
            };
            (labels, value)
        })
}

fn partition_key(labels: &BTreeMap<&str, &str>) -> Option<(String, i32)> {
    Some((
        (*labels.get("topic")?).to_owned(),
        labels.get("partition")?.parse().ok()?,
    ))
}

#[allow(clippy::cast_possible_truncation, clippy::cast_sign_loss)]
fn as_u64(v: f64) -> u64 {
    v.max(0.0) as u64
}

#[allow(clippy::cast_possible_truncation)]
fn as_i64(v: f64) -> i64 {
    v as i64
}

#[cfg(test)]
#[path = "tests.rs"]
mod tests;

pub mod page;
