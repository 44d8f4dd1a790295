//! Decoding events: the SPEC example, bad input, timestamps, phone numbers, enum values.

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
        OutcomeEvent::decode(br#"{"event_id":"e","outcome":"x","transaction":{"event_type":"X"}}"#),
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

#[test]
fn timestamps_are_strict_rfc3339_and_sent_in_googles_form() {
    for (given, sent) in [
        ("2026-11-25T12:00:00Z", "2026-11-25T12:00:00Z"),
        ("2026-11-25t12:00:00z", "2026-11-25T12:00:00Z"),
        (
            "2026-11-25T12:00:00.123456789+01:00",
            "2026-11-25T12:00:00.123456789+01:00",
        ),
        ("2024-02-29T23:59:59-05:30", "2024-02-29T23:59:59-05:30"),
    ] {
        assert_eq!(google_time("t", given).as_deref(), Ok(sent), "{given}");
    }
    for bad in [
        "2026-11-25 12:00:00Z",
        "2026-11-25T12:00:00",
        "2026-11-25T12:00Z",
        "2026-11-25T12:00:00.1234567891Z",
        "2026-11-25T12:00:00.Z",
        "2026-11-25T12:00:00+0100",
        "2026-13-25T12:00:00Z",
        "2025-02-29T12:00:00Z",
        "yesterday",
        "2026-11-25T12:00:00Zjunk",
    ] {
        assert!(google_time("t", bad).is_err(), "{bad} accepted");
    }
    let event = OutcomeEvent::decode(
        br#"{"event_id":"e","outcome":"x","transaction":{"event_time":"2026-11-25t12:00:00z"}}"#,
    )
    .unwrap();
    assert_eq!(
        event.transaction.unwrap().event_time.as_deref(),
        Some("2026-11-25T12:00:00Z")
    );
    assert!(matches!(
        OutcomeEvent::decode(
            br#"{"event_id":"e","outcome":"x","occurred_at":"2026-11-25 12:00:00"}"#
        ),
        Err(DecodeError::Invalid {
            field: "occurred_at",
            ..
        })
    ));
}

#[test]
fn phone_authentication_is_checked_and_kept() {
    let event = OutcomeEvent::decode(
        br#"{"event_id":"e","outcome":"x","phone_authentication":{"phone_number":"+15555550100","event_time":"2026-11-25T12:00:00Z"}}"#,
    )
    .unwrap();
    let phone = event.phone_authentication.unwrap();
    assert_eq!(phone.phone_number, "+15555550100");
    assert_eq!(phone.event_time.as_deref(), Some("2026-11-25T12:00:00Z"));
    for bad in [
        r#"{"phone_number":"5555550100"}"#,
        r#"{"phone_number":"+0555550100"}"#,
        r#"{"phone_number":"+1555555010012345"}"#,
        r#"{"phone_number":"+1 555 555"}"#,
        r#"{"event_time":"2026-11-25T12:00:00Z"}"#,
        r#"{"phone_number":"+15555550100","event_time":"soon"}"#,
    ] {
        let json = format!(r#"{{"event_id":"e","outcome":"x","phone_authentication":{bad}}}"#);
        assert!(
            OutcomeEvent::decode(json.as_bytes()).is_err(),
            "{bad} accepted"
        );
    }
}

#[test]
fn unspecified_enum_values_are_refused() {
    for bad in [
        r#""annotation":"ANNOTATION_UNSPECIFIED""#,
        r#""reasons":["REASON_UNSPECIFIED"]"#,
        r#""transaction":{"event_type":"TRANSACTION_EVENT_TYPE_UNSPECIFIED"}"#,
    ] {
        let json = format!(r#"{{"event_id":"e","outcome":"x",{bad}}}"#);
        assert!(
            matches!(
                OutcomeEvent::decode(json.as_bytes()),
                Err(DecodeError::Invalid { .. })
            ),
            "{bad} accepted"
        );
    }
}
