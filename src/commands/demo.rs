//! `recaptcha-annotator demo`: the whole flow on one machine, printing what was annotated
//! and what was committed.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use anyhow::Context as _;
use secrecy::SecretString;
use serde_json::json;
use tokio_util::sync::CancellationToken;

use crate::config::Config;
use crate::domain::rules::{OutcomeTopic, Rules};
use crate::{app, kafka, sandbox};

const DEMO_KEY: &str = "demo-api-key";
const PROJECT: &str = "123456789";

/// `(key, value)` of assessment events and `(topic, key, value)` of outcome events.
type Samples = (Vec<(String, String)>, Vec<(String, String, String)>);

/// Sample events: for every rule, one outcome event for the assessment `names[i]` (made by
/// the sandbox's `create`, as the site's own call would), the reference form rotating
/// between the inline name, the WAF token and the key join; plus two bad events for the
/// dead-letter topic.
pub fn sample_events(
    rules: &Rules,
    names: &[String],
    topic_name: impl Fn(OutcomeTopic) -> String,
) -> Samples {
    let mut assessments = Vec::new();
    let mut outcomes = Vec::new();
    for (i, ((topic, outcome), name)) in rules.outcomes().into_iter().zip(names).enumerate() {
        let id = name.rsplit('/').next().unwrap_or_default();
        let key = format!("{}-{i}", topic.as_str());
        let mut event = json!({"event_id": format!("demo-{i}"), "outcome": outcome, "occurred_at": "2026-11-25T12:00:04Z"});
        match i % 3 {
            0 => event["assessment"] = json!(name),
            1 => event["recaptcha_token"] = json!(format!("03AFcWeA-demo-token:U={id}")),
            _ => {
                event["key"] = json!(key);
                assessments.push((
                    key.clone(),
                    json!({"key": key, "assessment": name, "created_at": "2026-11-25T12:00:00Z"})
                        .to_string(),
                ));
            }
        }
        if topic == OutcomeTopic::FraudSignals {
            event["transaction"] = json!({"event_type": "CHARGEBACK", "reason": "6005", "value": 12.5, "event_time": "2026-11-25T12:00:00Z"});
        }
        event["account_id"] = json!(format!("u-{i}"));
        outcomes.push((topic_name(topic), key, event.to_string()));
    }
    outcomes.push((
        topic_name(OutcomeTopic::Logins),
        "bad-1".into(),
        "not json".into(),
    ));
    outcomes.push((
        topic_name(OutcomeTopic::Logins),
        "bad-2".into(),
        json!({"event_id": "bad-2", "outcome": "password_correct", "assessment": "projects/p/assessments/../../v1/x"}).to_string(),
    ));
    (assessments, outcomes)
}

/// What a site does when it protects an action: `assessments.create`, `n` times; returns the
/// names Google (here the sandbox) gives back.
async fn create_assessments(endpoint: &str, n: usize) -> anyhow::Result<Vec<String>> {
    let client = reqwest::Client::new();
    let mut names = Vec::with_capacity(n);
    for _ in 0..n {
        let created: serde_json::Value = client
            .post(format!("{endpoint}/v1/projects/{PROJECT}/assessments"))
            .header("x-goog-api-key", DEMO_KEY)
            .json(&json!({"event": {"token": "demo-token", "siteKey": "demo-site-key"}}))
            .send()
            .await
            .context("assessments.create at the sandbox")?
            .error_for_status()?
            .json()
            .await?;
        let name = created["name"]
            .as_str()
            .context("assessments.create returned no name")?;
        names.push(name.to_owned());
    }
    Ok(names)
}

