//! The producers' kit: the committed schemas are the generated ones and agree with the
//! decoder (the docs' examples and the demo's events pass; the bad inputs of SPEC section 5
//! that a schema can express fail); `validate` names the right reason for each bad record
//! and commits nothing; `publish` of a CSV with good and bad lines produces the good ones
//! exactly once, across a run stopped early and a second run with `--skip`.

use std::collections::BTreeMap;
use std::time::Duration;

use crate::common::*;
use recaptcha_annotator::commands::demo::sample_events;
use recaptcha_annotator::domain::rules::{OutcomeTopic, Rules};
use recaptcha_annotator::domain::schema;
use serde_json::{Value, json};

fn schemas() -> BTreeMap<String, Value> {
    schema::all(&Rules::default()).into_iter().collect()
}

fn validator(file: &str) -> jsonschema::Validator {
    jsonschema::validator_for(&schemas()[file]).unwrap()
}

fn topic_file(topic: OutcomeTopic) -> String {
    format!("{}.schema.json", topic.as_str().replace('_', "-"))
}

#[test]
fn the_committed_schemas_are_the_generated_ones() {
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("schemas");
    for (file, schema) in schemas() {
        let committed: Value = serde_json::from_str(
            &std::fs::read_to_string(dir.join(&file)).unwrap_or_else(|_| {
                panic!("schemas/{file} missing: run `recaptcha-annotator schemas --out schemas`")
            }),
        )
        .unwrap();
        assert_eq!(
            committed, schema,
            "schemas/{file} drifted from the code: run `recaptcha-annotator schemas --out schemas`"
        );
        // Every schema is itself valid draft 2020-12.
        jsonschema::validator_for(&schema).unwrap();
    }
}

#[test]
fn the_docs_examples_and_the_demos_events_pass_their_schemas() {
    let docs = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("docs/EVENTS.md"),
    )
    .unwrap();
    // Each ```json block, with the topic the text names last before it.
    let mut checked = 0;
    let mut topic = "assessments";
    for (i, part) in docs.split("```").enumerate() {
        if i % 2 == 0 {
            for t in [
                "`assessments`",
                "`logins`",
                "`registrations`",
                "`fraud-signals`",
            ] {
                if let Some(at) = part.rfind(t) {
                    let later = [
                        "`assessments`",
                        "`logins`",
                        "`registrations`",
                        "`fraud-signals`",
                    ]
                    .iter()
                    .filter_map(|o| part.rfind(o))
                    .max()
                    .unwrap();
                    if at == later {
                        topic = t.trim_matches('`');
                    }
                }
            }
            continue;
        }
        let Some(body) = part.strip_prefix("json\n") else {
            continue;
        };
        let Ok(event) = serde_json::from_str::<Value>(body) else {
            continue;
        };
        if event.get("event_id").is_none() && event.get("assessment").is_none() {
            continue;
        }
        let v = validator(&format!("{topic}.schema.json"));
        assert!(
            v.is_valid(&event),
            "docs example for {topic}: {event}: {:?}",
            v.iter_errors(&event)
                .map(|e| e.to_string())
                .collect::<Vec<_>>()
        );
        checked += 1;
    }
    assert!(checked >= 4, "found {checked} examples");

    let rules = Rules::default();
    let names: Vec<String> = (0..rules.outcomes().len())
        .map(|i| format!("projects/123456789/assessments/demo{i:08}AAAA"))
        .collect();
    let (assessments, outcomes) = sample_events(&rules, &names, topic_file);
    for (_, value) in assessments {
        let event: Value = serde_json::from_str(&value).unwrap();
        assert!(
            validator("assessments.schema.json").is_valid(&event),
            "{event}"
        );
    }
    for (file, key, value) in outcomes {
        let Ok(event) = serde_json::from_str::<Value>(&value) else {
            continue; // the demo's "not json"
        };
        let valid = validator(&file).is_valid(&event);
        // The demo's two bad events are meant to be dead-lettered.
        assert_eq!(valid, !key.starts_with("bad-"), "{file}: {event}");
    }
}

