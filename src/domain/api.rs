//! The `assessments.annotate` request body as the v1 discovery document defines it, and the
//! enums it carries, with their proto numbers.
//!
//! The service sends enum names and camelCase fields (what the discovery-based client sends).
//! [`decode_wire_request`] accepts everything Google's side accepts under proto3 JSON rules
//! (names or numbers, camelCase or snake_case, `null` as default) and is what the sandbox uses.

use std::fmt;

use serde::Serialize;
use serde_json::{Map, Value};
use thiserror::Error;

macro_rules! api_enum {
    ($(#[$meta:meta])* $name:ident { $($variant:ident = $num:literal => $text:literal),+ $(,)? }) => {
        $(#[$meta])*
        #[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Serialize)]
        pub enum $name {
            $(#[serde(rename = $text)] $variant,)+
        }

        impl $name {
            /// Every value, in proto order of declaration.
            pub const ALL: &'static [$name] = &[$($name::$variant,)+];

            /// The enum name as the API spells it.
            pub fn as_str(self) -> &'static str {
                match self { $($name::$variant => $text,)+ }
            }

            /// The proto number.
            pub fn number(self) -> i64 {
                match self { $($name::$variant => $num,)+ }
            }

            /// Parses the API name (exact, upper case).
            pub fn from_name(text: &str) -> Option<Self> {
                match text { $($text => Some($name::$variant),)+ _ => None }
            }

            pub fn from_number(num: i64) -> Option<Self> {
                match num { $($num => Some($name::$variant),)+ _ => None }
            }
        }

        impl fmt::Display for $name {
            fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
                f.write_str(self.as_str())
            }
        }

        impl std::str::FromStr for $name {
            type Err = UnknownEnum;
            fn from_str(text: &str) -> Result<Self, UnknownEnum> {
                Self::from_name(text).ok_or_else(|| UnknownEnum {
                    kind: stringify!($name),
                    value: text.chars().take(64).collect(),
                })
            }
        }

        impl<'de> serde::Deserialize<'de> for $name {
            fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
                let text = String::deserialize(d)?;
                text.parse().map_err(serde::de::Error::custom)
            }
        }
    };
}

/// A value that is not one of an enum's names.
#[derive(Debug, Clone, PartialEq, Eq, Error)]
#[error("unknown {kind} value {value:?}")]
pub struct UnknownEnum {
    pub kind: &'static str,
    pub value: String,
}

api_enum!(
    /// `AnnotateAssessmentRequest.annotation`.
    Annotation {
        Unspecified = 0 => "ANNOTATION_UNSPECIFIED",
        Legitimate = 1 => "LEGITIMATE",
        Fraudulent = 2 => "FRAUDULENT",
        PasswordCorrect = 3 => "PASSWORD_CORRECT",
        PasswordIncorrect = 4 => "PASSWORD_INCORRECT",
    }
);

api_enum!(
    /// `AnnotateAssessmentRequest.reasons[]`. Proto numbers are not in listing order.
    Reason {
        Unspecified = 0 => "REASON_UNSPECIFIED",
        Chargeback = 1 => "CHARGEBACK",
        ChargebackFraud = 8 => "CHARGEBACK_FRAUD",
        ChargebackDispute = 9 => "CHARGEBACK_DISPUTE",
        Refund = 10 => "REFUND",
        RefundFraud = 11 => "REFUND_FRAUD",
        TransactionAccepted = 12 => "TRANSACTION_ACCEPTED",
        TransactionDeclined = 13 => "TRANSACTION_DECLINED",
        PaymentHeuristics = 2 => "PAYMENT_HEURISTICS",
        InitiatedTwoFactor = 7 => "INITIATED_TWO_FACTOR",
        PassedTwoFactor = 3 => "PASSED_TWO_FACTOR",
        FailedTwoFactor = 4 => "FAILED_TWO_FACTOR",
        CorrectPassword = 5 => "CORRECT_PASSWORD",
        IncorrectPassword = 6 => "INCORRECT_PASSWORD",
        SocialSpam = 14 => "SOCIAL_SPAM",
    }
);

