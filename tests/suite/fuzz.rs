//! Property-based fuzzing of everything that reads outside input: event decoding and
//! planning (bytes and JSON shaped like events), assessment names, WAF tokens and the rule
//! engine (rules from config). The properties: no panic; no annotate URL built from a part
//! that was not validated (every name that comes out is one safe path); no allocation that
//! grows with a hostile input beyond the size limit.
//!
//! CI runs each property for `PROPTEST_CASES` cases (scripts/test.sh sets it so the whole
//! file takes about a minute); `scripts/test.sh --long` runs many more.

use proptest::prelude::*;
use recaptcha_annotator::annotate::AnnotateClient;
use recaptcha_annotator::annotate::auth::Auth;
use recaptcha_annotator::config::{Config, RecaptchaConfig};
use recaptcha_annotator::domain::assessment::{
    AssessmentId, AssessmentName, ProjectAllowList, ProjectRef,
};
use recaptcha_annotator::domain::event::{AssessmentEvent, OutcomeEvent};
use recaptcha_annotator::domain::rules::{OutcomeTopic, Rules};
use recaptcha_annotator::pipeline::message::{Message, TopicKind};
use recaptcha_annotator::pipeline::offsets::TopicPartition;
use recaptcha_annotator::pipeline::plan::{Plan, Planner, Target};

const MAX_EVENT_BYTES: usize = 64 * 1024;

/// What a name that may reach a URL must be: `projects/<seg>/assessments/<seg>` with each
/// segment of URL-unreserved characters (nothing a URL would escape) and no dot-dot.
fn assert_safe_name(name: &AssessmentName) {
    let parts: Vec<&str> = name.as_str().split('/').collect();
    assert_eq!(parts.len(), 4, "{name:?}");
    assert_eq!((parts[0], parts[2]), ("projects", "assessments"));
    for segment in [parts[1], parts[3]] {
        assert!(!segment.is_empty() && segment.len() <= 256, "{name:?}");
        assert!(!segment.contains(".."), "{name:?}");
        assert!(
            segment
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'.' | b'_' | b'~')),
            "{name:?}"
        );
    }
    // The URL the client builds keeps the name as its path, on the configured host.
    static CLIENT: std::sync::OnceLock<AnnotateClient> = std::sync::OnceLock::new();
    let client = CLIENT.get_or_init(|| {
        AnnotateClient::new(
            &reqwest::Url::parse("https://recaptchaenterprise.googleapis.com").unwrap(),
            Auth::None,
            &RecaptchaConfig {
                clients: 1,
                ..RecaptchaConfig::default()
            },
        )
        .unwrap()
    });
    // What goes over the wire, parsed again as a server would.
    let url = reqwest::Url::parse(&client.url(name).to_string()).unwrap();
    assert_eq!(url.host_str(), Some("recaptchaenterprise.googleapis.com"));
    assert_eq!(url.path(), format!("/v1/{}:annotate", name.as_str()));
    assert_eq!((url.query(), url.fragment()), (None, None));
}

fn planner() -> Planner {
    Planner::new(
        Rules::default(),
        Some(ProjectRef::parse("fuzz-project").unwrap()),
        ProjectAllowList::new(vec![]),
        MAX_EVENT_BYTES,
    )
}

fn message(kind: TopicKind, key: Option<Vec<u8>>, payload: Vec<u8>) -> Message {
    Message {
        tp: TopicPartition::new("t", 0),
        kind,
        offset: 0,
        key,
        payload: Some(payload),
        timestamp_ms: None,
        replay_count: None,
    }
}

fn kinds() -> impl Strategy<Value = TopicKind> {
    prop_oneof![
        Just(TopicKind::Assessments),
        Just(TopicKind::Outcome(OutcomeTopic::Logins)),
        Just(TopicKind::Outcome(OutcomeTopic::Registrations)),
        Just(TopicKind::Outcome(OutcomeTopic::FraudSignals)),
    ]
}

/// Strings that stress validation: separators, escapes, dots, unicode, long runs.
fn nasty() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-zA-Z0-9_-]{0,20}",
        "[ -~]{0,40}",
        "[a-z/.?#%:\\\\]{0,20}",
        "projects/[a-z0-9./%?#-]{0,12}/assessments/[A-Za-z0-9./%?#-]{0,20}",
        "[a-zA-Z0-9:=U_-]{10,60}",
        any::<String>(),
        "[a-z]{300,400}",
    ]
}

/// JSON values of any shape, a few levels deep.
fn json_value() -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::from),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>().prop_map(|f| serde_json::Number::from_f64(f)
            .map_or(serde_json::Value::Null, serde_json::Value::Number)),
        nasty().prop_map(serde_json::Value::from),
    ];
    leaf.prop_recursive(3, 24, 6, |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::from),
            prop::collection::btree_map(nasty(), inner, 0..6)
                .prop_map(|m| serde_json::Value::Object(m.into_iter().collect())),
        ]
    })
}

const FIELDS: &[&str] = &[
    "event_id",
    "outcome",
    "assessment",
    "recaptcha_token",
    "key",
    "annotation",
    "reasons",
    "account_id",
    "hashed_account_id",
    "transaction",
    "phone_authentication",
    "occurred_at",
    "event_type",
    "value",
    "reason",
    "phone_number",
    "event_time",
];

