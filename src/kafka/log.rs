//! What librdkafka says, said once per service: every client of the service shares one
//! [`KafkaLog`], so an unreachable broker is one line, not one per client and attempt.

use std::time::Duration;

use rdkafka::consumer::BaseConsumer;
use rdkafka::error::KafkaError;
use rdkafka::types::RDKafkaErrorCode;

/// How often a broker that stays unreachable is reported again.
pub const REPORT_EVERY: Duration = Duration::from_secs(30);

/// What librdkafka says about the brokers, said once per service: every client shares one
/// `KafkaLog`, so an unreachable broker is one WARN line naming the address, repeated at
/// most every [`REPORT_EVERY`] with a count, and one INFO line when it answers again; the
/// end of a partition is not an error.
pub struct KafkaLog {
    brokers: String,
    state: std::sync::Mutex<BrokerState>,
    down: std::sync::atomic::AtomicBool,
    /// What librdkafka last said about a failed connection, with a hint where one helps.
    last_failure: std::sync::Mutex<Option<String>>,
    /// The service's readiness, told when every broker is down and when one answers again.
    health: Option<std::sync::Arc<crate::health::Health>>,
}

struct BrokerState {
    since: Option<std::time::Instant>,
    reported: std::time::Instant,
    unreported: u64,
}

impl KafkaLog {
    pub fn new(brokers: &str) -> Self {
        Self {
            brokers: brokers.to_owned(),
            state: std::sync::Mutex::new(BrokerState {
                since: None,
                reported: std::time::Instant::now(),
                unreported: 0,
            }),
            down: std::sync::atomic::AtomicBool::new(false),
            last_failure: std::sync::Mutex::new(None),
            health: None,
        }
    }

    /// The service's log: `/readyz` also says when every broker is down.
    pub fn with_health(brokers: &str, health: std::sync::Arc<crate::health::Health>) -> Self {
        Self {
            health: Some(health),
            ..Self::new(brokers)
        }
    }

    /// Why the last connection failed, as librdkafka said it, with a hint for TLS and SASL.
    pub fn last_failure(&self) -> Option<String> {
        self.last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
            .clone()
    }