api_enum!(
    /// `TransactionEvent.eventType`.
    TransactionEventType {
        Unspecified = 0 => "TRANSACTION_EVENT_TYPE_UNSPECIFIED",
        MerchantApprove = 1 => "MERCHANT_APPROVE",
        MerchantDeny = 2 => "MERCHANT_DENY",
        ManualReview = 3 => "MANUAL_REVIEW",
        Authorization = 4 => "AUTHORIZATION",
        AuthorizationDecline = 5 => "AUTHORIZATION_DECLINE",
        PaymentCapture = 6 => "PAYMENT_CAPTURE",
        PaymentCaptureDecline = 7 => "PAYMENT_CAPTURE_DECLINE",
        Cancel = 8 => "CANCEL",
        ChargebackInquiry = 9 => "CHARGEBACK_INQUIRY",
        ChargebackAlert = 10 => "CHARGEBACK_ALERT",
        FraudNotification = 11 => "FRAUD_NOTIFICATION",
        Chargeback = 12 => "CHARGEBACK",
        ChargebackRepresentment = 13 => "CHARGEBACK_REPRESENTMENT",
        ChargebackReverse = 14 => "CHARGEBACK_REVERSE",
        RefundRequest = 15 => "REFUND_REQUEST",
        RefundDecline = 16 => "REFUND_DECLINE",
        Refund = 17 => "REFUND",
        RefundReverse = 18 => "REFUND_REVERSE",
    }
);

/// `TransactionEvent`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct TransactionEvent {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_type: Option<TransactionEventType>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub reason: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub value: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
}

/// `PhoneAuthenticationEvent`.
#[derive(Debug, Clone, PartialEq, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct PhoneAuthenticationEvent {
    pub phone_number: String,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub event_time: Option<String>,
}

/// `AnnotateAssessmentRequest`: every field optional, `{}` is valid.
#[derive(Debug, Clone, PartialEq, Default, Serialize)]
#[serde(rename_all = "camelCase")]
pub struct AnnotateRequest {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub annotation: Option<Annotation>,
    #[serde(skip_serializing_if = "Vec::is_empty")]
    pub reasons: Vec<Reason>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub account_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub hashed_account_id: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub transaction_event: Option<TransactionEvent>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub phone_authentication_event: Option<PhoneAuthenticationEvent>,
}

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

fn wire_time(field: &str, value: &Value) -> Result<Option<String>, WireError> {
    let text = wire_string(field, value)?;
    if let Some(t) = &text {
        chrono::DateTime::parse_from_rfc3339(t)
            .map_err(|e| wire_value_error(field, format!("not an RFC 3339 timestamp: {e}")))?;
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

/// Decodes proto3 JSON `bytes`: standard or URL-safe base64, with or without padding.
pub fn decode_base64_bytes(text: &str) -> Option<Vec<u8>> {
    use base64::Engine as _;
    use base64::engine::general_purpose::{STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD};
    [STANDARD, STANDARD_NO_PAD, URL_SAFE, URL_SAFE_NO_PAD]
        .iter()
        .find_map(|engine| engine.decode(text).ok())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn serializes_names_and_camel_case() {
        let req = AnnotateRequest {
            annotation: Some(Annotation::Fraudulent),
            reasons: vec![Reason::ChargebackFraud, Reason::PaymentHeuristics],
            account_id: Some("user-123".into()),
            hashed_account_id: Some("AQJoYXNoZWQ=".into()),
            transaction_event: Some(TransactionEvent {
                event_type: Some(TransactionEventType::Chargeback),
                reason: Some("6005".into()),
                value: Some(12.5),
                event_time: Some("2026-11-25T10:00:00Z".into()),
            }),
            phone_authentication_event: None,
        };
        assert_eq!(
            serde_json::to_string(&req).unwrap(),
            r#"{"annotation":"FRAUDULENT","reasons":["CHARGEBACK_FRAUD","PAYMENT_HEURISTICS"],"accountId":"user-123","hashedAccountId":"AQJoYXNoZWQ=","transactionEvent":{"eventType":"CHARGEBACK","reason":"6005","value":12.5,"eventTime":"2026-11-25T10:00:00Z"}}"#
        );
        assert_eq!(
            serde_json::to_string(&AnnotateRequest::default()).unwrap(),
            "{}"
        );
    }

    #[test]
    fn reason_numbers_follow_the_proto() {
        assert_eq!(Reason::ChargebackFraud.number(), 8);
        assert_eq!(Reason::PaymentHeuristics.number(), 2);
        assert_eq!(Reason::from_number(14), Some(Reason::SocialSpam));
        assert_eq!(Reason::ALL.len(), 15);
    }

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
