//! End to end against the real broker and the sandbox endpoint: every rule across the three
//! outcome topics and all three reference forms, bad input, commit-point behaviour.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use crate::common::*;
use recaptcha_annotator::kafka;
use serde_json::{Value, json};

/// SPEC 2.3, written out independently of the code's table.
const TABLE: &[(&str, &str, Option<&str>, &[&str])] = &[
    ("logins", "password_correct", None, &["CORRECT_PASSWORD"]),
    (
        "logins",
        "password_incorrect",
        None,
        &["INCORRECT_PASSWORD"],
    ),
    (
        "logins",
        "two_factor_initiated",
        None,
        &["INITIATED_TWO_FACTOR"],
    ),
    (
        "logins",
        "two_factor_passed",
        Some("LEGITIMATE"),
        &["PASSED_TWO_FACTOR"],
    ),
    ("logins", "two_factor_failed", None, &["FAILED_TWO_FACTOR"]),
    ("logins", "account_takeover", Some("FRAUDULENT"), &[]),
    ("registrations", "verified", Some("LEGITIMATE"), &[]),
    (
        "registrations",
        "spam_reported",
        Some("FRAUDULENT"),
        &["SOCIAL_SPAM"],
    ),
    ("registrations", "abuse_confirmed", Some("FRAUDULENT"), &[]),
    (
        "fraud-signals",
        "chargeback",
        Some("FRAUDULENT"),
        &["CHARGEBACK"],
    ),
    (
        "fraud-signals",
        "chargeback_fraud",
        Some("FRAUDULENT"),
        &["CHARGEBACK_FRAUD"],
    ),
    (
        "fraud-signals",
        "chargeback_dispute",
        None,
        &["CHARGEBACK_DISPUTE"],
    ),
    ("fraud-signals", "refund", None, &["REFUND"]),
    (
        "fraud-signals",
        "refund_fraud",
        Some("FRAUDULENT"),
        &["REFUND_FRAUD"],
    ),
    (
        "fraud-signals",
        "payment_accepted",
        Some("LEGITIMATE"),
        &["TRANSACTION_ACCEPTED"],
    ),
    (
        "fraud-signals",
        "payment_declined",
        None,
        &["TRANSACTION_DECLINED"],
    ),
    (
        "fraud-signals",
        "payment_suspected",
        None,
        &["PAYMENT_HEURISTICS"],
    ),
    (
        "fraud-signals",
        "spam_reported",
        Some("FRAUDULENT"),
        &["SOCIAL_SPAM"],
    ),
    (
        "fraud-signals",
        "support_case_login",
        Some("LEGITIMATE"),
        &[],
    ),
    (
        "fraud-signals",
        "purchase_completed",
        Some("LEGITIMATE"),
        &[],
    ),
];

