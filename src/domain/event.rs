//! The JSON events producers write (SPEC section 2), decoded into checked types.

use serde::Deserialize;
use thiserror::Error;

use super::api::{
    Annotation, PhoneAuthenticationEvent, Reason, TransactionEvent, TransactionEventType,
    decode_base64_bytes,
};

/// Why a message could not be decoded into an event.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
pub enum DecodeError {
    #[error("value is empty")]
    Empty,
    #[error("value is not a JSON object: {0}")]
    Json(String),
    #[error("required field {0} is missing")]
    Missing(&'static str),
    #[error("field {field} is invalid: {detail}")]
    Invalid { field: &'static str, detail: String },
}

/// Shortens serde's message (it can quote event data) to something safe and bounded.
fn json_error(err: &serde_json::Error) -> DecodeError {
    let kind = match err.classify() {
        serde_json::error::Category::Io => "read error",
        serde_json::error::Category::Syntax => "syntax error",
        serde_json::error::Category::Data => "wrong type",
        serde_json::error::Category::Eof => "truncated",
    };
    DecodeError::Json(format!(
        "{kind} at line {} column {}",
        err.line(),
        err.column()
    ))
}

fn invalid(field: &'static str, detail: impl Into<String>) -> DecodeError {
    DecodeError::Invalid {
        field,
        detail: detail.into(),
    }
}

/// An `assessments` topic event: `key -> assessment` for the cache.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AssessmentEvent {
    /// The correlation key (the `key` field, else the Kafka message key).
    pub key: Option<String>,
    pub assessment: String,
}

#[derive(Deserialize)]
struct RawAssessmentEvent {
    key: Option<String>,
    assessment: Option<String>,
}

impl AssessmentEvent {
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.is_empty() {
            return Err(DecodeError::Empty);
        }
        let raw: RawAssessmentEvent =
            serde_json::from_slice(payload).map_err(|e| json_error(&e))?;
        Ok(Self {
            key: raw.key,
            assessment: raw.assessment.ok_or(DecodeError::Missing("assessment"))?,
        })
    }
}

/// The `transaction` object of an outcome event, in the producer's snake_case.
#[derive(Deserialize)]
struct RawTransaction {
    event_type: Option<String>,
    reason: Option<String>,
    value: Option<f64>,
    event_time: Option<String>,
}

/// The `phone_authentication` object of an outcome event.
#[derive(Deserialize)]
struct RawPhone {
    phone_number: Option<String>,
    event_time: Option<String>,
}

#[derive(Deserialize)]
struct RawOutcomeEvent {
    event_id: Option<String>,
    outcome: Option<String>,
    occurred_at: Option<String>,
    assessment: Option<String>,
    recaptcha_token: Option<String>,
    key: Option<String>,
    account_id: Option<String>,
    hashed_account_id: Option<String>,
    transaction: Option<RawTransaction>,
    phone_authentication: Option<RawPhone>,
    annotation: Option<String>,
    reasons: Option<Vec<String>>,
}

/// An outcome event (`logins`, `registrations`, `fraud-signals`), checked but not yet resolved.
#[derive(Debug, Clone, PartialEq)]
pub struct OutcomeEvent {
    pub event_id: String,
    pub outcome: String,
    pub occurred_at: Option<String>,
    pub assessment: Option<String>,
    pub recaptcha_token: Option<String>,
    pub key: Option<String>,
    pub account_id: Option<String>,
    pub hashed_account_id: Option<String>,
    pub transaction: Option<TransactionEvent>,
    pub phone_authentication: Option<PhoneAuthenticationEvent>,
    pub annotation: Option<Annotation>,
    pub reasons: Option<Vec<Reason>>,
}

/// Longest `event_id` accepted; it is logged and used as a dedup key.
const MAX_EVENT_ID: usize = 256;

/// A timestamp in Google's form: RFC 3339, parsed strictly (`T` between date and time, `Z`
/// or a `+hh:mm` offset, at most 9 fraction digits; `t` and `z` are read as `T` and `Z`).
/// Anything looser Google would refuse, so it is a decode error here.
pub fn google_time(field: &'static str, text: &str) -> Result<String, DecodeError> {
    let bad = || invalid(field, "not an RFC 3339 timestamp (2026-11-25T12:00:00Z)");
    let b = text.as_bytes();
    let digits = |range: std::ops::Range<usize>| {
        b.get(range)
            .is_some_and(|d| d.iter().all(u8::is_ascii_digit))
    };
    let shape = b.len() >= 20
        && digits(0..4)
        && b[4] == b'-'
        && digits(5..7)
        && b[7] == b'-'
        && digits(8..10)
        && matches!(b[10], b'T' | b't')
        && digits(11..13)
        && b[13] == b':'
        && digits(14..16)
        && b[16] == b':'
        && digits(17..19);
    if !shape {
        return Err(bad());
    }
    let mut rest = &b[19..];
    if let Some(fraction) = rest.strip_prefix(b".") {
        let n = fraction.iter().take_while(|c| c.is_ascii_digit()).count();
        if n == 0 || n > 9 {
            return Err(invalid(
                field,
                "fraction of a second must have 1 to 9 digits",
            ));
        }
        rest = &fraction[n..];
    }
    let zone_ok = matches!(rest, [b'Z' | b'z'])
        || (rest.len() == 6
            && matches!(rest[0], b'+' | b'-')
            && rest[1..3].iter().all(u8::is_ascii_digit)
            && rest[3] == b':'
            && rest[4..6].iter().all(u8::is_ascii_digit));
    if !zone_ok {
        return Err(bad());
    }
    let normal = text.replace('t', "T").replace('z', "Z");
    // The calendar and clock ranges (month 13, hour 25, leap-year days).
    chrono::DateTime::parse_from_rfc3339(&normal).map_err(|_| bad())?;
    Ok(normal)
}

