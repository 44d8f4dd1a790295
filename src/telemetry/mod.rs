//! The metric catalogue (one place for every name and help text), the named events that
//! log and count ([`events`]), and the logging setup.
//!
//! Labels are bounded: topic (the four consumed Kafka topic names, on every family), partition, result, status class,
//! retry cause, dead-letter reason, and project only for the projects the config names
//! (`recaptcha.project`, `allowed_projects`, `project_rate_limits`; any other is `other`).
//! Never keys, ids or account data.

mod events;
mod kafka;

pub use self::events::Every;
pub use self::kafka::KafkaStats;

use prometheus::{
    Counter, Encoder as _, GaugeVec, Histogram, HistogramOpts, HistogramVec, IntCounter,
    IntCounterVec, IntGauge, IntGaugeVec, Opts, Registry, TextEncoder,
};

use crate::failure::{DeadLetterReason, RetryCause};

/// One dead letter's reason, never its payload.
#[derive(Debug, Clone, Default, PartialEq, serde::Serialize, serde::Deserialize)]
pub struct RecentDeadLetter {
    pub at_ms: u64,
    pub reason: String,
    pub detail: String,
    /// `topic/partition/offset` of the event.
    pub source: String,
}

/// How many dead letters `/status.json` keeps.
pub const RECENT_DEAD_LETTERS: usize = 20;

/// How log lines are written.
#[derive(
    Debug, Clone, Copy, PartialEq, Eq, serde::Deserialize, serde::Serialize, clap::ValueEnum,
)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    /// Human-readable lines.
    Text,
    /// One JSON object per line.
    Json,
}

/// Every metric the service exports.
#[derive(Clone)]
pub struct Metrics {
    pub registry: Registry,
    /// `annotator_events_total{topic, result}`.
    pub events: IntCounterVec,
    /// `annotator_annotate_requests_total{status_class}`.
    pub requests: IntCounterVec,
    pub request_duration: Histogram,
    /// `annotator_retries_total{cause}`.
    pub retries: IntCounterVec,
    /// `annotator_dead_letters_total{reason}`.
    pub dead_letters: IntCounterVec,
    /// `annotator_join_total{result}`.
    pub joins: IntCounterVec,
    pub join_wait: Histogram,
    pub in_flight: IntGauge,
    pub parked: IntGauge,
    pub pending: IntGauge,
    pub committed_offset: IntGaugeVec,
    pub consumer_lag: IntGaugeVec,
    /// `annotator_rebalances_total{kind}`.
    pub rebalances: IntCounterVec,
    pub halted: IntGauge,
    /// 1 when `/readyz` would answer 200.
    pub ready: IntGauge,
    /// `annotator_assigned_partitions`: partitions this member owns (0 for a standby).
    pub assigned_partitions: IntGauge,
    /// A subset of librdkafka's statistics.
    pub kafka: std::sync::Arc<KafkaStats>,
    /// The last dead letters' reasons, for `/status.json` (a rare path's short lock).
    recent_dead_letters:
        std::sync::Arc<std::sync::Mutex<std::collections::VecDeque<RecentDeadLetter>>>,
    pub cache_errors: IntCounter,
    pub end_to_end: HistogramVec,
    /// `annotator_event_crashes_total`: event tasks that panicked.
    pub event_crashes: IntCounter,
    /// `annotator_stalled_partitions`: partitions whose commit point a crashed event holds.
    pub stalled_partitions: IntGauge,
    /// `annotator_halted_projects`: projects whose calls are halted by 403.
    pub halted_projects: IntGauge,
    /// `annotator_dead_letters_refused`: 1 while the broker refuses every dead letter.
    pub dead_letters_refused: IntGauge,
    /// The adaptive in-flight limit.
    pub concurrency_limit: IntGauge,
    pub budget_granted: IntCounter,
    pub budget_wait: Counter,
    /// 1 while Redis is unreachable and this instance spends its fallback share.
    pub budget_fallback: IntGauge,
    /// Calls per second this instance may spend: `all`, and per capped or throttled project.
    pub effective_rate: GaugeVec,
    /// 429 answers by project.
    pub throttled: IntCounterVec,
    /// When a failed cache operation was last logged at WARN.
    pub cache_warn: Every,
}