fn expected_body(annotation: Option<&str>, reasons: &[&str], extra: &Value) -> Value {
    let mut body = extra.clone();
    if let Some(a) = annotation {
        body["annotation"] = json!(a);
    }
    if !reasons.is_empty() {
        body["reasons"] = json!(reasons);
    }
    body
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_rule_every_topic_every_reference_form_sends_the_exact_body() {
    let env = TestEnv::new("rules").await;
    let mut records = Vec::new();
    let mut expected = BTreeMap::new();
    for (i, (topic, outcome, annotation, reasons)) in TABLE.iter().enumerate() {
        for form in 0..3 {
            let id = format!("R{i:03}F{form}zzzzzzzzzz");
            assert_eq!(id.len(), 16);
            let name = format!("projects/{PROJECT}/assessments/{id}");
            let key = format!("k-{i}-{form}");
            let mut event = json!({"event_id": format!("e-{i}-{form}"), "outcome": outcome, "unknown_field": [1, 2]});
            match form {
                // Full name inline on even rules, bare id + recaptcha.project on odd ones.
                0 if i % 2 == 0 => event["assessment"] = json!(name),
                0 => event["assessment"] = json!(id),
                1 => event["recaptcha_token"] = json!(format!("03AFcWeA66xyz:U={id}")),
                _ => {
                    // Half by the `key` field, half by the Kafka message key alone.
                    if i % 2 == 0 {
                        event["key"] = json!(key);
                    }
                    let mapping = json!({"key": key, "assessment": name, "created_at": "2026-11-25T12:00:00Z"});
                    records.push((
                        "assessments".to_owned(),
                        Some(key.clone()),
                        Some(mapping.to_string()),
                    ));
                }
            }
            let mut extra = json!({});
            if *topic == "fraud-signals" {
                event["transaction"] = json!({"event_type": "CHARGEBACK", "reason": "6005", "value": 12.5, "event_time": "2026-11-25T12:00:00Z"});
                extra["transactionEvent"] = json!({"eventType": "CHARGEBACK", "reason": "6005", "value": 12.5, "eventTime": "2026-11-25T12:00:00Z"});
            }
            if *topic == "logins" {
                event["account_id"] = json!(format!("u-{i}"));
                extra["accountId"] = json!(format!("u-{i}"));
            }
            if *topic == "registrations" {
                event["hashed_account_id"] = json!("AQJoYXNoZWQ=");
                extra["hashedAccountId"] = json!("AQJoYXNoZWQ=");
            }
            records.push(((*topic).to_owned(), Some(key), Some(event.to_string())));
            expected.insert(name, expected_body(*annotation, reasons, &extra));
        }
    }
    // Explicit override fields replace the rule's.
    let name = format!("projects/{PROJECT}/assessments/OVERRIDE");
    records.push((
        "logins".into(),
        None,
        Some(
            json!({"event_id": "ov", "outcome": "password_correct", "assessment": name,
                    "annotation": "FRAUDULENT", "reasons": ["PAYMENT_HEURISTICS"]})
            .to_string(),
        ),
    ));
    expected.insert(
        name,
        json!({"annotation": "FRAUDULENT", "reasons": ["PAYMENT_HEURISTICS"]}),
    );
    // Mappings first, so the join does not depend on the grace period.
    records.sort_by_key(|(topic, _, _)| topic != "assessments");
    env.produce_many(&records).await;

    let service = env.start(env.config());
    env.wait_all_committed(Duration::from_secs(60)).await;
    service.stop().await;

    let recorded = env.sandbox.recorded();
    let got: BTreeMap<String, Value> = recorded
        .iter()
        .map(|r| (r.name.clone(), r.body.clone()))
        .collect();
    assert_eq!(recorded.len(), expected.len(), "exactly one call per event");
    assert_eq!(got, expected);
    assert!(
        recorded.iter().all(|r| r.auth == "api_key_header"),
        "API key goes in x-goog-api-key"
    );
    assert!(env.dead_letters(0, Duration::from_secs(1)).is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_bad_input_is_dead_lettered_with_its_headers_and_the_partition_goes_on() {
    let env = TestEnv::new("bad").await;
    let ok = |id: &str| {
        json!({"event_id": id, "outcome": "password_correct", "assessment": format!("projects/{PROJECT}/assessments/{id}")}).to_string()
    };
    let with_assessment = |a: &str| {
        json!({"event_id": "x", "outcome": "password_correct", "assessment": a}).to_string()
    };
    let cases: Vec<(&str, String, &str)> = vec![
        ("not-json", "this is not json".into(), "decode"),
        ("array", "[1,2]".into(), "decode"),
        ("no-event-id", json!({"outcome": "password_correct", "assessment": "projects/1/assessments/a"}).to_string(), "decode"),
        ("no-outcome", json!({"event_id": "e", "assessment": "projects/1/assessments/a"}).to_string(), "decode"),
        ("unknown-outcome", json!({"event_id": "e", "outcome": "teleported", "assessment": "projects/1/assessments/a"}).to_string(), "unknown_outcome"),
        ("unknown-reason", json!({"event_id": "e", "outcome": "password_correct", "assessment": "projects/1/assessments/a", "reasons": ["NOT_A_REASON"]}).to_string(), "decode"),
        ("unknown-annotation", json!({"event_id": "e", "outcome": "password_correct", "assessment": "projects/1/assessments/a", "annotation": "MAYBE"}).to_string(), "decode"),
        ("dotdot", with_assessment("projects/p/assessments/../../v1/x"), "invalid_reference"),
        ("query", with_assessment("projects/p/assessments/a?b"), "invalid_reference"),
        ("fragment", with_assessment("projects/p/assessments/a#b"), "invalid_reference"),
        ("percent", with_assessment("projects/p/assessments/%2F"), "invalid_reference"),
        ("space", with_assessment("projects/p/assessments/a b"), "invalid_reference"),
        ("newline", with_assessment("projects/p/assessments/a\nb"), "invalid_reference"),
        ("bare-bad", with_assessment("a?b"), "invalid_reference"),
        ("other-project", with_assessment("projects/999/assessments/abc"), "invalid_reference"),
        ("bad-token", json!({"event_id": "e", "outcome": "password_correct", "recaptcha_token": "no-marker"}).to_string(), "invalid_reference"),
    ];
    let mut records = Vec::new();
    for (i, (label, payload, _)) in cases.iter().enumerate() {
        records.push((
            "logins".to_owned(),
            Some((*label).to_owned()),
            Some(payload.clone()),
        ));
        // A good event after each bad one: the partition goes on.
        records.push((
            "logins".to_owned(),
            Some(format!("good-{i}")),
            Some(ok(&format!("good{i:02}"))),
        ));
    }
    env.produce_many(&records).await;

    let mut config = env.config();
    config.recaptcha.allowed_projects = vec![PROJECT.into(), "p".into(), "1".into()];
    let service = env.start(config);
    env.wait_all_committed(Duration::from_secs(60)).await;
    service.stop().await;

    assert_eq!(
        env.sandbox.accepted_count(),
        cases.len() as u64,
        "every good event annotated, no bad one"
    );
    let letters = env.dead_letters(cases.len(), Duration::from_secs(20));
    assert_eq!(
        letters.len(),
        cases.len(),
        "exactly one dead letter per bad event"
    );
    let logins = env.topic("logins");
    for (label, payload, reason) in &cases {
        let letter = letters
            .iter()
            .find(|l| l.key.as_deref() == Some(label))
            .unwrap_or_else(|| panic!("no dead letter for {label}"));
        assert_eq!(
            letter.value.as_deref(),
            Some(payload.as_str()),
            "{label}: original value kept"
        );
        assert_eq!(letter.headers["annotator.error"], *reason, "{label}");
        assert!(!letter.headers["annotator.detail"].is_empty(), "{label}");
        let source = &letter.headers["annotator.source"];
        assert!(
            source.starts_with(&format!("{logins}/")),
            "{label}: {source}"
        );
        assert_eq!(
            source.split('/').count(),
            3,
            "{label}: topic/partition/offset"
        );
        assert!(!letter.headers.contains_key("annotator.status"), "{label}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rejected_calls_are_dead_lettered_with_the_status() {
    let env = TestEnv::new("rejected").await;
    env.script(vec![scripted(400, 1), scripted(404, 1)], None);
    for key in ["first", "second"] {
        let event = json!({"event_id": key, "outcome": "verified", "assessment": format!("projects/{PROJECT}/assessments/same")});
        env.produce("registrations", Some(key), Some(&event.to_string()))
            .await;
    }
    let service = env.start(env.config());
    env.wait_all_committed(Duration::from_secs(60)).await;
    service.stop().await;
    let letters = env.dead_letters(2, Duration::from_secs(20));
    assert_eq!(letters.len(), 2);
    let by_key: BTreeMap<_, _> = letters
        .iter()
        .map(|l| (l.key.clone().unwrap(), l.headers.clone()))
        .collect();
    // Same assessment: sent in offset order, so the first gets the 400 and the second the 404.
    assert_eq!(by_key["first"]["annotator.error"], "rejected");
    assert_eq!(by_key["first"]["annotator.status"], "400");
    assert_eq!(by_key["second"]["annotator.status"], "404");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn commit_point_holds_while_the_endpoint_fails_or_stalls() {
    for (label, default) in [("503", answer(503, 0)), ("stalled", answer(200, 60_000))] {
        let env = TestEnv::new(&format!("hold-{label}")).await;
        env.script(vec![], Some(default));
        let first = json!({"event_id": "a", "outcome": "chargeback", "assessment": format!("projects/{PROJECT}/assessments/held")});
        env.produce("fraud-signals", Some("k"), Some(&first.to_string()))
            .await;
        let mut config = env.config();
        config.recaptcha.request_timeout = Duration::from_millis(500);
        let service = env.start(config);

        // Watched from start: for 503 until it has been failed for 3 s and retried, however
        // long the group join took; a stalled call is never recorded (the client gives up at
        // its timeout), so that one is watched for 8 s, many timeouts past the join.
        let started = Instant::now();
        let mut first_attempt: Option<Instant> = None;
        loop {
            let attempts = env.sandbox.attempts().len();
            if attempts > 0 {
                let since = *first_attempt.get_or_insert_with(Instant::now);
                if since.elapsed() >= Duration::from_secs(3) && attempts >= 2 {
                    break;
                }
            }
            if label == "stalled" && started.elapsed() >= Duration::from_secs(8) {
                break;
            }
            assert!(
                started.elapsed() < Duration::from_secs(60),
                "{label}: {attempts} attempts within 60 s"
            );
            let (ends, committed) = tokio::task::block_in_place(|| env.offsets());
            for (tp, end) in &ends {
                if *end > 0 {
                    assert!(
                        committed.get(tp).is_none_or(|c| c < end),
                        "{label}: committed before a 2xx: {committed:?}"
                    );
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        assert!(
            env.dead_letters(0, Duration::from_millis(100)).is_empty(),
            "{label}: never dead-lettered"
        );

        env.script(vec![], Some(answer(200, 0)));
        env.wait_all_committed(Duration::from_secs(30)).await;
        assert!(env.sandbox.accepted_count() >= 1, "{label}");
        service.stop().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_calls_nothing_and_never_moves_the_real_group() {
    let env = TestEnv::new("dry").await;
    let event = json!({"event_id": "d", "outcome": "refund", "assessment": format!("projects/{PROJECT}/assessments/dry")});
    env.produce("fraud-signals", None, Some(&event.to_string()))
        .await;
    // A bad event: a dry run says it would dead-letter it and writes nothing.
    env.produce("fraud-signals", None, Some("not json")).await;
    let mut config = env.config();
    config.dry_run = true;
    let service = env.start(config);
    // It commits as its own group...
    let dry =
        kafka::offset_reader(&brokers(), &format!("{}-dry-run", env.config_base.group)).unwrap();
    let tp = (env.topic("fraud-signals"), 0);
    let started = std::time::Instant::now();
    loop {
        let parts: Vec<_> = (0..env.partitions).map(|p| (tp.0.clone(), p)).collect();
        let committed = tokio::task::block_in_place(|| kafka::committed_offsets(&dry, &parts));
        // Both records (the event and the bad one) committed by the dry run's group.
        let done: i64 = committed.unwrap().values().filter(|c| **c > 0).sum();
        if done >= 2 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "the dry run did not commit"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    drop(dry);
    service.stop().await;
    assert!(env.sandbox.attempts().is_empty());
    assert!(
        tokio::task::block_in_place(|| env.dead_letters(0, Duration::from_millis(500))).is_empty(),
        "a dry run wrote a dead letter"
    );
    // ... and the real group has not moved: a real run afterwards annotates the event.
    let (_, committed) = tokio::task::block_in_place(|| env.offsets());
    assert!(
        committed.values().all(|c| *c <= 0),
        "the real group moved: {committed:?}"
    );
    let service = env.start(env.config());
    env.wait_all_committed(Duration::from_secs(60)).await;
    service.stop().await;
    assert_eq!(env.sandbox.accepted_count(), 1);
}
