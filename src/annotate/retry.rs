//! Failure classes: every response or transport error is classified once, here.

use std::time::Duration;

use rand::RngExt as _;

/// Why a call is retried (a metric label).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    RateLimited,
    ServerError,
    Timeout,
    Connection,
    Redirect,
    Auth,
}

impl RetryCause {
    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Redirect => "redirect",
            Self::Auth => "auth",
        }
    }
}

/// What happens next to an event after one call.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Delivery {
    /// 2xx: done, commit.
    Accepted,
    /// Try again after backoff (no sooner than `after`); keep the commit point.
    Retry {
        cause: RetryCause,
        after: Option<Duration>,
    },
    /// This event is refused (400, 404 ...): dead-letter it as `rejected`, then commit.
    Reject { status: u16, detail: String },
    /// The service itself is misconfigured (401, 403, invalid API key): stop sending.
    Halt { status: u16, detail: String },
}

/// Longest `Retry-After` honoured; a larger value is capped (the event is never dropped).
const MAX_RETRY_AFTER: Duration = Duration::from_secs(300);

/// Parses `Retry-After` as delta-seconds or an HTTP date.
pub fn parse_retry_after(value: &str) -> Option<Duration> {
    let value = value.trim();
    if let Ok(secs) = value.parse::<u64>() {
        return Some(Duration::from_secs(secs).min(MAX_RETRY_AFTER));
    }
    let when = chrono::DateTime::parse_from_rfc2822(value).ok()?;
    let delta = when
        .signed_duration_since(chrono::Utc::now())
        .to_std()
        .unwrap_or_default();
    Some(delta.min(MAX_RETRY_AFTER))
}

/// Classifies an HTTP answer. `error_reason` is `error.details[].reason` from Google's error
/// body when present (`API_KEY_INVALID` is a 400 that means bad credentials).
pub fn classify_status(
    status: u16,
    retry_after: Option<Duration>,
    error_reason: Option<&str>,
    detail: String,
) -> Delivery {
    match status {
        200..=299 => Delivery::Accepted,
        400 if error_reason == Some("API_KEY_INVALID") => Delivery::Halt { status, detail },
        401 | 403 => Delivery::Halt { status, detail },
        408 => Delivery::Retry {
            cause: RetryCause::Timeout,
            after: retry_after,
        },
        429 => Delivery::Retry {
            cause: RetryCause::RateLimited,
            after: retry_after,
        },
        500..=599 => Delivery::Retry {
            cause: RetryCause::ServerError,
            after: retry_after,
        },
        300..=399 => Delivery::Retry {
            cause: RetryCause::Redirect,
            after: None,
        },
        _ => Delivery::Reject { status, detail },
    }
}

/// Exponential backoff with full jitter: attempt n waits uniformly in
/// `[0, min(cap, initial * 2^n)]`, and never less than the server's `Retry-After`.
#[derive(Debug, Clone)]
pub struct Backoff {
    initial: Duration,
    cap: Duration,
    attempt: u32,
}

impl Backoff {
    pub fn new(initial: Duration, cap: Duration) -> Self {
        Self {
            initial,
            cap,
            attempt: 0,
        }
    }

    pub fn attempts(&self) -> u32 {
        self.attempt
    }

    /// The ceiling of the next delay, before jitter.
    pub fn ceiling(&self) -> Duration {
        let factor = 1u32.checked_shl(self.attempt.min(20)).unwrap_or(u32::MAX);
        self.initial.saturating_mul(factor).min(self.cap)
    }

    /// The next delay, honouring the server's minimum.
    pub fn next_delay(&mut self, at_least: Option<Duration>) -> Duration {
        let ceiling = self.ceiling();
        self.attempt = self.attempt.saturating_add(1);
        let jittered = rand::rng().random_range(Duration::ZERO..=ceiling);
        at_least.map_or(jittered, |min| jittered.max(min))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn classes_follow_the_spec() {
        let c = |s, r| classify_status(s, None, r, String::new());
        assert_eq!(c(200, None), Delivery::Accepted);
        assert!(matches!(c(400, None), Delivery::Reject { status: 400, .. }));
        assert!(matches!(c(404, None), Delivery::Reject { status: 404, .. }));
        assert!(matches!(
            c(400, Some("API_KEY_INVALID")),
            Delivery::Halt { status: 400, .. }
        ));
        assert!(matches!(c(401, None), Delivery::Halt { .. }));
        assert!(matches!(c(403, None), Delivery::Halt { .. }));
        assert!(matches!(
            c(429, None),
            Delivery::Retry {
                cause: RetryCause::RateLimited,
                ..
            }
        ));
        for s in [500, 502, 503, 504] {
            assert!(matches!(
                c(s, None),
                Delivery::Retry {
                    cause: RetryCause::ServerError,
                    ..
                }
            ));
        }
        assert!(matches!(c(302, None), Delivery::Retry { .. }));
    }

    #[test]
    fn retry_after_forms() {
        assert_eq!(parse_retry_after("2"), Some(Duration::from_secs(2)));
        assert_eq!(parse_retry_after("100000"), Some(MAX_RETRY_AFTER));
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:00 GMT"),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon"), None);
    }

    #[test]
    fn backoff_grows_caps_and_honours_the_server() {
        let mut b = Backoff::new(Duration::from_secs(1), Duration::from_secs(32));
        for n in 0..10 {
            let ceiling = b.ceiling();
            assert_eq!(ceiling, Duration::from_secs(1u64 << n.min(5)));
            assert!(b.next_delay(None) <= ceiling);
        }
        assert!(b.next_delay(Some(Duration::from_secs(40))) >= Duration::from_secs(40));
    }
}
