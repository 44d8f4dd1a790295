//! Failure classes: what happens next to an event after something went wrong.
//!
//! Every part that can fail on an event's path says so with one [`Failure`]: planning
//! (a dead letter), the join (a dead letter, or a cache retry), the annotate client (retry,
//! dead letter or halt, from [`classify_status`]), the cache (retry) and the dead-letter
//! writer (retry). The event runner (`pipeline::event`) matches on the class in one place.
//! Adding a class touches this file and the part that produces it.

use std::time::Duration;

use rand::RngExt as _;

/// What happens next to an event after one failed step.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Failure {
    /// Try the step again after a delay; the event keeps its offset (the commit point).
    Retry(Retry),
    /// Set the event aside in the dead-letter topic, then release its offset.
    DeadLetter(DeadLetter),
    /// The service itself is misconfigured: stop sending, keep the commit point, probe.
    Halt(Halt),
}

impl Failure {
    /// A retry for `cause`, no sooner than `after` when the other side asked for that.
    pub fn retry(cause: RetryCause, after: Option<Duration>, detail: impl Into<String>) -> Self {
        Self::Retry(Retry {
            cause,
            after,
            detail: detail.into(),
        })
    }

    /// A dead letter with `reason` and a human-readable `detail`.
    pub fn dead_letter(reason: DeadLetterReason, detail: impl Into<String>) -> Self {
        Self::DeadLetter(DeadLetter::new(reason, detail))
    }
}

/// A step to try again.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Retry {
    pub cause: RetryCause,
    /// The other side's minimum wait (`Retry-After`).
    pub after: Option<Duration>,
    /// What failed, for the log; never carries secrets or account data.
    pub detail: String,
}

/// Why a step is retried.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum RetryCause {
    /// 429 from the endpoint.
    RateLimited,
    /// 5xx from the endpoint.
    ServerError,
    /// 408, or no answer within `recaptcha.request_timeout`.
    Timeout,
    /// The endpoint could not be reached.
    Connection,
    /// A 3xx: redirects are never followed.
    Redirect,
    /// Google credentials gave no token.
    Auth,
    /// The cache failed or could not be reached.
    Cache,
    /// The broker did not acknowledge a dead letter.
    DeadLetterWrite,
}

impl RetryCause {
    /// The causes of a failed annotate call: the `cause` label of `annotator_retries_total`.
    pub const CALL: [Self; 6] = [
        Self::RateLimited,
        Self::ServerError,
        Self::Timeout,
        Self::Connection,
        Self::Redirect,
        Self::Auth,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::Timeout => "timeout",
            Self::Connection => "connection",
            Self::Redirect => "redirect",
            Self::Auth => "auth",
            Self::Cache => "cache",
            Self::DeadLetterWrite => "dead_letter_write",
        }
    }
}

/// What a halt stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaltScope {
    /// Every call: the credentials (or the endpoint) are the same for all of them.
    Service,
}

/// Sending stops until a probe is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt {
    pub scope: HaltScope,
    /// The HTTP status that said so.
    pub status: u16,
    /// Google's error status and message.
    pub detail: String,
}

/// Why an event was set aside; the value of the `annotator.error` header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum DeadLetterReason {
    /// Not JSON, or a required field is missing or malformed.
    Decode,
    /// No rule for the outcome on its topic.
    UnknownOutcome,
    /// The assessment reference is malformed, outside the allow-list, or cached wrongly.
    InvalidReference,
    /// The correlation key did not reach the cache within `delivery.join_grace`.
    Unjoined,
    /// The endpoint refused this event (400, 404 ...).
    Rejected,
}

impl DeadLetterReason {
    pub const ALL: [Self; 5] = [
        Self::Decode,
        Self::UnknownOutcome,
        Self::InvalidReference,
        Self::Unjoined,
        Self::Rejected,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::UnknownOutcome => "unknown_outcome",
            Self::InvalidReference => "invalid_reference",
            Self::Unjoined => "unjoined",
            Self::Rejected => "rejected",
        }
    }

    /// The reason named `text` (as in the `annotator.error` header).
    pub fn parse(text: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|r| r.as_str() == text)
    }
}

/// One event to set aside.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DeadLetter {
    pub reason: DeadLetterReason,
    /// Human-readable; never carries secrets or account data.
    pub detail: String,
    /// HTTP status, for `rejected`.
    pub status: Option<u16>,
}

impl DeadLetter {
    pub fn new(reason: DeadLetterReason, detail: impl Into<String>) -> Self {
        Self {
            reason,
            detail: detail.into(),
            status: None,
        }
    }
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

/// Classifies an HTTP answer of the annotate endpoint. `error_reason` is
/// `error.details[].reason` from Google's error body when present (`API_KEY_INVALID` is a
/// 400 that means bad credentials).
pub fn classify_status(
    status: u16,
    retry_after: Option<Duration>,
    error_reason: Option<&str>,
    detail: String,
) -> Result<(), Failure> {
    let halt = |detail| {
        Failure::Halt(Halt {
            scope: HaltScope::Service,
            status,
            detail,
        })
    };
    let retry = |cause, after| Failure::retry(cause, after, format!("HTTP {status}"));
    match status {
        200..=299 => Ok(()),
        400 if error_reason == Some("API_KEY_INVALID") => Err(halt(detail)),
        401 | 403 => Err(halt(detail)),
        408 => Err(retry(RetryCause::Timeout, retry_after)),
        429 => Err(retry(RetryCause::RateLimited, retry_after)),
        500..=599 => Err(retry(RetryCause::ServerError, retry_after)),
        300..=399 => Err(retry(RetryCause::Redirect, None)),
        _ => Err(Failure::DeadLetter(DeadLetter {
            reason: DeadLetterReason::Rejected,
            detail,
            status: Some(status),
        })),
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

    fn cause(result: Result<(), Failure>) -> Option<RetryCause> {
        match result {
            Err(Failure::Retry(r)) => Some(r.cause),
            _ => None,
        }
    }

    #[test]
    fn classes_follow_the_spec() {
        let c = |s, r| classify_status(s, None, r, String::new());
        assert_eq!(c(200, None), Ok(()));
        for status in [400, 404] {
            assert!(matches!(
                c(status, None),
                Err(Failure::DeadLetter(DeadLetter {
                    reason: DeadLetterReason::Rejected,
                    status: Some(s),
                    ..
                })) if s == status
            ));
        }
        assert!(matches!(
            c(400, Some("API_KEY_INVALID")),
            Err(Failure::Halt(Halt { status: 400, .. }))
        ));
        assert!(matches!(c(401, None), Err(Failure::Halt(_))));
        assert!(matches!(c(403, None), Err(Failure::Halt(_))));
        assert_eq!(cause(c(429, None)), Some(RetryCause::RateLimited));
        for s in [500, 502, 503, 504] {
            assert_eq!(cause(c(s, None)), Some(RetryCause::ServerError));
        }
        assert_eq!(cause(c(302, None)), Some(RetryCause::Redirect));
    }

    #[test]
    fn reasons_parse_from_their_header_values() {
        for reason in DeadLetterReason::ALL {
            assert_eq!(DeadLetterReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(DeadLetterReason::parse("nope"), None);
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