pub async fn run(mut config: Config) -> anyhow::Result<()> {
    let stamp = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)?
        .as_millis();
    let prefix = format!("demo-{stamp}-");
    let t = &mut config.kafka.topics;
    for name in [
        &mut t.assessments,
        &mut t.logins,
        &mut t.registrations,
        &mut t.fraud_signals,
        &mut t.dead_letter,
    ] {
        *name = format!("{prefix}{name}");
    }
    config.kafka.group_id = format!("{prefix}group");
    config
        .kafka
        .properties
        .entry("session.timeout.ms".into())
        .or_insert_with(|| "6000".into());
    config
        .kafka
        .properties
        .entry("heartbeat.interval.ms".into())
        .or_insert_with(|| "500".into());
    let data_dir =
        tempfile::tempdir().context("creating a temporary folder for the embedded store")?;
    config.cache.path = data_dir.path().join("cache.redb");
    config.admin.listen = "127.0.0.1:0".into();
    config.delivery.join_grace = Duration::from_secs(10);

    // Strict: only assessments it created can be annotated, as at Google.
    let sandbox = sandbox::Sandbox::new(Some(DEMO_KEY.into()), 10_000).strict(vec![PROJECT.into()]);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    config.recaptcha.endpoint = format!("http://{}", listener.local_addr()?);
    config.recaptcha.api_key = Some(SecretString::from(DEMO_KEY));
    config.recaptcha.project = Some(PROJECT.into());
    tokio::spawn(sandbox::serve(listener, sandbox.clone()));

    let brokers = config.kafka.brokers.clone();
    let topics = config.kafka.topics.clone();
    println!(
        "broker {brokers}; sandbox endpoint {}; topics {prefix}*",
        config.recaptcha.endpoint
    );
    let mut all = topics.consumed().to_vec();
    all.push(&topics.dead_letter);
    kafka::create_topics(&brokers, &all, 2).await?;

    let rules = config.validate()?.rules;
    let names = create_assessments(&config.recaptcha.endpoint, rules.outcomes().len()).await?;
    let (assessments, outcomes) = sample_events(&rules, &names, |t| topics.outcome(t).to_owned());
    let producer = kafka::producer(&brokers)?;
    for (key, value) in &assessments {
        kafka::produce(
            &producer,
            &topics.assessments,
            Some(key),
            Some(value.as_bytes()),
        )
        .await?;
    }
    for (topic, key, value) in &outcomes {
        kafka::produce(&producer, topic, Some(key), Some(value.as_bytes())).await?;
    }
    println!(
        "produced {} assessment events and {} outcome events",
        assessments.len(),
        outcomes.len()
    );

    let group = config.kafka.group_id.clone();
    let stop = CancellationToken::new();
    let service = tokio::spawn(app::run(config, stop.clone()));
    let reader = kafka::offset_reader(&brokers, &group)?;
    let consumed = topics.consumed();
    let ends = kafka::end_offsets(&reader, &consumed)?;
    let partitions: Vec<_> = ends.keys().cloned().collect();
    let started = Instant::now();
    let mut committed = BTreeMap::new();
    let mut last_print = 0;
    while started.elapsed() < Duration::from_secs(90) {
        committed = kafka::committed_offsets(&reader, &partitions)?;
        let done: i64 = ends
            .iter()
            .map(|(tp, end)| committed.get(tp).copied().unwrap_or(0).min(*end))
            .sum();
        let total: i64 = ends.values().sum();
        if done != last_print {
            println!("committed {done}/{total} messages");
            last_print = done;
        }
        if done == total {
            break;
        }
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    stop.cancel();
    service.await.context("service task")??;

    println!(
        "\nannotated ({} calls accepted by the sandbox):",
        sandbox.accepted_count()
    );
    for r in sandbox.recorded() {
        println!("  POST /v1/{}:annotate {}", r.name, r.body);
    }
    println!("\ncommitted offsets (topic/partition: committed / end):");
    let mut all_done = true;
    for (tp, end) in &ends {
        let c = committed.get(tp).copied();
        all_done &= c.unwrap_or(0) >= *end;
        println!(
            "  {}/{}: {} / {end}",
            tp.0,
            tp.1,
            c.map_or("-".into(), |c| c.to_string())
        );
    }
    println!(
        "\ndead-lettered: 2 bad events are expected in {}",
        topics.dead_letter
    );
    anyhow::ensure!(all_done, "not every message was committed within 90 s");
    println!("\nok: every event annotated or dead-lettered, every offset committed");
    Ok(())
}
