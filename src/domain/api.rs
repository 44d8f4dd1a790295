//! The `assessments.annotate` request body as the v1 discovery document defines it, and the
//! enums it carries, with their proto numbers.
//!
//! The service sends enum names and camelCase fields (what the discovery-based client sends);
//! the sandbox's `wire` module reads every form Google's side accepts.

use std::fmt;

use serde::Serialize;
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
}