#[test]
fn the_schemas_reject_what_the_decoder_rejects() {
    let logins = validator("logins.schema.json");
    let fraud = validator("fraud-signals.schema.json");
    let assessments = validator("assessments.schema.json");
    let ok = json!({"event_id": "e", "outcome": "password_correct", "key": "k"});
    assert!(logins.is_valid(&ok));
    // `null` counts as absent.
    assert!(
        logins
            .is_valid(&json!({"event_id": "e", "outcome": "password_correct", "assessment": null}))
    );
    let bad_logins = [
        json!({"outcome": "password_correct"}),
        json!({"event_id": "e"}),
        json!({"event_id": "e", "outcome": "chargeback"}),
        json!({"event_id": "", "outcome": "password_correct"}),
        json!({"event_id": 7, "outcome": "password_correct"}),
        json!({"event_id": "e", "outcome": "password_correct", "annotation": "fraudulent"}),
        json!({"event_id": "e", "outcome": "password_correct", "annotation": "ANNOTATION_UNSPECIFIED"}),
        json!({"event_id": "e", "outcome": "password_correct", "reasons": ["NOT_A_REASON"]}),
        json!({"event_id": "e", "outcome": "password_correct", "assessment": "projects/p/assessments/../../x"}),
        json!({"event_id": "e", "outcome": "password_correct", "assessment": "projects/p/assessments/a?b"}),
        json!({"event_id": "e", "outcome": "password_correct", "occurred_at": "2026-11-25 12:00:00"}),
        json!({"event_id": "e", "outcome": "password_correct", "occurred_at": "2026-11-25T12:00:00+0100"}),
        json!({"event_id": "e", "outcome": "password_correct", "recaptcha_token": "abc:U=short"}),
        json!({"event_id": "e", "outcome": "password_correct", "phone_authentication": {"phone_number": "555-0100"}}),
        json!({"event_id": "e", "outcome": "password_correct", "phone_authentication": {}}),
        json!({"event_id": "e", "outcome": "password_correct", "key": "a\u{7}b"}),
        json!("not an object"),
    ];
    for event in bad_logins {
        assert!(!logins.is_valid(&event), "accepted {event}");
    }
    assert!(!fraud.is_valid(&json!({"event_id": "e", "outcome": "chargeback", "transaction": {"event_type": "CHARGEBACK_UNSPECIFIED"}})));
    assert!(!fraud.is_valid(
        &json!({"event_id": "e", "outcome": "chargeback", "transaction": {"value": "12.5"}})
    ));
    assert!(!assessments.is_valid(&json!({"key": "k"})));
    assert!(!assessments.is_valid(&json!({"key": "k", "assessment": "6ZZZZe73fZZZZZZ0"})));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn validate_names_each_bad_records_reason_and_commits_nothing() {
    let env = TestEnv::new("validate").await;
    let good = json!({"event_id": "g1", "outcome": "password_correct", "assessment": format!("projects/{PROJECT}/assessments/good1")});
    let records = [
        (good.to_string(), "ok"),
        ("not json".to_owned(), "decode"),
        (json!({"event_id": "b2", "outcome": "chargeback", "key": "k"}).to_string(), "unknown_outcome"),
        (json!({"event_id": "b3", "outcome": "password_correct", "assessment": "projects/p/assessments/../x"}).to_string(), "invalid_reference"),
        (json!({"event_id": "b4", "outcome": "password_correct", "occurred_at": "yesterday", "key": "k"}).to_string(), "decode"),
        (json!({"event_id": "b5", "outcome": "password_correct"}).to_string(), "invalid_reference"),
    ];
    for (value, _) in &records {
        env.produce("logins", None, Some(value)).await;
    }
    let file = env.config_file("");
    let config = file.path().to_str().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_recaptcha-annotator"))
        .args(["validate", "--config", config, "--topic", "logins"])
        .stdout(std::process::Stdio::piped())
        .spawn()
        .unwrap();
    let pid = child.id();
    let out = tokio::task::block_in_place(|| {
        let mut text = String::new();
        std::io::Read::read_to_string(child.stdout.as_mut().unwrap(), &mut text).unwrap();
        (child.wait().unwrap(), text)
    });
    let (status, text) = out;
    assert!(!status.success(), "fails when a record fails:\n{text}");
    // Unkeyed records spread over the partitions: compare the verdicts as a multiset.
    let mut verdicts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with(&format!("{}/", env.topic("logins"))))
        .map(|l| l.split(": ").nth(1).unwrap())
        .collect();
    verdicts.sort_unstable();
    let expected: Vec<&str> = records.iter().map(|(_, r)| *r).collect();
    let mut sorted = expected.clone();
    sorted.sort_unstable();
    assert_eq!(verdicts, sorted, "{text}");
    assert!(text.contains("6 checked: 1 ok, 5 failed"), "{text}");
    // Nothing committed: not for the service's group, not for the reader's own id.
    for group in [
        env.config_base.group.clone(),
        format!("{}-validate-{pid}", env.config_base.group),
    ] {
        let reader = recaptcha_annotator::kafka::offset_reader(&brokers(), &group).unwrap();
        let partitions: Vec<(String, i32)> = (0..env.partitions)
            .map(|p| (env.topic("logins"), p))
            .collect();
        let committed =
            recaptcha_annotator::kafka::committed_offsets(&reader, &partitions).unwrap();
        drop(reader);
        assert!(committed.is_empty(), "{group} committed: {committed:?}");
    }

    // A file, before publishing: the same verdicts.
    let jsonl = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        jsonl.path(),
        records
            .iter()
            .map(|(v, _)| format!("{v}\n"))
            .collect::<String>(),
    )
    .unwrap();
    let (ok, text) = run_binary(
        &[
            "validate",
            "--config",
            config,
            "--topic",
            "logins",
            "--file",
            jsonl.path().to_str().unwrap(),
        ],
        &[],
    );
    assert!(!ok);
    let verdicts: Vec<&str> = text
        .lines()
        .filter(|l| l.starts_with("line "))
        .map(|l| l.split(": ").nth(1).unwrap())
        .collect();
    assert_eq!(verdicts, expected, "{text}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn publish_produces_the_good_csv_lines_exactly_once_across_a_resumed_run() {
    let env = TestEnv::new("publish").await;
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("chargebacks.csv");
    std::fs::write(
        &csv,
        format!(
            "case,assessment_name,amount,reason_code,when\n\
             c1,projects/{PROJECT}/assessments/hist1,12.5,6005,2026-08-01T10:00:00Z\n\
             c2,projects/{PROJECT}/assessments/hist2,abc,6005,2026-08-01T10:00:00Z\n\
             c3,projects/{PROJECT}/assessments/hist3,7,6005,2026-08-02T10:00:00Z\n\
             c4,projects/{PROJECT}/assessments/../x,7,6005,2026-08-02T10:00:00Z\n\
             c5,projects/{PROJECT}/assessments/hist5,99.99,4837,2026-08-03T10:00:00Z\n\
             c6,projects/{PROJECT}/assessments/hist6,1,4837,2026-08-03\n\
             c7,projects/{PROJECT}/assessments/hist7,3,4837,2026-08-04T10:00:00Z\n"
        ),
    )
    .unwrap();
    let file = env.config_file("");
    let config = file.path().to_str().unwrap();
    let publish = |extra: &[&str]| {
        let mut args = vec![
            "publish",
            "--config",
            config,
            "--topic",
            "fraud-signals",
            "--file",
            csv.to_str().unwrap(),
            "--map",
            "event_id=case",
            "--map",
            "assessment=assessment_name",
            "--map",
            "transaction.value=amount",
            "--map",
            "transaction.reason=reason_code",
            "--map",
            "occurred_at=when",
            "--set",
            "outcome=chargeback",
            "--set",
            "transaction.event_type=CHARGEBACK",
        ];
        args.extend_from_slice(extra);
        run_binary(&args, &[])
    };
    // A broker that never acknowledges: publish stops, names the last line acknowledged
    // (none), and says how to resume.
    let down = env.config_file("[kafka]\nbrokers = \"127.0.0.1:1\"\n");
    let mut args = vec!["publish", "--config", down.path().to_str().unwrap()];
    args.extend_from_slice(&[
        "--topic",
        "fraud-signals",
        "--file",
        csv.to_str().unwrap(),
        "--map",
        "event_id=case",
        "--map",
        "assessment=assessment_name",
        "--set",
        "outcome=chargeback",
        "--delivery-timeout",
        "2",
    ]);
    let (ok, out) = run_binary(&args, &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains("line 1 was not acknowledged") && out.contains("re-run with --skip 0"),
        "{out}"
    );

    // A first run stopped after 4 lines (as an error would stop it), then the rest.
    let (ok, out) = publish(&["--limit", "4"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("2 published") && out.contains("last line acknowledged: 4"),
        "{out}"
    );
    let (ok, out) = publish(&["--skip", "4"]);
    assert!(ok, "{out}");
    assert!(
        out.contains("2 published") && out.contains("last line acknowledged: 7"),
        "{out}"
    );

    let rejected = std::fs::read_to_string(format!("{}.rejected.jsonl", csv.display())).unwrap();
    let reasons: Vec<(u64, String)> = rejected
        .lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            (
                v["line"].as_u64().unwrap(),
                v["reason"].as_str().unwrap().to_owned(),
            )
        })
        .collect();
    assert_eq!(
        reasons,
        [
            (2, "decode".into()),
            (4, "invalid_reference".into()),
            (6, "decode".into())
        ],
        "{rejected}"
    );

    // On the topic: the four good lines, once each, keyed by their assessment's id.
    let records = env.read_topic(&env.topic("fraud-signals"), 4, Duration::from_secs(20));
    let mut got: Vec<(String, String)> = records
        .iter()
        .map(|r| {
            let v: Value = serde_json::from_str(r.value.as_deref().unwrap()).unwrap();
            (
                v["event_id"].as_str().unwrap().to_owned(),
                r.key.clone().unwrap(),
            )
        })
        .collect();
    got.sort();
    assert_eq!(
        got,
        [
            ("c1", "hist1"),
            ("c3", "hist3"),
            ("c5", "hist5"),
            ("c7", "hist7")
        ]
        .map(|(e, k)| (e.to_owned(), k.to_owned()))
    );
    let first: Value = serde_json::from_str(records[0].value.as_deref().unwrap()).unwrap();
    assert_eq!(first["outcome"], "chargeback");
    assert!(first["transaction"]["value"].is_number(), "{first}");
}
