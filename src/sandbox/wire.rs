//! The annotate request body as Google's side decodes it under proto3 JSON rules: enum names
//! or numbers, camelCase or snake_case fields, `null` as the default; anything else is
//! Google's 400 `INVALID_ARGUMENT`. Only the sandbox reads requests.

use serde_json::{Map, Value};
use thiserror::Error;

use crate::domain::api::{
    AnnotateRequest, Annotation, PhoneAuthenticationEvent, Reason, TransactionEvent,
    TransactionEventType, decode_base64_bytes,
};

/// Why a request body does not conform to the discovery document.
#[derive(Debug, Clone, PartialEq, Error)]
pub enum WireError {
    #[error("invalid JSON payload: {0}")]
    Json(String),
    #[error("invalid JSON payload received. Unknown name {0:?}: cannot find field")]
    UnknownField(String),
    #[error("invalid value at {field:?}: {detail}")]
    Value { field: String, detail: String },
}

fn wire_value_error(field: &str, detail: impl Into<String>) -> WireError {
    WireError::Value {
        field: field.to_owned(),
        detail: detail.into(),
    }
}

/// Maps a camelCase or snake_case field name to its canonical camelCase form.
fn canonical<'a>(name: &str, fields: &[(&'a str, &'a str)]) -> Option<&'a str> {
    fields
        .iter()
        .find(|(camel, snake)| name == *camel || name == *snake)
        .map(|(camel, _)| *camel)
}

fn wire_enum<T>(
    field: &str,
    value: &Value,
    by_name: fn(&str) -> Option<T>,
    by_number: fn(i64) -> Option<T>,
) -> Result<Option<T>, WireError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => by_name(s)
            .map(Some)
            .ok_or_else(|| wire_value_error(field, format!("unknown enum value {s:?}"))),
        Value::Number(n) => n
            .as_i64()
            .and_then(by_number)
            .map(Some)
            .ok_or_else(|| wire_value_error(field, format!("unknown enum number {n}"))),
        _ => Err(wire_value_error(field, "expected an enum name or number")),
    }
}

fn wire_string(field: &str, value: &Value) -> Result<Option<String>, WireError> {
    match value {
        Value::Null => Ok(None),
        Value::String(s) => Ok(Some(s.clone())),
        _ => Err(wire_value_error(field, "expected a string")),
    }
}

/// A `google.protobuf.Timestamp` as Google parses it: RFC 3339 with an upper-case `T`, `Z`
/// or an offset, at most 9 fraction digits.
fn wire_time(field: &str, value: &Value) -> Result<Option<String>, WireError> {
    let text = wire_string(field, value)?;
    if let Some(t) = &text {
        let strict =
            crate::domain::event::google_time("eventTime", t).is_ok_and(|normal| normal == *t);
        if !strict {
            return Err(wire_value_error(
                field,
                "not an RFC 3339 timestamp in Google's form",
            ));
        }
    }
    Ok(text)
}

fn wire_object<'v>(
    field: &str,
    value: &'v Value,
) -> Result<Option<&'v Map<String, Value>>, WireError> {
    match value {
        Value::Null => Ok(None),
        Value::Object(map) => Ok(Some(map)),
        _ => Err(wire_value_error(field, "expected an object")),
    }
}

fn wire_transaction(map: &Map<String, Value>) -> Result<TransactionEvent, WireError> {
    const FIELDS: &[(&str, &str)] = &[
        ("eventType", "event_type"),
        ("reason", "reason"),
        ("value", "value"),
        ("eventTime", "event_time"),
    ];
    let mut event = TransactionEvent {
        event_type: None,
        reason: None,
        value: None,
        event_time: None,
    };
    for (name, value) in map {
        match canonical(name, FIELDS) {
            Some("eventType") => {
                event.event_type = wire_enum(
                    "transaction_event.event_type",
                    value,
                    TransactionEventType::from_name,
                    TransactionEventType::from_number,
                )?
            }
            Some("reason") => event.reason = wire_string("transaction_event.reason", value)?,
            Some("value") => {
                event.value = match value {
                    Value::Null => None,
                    Value::Number(n) => n.as_f64(),
                    Value::String(s) if matches!(s.as_str(), "NaN" | "Infinity" | "-Infinity") => {
                        s.parse().ok()
                    }
                    _ => {
                        return Err(wire_value_error(
                            "transaction_event.value",
                            "expected a number",
                        ));
                    }
                }
            }
            Some("eventTime") => {
                event.event_time = wire_time("transaction_event.event_time", value)?
            }
            _ => return Err(WireError::UnknownField(format!("transaction_event.{name}"))),
        }
    }
    Ok(event)
}

