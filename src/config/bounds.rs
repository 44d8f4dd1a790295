//! Bounds of every duration and count: beyond them the clock (`Instant + Duration`) or the
//! runtime's permits would overflow, some inside librdkafka's callbacks.

use std::time::Duration;

use super::Config;

/// The longest duration any setting takes: ten years. Longer ones would overflow the clock
/// (`Instant + Duration`), some inside librdkafka's callbacks.
const LONGEST: Duration = Duration::from_secs(10 * 365 * 24 * 3600);

/// The largest count any setting takes (in-flight calls, pending events, clients): far
/// beyond what one instance holds, far below the runtime's limit on permits.
const MOST: usize = 1 << 24;

impl Config {
    /// Every duration and count within what the clock and the runtime can hold.
    pub(super) fn check_bounds(&self, errors: &mut Vec<String>) {
        let d = &self.delivery;
        let durations = [
            ("kafka.commit_interval", self.kafka.commit_interval),
            ("recaptcha.request_timeout", self.recaptcha.request_timeout),
            ("cache.ttl", self.cache.ttl),
            ("cache.dedup_ttl", self.cache.dedup_ttl),
            ("delivery.join_grace", d.join_grace),
            ("delivery.join_retry", d.join_retry),
            ("delivery.retry_initial", d.retry_initial),
            ("delivery.retry_max", d.retry_max),
            ("delivery.halt_retry", d.halt_retry),
            ("delivery.forbidden_grace", d.forbidden_grace),
            ("delivery.rebalance_timeout", d.rebalance_timeout),
            ("delivery.shutdown_timeout", d.shutdown_timeout),
            ("admin.lag_interval", self.admin.lag_interval),
        ];
        for (key, value) in durations {
            if value > LONGEST {
                errors.push(format!("{key}: at most 3650d (ten years)"));
            }
        }
        let counts = [
            ("delivery.max_in_flight", d.max_in_flight, MOST),
            ("delivery.max_pending", d.max_pending, MOST),
            ("delivery.worker_threads", d.worker_threads, 1024),
            ("recaptcha.clients", self.recaptcha.clients, 1024),
            (
                "recaptcha.max_idle_connections",
                self.recaptcha.max_idle_connections,
                MOST,
            ),
        ];
        for (key, value, most) in counts {
            if value > most {
                errors.push(format!("{key}: at most {most}"));
            }
        }
    }
}