fn check_time(field: &'static str, value: Option<String>) -> Result<Option<String>, DecodeError> {
    value.map(|text| google_time(field, &text)).transpose()
}

/// E.164: `+`, a country code that does not start with 0, at most 15 digits in all.
fn is_e164(number: &str) -> bool {
    number.strip_prefix('+').is_some_and(|d| {
        (2..=15).contains(&d.len()) && !d.starts_with('0') && d.bytes().all(|c| c.is_ascii_digit())
    })
}

fn parse_enum<T: std::str::FromStr<Err = super::api::UnknownEnum>>(
    field: &'static str,
    text: &str,
) -> Result<T, DecodeError> {
    // `*_UNSPECIFIED` is the proto's "no value": sending it is a mistake, never a choice.
    if text.ends_with("_UNSPECIFIED") {
        return Err(invalid(field, format!("{text} is not a value to send")));
    }
    text.parse()
        .map_err(|e: super::api::UnknownEnum| invalid(field, e.to_string()))
}

impl OutcomeEvent {
    pub fn decode(payload: &[u8]) -> Result<Self, DecodeError> {
        if payload.is_empty() {
            return Err(DecodeError::Empty);
        }
        let raw: RawOutcomeEvent = serde_json::from_slice(payload).map_err(|e| json_error(&e))?;
        let event_id = raw.event_id.ok_or(DecodeError::Missing("event_id"))?;
        if event_id.is_empty()
            || event_id.len() > MAX_EVENT_ID
            || event_id.chars().any(char::is_control)
        {
            return Err(invalid(
                "event_id",
                "empty, too long or has control characters",
            ));
        }
        let outcome = raw.outcome.ok_or(DecodeError::Missing("outcome"))?;
        let occurred_at = check_time("occurred_at", raw.occurred_at)?;
        if let Some(hashed) = &raw.hashed_account_id {
            decode_base64_bytes(hashed)
                .ok_or_else(|| invalid("hashed_account_id", "not base64"))?;
        }
        let transaction = match raw.transaction {
            None => None,
            Some(t) => {
                let event_time = check_time("transaction.event_time", t.event_time)?;
                let event_type = t
                    .event_type
                    .as_deref()
                    .map(|text| parse_enum::<TransactionEventType>("transaction.event_type", text))
                    .transpose()?;
                if t.value.is_some_and(|v| !v.is_finite()) {
                    return Err(invalid("transaction.value", "not a finite number"));
                }
                Some(TransactionEvent {
                    event_type,
                    reason: t.reason,
                    value: t.value,
                    event_time,
                })
            }
        };
        let phone_authentication = match raw.phone_authentication {
            None => None,
            Some(p) => {
                let phone_number = p
                    .phone_number
                    .ok_or(DecodeError::Missing("phone_authentication.phone_number"))?;
                if !is_e164(&phone_number) {
                    return Err(invalid(
                        "phone_authentication.phone_number",
                        "not an E.164 number (+15555550100)",
                    ));
                }
                Some(PhoneAuthenticationEvent {
                    phone_number,
                    event_time: check_time("phone_authentication.event_time", p.event_time)?,
                })
            }
        };
        let annotation = raw
            .annotation
            .as_deref()
            .map(|text| parse_enum::<Annotation>("annotation", text))
            .transpose()?;
        let reasons = raw
            .reasons
            .map(|list| {
                list.iter()
                    .map(|text| parse_enum::<Reason>("reasons", text))
                    .collect::<Result<Vec<_>, _>>()
            })
            .transpose()?;
        Ok(Self {
            event_id,
            outcome,
            occurred_at,
            assessment: raw.assessment,
            recaptcha_token: raw.recaptcha_token,
            key: raw.key,
            account_id: raw.account_id,
            hashed_account_id: raw.hashed_account_id,
            transaction,
            phone_authentication,
            annotation,
            reasons,
        })
    }
}

#[cfg(test)]
#[path = "event_tests.rs"]
mod tests;