fn wire_phone(map: &Map<String, Value>) -> Result<PhoneAuthenticationEvent, WireError> {
    const FIELDS: &[(&str, &str)] = &[("phoneNumber", "phone_number"), ("eventTime", "event_time")];
    let mut phone = None;
    let mut time = None;
    for (name, value) in map {
        match canonical(name, FIELDS) {
            Some("phoneNumber") => {
                phone = wire_string("phone_authentication_event.phone_number", value)?
            }
            Some("eventTime") => time = wire_time("phone_authentication_event.event_time", value)?,
            _ => {
                return Err(WireError::UnknownField(format!(
                    "phone_authentication_event.{name}"
                )));
            }
        }
    }
    let phone_number = phone.ok_or_else(|| {
        wire_value_error(
            "phone_authentication_event.phone_number",
            "required field is missing",
        )
    })?;
    let e164 = phone_number.strip_prefix('+').is_some_and(|digits| {
        (1..=15).contains(&digits.len()) && digits.bytes().all(|b| b.is_ascii_digit())
    });
    if !e164 {
        return Err(wire_value_error(
            "phone_authentication_event.phone_number",
            "not an E.164 number",
        ));
    }
    Ok(PhoneAuthenticationEvent {
        phone_number,
        event_time: time,
    })
}

/// Decodes a request body the way Google's side does under proto3 JSON rules.
pub fn decode_wire_request(body: &[u8]) -> Result<AnnotateRequest, WireError> {
    const FIELDS: &[(&str, &str)] = &[
        ("annotation", "annotation"),
        ("reasons", "reasons"),
        ("accountId", "account_id"),
        ("hashedAccountId", "hashed_account_id"),
        ("transactionEvent", "transaction_event"),
        ("phoneAuthenticationEvent", "phone_authentication_event"),
    ];
    let value: Value = serde_json::from_slice(body).map_err(|e| WireError::Json(e.to_string()))?;
    let Value::Object(map) = value else {
        return Err(WireError::Json("expected a JSON object".into()));
    };
    let mut req = AnnotateRequest::default();
    for (name, value) in &map {
        match canonical(name, FIELDS) {
            Some("annotation") => {
                req.annotation = wire_enum(
                    "annotation",
                    value,
                    Annotation::from_name,
                    Annotation::from_number,
                )?
            }
            Some("reasons") => match value {
                Value::Null => {}
                Value::Array(items) => {
                    for item in items {
                        let reason =
                            wire_enum("reasons", item, Reason::from_name, Reason::from_number)?
                                .ok_or_else(|| {
                                    wire_value_error("reasons", "null in a repeated field")
                                })?;
                        req.reasons.push(reason);
                    }
                }
                _ => return Err(wire_value_error("reasons", "expected an array")),
            },
            Some("accountId") => req.account_id = wire_string("account_id", value)?,
            Some("hashedAccountId") => {
                req.hashed_account_id = wire_string("hashed_account_id", value)?;
                if let Some(text) = &req.hashed_account_id {
                    decode_base64_bytes(text)
                        .ok_or_else(|| wire_value_error("hashed_account_id", "not base64"))?;
                }
            }
            Some("transactionEvent") => {
                req.transaction_event = wire_object("transaction_event", value)?
                    .map(wire_transaction)
                    .transpose()?
            }
            Some("phoneAuthenticationEvent") => {
                req.phone_authentication_event = wire_object("phone_authentication_event", value)?
                    .map(wire_phone)
                    .transpose()?
            }
            _ => return Err(WireError::UnknownField(name.clone())),
        }
    }
    Ok(req)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn wire_accepts_numbers_and_snake_case() {
        let a = decode_wire_request(br#"{"reasons":[8,2],"annotation":2,"account_id":"u","transactionEvent":{"event_type":12,"eventTime":"2026-11-25T10:00:00.000Z"}}"#).unwrap();
        assert_eq!(a.annotation, Some(Annotation::Fraudulent));
        assert_eq!(
            a.reasons,
            vec![Reason::ChargebackFraud, Reason::PaymentHeuristics]
        );
        assert_eq!(
            a.transaction_event.unwrap().event_type,
            Some(TransactionEventType::Chargeback)
        );
        assert_eq!(
            decode_wire_request(b"{}").unwrap(),
            AnnotateRequest::default()
        );
        assert_eq!(
            decode_wire_request(br#"{"annotation":null}"#).unwrap(),
            AnnotateRequest::default()
        );
    }

    #[test]
    fn wire_rejects_malformed_bodies() {
        for body in [
            &br#"{"annotation":"MAYBE"}"#[..],
            br#"{"annotation":7}"#,
            br#"{"reasons":["CHARGEBACK","NOPE"]}"#,
            br#"{"reasons":"CHARGEBACK"}"#,
            br#"{"accountID":"x"}"#,
            br#"{"transactionEvent":{"eventType":"CHARGEBACK","amount":1}}"#,
            br#"{"transactionEvent":{"eventTime":"yesterday"}}"#,
            br#"{"transactionEvent":{"eventTime":"2026-11-25t10:00:00z"}}"#,
            br#"{"transactionEvent":{"eventTime":"2026-11-25T10:00:00.1234567890Z"}}"#,
            br#"{"phoneAuthenticationEvent":{"eventTime":"2026-11-25T10:00:00Z"}}"#,
            br#"{"phoneAuthenticationEvent":{"phoneNumber":"555"}}"#,
            br#"{"hashedAccountId":"***"}"#,
            br#"[]"#,
            b"not json",
        ] {
            assert!(
                decode_wire_request(body).is_err(),
                "{} accepted",
                String::from_utf8_lossy(body)
            );
        }
    }
}
