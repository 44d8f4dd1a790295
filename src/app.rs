//! Startup: build every part from the config (IO happens here), serve the admin endpoints,
//! run the pipeline until shutdown, stop the admin server last.

use std::sync::Arc;
use std::time::Duration;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::admin;
use crate::annotate::AnnotateClient;
use crate::annotate::auth::Auth;
use crate::cache::{self, Cache};
use crate::config::{CacheBackend, Config};
use crate::health::Health;
use crate::pipeline::Service;
use crate::telemetry::Metrics;

/// Chooses credentials: the API key when configured, else Application Default Credentials.
pub fn auth(config: &Config) -> anyhow::Result<Auth> {
    match &config.recaptcha.api_key {
        Some(key) => Auth::api_key(key).context("recaptcha.api_key"),
        None if config.dry_run => Ok(Auth::None),
        None => Auth::application_default()
            .context("recaptcha.api_key is not set and Google Application Default Credentials are not available"),
    }
}

/// Runs the service until `shutdown` is cancelled, then drains and returns.
pub async fn run(config: Config, shutdown: CancellationToken) -> anyhow::Result<()> {
    let validated = config.validate()?;
    let metrics = Metrics::new();
    let health = Arc::new(Health::default());
    let listener = admin::bind(validated.admin_listen)
        .await
        .with_context(|| format!("admin.listen: cannot listen on {}", validated.admin_listen))?;
    let client = AnnotateClient::new(&validated.endpoint, auth(&config)?, &config.recaptcha)
        .context("building the HTTP client")?;
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        listener,
        admin::router(Arc::clone(&health), metrics.clone()),
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
    let service = Service::build(&config, &validated, cache, client, metrics, health)?;
    let result = service.run(shutdown).await;
    admin_stop.cancel();
    let _ = admin_task.await;
    result
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
                tracing::warn!(error = %e, retry_in_ms = delay.as_millis() as u64, "cache unreachable at start; waiting for it");
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
    let mut down = false;
    loop {
        tokio::select! {
            () = tokio::time::sleep(CACHE_PING_EVERY) => {}
            () = stop.cancelled() => return,
        }
        let result = tokio::time::timeout(CACHE_PING_EVERY, cache.ping()).await;
        let now_down = !matches!(result, Ok(Ok(())));
        if now_down {
            metrics.cache_errors.inc();
        }
        if now_down != down {
            match &result {
                Ok(Ok(())) => tracing::info!("cache reachable again"),
                Ok(Err(e)) => tracing::warn!(error = %e, "cache ping failed"),
                Err(_) => tracing::warn!("cache ping timed out"),
            }
            health.set_cache_down(now_down);
            down = now_down;
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
