//! The JSON events producers write (SPEC section 2), decoded into checked types.

use serde::Deserialize;
use thiserror::Error;

use super::api::{Annotation, Reason, TransactionEvent, TransactionEventType, decode_base64_bytes};

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
    pub annotation: Option<Annotation>,
    pub reasons: Option<Vec<Reason>>,
}

/// Longest `event_id` accepted; it is logged and used as a dedup key.
const MAX_EVENT_ID: usize = 256;

fn check_time(field: &'static str, value: &Option<String>) -> Result<(), DecodeError> {
    if let Some(text) = value {
        chrono::DateTime::parse_from_rfc3339(text)
            .map_err(|_| invalid(field, "not an RFC 3339 timestamp"))?;
    }
    Ok(())
}

fn parse_enum<T: std::str::FromStr<Err = super::api::UnknownEnum>>(
    field: &'static str,
    text: &str,
) -> Result<T, DecodeError> {
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
        check_time("occurred_at", &raw.occurred_at)?;
        if let Some(hashed) = &raw.hashed_account_id {
            decode_base64_bytes(hashed)
                .ok_or_else(|| invalid("hashed_account_id", "not base64"))?;
        }
        let transaction = match raw.transaction {
            None => None,
            Some(t) => {
                check_time("transaction.event_time", &t.event_time)?;
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
                    event_time: t.event_time,
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
            occurred_at: raw.occurred_at,
            assessment: raw.assessment,
            recaptcha_token: raw.recaptcha_token,
            key: raw.key,
            account_id: raw.account_id,
            hashed_account_id: raw.hashed_account_id,
            transaction,
            annotation,
            reasons,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decodes_the_spec_example_and_ignores_unknown_fields() {
        let event = OutcomeEvent::decode(
            br#"{"event_id":"e-0001","outcome":"two_factor_passed","occurred_at":"2026-11-25T12:00:04Z",
                "key":"login-7f3a","account_id":"u-42","new_field":{"x":1},
                "transaction":{"event_type":"CHARGEBACK","reason":"6005","value":12.5,"event_time":"2026-11-25T12:00:00Z"},
                "annotation":"FRAUDULENT","reasons":["PAYMENT_HEURISTICS"]}"#,
        )
        .unwrap();
        assert_eq!(event.event_id, "e-0001");
        assert_eq!(event.annotation, Some(Annotation::Fraudulent));
        assert_eq!(event.reasons, Some(vec![Reason::PaymentHeuristics]));
        assert_eq!(
            event.transaction.unwrap().event_type,
            Some(TransactionEventType::Chargeback)
        );
    }

    #[test]
    fn bad_events_say_why() {
        assert_eq!(OutcomeEvent::decode(b""), Err(DecodeError::Empty));
        assert!(matches!(
            OutcomeEvent::decode(b"nope"),
            Err(DecodeError::Json(_))
        ));
        assert!(matches!(
            OutcomeEvent::decode(b"[1]"),
            Err(DecodeError::Json(_))
        ));
        assert_eq!(
            OutcomeEvent::decode(br#"{"outcome":"x"}"#),
            Err(DecodeError::Missing("event_id"))
        );
        assert_eq!(
            OutcomeEvent::decode(br#"{"event_id":"e"}"#),
            Err(DecodeError::Missing("outcome"))
        );
        assert!(matches!(
            OutcomeEvent::decode(br#"{"event_id":"e","outcome":"x","reasons":["NOPE"]}"#),
            Err(DecodeError::Invalid {
                field: "reasons",
                ..
            })
        ));
        assert!(matches!(
            OutcomeEvent::decode(br#"{"event_id":"e","outcome":"x","annotation":"legitimate"}"#),
            Err(DecodeError::Invalid {
                field: "annotation",
                ..
            })
        ));
        assert!(matches!(
            OutcomeEvent::decode(
                br#"{"event_id":"e","outcome":"x","transaction":{"event_type":"X"}}"#
            ),
            Err(DecodeError::Invalid {
                field: "transaction.event_type",
                ..
            })
        ));
    }

    #[test]
    fn json_errors_do_not_quote_the_payload() {
        let Err(DecodeError::Json(msg)) =
            OutcomeEvent::decode(br#"{"event_id": 42, "outcome":"secret-value"}"#)
        else {
            panic!("expected a json error");
        };
        assert!(!msg.contains("secret"), "{msg}");
    }
}
