//! `/status.json`'s field list is stable: every field is present, none is added unnoticed.

use super::*;
use crate::failure::{DeadLetter, DeadLetterReason};

/// The documented fields (docs/DESIGN.md, "/status.json").
const FIELDS: [&str; 19] = [
    "version",
    "revision",
    "at_ms",
    "ready",
    "reasons",
    "notes",
    "halted",
    "halted_projects",
    "events_total",
    "annotated_total",
    "dead_letters_total",
    "in_flight",
    "in_flight_limit",
    "parked",
    "pending",
    "budget",
    "partitions",
    "recent_dead_letters",
    "config",
];

fn sample() -> (Health, Metrics) {
    let health = Health::default();
    let metrics = Metrics::new();
    health.set_project_halted("222", Some("PERMISSION_DENIED <b>".into()));
    metrics
        .events
        .with_label_values(&["t-logins", "annotated"])
        .inc_by(7);
    metrics
        .events
        .with_label_values(&["t-logins", "dead_lettered"])
        .inc();
    metrics
        .consumer_lag
        .with_label_values(&["t-logins", "0"])
        .set(12);
    metrics
        .committed_offset
        .with_label_values(&["t-logins", "0"])
        .set(30);
    metrics.dead_lettered(
        &DeadLetter::new(DeadLetterReason::Decode, "not JSON"),
        "t-logins/0/29",
    );
    (health, metrics)
}

#[test]
fn every_field_of_status_json_is_present() {
    let (health, metrics) = sample();
    let fixed = Fixed {
        rate: 200,
        burst: 20,
        config: "[kafka]\nbrokers = \"b\"\n".into(),
    };
    let json = serde_json::to_value(snapshot(&health, &metrics, &fixed)).unwrap();
    let keys: Vec<&str> = json
        .as_object()
        .unwrap()
        .keys()
        .map(String::as_str)
        .collect();
    let mut expected = FIELDS.to_vec();
    expected.sort_unstable();
    assert_eq!(keys, expected);
    for (object, fields) in [
        (
            "budget",
            &["rate", "burst", "granted_total", "fallback", "effective"][..],
        ),
        (
            "partitions",
            &["topic", "partition", "committed", "lag", "end"][..],
        ),
        (
            "recent_dead_letters",
            &["at_ms", "reason", "detail", "source"][..],
        ),
        ("halted_projects", &["project", "reason", "since_ms"][..]),
    ] {
        let value = &json[object];
        let one = value.as_array().map_or(value, |a| &a[0]);
        for field in fields {
            assert!(one.get(field).is_some(), "{object}.{field} missing: {one}");
        }
    }
    assert_eq!(json["events_total"], 8);
    assert_eq!(json["annotated_total"], 7);
    assert_eq!(json["dead_letters_total"]["decode"], 1);
    assert_eq!(json["partitions"][0]["end"], 42);
    assert_eq!(json["recent_dead_letters"][0]["source"], "t-logins/0/29");
    assert_eq!(json["budget"]["rate"], 200);
}

#[test]
fn the_page_shows_the_snapshot_escaped() {
    let (health, metrics) = sample();
    let status = snapshot(&health, &metrics, &Fixed::default());
    let page = page::render(&status);
    assert!(page.contains("PERMISSION_DENIED &lt;b&gt;"), "{page}");
    assert!(!page.contains("<b>"));
    assert!(page.contains("<td>t-logins</td><td>0</td><td>12</td><td>30 / 42</td>"));
    assert!(page.contains("fetch(\"/status.json\""));
}
