//! `bench --rate-limit`: the backlog drained within a budget, and what the limiter itself
//! costs per call.

use super::{BenchArgs, cpu_per_event, cpu_seconds, now_ms, run_once};

/// With a budget: how long the backlog takes to drain, the endpoint's busiest second, and
/// what the limiter itself costs per call (measured apart, with a budget too large to wait).
pub(super) async fn run(args: &BenchArgs) -> anyhow::Result<()> {
    let f = run_once(args).await?;
    let cpu_per_event = cpu_per_event(&f);
    println!(
        "budget {}/s, backend {}: {} events drained in {:.1} s ({:.0} events/s from the first call); busiest second at the endpoint {} calls; cpu {:.1} µs/event; peak RSS {:.1} MB",
        args.rate_limit,
        args.backend,
        f.events,
        f.steady_seconds,
        f.rate(),
        f.busiest_second,
        cpu_per_event,
        f.peak_rss_kib as f64 / 1024.0
    );
    let calls = 20_000;
    let local = limiter_cost(None, calls).await?;
    println!(
        "limiter alone, local: {:.2} µs CPU per call ({calls} calls)",
        local * 1e6
    );
    if args.backend == "redis" {
        let shared = limiter_cost(Some(&args.redis_url), calls).await?;
        println!(
            "limiter alone, Redis: {:.1} µs CPU per call in this process, one round trip each ({calls} calls)",
            shared * 1e6
        );
    }
    Ok(())
}

/// CPU seconds of this process per budget call, with a budget that never makes one wait.
async fn limiter_cost(redis_url: Option<&str>, calls: u32) -> anyhow::Result<f64> {
    use crate::budget::{Budget, Settings, redis::SharedBudget};
    let prefix = format!("bench-{}-budget:", now_ms());
    let shared = redis_url
        .map(|url| {
            SharedBudget::new(
                crate::cache::link::RedisTarget::single(&secrecy::SecretString::from(
                    url.to_owned(),
                )),
                &prefix,
            )
        })
        .transpose()
        .map_err(|e| anyhow::anyhow!("redis: {}", e.0))?;
    let budget = Budget::new(
        Settings {
            rate: 100_000_000,
            burst: 100_000_000,
            ..Settings::default()
        },
        shared,
        std::sync::Arc::default(),
        crate::telemetry::Metrics::new(),
    );
    let me = std::process::id();
    let before = cpu_seconds(me).unwrap_or(0.0);
    for _ in 0..calls {
        budget.admit("bench", || async {}).await;
    }
    let after = cpu_seconds(me).unwrap_or(0.0);
    Ok((after - before) / f64::from(calls))
}