/// Objects with the events' own field names and values of any shape, often valid ones.
fn event_like() -> impl Strategy<Value = Vec<u8>> {
    let field = prop::sample::select(FIELDS);
    let value = prop_oneof![
        3 => nasty().prop_map(serde_json::Value::from),
        1 => Just(serde_json::Value::from("password_correct")),
        1 => Just(serde_json::Value::from("chargeback")),
        1 => Just(serde_json::Value::from("projects/fuzz-project/assessments/abc123")),
        1 => Just(serde_json::json!(["CHARGEBACK", "PAYMENT_HEURISTICS"])),
        1 => Just(serde_json::json!({"event_type": "CHARGEBACK", "value": 1.5, "event_time": "2026-11-25T10:00:00Z"})),
        2 => json_value(),
    ];
    prop::collection::btree_map(field, value, 0..10).prop_map(|m| {
        serde_json::to_vec(&serde_json::Value::Object(
            m.into_iter().map(|(k, v)| (k.to_owned(), v)).collect(),
        ))
        .unwrap()
    })
}

fn check_plan(plan: Result<Plan, recaptcha_annotator::failure::DeadLetter>) {
    match plan {
        Ok(Plan::Store { name, .. })
        | Ok(Plan::Annotate {
            target: Target::Known(name),
            ..
        }) => assert_safe_name(&name),
        Ok(Plan::Annotate { body, .. }) => {
            serde_json::from_slice::<serde_json::Value>(&body).unwrap();
        }
        Ok(Plan::Skip | Plan::Forget { .. }) | Err(_) => {}
    }
}

proptest! {
    #[test]
    fn any_bytes_plan_without_panic(kind in kinds(), key in prop::option::of(prop::collection::vec(any::<u8>(), 0..80)), payload in prop::collection::vec(any::<u8>(), 0..2048)) {
        let _ = OutcomeEvent::decode(&payload);
        let _ = AssessmentEvent::decode(&payload);
        check_plan(planner().plan(&message(kind, key, payload)));
    }

    #[test]
    fn event_shaped_json_plans_only_safe_names(kind in kinds(), key in prop::option::of(nasty()), payload in event_like()) {
        check_plan(planner().plan(&message(kind, key.map(String::into_bytes), payload)));
    }

    #[test]
    fn assessment_names_that_parse_are_safe(raw in nasty()) {
        if let Ok(name) = AssessmentName::parse(&raw) {
            prop_assert_eq!(name.as_str(), raw.as_str());
            assert_safe_name(&name);
        }
        if let (Ok(project), Ok(id)) = (ProjectRef::parse(&raw), AssessmentId::parse(&raw)) {
            assert_safe_name(&AssessmentName::from_parts(&project, &id));
        }
    }

    #[test]
    fn waf_tokens_give_sixteen_alphanumerics_or_nothing(raw in nasty()) {
        if let Ok(id) = AssessmentId::from_waf_token(&raw) {
            prop_assert_eq!(id.as_str().len(), 16);
            prop_assert!(id.as_str().bytes().all(|b| b.is_ascii_alphanumeric()));
            prop_assert!(raw.ends_with(id.as_str()));
        }
    }

    #[test]
    fn rules_from_any_config_never_panic(topic in prop::sample::select(&["logins", "registrations", "fraud_signals", "assessments", "other"][..]), outcome in nasty(), annotation in nasty(), reasons in prop::collection::vec(nasty(), 0..4), event_outcome in nasty()) {
        let mut rule = toml::Table::new();
        rule.insert("annotation".into(), annotation.into());
        rule.insert("reasons".into(), toml::Value::Array(reasons.into_iter().map(toml::Value::from).collect()));
        let mut outcomes = toml::Table::new();
        outcomes.insert(outcome, rule.into());
        let mut rules = toml::Table::new();
        rules.insert(topic.to_owned(), outcomes.into());
        let mut root = toml::Table::new();
        root.insert("rules".into(), rules.into());
        if let Ok(config) = Config::from_toml(&root.to_string())
            && let Ok(validated) = config.validate()
        {
            let event = serde_json::json!({"event_id": "e", "outcome": event_outcome});
            if let Ok(event) = OutcomeEvent::decode(event.to_string().as_bytes()) {
                for t in [OutcomeTopic::Logins, OutcomeTopic::Registrations, OutcomeTopic::FraudSignals] {
                    let _ = validated.rules.decide(t, &event);
                }
            }
        }
    }
}

#[test]
fn hostile_sizes_and_depths_are_refused_without_blowing_up() {
    // Larger than the limit: refused before decoding.
    let huge = vec![b'['; MAX_EVENT_BYTES + 1];
    let plan = planner().plan(&message(
        TopicKind::Outcome(OutcomeTopic::Logins),
        None,
        huge,
    ));
    assert!(plan.unwrap_err().detail.contains("larger than"));
    // Deep nesting within the limit: serde_json's recursion limit answers, no stack overflow.
    let mut deep = Vec::new();
    deep.extend(std::iter::repeat_n(b'[', MAX_EVENT_BYTES / 2));
    deep.extend(std::iter::repeat_n(b']', MAX_EVENT_BYTES / 2));
    assert!(OutcomeEvent::decode(&deep).is_err());
    let nested = format!(
        r#"{{"event_id":"e","outcome":"chargeback","reasons":{}{}}}"#,
        "[".repeat(10_000),
        "]".repeat(10_000)
    );
    assert!(OutcomeEvent::decode(nested.as_bytes()).is_err());
}
