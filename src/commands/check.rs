//! `recaptcha-annotator check`: validates the config, reaches the broker, the cache and the
//! endpoint, and prints the effective config with secrets redacted.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};

use crate::annotate::auth::Auth;
use crate::budget::gcra::Rate;
use crate::budget::redis::SharedBudget;
use crate::config::{Config, KafkaConfig};
use crate::{app, cache, kafka};

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

fn check_broker(config: &KafkaConfig) -> Result<String, String> {
    let client: BaseConsumer = kafka::metadata_client(config).map_err(|e| e.to_string())?;
    let metadata = client
        .fetch_metadata(None, Duration::from_secs(5))
        .map_err(|e| format!("{} unreachable: {e}", config.brokers))?;
    let t = &config.topics;
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
        Ok(format!("{} answers; all 5 topics exist", config.brokers))
    } else {
        Err(format!(
            "{} answers, but these topics are missing: {}",
            config.brokers,
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

/// What the budget is, and for the group's budget that Redis runs its script.
async fn check_budget(config: &Config) -> Result<String, String> {
    let d = &config.delivery;
    if d.rate_limit == 0 && d.project_rate_limits.is_empty() {
        return Ok(
            "none (delivery.rate_limit = 0): calls are limited by the in-flight bound only".into(),
        );
    }
    let caps = if d.project_rate_limits.is_empty() {
        String::new()
    } else {
        let list: Vec<String> = d
            .project_rate_limits
            .iter()
            .map(|(p, c)| format!("{p} {c}/s"))
            .collect();
        format!("; project caps: {}", list.join(", "))
    };
    let rate = if d.rate_limit == 0 {
        "no overall budget".to_owned()
    } else {
        format!(
            "{}/s, burst {}",
            d.rate_limit,
            d.rate_burst.unwrap_or(d.rate_limit / 10).max(1)
        )
    };
    if config.cache.backend != crate::config::CacheBackend::Redis {
        return Ok(format!("{rate} per instance (no Redis to share it){caps}"));
    }
    let shared = SharedBudget::new(&config.cache.redis_url, &config.cache.redis_budget_prefix)
        .map_err(|e| e.0)?;
    let probe = Rate {
        per_second: 1_000_000.0,
        burst: 1_000_000,
    };
    tokio::time::timeout(Duration::from_secs(5), shared.take(&[("check", probe)]))
        .await
        .map_err(|_| "Redis did not run the budget script within 5 s".to_owned())?
        .map_err(|e| {
            format!(
                "Redis did not run the budget script (is EVAL allowed?): {}",
                e.0
            )
        })?
        .map_err(|_| "the probe was refused".to_owned())?;
    Ok(format!(
        "{rate} for the whole group, shared through Redis (its script runs){caps}"
    ))
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
    let for_broker = KafkaConfig {
        brokers: config.kafka.brokers.clone(),
        topics: config.kafka.topics.clone(),
        properties: config.kafka.properties.clone(),
        ..Default::default()
    };
    let broker = tokio::task::spawn_blocking(move || check_broker(&for_broker)).await?;
    Ok(vec![
        Finding {
            what: "config",
            ok: true,
            detail: {
                let mut detail = "valid".to_owned();
                let open = validated
                    .allowed
                    .is_open()
                    .then_some(crate::config::OPEN_PROJECTS_RISK.to_owned());
                for warning in open.into_iter().chain(validated.warnings.iter().cloned()) {
                    detail.push_str("; warning: ");
                    detail.push_str(&warning);
                }
                detail
            },
        },
        finding("broker", broker),
        finding("cache", check_cache(config).await),
        finding("budget", check_budget(config).await),
        finding(
            "endpoint",
            check_endpoint(config, &validated.endpoint).await,
        ),
    ])
}

/// `check`: prints the effective config with secrets redacted, then every finding; fails
/// naming what failed.
pub async fn main(config: &Config) -> anyhow::Result<()> {
    println!(
        "effective configuration (secrets redacted):\n{}\n",
        redacted(config)
    );
    let findings = run(config).await?;
    let mut failed = Vec::new();
    for f in &findings {
        println!(
            "{} {:<8} {}",
            if f.ok { "ok  " } else { "FAIL" },
            f.what,
            f.detail
        );
        if !f.ok {
            failed.push(f.what);
        }
    }
    anyhow::ensure!(failed.is_empty(), "check failed: {}", failed.join(", "));
    Ok(())
}

/// The effective config as text with secrets redacted (the API key and Redis URL are
/// secret types; librdkafka properties that hold secrets are replaced here).
pub fn redacted(config: &Config) -> String {
    let mut text = format!("{config:#?}");
    for (key, value) in config
        .kafka
        .properties
        .iter()
        .filter(|(k, _)| kafka::is_secret_property(k))
    {
        text = text.replace(
            &format!("{key:?}: {value:?}"),
            &format!("{key:?}: \"[redacted]\""),
        );
    }
    text
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let config = Config::from_toml(
            "[recaptcha]\napi_key = \"AIzaSECRET\"\n[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n[cache]\nredis_url = \"redis://:pw@h\"",
        )
        .unwrap();
        let text = redacted(&config);
        assert!(
            !text.contains("AIzaSECRET") && !text.contains("hunter2") && !text.contains(":pw@"),
            "{text}"
        );
    }
}