/// Registers `metric` in `registry`. The definitions are constants of this file, so a
/// failure is a programming error (documented invariant).
fn register<M: prometheus::core::Collector + Clone + 'static>(
    registry: &Registry,
    metric: prometheus::Result<M>,
) -> M {
    let metric = metric.expect("metric definition is valid");
    registry
        .register(Box::new(metric.clone()))
        .expect("metric names are unique");
    metric
}

fn counter_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(registry, IntCounterVec::new(Opts::new(name, help), labels))
}

fn counter(registry: &Registry, name: &str, help: &str) -> IntCounter {
    register(registry, IntCounter::new(name, help))
}

fn gauge(registry: &Registry, name: &str, help: &str) -> IntGauge {
    register(registry, IntGauge::new(name, help))
}

fn gauge_vec(registry: &Registry, name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(registry, IntGaugeVec::new(Opts::new(name, help), labels))
}

fn histogram(registry: &Registry, name: &str, help: &str, buckets: Vec<f64>) -> Histogram {
    register(
        registry,
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets)),
    )
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let build = gauge_vec(
            &registry,
            "annotator_build_info",
            "Build information; always 1",
            &["version", "revision"],
        );
        build
            .with_label_values(&[env!("CARGO_PKG_VERSION"), env!("ANNOTATOR_REVISION")])
            .set(1);
        // Resident memory, CPU, open files (`process_*`), read from /proc on Linux.
        #[cfg(target_os = "linux")]
        registry
            .register(Box::new(
                prometheus::process_collector::ProcessCollector::for_self(),
            ))
            .expect("process metrics registered once");
        // From a millisecond to a day: a backlog's events land in buckets, not in +Inf.
        let latency = vec![
            0.001, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0, 60.0,
            300.0, 900.0, 1800.0, 3600.0, 7200.0, 21600.0, 86400.0,
        ];
        let metrics = Self {
            events: counter_vec(
                &registry,
                "annotator_events_total",
                "Events finished, by topic and result (annotated, dead_lettered, skipped, cached, dry_run, duplicate)",
                &["topic", "result"],
            ),
            requests: counter_vec(
                &registry,
                "annotator_annotate_requests_total",
                "Annotate calls by HTTP status class (2xx, 4xx, 5xx, other, error)",
                &["status_class"],
            ),
            request_duration: histogram(
                &registry,
                "annotator_annotate_duration_seconds",
                "Duration of one annotate call",
                latency.clone(),
            ),
            retries: counter_vec(
                &registry,
                "annotator_retries_total",
                "Annotate retries by cause",
                &["cause"],
            ),
            dead_letters: counter_vec(
                &registry,
                "annotator_dead_letters_total",
                "Events written to the dead-letter topic, by reason",
                &["reason"],
            ),
            joins: counter_vec(
                &registry,
                "annotator_join_total",
                "Assessment resolution by result (inline, token, hit, waited, unjoined)",
                &["result"],
            ),
            join_wait: histogram(
                &registry,
                "annotator_join_wait_seconds",
                "How long outcomes waited for their key to reach the cache",
                vec![0.01, 0.1, 0.5, 1.0, 5.0, 15.0, 30.0, 60.0, 300.0],
            ),
            in_flight: gauge(&registry, "annotator_in_flight", "Annotate calls in flight"),
            parked: gauge(
                &registry,
                "annotator_parked",
                "Outcomes waiting for their key to reach the cache",
            ),
            pending: gauge(
                &registry,
                "annotator_pending",
                "Events taken from Kafka and not yet finished",
            ),
            committed_offset: gauge_vec(
                &registry,
                "annotator_committed_offset",
                "Last offset committed (next offset to read), per partition",
                &["topic", "partition"],
            ),
            consumer_lag: gauge_vec(
                &registry,
                "annotator_consumer_lag",
                "High watermark minus committed offset, per partition (never negative)",
                &["topic", "partition"],
            ),
            rebalances: counter_vec(
                &registry,
                "annotator_rebalances_total",
                "Rebalances by kind",
                &["kind"],
            ),
            halted: gauge(
                &registry,
                "annotator_halted",
                "1 while every call is halted: credentials refused (401, invalid API key) or unavailable, or a wrong endpoint",
            ),
            ready: gauge(
                &registry,
                "annotator_ready",
                "1 when ready (assigned, cache reachable, not halted), else 0",
            ),
            assigned_partitions: gauge(
                &registry,
                "annotator_assigned_partitions",
                "Partitions this member of the consumer group owns (0 for a standby when there are more members than partitions)",
            ),
            kafka: std::sync::Arc::new(KafkaStats::new(&registry)),
            recent_dead_letters: std::sync::Arc::default(),
            cache_errors: counter(
                &registry,
                "annotator_cache_errors_total",
                "Failed cache operations (retried)",
            ),
            event_crashes: counter(
                &registry,
                "annotator_event_crashes_total",
                "Event tasks that panicked; their offset stays uncommitted",
            ),
            halted_projects: gauge(
                &registry,
                "annotator_halted_projects",
                "Projects whose annotate calls are halted because the endpoint answers 403 (the others flow)",
            ),
            dead_letters_refused: gauge(
                &registry,
                "annotator_dead_letters_refused",
                "1 while the broker refuses every dead letter (an ACL, a missing topic, a policy): the events that fail wait, holding their partitions",
            ),
            stalled_partitions: gauge(
                &registry,
                "annotator_stalled_partitions",
                "Partitions whose commit point is held by an event that crashed (until revoked or restarted)",
            ),
            concurrency_limit: gauge(
                &registry,
                "annotator_concurrency_limit",
                "Annotate calls allowed in flight now (adaptive, up to delivery.max_in_flight)",
            ),
            budget_granted: counter(
                &registry,
                "annotator_rate_budget_granted_total",
                "Annotate calls granted by the quota budget",
            ),
            budget_wait: register(
                &registry,
                Counter::new(
                    "annotator_rate_budget_wait_seconds_total",
                    "Time calls waited for the quota budget (backpressure, not failure)",
                ),
            ),
            budget_fallback: gauge(
                &registry,
                "annotator_rate_budget_fallback",
                "1 while the group's budget in Redis is unreachable and this instance spends its fallback share of it",
            ),
            effective_rate: register(
                &registry,
                GaugeVec::new(
                    Opts::new(
                        "annotator_rate_effective",
                        "Calls per second this instance may spend now: project=\"all\" is the budget (or this instance's fallback share); other labels are capped projects and projects slowed after 429s",
                    ),
                    &["project"],
                ),
            ),
            cache_warn: Every::new(std::time::Duration::from_secs(30)),
            throttled: counter_vec(
                &registry,
                "annotator_throttled_total",
                "429 answers by project (configured projects by name, others as \"other\")",
                &["project"],
            ),
            end_to_end: register(
                &registry,
                HistogramVec::new(
                    HistogramOpts::new(
                        "annotator_event_latency_seconds",
                        "Time from the Kafka message timestamp to the event being finished",
                    )
                    .buckets(latency),
                    &["topic"],
                ),
            ),
            registry,
        };
        metrics.show_known_series();
        metrics
    }

    /// Every known label set of the labelled families, at zero from start, so a scrape before
    /// the first fault already has the series alerts and dashboards use.
    fn show_known_series(&self) {
        for cause in RetryCause::CALL {
            self.retries.with_label_values(&[cause.as_str()]);
        }
        for reason in DeadLetterReason::ALL {
            self.dead_letters.with_label_values(&[reason.as_str()]);
        }
        for class in ["2xx", "4xx", "5xx", "other", "error"] {
            self.requests.with_label_values(&[class]);
        }
        for result in ["inline", "hit", "waited", "unjoined"] {
            self.joins.with_label_values(&[result]);
        }
        self.throttled.with_label_values(&["other"]);
        for kind in ["assign", "revoke", "error"] {
            self.rebalances.with_label_values(&[kind]);
        }
    }

    /// The `topic` label sets of the consumed topics, at zero from start: `topic` is always
    /// the Kafka topic name, on every family.
    pub fn show_topics(&self, assessments: &str, outcomes: &[&str]) {
        for result in ["cached", "forgotten", "dead_lettered", "skipped", "dry_run"] {
            self.events.with_label_values(&[assessments, result]);
        }
        self.end_to_end.with_label_values(&[assessments]);
        for topic in outcomes {
            for result in [
                "annotated",
                "dead_lettered",
                "skipped",
                "dry_run",
                "duplicate",
            ] {
                self.events.with_label_values(&[topic, result]);
            }
            self.end_to_end.with_label_values(&[topic]);
        }
    }

    /// Prometheus text format.
    /// The last dead letters, newest first.
    pub fn recent_dead_letters(&self) -> Vec<RecentDeadLetter> {
        self.recent_dead_letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .iter()
            .rev()
            .cloned()
            .collect()
    }

    fn remember_dead_letter(&self, letter: RecentDeadLetter) {
        let mut recent = self
            .recent_dead_letters
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner);
        if recent.len() == RECENT_DEAD_LETTERS {
            recent.pop_front();
        }
        recent.push_back(letter);
    }

    pub fn render(&self) -> String {
        let mut buf = Vec::new();
        let encoder = TextEncoder::new();
        if let Err(e) = encoder.encode(&self.registry.gather(), &mut buf) {
            tracing::warn!(error = %e, "could not encode metrics");
        }
        String::from_utf8(buf).unwrap_or_default()
    }

    pub fn status_class(status: Option<u16>) -> &'static str {
        match status {
            Some(200..=299) => "2xx",
            Some(400..=499) => "4xx",
            Some(500..=599) => "5xx",
            Some(_) => "other",
            None => "error",
        }
    }
}