    fn state(&self) -> std::sync::MutexGuard<'_, BrokerState> {
        self.state
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner)
    }

    /// A connection failure or all brokers down.
    fn unreachable(&self, error: &str) {
        let error = with_hint(error);
        let error = error.as_str();
        *self
            .last_failure
            .lock()
            .unwrap_or_else(std::sync::PoisonError::into_inner) = Some(error.to_owned());
        let mut state = self.state();
        match state.since {
            None => {
                state.since = Some(std::time::Instant::now());
                state.reported = std::time::Instant::now();
                state.unreported = 0;
                self.down.store(true, std::sync::atomic::Ordering::Release);
                tracing::warn!(brokers = %self.brokers, error = %error, "Kafka broker unreachable; retrying (reported again at most every 30 s)");
            }
            Some(since) => {
                state.unreported += 1;
                if state.reported.elapsed() >= REPORT_EVERY {
                    tracing::warn!(brokers = %self.brokers, error = %error, down_s = since.elapsed().as_secs(), errors = state.unreported, "Kafka broker still unreachable; retrying");
                    state.reported = std::time::Instant::now();
                    state.unreported = 0;
                }
            }
        }
    }

    /// Something went through (a message, an assignment, a query answered).
    pub fn reachable(&self) {
        if !self.down.load(std::sync::atomic::Ordering::Acquire) {
            return;
        }
        let mut state = self.state();
        if let Some(since) = state.since.take() {
            self.down.store(false, std::sync::atomic::Ordering::Release);
            if let Some(health) = &self.health {
                health.set_brokers_down(None);
            }
            tracing::info!(brokers = %self.brokers, down_s = since.elapsed().as_secs(), "Kafka broker reachable again");
        }
    }

    /// An error the consumer's poll returned.
    pub fn consumer_error(&self, error: &KafkaError) {
        self.error(error, &error.to_string());
    }

    /// librdkafka's client-wide error callback.
    pub fn error(&self, error: &KafkaError, reason: &str) {
        match error.rdkafka_error_code() {
            _ if matches!(error, KafkaError::PartitionEOF(_)) => {
                tracing::debug!(%reason, "end of partition");
            }
            Some(RDKafkaErrorCode::AllBrokersDown) => {
                self.unreachable(reason);
                // One broker of several down is routine (its partitions move); all of them is
                // an instance that cannot work, which readiness says.
                if let Some(health) = &self.health {
                    health.set_brokers_down(Some(with_hint(reason)));
                }
            }
            Some(
                RDKafkaErrorCode::BrokerTransportFailure
                | RDKafkaErrorCode::Resolve
                | RDKafkaErrorCode::BrokerNotAvailable,
            ) => self.unreachable(reason),
            _ => tracing::warn!(error = %error, %reason, "Kafka client error"),
        }
    }

    /// librdkafka's own log lines: connection failures go through [`Self::unreachable`];
    /// the rest keeps its level (notices as debug: they are routine).
    pub fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        use rdkafka::config::RDKafkaLogLevel as L;
        let connection = fac == "FAIL"
            || message.contains("Connect to")
            || message.contains("Connection refused")
            || message.contains("brokers are down")
            || message.contains("SSL handshake failed")
            || message.contains("Authentication failed");
        match level {
            L::Emerg | L::Alert | L::Critical | L::Error | L::Warning if connection => {
                self.unreachable(message);
            }
            L::Emerg | L::Alert | L::Critical | L::Error => {
                tracing::error!(target: "librdkafka", facility = fac, "{message}");
            }
            L::Warning => tracing::warn!(target: "librdkafka", facility = fac, "{message}"),
            L::Notice | L::Info => {
                tracing::debug!(target: "librdkafka", facility = fac, "{message}");
            }
            L::Debug => tracing::trace!(target: "librdkafka", facility = fac, "{message}"),
        }
    }
}

/// librdkafka's reason, and which setting to look at when the cause is TLS or SASL.
fn with_hint(error: &str) -> String {
    let hint = if error.contains("certificate verify failed") {
        Some(
            "the broker's certificate is not trusted: set kafka.properties \"ssl.ca.location\" to the CA that signed it (server verification stays on)",
        )
    } else if error.contains("SSL handshake failed") || error.contains("wrong version number") {
        Some(
            "TLS failed: does the broker speak TLS on this port, and does kafka.properties \"security.protocol\" match it?",
        )
    } else if error.contains("Authentication failed") || error.contains("SASL authentication error")
    {
        Some(
            "the broker refused the SASL credentials: check kafka.properties \"sasl.mechanism\", \"sasl.username\" and \"sasl.password\"",
        )
    } else {
        None
    };
    match hint {
        Some(hint) => format!("{error} ({hint})"),
        None => error.to_owned(),
    }
}

/// The context of the service's plain clients (watermarks, dead-letter producer, replay
/// reader): their librdkafka lines go through the shared [`KafkaLog`].
#[derive(Clone)]
pub struct LogContext(pub std::sync::Arc<KafkaLog>);

impl LogContext {
    pub fn new(brokers: &str) -> Self {
        Self(std::sync::Arc::new(KafkaLog::new(brokers)))
    }

    /// The service's context: `/readyz` says when every broker is down.
    pub fn with_health(brokers: &str, health: std::sync::Arc<crate::health::Health>) -> Self {
        Self(std::sync::Arc::new(KafkaLog::with_health(brokers, health)))
    }
}

impl rdkafka::ClientContext for LogContext {
    fn log(&self, level: rdkafka::config::RDKafkaLogLevel, fac: &str, message: &str) {
        self.0.log(level, fac, message);
    }

    fn error(&self, error: KafkaError, reason: &str) {
        self.0.error(&error, reason);
    }
}

impl rdkafka::consumer::ConsumerContext for LogContext {}

/// A plain consumer of the service (watermarks, metadata, the group's commits).
pub type Reader = BaseConsumer<LogContext>;
