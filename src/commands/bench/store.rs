//! What the cache costs per event, for `docs/CAPACITY.md`: Redis's commands, server CPU and
//! memory (from `INFO`, before and after the run, and `MEMORY USAGE` of one key of each
//! kind), or the embedded store's file size.

use std::collections::HashMap;

/// Redis's counters at one moment.
pub(super) struct RedisSnapshot {
    commands: f64,
    cpu_seconds: f64,
    used_memory: f64,
}

async fn info(
    conn: &mut redis::aio::MultiplexedConnection,
) -> anyhow::Result<HashMap<String, String>> {
    let text: String = redis::cmd("INFO")
        .arg("everything")
        .query_async(conn)
        .await?;
    Ok(text
        .lines()
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_owned(), v.trim().to_owned()))
        .collect())
}

async fn connect(url: &str) -> anyhow::Result<redis::aio::MultiplexedConnection> {
    Ok(redis::Client::open(url)?
        .get_multiplexed_async_connection()
        .await?)
}

/// Redis's command count, CPU and memory now.
pub(super) async fn redis_snapshot(url: &str) -> anyhow::Result<RedisSnapshot> {
    let info = info(&mut connect(url).await?).await?;
    let number = |k: &str| {
        info.get(k)
            .and_then(|v| v.parse::<f64>().ok())
            .unwrap_or(0.0)
    };
    Ok(RedisSnapshot {
        commands: number("total_commands_processed"),
        cpu_seconds: number("used_cpu_sys") + number("used_cpu_user"),
        used_memory: number("used_memory"),
    })
}

/// One line: commands and server CPU per event, memory growth per key written, and what
/// one mapping and one remembered event id take (`MEMORY USAGE`, key included).
async fn redis_report(
    url: &str,
    before: &RedisSnapshot,
    events: u64,
    keys: u64,
    prefix: &str,
) -> anyhow::Result<String> {
    let after = redis_snapshot(url).await?;
    let conn = connect(url).await?;
    let mapping = memory_usage(conn.clone(), &format!("{prefix}key:*")).await?;
    let done = memory_usage(conn, &format!("{prefix}done:*")).await?;
    #[allow(clippy::cast_precision_loss)]
    let (events, keys) = (events.max(1) as f64, keys.max(1) as f64);
    let shown = |b: Option<u64>| b.map_or_else(|| "-".to_owned(), |b| format!("{b} B"));
    Ok(format!(
        "redis: {:.2} commands per event, {:.1} µs server CPU per event, used_memory +{:.0} B per key written ({keys} keys); MEMORY USAGE of one mapping {}, of one remembered event id {}",
        (after.commands - before.commands) / events,
        (after.cpu_seconds - before.cpu_seconds) / events * 1e6,
        (after.used_memory - before.used_memory) / keys,
        shown(mapping),
        shown(done),
    ))
}

/// `MEMORY USAGE` of the first key matching `pattern`, if any.
async fn memory_usage(
    mut conn: redis::aio::MultiplexedConnection,
    pattern: &str,
) -> anyhow::Result<Option<u64>> {
    let mut cursor = 0_u64;
    loop {
        let (next, found): (u64, Vec<String>) = redis::cmd("SCAN")
            .arg(cursor)
            .arg("MATCH")
            .arg(pattern)
            .arg("COUNT")
            .arg(10_000)
            .query_async(&mut conn)
            .await?;
        if let Some(key) = found.first() {
            return Ok(redis::cmd("MEMORY")
                .arg("USAGE")
                .arg(key)
                .query_async(&mut conn)
                .await?);
        }
        if next == 0 {
            return Ok(None);
        }
        cursor = next;
    }
}

/// The embedded store's file: its size and bytes per key written.
fn embedded_report(path: &std::path::Path, keys: u64) -> String {
    let bytes = std::fs::metadata(path).map_or(0, |m| m.len());
    #[allow(clippy::cast_precision_loss)]
    let per_key = bytes as f64 / keys.max(1) as f64;
    format!(
        "embedded store: {:.1} MB on disk for {keys} keys written ({per_key:.0} B per key)",
        bytes as f64 / 1_048_576.0
    )
}

/// The store's line of a run, when it is known: only for a complete run (every event
/// annotated), of this service, with Redis or the embedded store.
pub(super) async fn line(
    args: &super::BenchArgs,
    redis_before: Option<&RedisSnapshot>,
    complete: bool,
    prefix: &str,
    data: &std::path::Path,
) -> Option<String> {
    // Keys written: a remembered id per annotated event, and with --join a mapping each.
    let keys = if args.join {
        2 * args.events
    } else {
        args.events
    };
    match (redis_before, args.backend.as_str()) {
        _ if !complete => None,
        // Best effort: a Redis that refuses INFO, SCAN or MEMORY loses this line, not the run.
        (Some(before), _) => Some(
            redis_report(&args.redis_url, before, args.events, keys, prefix)
                .await
                .unwrap_or_else(|e| format!("redis: no figures ({e})")),
        ),
        (None, "embedded") if args.service_cmd.is_none() => {
            Some(embedded_report(&data.join("cache.redb"), keys))
        }
        _ => None,
    }
}
