//! Failure classes: what happens next to an event after something went wrong.
//!
//! Every part that can fail on an event's path says so with one [`Failure`]: planning
//! (a dead letter), the join (a dead letter, or a cache retry), the annotate client (retry,
//! dead letter or halt, from [`classify`]), the cache (retry) and the dead-letter
//! writer (retry). The event runner (`pipeline::event`) matches on the class in one place.
//! Adding a class touches this file and the part that produces it. [`google`] classifies the
//! annotate endpoint's answers.

mod google;

pub use self::google::{Answer, GoogleError, classify, is_json_object, parse_retry_after};

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
    /// 409 `ABORTED`: a concurrency conflict at Google, worth another try.
    Aborted,
    /// The endpoint could not be reached.
    Connection,
    /// The cache failed or could not be reached.
    Cache,
    /// The broker did not acknowledge a dead letter.
    DeadLetterWrite,
}

impl RetryCause {
    /// The causes of a failed annotate call: the `cause` label of `annotator_retries_total`.
    pub const CALL: [Self; 5] = [
        Self::RateLimited,
        Self::ServerError,
        Self::Timeout,
        Self::Aborted,
        Self::Connection,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::RateLimited => "rate_limited",
            Self::ServerError => "server_error",
            Self::Timeout => "timeout",
            Self::Aborted => "aborted",
            Self::Connection => "connection",
            Self::Cache => "cache",
            Self::DeadLetterWrite => "dead_letter_write",
        }
    }
}

/// What a halt stops.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum HaltScope {
    /// Every call: the credentials and the endpoint are the same for all of them.
    Service,
    /// The calls for the project of the refused event (403): the other projects flow.
    Project,
}

/// Sending stops until a probe is accepted.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Halt {
    pub scope: HaltScope,
    /// The HTTP status that said so; `None` when no call could be made (no credentials).
    pub status: Option<u16>,
    /// Why, for the log and `/readyz`.
    pub detail: String,
}

impl Halt {
    fn service(status: Option<u16>, detail: impl Into<String>) -> Failure {
        Failure::Halt(Self {
            scope: HaltScope::Service,
            status,
            detail: detail.into(),
        })
    }

    /// No credentials could be had (Google Application Default Credentials failed).
    pub fn no_credentials(detail: impl Into<String>) -> Failure {
        Self::service(None, detail)
    }
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
    /// 403 for this event while other events of its project went through, or its project
    /// refused every call for `delivery.forbidden_grace`.
    Forbidden,
}

impl DeadLetterReason {
    pub const ALL: [Self; 6] = [
        Self::Decode,
        Self::UnknownOutcome,
        Self::InvalidReference,
        Self::Unjoined,
        Self::Rejected,
        Self::Forbidden,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            Self::Decode => "decode",
            Self::UnknownOutcome => "unknown_outcome",
            Self::InvalidReference => "invalid_reference",
            Self::Unjoined => "unjoined",
            Self::Rejected => "rejected",
            Self::Forbidden => "forbidden",
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
    /// HTTP status, for `rejected` and `forbidden`.
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

/// An error and its causes, outermost first.
pub fn causes<'a>(
    err: &'a (dyn std::error::Error + 'static),
) -> impl Iterator<Item = &'a (dyn std::error::Error + 'static)> {
    std::iter::successors(Some(err), |e| e.source())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reasons_parse_from_their_header_values() {
        for reason in DeadLetterReason::ALL {
            assert_eq!(DeadLetterReason::parse(reason.as_str()), Some(reason));
        }
        assert_eq!(DeadLetterReason::parse("nope"), None);
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
