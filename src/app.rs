//! Startup: build every part from the config (IO happens here), serve the admin endpoints,
//! run the pipeline until shutdown, stop the admin server last.

use std::sync::Arc;

use anyhow::Context as _;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, Health};
use crate::annotate::AnnotateClient;
use crate::annotate::auth::Auth;
use crate::cache;
use crate::config::Config;
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
    let cache = cache::open(&config.cache)
        .await
        .with_context(|| format!("cache.backend = {:?}", config.cache.backend))?;
    let client = AnnotateClient::new(&validated.endpoint, auth(&config)?, &config.recaptcha)
        .context("building the HTTP client")?;
    let admin_stop = CancellationToken::new();
    let admin_task = tokio::spawn(admin::serve(
        listener,
        admin::router(Arc::clone(&health), metrics.clone()),
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
