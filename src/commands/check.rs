//! `recaptcha-annotator check`: validates the config, reaches the broker, the cache and the
//! endpoint, and prints the effective config with secrets redacted.

use std::time::Duration;

use rdkafka::consumer::{BaseConsumer, Consumer as _};

use crate::annotate::AnnotateClient;
use crate::annotate::auth::{Auth, Source};
use crate::budget::gcra::Rate;
use crate::budget::redis::SharedBudget;
use crate::config::Validated;
use crate::config::{Config, KafkaConfig};
use crate::domain::assessment::{AssessmentId, AssessmentName};
use crate::failure::{Failure, HaltScope};
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
    let context = kafka::LogContext::new(&config.brokers);
    let log = std::sync::Arc::clone(&context.0);
    let client: BaseConsumer<kafka::LogContext> = kafka::client(config)
        .create_with_context(context)
        .map_err(|e| e.to_string())?;
    let metadata = client
        .fetch_metadata(None, Duration::from_secs(5))
        .map_err(|e| {
            // librdkafka's reason (TLS, SASL, refused) arrives as an error event on the
            // client's queue: serve it for a moment.
            let started = std::time::Instant::now();
            while log.last_failure().is_none() && started.elapsed() < Duration::from_secs(1) {
                let _ = client.poll(Duration::from_millis(100));
            }
            match log.last_failure() {
                Some(why) => format!("{} unreachable: {e}: {why}", config.brokers),
                None => format!("{} unreachable: {e}", config.brokers),
            }
        })?;
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
    // `check` changes nothing on disk: a store is not created, nor opened (opening writes,
    // and a running service holds its lock).
    if config.cache.backend == crate::config::CacheBackend::Embedded && config.cache.path.exists() {
        let meta = std::fs::metadata(&config.cache.path)
            .map_err(|e| format!("embedded store {}: {e}", config.cache.path.display()))?;
        if !meta.is_file() || meta.permissions().readonly() {
            return Err(format!(
                "embedded store {} is not a writable file",
                config.cache.path.display()
            ));
        }
        return Ok(format!(
            "embedded store {} exists ({} bytes; not opened, so a running service keeps it)",
            config.cache.path.display(),
            meta.len()
        ));
    }
    if config.cache.backend == crate::config::CacheBackend::Embedded && !config.cache.path.exists()
    {
        let dir = config
            .cache
            .path
            .parent()
            .filter(|d| !d.as_os_str().is_empty())
            .unwrap_or(std::path::Path::new("."));
        let nearest = dir.ancestors().find(|d| d.exists()).unwrap_or(dir);
        let writable = std::fs::metadata(nearest).is_ok_and(|m| !m.permissions().readonly());
        return if writable {
            Ok(format!(
                "embedded store {} does not exist yet; `run` creates it ({} is writable)",
                config.cache.path.display(),
                nearest.display()
            ))
        } else {
            Err(format!(
                "embedded store {} does not exist and {} is not writable",
                config.cache.path.display(),
                nearest.display()
            ))
        };
    }
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
        format!("{}/s, burst {}", d.rate_limit, d.burst())
    };
    if config.cache.backend != crate::config::CacheBackend::Redis {
        return Ok(format!("{rate} per instance (no Redis to share it){caps}"));
    }
    let target = crate::cache::link::RedisTarget::from_config(&config.cache)?;
    let shared = SharedBudget::new(target, &config.cache.redis_budget_prefix).map_err(|e| e.0)?;
    let version = tokio::time::timeout(Duration::from_secs(5), shared.server_version())
        .await
        .map_err(|_| "Redis did not answer INFO within 5 s".to_owned())?
        .map_err(|e| format!("Redis did not answer INFO: {}", e.0))?;
    if !crate::budget::redis::runs_the_script(&version) {
        return Err(format!(
            "Redis {version} is too old for the group's budget: its script reads TIME, which needs Redis 5 or later (effects replication)"
        ));
    }
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
        "{rate} for the whole group, shared through Redis {version} (its script runs){caps}"
    ))
}

