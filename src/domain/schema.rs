//! JSON Schemas (draft 2020-12) of the events producers write, generated from the same
//! types and rules the service decodes with: the enums' names come from [`super::api`], each
//! outcome topic's vocabulary from the rules in force, the limits from the decoders. A
//! schema catches what a schema can say (missing fields, wrong types, unknown outcomes, bad
//! enum values, malformed names and timestamps); `validate` checks the rest (the allow-list,
//! sizes in bytes, the join).

use serde_json::{Value, json};

use super::api::{Annotation, Reason, TransactionEventType};
use super::assessment::MAX_KEY_LEN;
use super::rules::{OutcomeTopic, Rules};

const DRAFT: &str = "https://json-schema.org/draft/2020-12/schema";
const BASE: &str = "https://recaptcha-annotator.local/schemas/";

/// A project or id segment: URL-unreserved characters, no `..` and not `.` alone (as the
/// decoder checks); unambiguous, so no regex engine backtracks on it.
const SEGMENT: &str = "\\.?[A-Za-z0-9_~-]+(?:\\.[A-Za-z0-9_~-]+)*\\.?";
/// RFC 3339 as the decoder reads it (the calendar's own rules are left to `validate`).
const TIMESTAMP: &str = "^[0-9]{4}-[0-9]{2}-[0-9]{2}[Tt][0-9]{2}:[0-9]{2}:[0-9]{2}(\\.[0-9]{1,9})?([Zz]|[+-][0-9]{2}:[0-9]{2})$";
/// No control characters (C0, DEL, C1).
const NO_CONTROLS: &str = "^[^\\u0000-\\u001F\\u007F-\\u009F]+$";

/// The file name and schema of every topic: `assessments` and each outcome topic.
pub fn all(rules: &Rules) -> Vec<(String, Value)> {
    let mut schemas = vec![("assessments.schema.json".to_owned(), assessment())];
    for topic in OutcomeTopic::ALL {
        schemas.push((
            format!("{}.schema.json", topic.as_str().replace('_', "-")),
            outcome(topic, rules),
        ));
    }
    schemas
}

fn full_name() -> String {
    format!("^projects/{SEGMENT}/assessments/{SEGMENT}$")
}

fn key() -> Value {
    json!({
        "type": "string", "minLength": 1, "maxLength": MAX_KEY_LEN, "pattern": NO_CONTROLS,
        "description": "The correlation key (1 to 512 bytes, no control characters); when absent, the Kafka message key is used."
    })
}

fn optional(schema: Value) -> Value {
    // `null` counts as an absent field.
    json!({"anyOf": [schema, {"type": "null"}]})
}

fn names<T: Copy>(all: &[T], name: impl Fn(T) -> &'static str) -> Vec<&'static str> {
    all.iter()
        .map(|&v| name(v))
        .filter(|n| !n.ends_with("_UNSPECIFIED"))
        .collect()
}

/// The `assessments` topic's value.
pub fn assessment() -> Value {
    json!({
        "$schema": DRAFT,
        "$id": format!("{BASE}assessments.schema.json"),
        "title": "assessments",
        "description": "Written right after assessments.create: maps a correlation key to the assessment it created. Unknown fields are ignored. See docs/EVENTS.md, section 2.",
        "type": "object",
        "required": ["assessment"],
        "properties": {
            "assessment": {
                "type": "string", "maxLength": 600, "pattern": full_name(),
                "description": "The full name projects/<project>/assessments/<id>."
            },
            "key": optional(key()),
        },
        "examples": [{
            "key": "login-7f3a",
            "assessment": "projects/123456789/assessments/6ZZZZe73fZZZZZZ0",
            "created_at": "2026-11-25T12:00:00Z"
        }]
    })
}

/// An outcome topic's value, with the topic's outcomes as an enum.
pub fn outcome(topic: OutcomeTopic, rules: &Rules) -> Value {
    let outcomes: Vec<&str> = rules
        .outcomes()
        .into_iter()
        .filter(|(t, _)| *t == topic)
        .map(|(_, o)| o)
        .collect();
    let timestamp = || optional(json!({"type": "string", "pattern": TIMESTAMP}));
    let annotations = names(Annotation::ALL, Annotation::as_str);
    let reasons = names(Reason::ALL, Reason::as_str);
    let event_types = names(TransactionEventType::ALL, TransactionEventType::as_str);
    let title = topic.as_str().replace('_', "-");
    json!({
        "$schema": DRAFT,
        "$id": format!("{BASE}{title}.schema.json"),
        "title": title,
        "description": format!("An outcome on the {title} topic; its outcome selects a rule of rules.{}. Unknown fields are ignored. The reference is the first present of assessment, recaptcha_token, key (else the Kafka message key). See docs/EVENTS.md, section 3.", topic.as_str()),
        "type": "object",
        "required": ["event_id", "outcome"],
        "properties": {
            "event_id": {"type": "string", "minLength": 1, "maxLength": 256, "pattern": NO_CONTROLS},
            "outcome": {"enum": outcomes},
            "occurred_at": timestamp(),
            "assessment": optional(json!({
                "type": "string", "maxLength": 600,
                "pattern": format!("^(projects/{SEGMENT}/assessments/)?{SEGMENT}$"),
                "description": "A full name, or a bare id with recaptcha.project."
            })),
            "recaptcha_token": optional(json!({
                "type": "string", "pattern": "^.+U=[A-Za-z0-9]{16}$",
                "description": "A token from a WAF integration; needs recaptcha.project."
            })),
            "key": optional(key()),
            "account_id": optional(json!({"type": "string"})),
            "hashed_account_id": optional(json!({
                "type": "string", "pattern": "^[A-Za-z0-9+/_-]*={0,2}$",
                "description": "Base64 (standard or URL-safe, padded or not)."
            })),
            "transaction": optional(json!({
                "type": "object",
                "properties": {
                    "event_type": optional(json!({"enum": event_types})),
                    "reason": optional(json!({"type": "string"})),
                    "value": optional(json!({"type": "number"})),
                    "event_time": timestamp(),
                }
            })),
            "phone_authentication": optional(json!({
                "type": "object",
                "required": ["phone_number"],
                "properties": {
                    "phone_number": {"type": "string", "pattern": "^\\+[1-9][0-9]{1,14}$"},
                    "event_time": timestamp(),
                }
            })),
            "annotation": optional(json!({"enum": annotations})),
            "reasons": optional(json!({"type": "array", "items": {"enum": reasons}})),
        }
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn no_unspecified_value_is_offered() {
        let schema = outcome(OutcomeTopic::FraudSignals, &Rules::default()).to_string();
        assert!(!schema.contains("_UNSPECIFIED"));
        assert!(schema.contains("\"chargeback\""));
    }
}
