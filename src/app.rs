//! Startup and all wiring: every part is built here from the config (IO happens here), each
//! given only what it uses; then the admin endpoints are served, the pipeline runs until
//! shutdown, and the admin server stops last.

use std::collections::HashSet;
use std::sync::Arc;
use std::sync::atomic::AtomicUsize;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::annotate::AnnotateClient;
use crate::annotate::auth::Auth;
use crate::budget::redis::SharedBudget;
use crate::budget::{self, Budget, members};
use crate::cache::{self, Cache};
use crate::config::{CacheBackend, Config, Validated};
use crate::dead_letter::DeadLetterWriter;
use crate::domain::account::AccountHasher;
use crate::health::Health;
use crate::kafka;
use crate::pipeline::catchup::CatchUp;
use crate::pipeline::concurrency::Concurrency;
use crate::pipeline::deliver::{HaltGates, Sender};
use crate::pipeline::event::Runner;
use crate::pipeline::join::Joiner;
use crate::pipeline::lag::Lag;
use crate::pipeline::message::Topics;
use crate::pipeline::offsets::OffsetBook;
use crate::pipeline::plan::Planner;
use crate::pipeline::rebalance::{AnnotatorContext, Partitions};
use crate::pipeline::store::Store;
use crate::pipeline::{Consumer, Pipeline, Tuning};
use crate::telemetry::Metrics;

/// Chooses credentials: the API key when configured, else Application Default Credentials.
pub fn auth(config: &Config) -> anyhow::Result<Auth> {
    match &config.recaptcha.api_key {
        Some(key) => Auth::api_key(key).context("recaptcha.api_key"),
        None if config.dry_run => Ok(Auth::None),
        None => Auth::google(&config.recaptcha)
            .context("recaptcha.api_key is not set and Google credentials are not available"),
    }
}

/// Runs the service until `shutdown` is cancelled, then drains and returns.
pub async fn run(mut config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let validated = config.validate()?;
    if config.dry_run {
        let group = config.consumer_group().map_err(anyhow::Error::msg)?;
        tracing::warn!(group = %group, real_group = %config.kafka.group_id, "dry run: nothing is sent; consuming and committing as its own consumer group, so the real group's offsets do not move");
        config.kafka.group_id = group;
    }
    if validated.allowed.is_open() {
        tracing::warn!("{}", crate::config::OPEN_PROJECTS_RISK);
    }
    for warning in &validated.warnings {
        tracing::warn!("{warning}");
    }
    let metrics = Metrics::new();
    let topics = &config.kafka.topics;
    metrics.show_topics(
        &topics.assessments,
        &[&topics.logins, &topics.registrations, &topics.fraud_signals],
    );
    let health = Arc::new(Health::default());
    let listener = admin::bind(validated.admin_listen)
        .await
        .with_context(|| format!("admin.listen: cannot listen on {}", validated.admin_listen))?;
    let client = AnnotateClient::new(&validated.endpoint, auth(&config)?, &config.recaptcha)
        .context("building the HTTP client")?;
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        listener,
        admin::router(
            Arc::clone(&health),
            metrics.clone(),
            crate::status::Fixed {
                rate: config.delivery.rate_limit,
                burst: config.delivery.burst(),
                config: config.redacted_toml(),
            },
        ),
        admin_stop.clone(),
    ));
    let Some(cache) = open_cache(&config, &health, &shutdown).await? else {
        admin_stop.cancel();
        let _ = admin_task.await;
        return Ok(());
    };
    tokio::spawn(watch_cache(
        Arc::clone(&cache),
        Arc::clone(&health),
        metrics.clone(),
        admin_stop.clone(),
    ));
    tracing::info!(
        admin = %validated.admin_listen,
        cache = cache.name(),
        group = %config.kafka.group_id,
        dry_run = config.dry_run,
        "starting"
    );
    let parts = Parts {
        cache,
        client,
        budget: budget(&config, &validated, &metrics),
        metrics,
        health,
        stop: admin_stop.clone(),
    };
    let pipeline = pipeline(&config, &validated, parts)?;
    let result = pipeline.run(shutdown).await;
    admin_stop.cancel();
    let _ = admin_task.await;
    result
}

/// What the pipeline is built from, besides the config.
struct Parts {
    cache: Arc<dyn Cache>,
    client: AnnotateClient,
    /// Its group size is kept up to date from here on.
    budget: (Budget, Arc<AtomicUsize>),
    metrics: Metrics,
    health: Arc<Health>,
    /// Ends the helper tasks (the group size watch).
    stop: CancellationToken,
}