/// Which credentials the service would use and whether they give a token; never the key
/// or the token itself.
async fn check_auth(config: &Config) -> Result<String, String> {
    if config.recaptcha.api_key.is_some() {
        return Ok("API key (recaptcha.api_key), sent as x-goog-api-key".into());
    }
    let source = Source::find(&config.recaptcha).map_err(|e| e.to_string())?;
    let auth = app::auth(config).map_err(|e| format!("{source}: {e:#}"))?;
    let headers = auth
        .headers(Duration::from_secs(20))
        .await
        .map_err(|e| format!("{source}: {e}"))?;
    let quota = headers
        .get("x-goog-user-project")
        .and_then(|v| v.to_str().ok())
        .map(|p| format!("; quota project {p} (x-goog-user-project)"))
        .unwrap_or_default();
    Ok(format!(
        "Google credentials: {source}; a token was obtained (not shown){quota}"
    ))
}

async fn check_endpoint(config: &Config, endpoint: &reqwest::Url) -> Result<String, String> {
    let auth = app::auth(config).map_err(|e| format!("{e:#}"))?;
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
        Auth::Google(_) => "Google credentials",
        Auth::None => "no credentials (dry run)",
    };
    Ok(format!(
        "{endpoint} answers (HTTP {}); {credentials}",
        response.status().as_u16()
    ))
}

/// An assessment id that is well-formed but never made by Google.
const PROBE_ID: &str = "recaptchaAnnotatorCheckProbe0";

/// Proves the credentials with one annotate call for an assessment that cannot exist:
/// Google answers 404 `NOT_FOUND` (or 400) when the key and role are right, 401 or 403 when
/// not. Costs one request of the project's quota.
async fn check_credentials(config: &Config, validated: &Validated) -> Result<String, String> {
    let Some(project) = validated.project.clone() else {
        return Ok(
            "not proven: no recaptcha.project to send the probe to (set it, or run with --offline)"
                .into(),
        );
    };
    let id = AssessmentId::parse(PROBE_ID).map_err(|e| e.to_string())?;
    let name = AssessmentName::from_parts(&project, &id);
    let auth = app::auth(config).map_err(|e| format!("{e:#}"))?;
    let client = AnnotateClient::new(&validated.endpoint, auth, &config.recaptcha)
        .map_err(|e| e.to_string())?;
    let call = client
        .annotate(
            &name,
            bytes::Bytes::from_static(b"{\"annotation\":\"LEGITIMATE\"}"),
        )
        .await;
    let status = call
        .status
        .map_or_else(|| "no answer".to_owned(), |s| format!("HTTP {s}"));
    match call.result {
        Ok(()) => Ok(format!(
            "a probe annotate call for {name} was accepted ({status}): the credentials work (only a sandbox accepts an assessment it never made); it cost one request"
        )),
        // Only "no such assessment" proves the key and the role; another 4xx is a problem
        // `run` would dead-letter every event for.
        Err(Failure::DeadLetter(answer)) if call.status == Some(404) => Ok(format!(
            "project {} accepts the credentials: a probe for an assessment that cannot exist was answered {status} as expected ({}); it cost one request",
            project.as_str(),
            answer.detail
        )),
        Err(Failure::DeadLetter(answer)) => Err(format!(
            "the probe was refused ({status}) where Google answers 404 for an assessment that does not exist: {}",
            answer.detail
        )),
        Err(Failure::Halt(halt)) if halt.scope == HaltScope::Project => Err(format!(
            "project {} refuses the credentials ({status}): grant them the role recaptchaenterprise.agent on it, or fix recaptcha.project; {}",
            project.as_str(),
            halt.detail
        )),
        Err(Failure::Halt(halt)) => Err(format!(
            "the endpoint refuses the credentials or is not reCAPTCHA's ({status}): {}",
            halt.detail
        )),
        Err(Failure::Retry(retry)) => Err(format!(
            "the probe got no usable answer ({status}): {}",
            retry.detail
        )),
    }
}

/// Runs every check; `Err` lists what failed. `offline`: no annotate call.
pub async fn run(config: &Config, offline: bool) -> anyhow::Result<Vec<Finding>> {
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
        finding("auth", check_auth(config).await),
        finding(
            "endpoint",
            check_endpoint(config, &validated.endpoint).await,
        ),
        if offline {
            finding(
                "credentials",
                Ok("not proven (--offline): no annotate call was made".into()),
            )
        } else {
            finding("credentials", check_credentials(config, &validated).await)
        },
    ])
}

/// `check`: prints the effective config with secrets redacted, then every finding; fails
/// naming what failed.
pub async fn main(config: &Config, offline: bool) -> anyhow::Result<()> {
    println!(
        "effective configuration (secrets redacted):\n{}\n",
        config.redacted_toml()
    );
    let findings = run(config, offline).await?;
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
