//! `recaptcha-annotator check`: validates the config, reaches the broker, the cache and the
//! endpoint, and prints the effective config with secrets redacted.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};

use crate::annotate::auth::Auth;
use crate::config::Config;
use crate::{app, cache};

/// One line of the report.
pub struct Finding {
    pub what: &'static str,
    pub ok: bool,
    pub detail: String,
}

fn finding(what: &'static str, result: Result<String, String>) -> Finding {
    match result {
        Ok(detail) => Finding {
            what,
            ok: true,
            detail,
        },
        Err(detail) => Finding {
            what,
            ok: false,
            detail,
        },
    }
}

fn check_broker(config: &Config) -> Result<String, String> {
    let client: BaseConsumer = config.kafka.client().create().map_err(|e| e.to_string())?;
    let metadata = client
        .fetch_metadata(None, Duration::from_secs(5))
        .map_err(|e| format!("{} unreachable: {e}", config.kafka.brokers))?;
    let t = &config.kafka.topics;
    let mut missing = Vec::new();
    for topic in t.consumed().into_iter().chain([t.dead_letter.as_str()]) {
        if !metadata
            .topics()
            .iter()
            .any(|m| m.name() == topic && !m.partitions().is_empty())
        {
            missing.push(topic.to_owned());
        }
    }
    if missing.is_empty() {
        Ok(format!(
            "{} answers; all 5 topics exist",
            config.kafka.brokers
        ))
    } else {
        Err(format!(
            "{} answers, but these topics are missing: {}",
            config.kafka.brokers,
            missing.join(", ")
        ))
    }
}

async fn check_cache(config: &Config) -> Result<String, String> {
    let opened = tokio::time::timeout(Duration::from_secs(10), cache::open(&config.cache))
        .await
        .map_err(|_| "no answer within 10 s".to_owned())?
        .map_err(|e| e.to_string())?;
    opened.ping().await.map_err(|e| e.to_string())?;
    Ok(format!("{} backend answers", opened.name()))
}

async fn check_endpoint(config: &Config, endpoint: &reqwest::Url) -> Result<String, String> {
    let auth = app::auth(config).map_err(|e| format!("{e:#}"))?;
    if let Auth::Google(_) = auth {
        auth.headers().await.map_err(|e| e.to_string())?;
    }
    let client = reqwest::Client::builder()
        .timeout(Duration::from_secs(5))
        .build()
        .map_err(|e| e.to_string())?;
    let response = client
        .get(endpoint.clone())
        .send()
        .await
        .map_err(|e| format!("{endpoint} unreachable: {e}"))?;
    let credentials = match auth {
        Auth::ApiKey(_) => "API key configured",
        Auth::Google(_) => "Google credentials produced a token",
        Auth::None => "no credentials (dry run)",
    };
    Ok(format!(
        "{endpoint} answers (HTTP {}); {credentials}",
        response.status().as_u16()
    ))
}

/// Runs every check; `Err` lists what failed.
pub async fn run(config: &Config) -> anyhow::Result<Vec<Finding>> {
    let validated = config.validate()?;
    let broker_config = config.kafka.brokers.clone();
    let topics = config.kafka.topics.clone();
    let for_broker = Config {
        kafka: crate::config::KafkaConfig {
            brokers: broker_config,
            topics,
            properties: config.kafka.properties.clone(),
            ..Default::default()
        },
        ..Default::default()
    };
    let broker = tokio::task::spawn_blocking(move || check_broker(&for_broker)).await?;
    Ok(vec![
        Finding {
            what: "config",
            ok: true,
            detail: "valid".into(),
        },
        finding("broker", broker),
        finding("cache", check_cache(config).await),
        finding(
            "endpoint",
            check_endpoint(config, &validated.endpoint).await,
        ),
    ])
}