/// The quota budget: shared through Redis when that is the cache, else this instance's.
fn budget(config: &Config, validated: &Validated, metrics: &Metrics) -> (Budget, Arc<AtomicUsize>) {
    let d = &config.delivery;
    let mut known: HashSet<String> = d.project_rate_limits.keys().cloned().collect();
    known.extend(config.recaptcha.allowed_projects.iter().cloned());
    known.extend(validated.project.iter().map(|p| p.as_str().to_owned()));
    let settings = budget::Settings {
        rate: d.rate_limit,
        burst: d.burst(),
        project_caps: d.project_rate_limits.clone(),
        fallback: d.rate_limit_fallback,
        known_projects: known,
    };
    let limited = d.rate_limit > 0 || !d.project_rate_limits.is_empty();
    let shared = if limited && config.cache.backend == CacheBackend::Redis {
        // The URL was checked by the validation.
        crate::cache::link::RedisTarget::from_config(&config.cache)
            .ok()
            .and_then(|target| SharedBudget::new(target, &config.cache.redis_budget_prefix).ok())
    } else {
        None
    };
    let members = Arc::new(AtomicUsize::new(0));
    (
        Budget::new(settings, shared, Arc::clone(&members), metrics.clone()),
        members,
    )
}

/// Builds the pipeline: the consumer (subscribed) with its context, and every part an event
/// meets, each holding only what it uses.
fn pipeline(config: &Config, validated: &Validated, parts: Parts) -> anyhow::Result<Pipeline> {
    let Parts {
        cache,
        client,
        budget: (budget, members),
        metrics,
        health,
        stop,
    } = parts;
    let d = &config.delivery;
    // One voice for librdkafka across the service's clients.
    let log = kafka::LogContext::with_health(&config.kafka.brokers, Arc::clone(&health));
    let book = Arc::new(OffsetBook::default());
    let catch_up = Arc::new(CatchUp::default());
    let watermarks = Arc::new(
        kafka::group_reader(&config.kafka, &log).context("creating the watermark client")?,
    );
    let context_topics: Vec<String> = config
        .kafka
        .topics
        .consumed()
        .iter()
        .map(|t| (*t).to_owned())
        .collect();
    let context = AnnotatorContext {
        partitions: Arc::new(Partitions::new(
            Arc::clone(&book),
            Arc::clone(&catch_up),
            metrics.clone(),
            Arc::clone(&health),
        )),
        metrics: metrics.clone(),
        health: Arc::clone(&health),
        rebalance_timeout: d.rebalance_timeout,
        assessments_topic: Arc::from(config.kafka.topics.assessments.as_str()),
        watermarks: Arc::clone(&watermarks),
        topics: context_topics.clone(),
        shared_cache: cache.shared(),
        assignment_changed: Arc::default(),
        starts_at_end: kafka::starts_at_end(&config.kafka),
        log: Arc::clone(&log.0),
    };
    let consumer: Consumer = kafka::consumer_config(&config.kafka)
        .create_with_context(context)
        .context("creating the Kafka consumer")?;
    rdkafka::consumer::Consumer::subscribe(&consumer, &config.kafka.topics.consumed())
        .context("subscribing to the topics")?;
    let store = Arc::new(Store::new(
        cache,
        config.cache.ttl,
        config.cache.dedup_ttl,
        Arc::clone(&health),
    ));
    let joiner = Joiner {
        store: Arc::clone(&store),
        catch_up,
        book: Arc::clone(&book),
        allowed: validated.allowed.clone(),
        grace: d.join_grace,
        retry: d.join_retry,
        metrics: metrics.clone(),
    };
    let gate = HaltGates::new(
        Arc::clone(&health),
        metrics.clone(),
        d.halt_retry,
        d.forbidden_grace,
    );
    tokio::spawn(members::watch(
        Arc::clone(&watermarks),
        config.kafka.group_id.clone(),
        context_topics,
        {
            let book = Arc::clone(&book);
            move || book.owned().len()
        },
        members,
        stop,
    ));
    let sender = Sender::new(
        client,
        Concurrency::new(d.max_in_flight, d.adaptive_concurrency, metrics.clone()),
        budget,
        gate,
        metrics.clone(),
    );
    let dead_letters =
        DeadLetterWriter::new(&config.kafka, &log, Arc::clone(&health), metrics.clone())
            .context("creating the dead-letter producer")?;
    let runner = Runner {
        store,
        joiner,
        sender,
        dead_letters,
        book: Arc::clone(&book),
        metrics: metrics.clone(),
        health: Arc::clone(&health),
        retry: (d.retry_initial, d.retry_max),
        dry_run: config.dry_run,
    };
    let planner = Planner::new(
        validated.rules.clone(),
        validated.project.clone(),
        validated.allowed.clone(),
        d.max_event_bytes,
    )
    .hashing_accounts(
        config
            .recaptcha
            .account_id_hmac_key
            .as_ref()
            .map(AccountHasher::new),
    );
    Ok(Pipeline::new(
        consumer,
        Topics::new(&config.kafka.topics),
        planner,
        Arc::new(runner),
        Lag::new(
            watermarks,
            book,
            metrics.clone(),
            kafka::starts_at_end(&config.kafka),
        ),
        metrics,
        Tuning {
            commit_interval: config.kafka.commit_interval,
            max_pending: d.max_pending,
            max_pending_bytes: d.max_pending_bytes,
            shutdown_timeout: d.shutdown_timeout,
            lag_interval: config.admin.lag_interval,
        },
    ))
}