/// Installs the global subscriber: text or JSON, filter from `RUST_LOG` or `level`.
pub fn init_logging(format: LogFormat, level: &str) {
    use tracing_subscriber::EnvFilter;
    let filter = EnvFilter::try_from_default_env().unwrap_or_else(|_| EnvFilter::new(level));
    // Colours only on a terminal: a file or a pipe (a log shipper) gets plain text.
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_ansi(std::io::IsTerminal::is_terminal(&std::io::stderr()))
        .with_writer(std::io::stderr);
    let result = match format {
        LogFormat::Text => builder.try_init(),
        LogFormat::Json => builder.json().flatten_event(true).try_init(),
    };
    if result.is_err() {
        tracing::debug!("logging was already initialised");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_label_sets_are_exported_at_zero_from_start() {
        let metrics = Metrics::new();
        metrics.show_topics("assessments", &["logins", "registrations", "fraud-signals"]);
        let text = metrics.render();
        for series in [
            r#"annotator_retries_total{cause="rate_limited"} 0"#,
            r#"annotator_retries_total{cause="aborted"} 0"#,
            r#"annotator_dead_letters_total{reason="forbidden"} 0"#,
            r#"annotator_dead_letters_total{reason="unjoined"} 0"#,
            r#"annotator_events_total{result="annotated",topic="fraud-signals"} 0"#,
            r#"annotator_events_total{result="cached",topic="assessments"} 0"#,
            r#"annotator_annotate_requests_total{status_class="5xx"} 0"#,
            "annotator_halted_projects 0",
            "annotator_stalled_partitions 0",
        ] {
            assert!(text.contains(series), "{series} missing:\n{text}");
        }
    }
}
