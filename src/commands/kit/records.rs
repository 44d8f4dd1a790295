//! The lines of a file `publish` reads, as events: JSON Lines as they are, CSV rows through
//! a column map (dotted fields nest, `transaction.value` is a number, `reasons` a list).

use std::io::BufRead as _;

use anyhow::Context as _;
use serde_json::{Map, Value};

use super::PublishArgs;
use crate::domain::assessment::{AssessmentId, AssessmentName};

/// One record of the file: its line number and value (or why it could not be read).
pub struct Record {
    pub line: u64,
    pub value: Result<Vec<u8>, String>,
    pub text: String,
}

/// Fields whose CSV text becomes a JSON number, or a list.
const NUMBER_FIELDS: &[&str] = &["transaction.value"];
const LIST_FIELDS: &[&str] = &["reasons"];

pub fn csv_records(args: &PublishArgs) -> anyhow::Result<Vec<Record>> {
    let mut reader = csv::ReaderBuilder::new()
        .flexible(true)
        .from_path(&args.file)
        .with_context(|| format!("opening {}", args.file.display()))?;
    let headers = reader.headers()?.clone();
    let map: Vec<(String, usize)> = if args.map.is_empty() {
        headers
            .iter()
            .enumerate()
            .map(|(i, h)| (h.to_owned(), i))
            .collect()
    } else {
        args.map
            .iter()
            .map(|(field, column)| {
                headers
                    .iter()
                    .position(|h| h == column)
                    .map(|i| (field.clone(), i))
                    .ok_or_else(|| {
                        anyhow::anyhow!(
                            "--map {field}={column}: no column {column} in {}",
                            args.file.display()
                        )
                    })
            })
            .collect::<anyhow::Result<_>>()?
    };
    let mut records = Vec::new();
    for (i, row) in reader.records().enumerate() {
        let line = i as u64 + 1;
        let row = match row {
            Ok(r) => r,
            Err(e) => {
                records.push(Record {
                    line,
                    value: Err(format!("not CSV: {e}")),
                    text: String::new(),
                });
                continue;
            }
        };
        let text = row.iter().collect::<Vec<_>>().join(",");
        let mut object = Map::new();
        for (field, value) in &args.set {
            insert_dotted(&mut object, field, Value::from(value.as_str()));
        }
        let mut problem = None;
        for (field, column) in &map {
            let Some(cell) = row.get(*column).filter(|c| !c.is_empty()) else {
                continue;
            };
            let value = if NUMBER_FIELDS.contains(&field.as_str()) {
                match cell
                    .parse::<f64>()
                    .ok()
                    .and_then(serde_json::Number::from_f64)
                {
                    Some(n) => Value::Number(n),
                    None => {
                        problem = Some(format!("{field}: {cell:?} is not a number"));
                        break;
                    }
                }
            } else if LIST_FIELDS.contains(&field.as_str()) {
                Value::Array(
                    cell.split(['|', ';'])
                        .map(|s| Value::from(s.trim()))
                        .collect(),
                )
            } else {
                Value::from(cell)
            };
            insert_dotted(&mut object, field, value);
        }
        records.push(Record {
            line,
            value: match problem {
                Some(p) => Err(p),
                None => Ok(serde_json::to_vec(&Value::Object(object))?),
            },
            text,
        });
    }
    Ok(records)
}

fn insert_dotted(object: &mut Map<String, Value>, field: &str, value: Value) {
    match field.split_once('.') {
        None => {
            object.insert(field.to_owned(), value);
        }
        Some((head, rest)) => {
            let inner = object
                .entry(head.to_owned())
                .or_insert_with(|| Value::Object(Map::new()));
            if let Value::Object(inner) = inner {
                insert_dotted(inner, rest, value);
            }
        }
    }
}

pub fn jsonl_records(args: &PublishArgs) -> anyhow::Result<Vec<Record>> {
    let reader = std::io::BufReader::new(
        std::fs::File::open(&args.file)
            .with_context(|| format!("opening {}", args.file.display()))?,
    );
    let mut records = Vec::new();
    let mut line = 0;
    for text in reader.lines() {
        let text = text?;
        if text.trim().is_empty() {
            continue;
        }
        line += 1;
        records.push(Record {
            line,
            value: Ok(text.clone().into_bytes()),
            text,
        });
    }
    Ok(records)
}

/// The message key of a record: its `key` field, else its assessment's id (from the name,
/// or a WAF token), so every event of one assessment lands on one partition.
pub fn message_key(value: &[u8]) -> Option<String> {
    let v: Value = serde_json::from_slice(value).ok()?;
    if let Some(key) = v.get("key").and_then(Value::as_str) {
        return Some(key.to_owned());
    }
    if let Some(name) = v.get("assessment").and_then(Value::as_str) {
        return Some(
            AssessmentName::parse(name).map_or_else(|_| name.to_owned(), |n| n.id().to_owned()),
        );
    }
    v.get("recaptcha_token")
        .and_then(Value::as_str)
        .and_then(|t| AssessmentId::from_waf_token(t).ok())
        .map(|id| id.as_str().to_owned())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_message_key_is_the_key_else_the_assessment_id() {
        assert_eq!(
            message_key(br#"{"key":"k1","assessment":"projects/p/assessments/a"}"#).as_deref(),
            Some("k1")
        );
        assert_eq!(
            message_key(br#"{"assessment":"projects/p/assessments/a1"}"#).as_deref(),
            Some("a1")
        );
        assert_eq!(
            message_key(br#"{"recaptcha_token":"x:U=AAAABBBBCCCCDDDD"}"#).as_deref(),
            Some("AAAABBBBCCCCDDDD")
        );
        assert_eq!(message_key(br#"{"event_id":"e"}"#), None);
    }

    #[test]
    fn dotted_csv_fields_become_nested_objects() {
        let mut object = Map::new();
        insert_dotted(&mut object, "transaction.value", Value::from(1.5));
        insert_dotted(
            &mut object,
            "transaction.event_type",
            Value::from("CHARGEBACK"),
        );
        insert_dotted(&mut object, "event_id", Value::from("e"));
        assert_eq!(
            Value::Object(object),
            serde_json::json!({"event_id": "e", "transaction": {"value": 1.5, "event_type": "CHARGEBACK"}})
        );
    }
}