/// Opens the cache. A Redis server that does not answer yet is waited for (not ready:
/// `cache unreachable`), so an instance started before Redis comes up by itself. `None` when
/// shut down while waiting.
async fn open_cache(
    config: &Config,
    health: &Health,
    shutdown: &CancellationToken,
) -> anyhow::Result<Option<Arc<dyn Cache>>> {
    let mut delay = Duration::from_millis(500);
    loop {
        match cache::open(&config.cache).await {
            Ok(cache) => {
                health.set_cache_down(false);
                return Ok(Some(cache));
            }
            Err(e) if config.cache.backend == CacheBackend::Redis => {
                health.set_cache_down(true);
                tracing::warn!(cache = %format!("redis at {}", cache::link::RedisTarget::from_config(&config.cache).map_or_else(|_| "the configured Redis".to_owned(), |t| t.address())), error = %e, retry_in_ms = delay.as_millis() as u64, "cache unreachable at start; waiting for it");
                tokio::select! {
                    () = tokio::time::sleep(delay) => {}
                    () = shutdown.cancelled() => return Ok(None),
                }
                delay = (delay * 2).min(Duration::from_secs(10));
            }
            Err(e) => {
                return Err(e)
                    .with_context(|| format!("cache.backend = {:?}", config.cache.backend));
            }
        }
    }
}

/// How often the cache is pinged, so readiness follows it even without traffic.
const CACHE_PING_EVERY: Duration = Duration::from_secs(2);

/// Pings the cache until `stop`: readiness reports `cache unreachable` while it fails.
async fn watch_cache(
    cache: Arc<dyn Cache>,
    health: Arc<Health>,
    metrics: Metrics,
    stop: CancellationToken,
) {
    let location = cache.location();
    // Since when it is down, when that was last said, and the failures since.
    let mut down: Option<(tokio::time::Instant, tokio::time::Instant, u64)> = None;
    loop {
        tokio::select! {
            () = tokio::time::sleep(CACHE_PING_EVERY) => {}
            () = stop.cancelled() => return,
        }
        let result = tokio::time::timeout(CACHE_PING_EVERY, cache.ping()).await;
        let error = match &result {
            Ok(Ok(())) => None,
            Ok(Err(e)) => Some(e.to_string()),
            Err(_) => Some("no answer in time".to_owned()),
        };
        match (&mut down, error) {
            (None, Some(error)) => {
                metrics.cache_errors.inc();
                metrics.cache_ping_changed(&location, Some(&error));
                health.set_cache_down(true);
                let now = tokio::time::Instant::now();
                down = Some((now, now, 0));
            }
            (Some((since, said, failures)), Some(_)) => {
                metrics.cache_errors.inc();
                *failures += 1;
                if said.elapsed() >= crate::kafka::REPORT_EVERY {
                    metrics.cache_still_down(&location, since.elapsed(), *failures);
                    *said = tokio::time::Instant::now();
                    *failures = 0;
                }
            }
            (Some(_), None) => {
                metrics.cache_ping_changed(&location, None);
                health.set_cache_down(false);
                down = None;
            }
            (None, None) => {}
        }
    }
}

/// Cancels the returned token on SIGTERM or SIGINT.
pub fn shutdown_on_signals() -> CancellationToken {
    let token = CancellationToken::new();
    let cancel = token.clone();
    tokio::spawn(async move {
        let ctrl_c = tokio::signal::ctrl_c();
        #[cfg(unix)]
        {
            let mut term =
                match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    Ok(s) => s,
                    Err(e) => {
                        tracing::error!(error = %e, "cannot listen for SIGTERM");
                        let _ = ctrl_c.await;
                        cancel.cancel();
                        return;
                    }
                };
            tokio::select! {
                _ = ctrl_c => tracing::info!("SIGINT received"),
                _ = term.recv() => tracing::info!("SIGTERM received"),
            }
        }
        #[cfg(not(unix))]
        let _ = ctrl_c.await;
        cancel.cancel();
    });
    token
}
