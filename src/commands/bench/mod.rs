//! `recaptcha-annotator bench`: produces a backlog into the local broker, runs the service as
//! a separate process against the in-process sandbox with a chosen latency, and prints
//! events/s, produce-to-2xx percentiles, the service's CPU per 1,000 events and peak RSS;
//! then the same with `max_in_flight = 1` as the baseline.

use std::io::Write as _;
use std::time::{Duration, Instant, SystemTime, UNIX_EPOCH};

use anyhow::Context as _;
use serde_json::json;

use crate::{kafka, sandbox};

mod budget;
mod peer;
mod store;

/// One measured run.
#[derive(Debug)]
pub struct Figures {
    pub events: u64,
    /// From starting the service (includes start-up and the group join).
    pub seconds: f64,
    /// From the first accepted call.
    pub steady_seconds: f64,
    pub cpu_seconds: f64,
    pub peak_rss_kib: u64,
    pub p50_ms: u64,
    pub p99_ms: u64,
    /// The most calls the endpoint saw within one second.
    pub busiest_second: usize,
    /// What the cache took (Redis or the embedded store), when one was used.
    pub store: Option<String>,
}

impl Figures {
    /// Events per second from the first accepted call.
    pub fn rate(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let events = self.events as f64;
        events / self.steady_seconds
    }

    /// Events per second including start-up and the group join.
    pub fn rate_with_startup(&self) -> f64 {
        #[allow(clippy::cast_precision_loss)]
        let events = self.events as f64;
        events / self.seconds
    }
}

fn now_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(0))
}

/// utime + stime of a process, in seconds (Linux `/proc`).
fn cpu_seconds(pid: u32) -> Option<f64> {
    let stat = std::fs::read_to_string(format!("/proc/{pid}/stat")).ok()?;
    let fields: Vec<&str> = stat.rsplit_once(')')?.1.split_whitespace().collect();
    let ticks: f64 = fields.get(11)?.parse::<f64>().ok()? + fields.get(12)?.parse::<f64>().ok()?;
    Some(ticks / 100.0)
}

/// Peak resident set (`VmHWM`) in KiB.
fn peak_rss_kib(pid: u32) -> Option<u64> {
    let status = std::fs::read_to_string(format!("/proc/{pid}/status")).ok()?;
    status
        .lines()
        .find_map(|l| l.strip_prefix("VmHWM:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse().ok())
}

pub struct BenchArgs {
    pub brokers: String,
    pub events: u64,
    pub latency_ms: u64,
    pub max_in_flight: usize,
    pub partitions: i32,
    /// Stop after this long even if not all are done (the baseline at high latency).
    pub time_limit: Duration,
    /// Stall the endpoint and only measure RSS with the backlog.
    pub stalled: bool,
    /// Outcomes reference their assessment by key, joined through the cache.
    pub join: bool,
    /// `memory`, `embedded` or `redis`.
    pub backend: String,
    pub redis_url: String,
    /// `delivery.max_pending`; the service default when unset.
    pub max_pending: Option<usize>,
    /// HTTP/2 to the sandbox (as to Google, where ALPN picks it); else HTTP/1.1.
    pub http2: bool,
    /// `delivery.rate_limit`; 0 measures the pipeline without a budget.
    pub rate_limit: u32,
    /// Another implementation to run on the same workload after this one (a command that
    /// takes the service's command line, e.g. a peer in Python); both figures and their
    /// ratio are printed.
    pub service_cmd: Option<String>,
}

pub async fn run_once(args: &BenchArgs) -> anyhow::Result<Figures> {
    let stamp = now_ms();
    let prefix = format!("bench-{stamp}-");
    let topics = [
        "assessments",
        "logins",
        "registrations",
        "fraud-signals",
        "dead-letter",
    ]
    .map(|t| format!("{prefix}{t}"));
    let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
    kafka::create_topics(&args.brokers, &refs, args.partitions).await?;

    eprint!(
        "producing {} events{} ...",
        args.events,
        if args.join { " and their mappings" } else { "" }
    );
    // Batched, as real producers do.
    let producer = kafka::batched_producer(&args.brokers)?;
    // With --join the mappings go first, so every outcome joins from the cache.
    let phases: &[bool] = if args.join { &[true, false] } else { &[false] };
    for &mappings in phases {
        let mut produced = 0u64;
        while produced < args.events {
            let chunk = (args.events - produced).min(5000);
            let sends = (produced..produced + chunk).map(|i| {
                let key = format!("k{i}");
                let name = format!("projects/1/assessments/b{i}");
                let (topic, value) = if mappings {
                    (&topics[0], json!({"key": key, "assessment": name}))
                } else if args.join {
                    (&topics[3], json!({"event_id": format!("b{i}"), "outcome": "chargeback", "key": key, "account_id": now_ms().to_string()}))
                } else {
                    (&topics[3], json!({"event_id": format!("b{i}"), "outcome": "chargeback", "assessment": name, "account_id": now_ms().to_string()}))
                };
                let value = value.to_string();
                let producer = &producer;
                async move {
                    let record = rdkafka::producer::FutureRecord::<str, str>::to(topic).payload(&value).key(&key);
                    producer.send(record, Duration::from_secs(60)).await.map_err(|(e, _)| e)
                }
            });
            for r in futures::future::join_all(sends).await {
                r.context("producing")?;
            }
            produced += chunk;
        }
    }
    eprintln!(" done");

    let sandbox = sandbox::Sandbox::new(
        None,
        if args.stalled {
            0
        } else {
            usize::try_from(args.events).unwrap_or(usize::MAX)
        },
    );
    let delay = if args.stalled {
        3_600_000
    } else {
        args.latency_ms
    };
    sandbox.set_script(sandbox::Script {
        responses: vec![],
        forbidden: None,
        quota: None,
        default: Some(sandbox::DefaultAnswer {
            status: 200,
            delay_ms: delay,
            jitter_ms: 0,
            retry_after: None,
        }),
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await?;
    let endpoint = format!("http://{}", listener.local_addr()?);
    tokio::spawn(sandbox::serve(listener, sandbox.clone()));

    let data = tempfile::tempdir()?;
    let max_pending = args
        .max_pending
        .map(|n| format!("max_pending = {n}\n"))
        .unwrap_or_default();
    let config = format!(
        r#"[kafka]
brokers = "{brokers}"
group_id = "{prefix}group"
[kafka.topics]
assessments = "{t0}"
logins = "{t1}"
registrations = "{t2}"
fraud_signals = "{t3}"
dead_letter = "{t4}"
[kafka.properties]
"session.timeout.ms" = "6000"
[recaptcha]
endpoint = "{endpoint}"
api_key = "bench"
http2_prior_knowledge = {http2}
[cache]
backend = "{backend}"
path = "{path}"
redis_url = "{redis_url}"
redis_prefix = "{prefix}key:"
redis_done_prefix = "{prefix}done:"
redis_budget_prefix = "{prefix}budget:"
[admin]
listen = "127.0.0.1:0"
[delivery]
max_in_flight = {in_flight}
# 0 (the default here) measures the pipeline, not a quota.
rate_limit = {rate_limit}
{max_pending}[log]
level = "warn"
"#,
        brokers = args.brokers,
        t0 = topics[0],
        t1 = topics[1],
        t2 = topics[2],
        t3 = topics[3],
        t4 = topics[4],
        backend = args.backend,
        path = data.path().join("cache.redb").display(),
        redis_url = args.redis_url,
        in_flight = args.max_in_flight,
        http2 = args.http2,
        rate_limit = args.rate_limit,
    );
    let mut file = tempfile::NamedTempFile::new()?;
    file.write_all(config.as_bytes())?;
    let redis_before = if args.backend == "redis" && args.service_cmd.is_none() && !args.stalled {
        store::redis_snapshot(&args.redis_url).await.ok()
    } else {
        None
    };
    let started = Instant::now();
    let mut child = match &args.service_cmd {
        None => std::process::Command::new(std::env::current_exe()?)
            .args(["run", "--config"])
            .arg(file.path())
            .spawn()?,
        Some(cmd) => peer::spawn(cmd, file.path(), data.path())?,
    };
    let pid = child.id();

    let reader = kafka::offset_reader(&args.brokers, &format!("{prefix}group"))?;
    let parts: Vec<_> = (0..args.partitions)
        .map(|p| (topics[3].clone(), p))
        .collect();
    let mut done = 0;
    let mut peak = 0;
    while started.elapsed() < args.time_limit {
        tokio::time::sleep(Duration::from_millis(200)).await;
        peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
        if args.stalled {
            continue;
        }
        done = sandbox.accepted_count();
        if done >= args.events {
            let committed: i64 = kafka::committed_offsets(&reader, &parts)?.values().sum();
            if u64::try_from(committed).unwrap_or(0) >= args.events {
                break;
            }
        }
    }
    let seconds = started.elapsed().as_secs_f64();
    let finished_ms = now_ms();
    let cpu = cpu_seconds(pid).unwrap_or(0.0);
    peak = peak.max(peak_rss_kib(pid).unwrap_or(0));
    let _ = std::process::Command::new("kill")
        .args(["-s", "TERM", &pid.to_string()])
        .status();
    let _ = child.wait();
    let complete = !args.stalled && sandbox.accepted_count() >= args.events;
    let store = store::line(args, redis_before.as_ref(), complete, &prefix, data.path()).await;

    let mut latencies: Vec<u64> = sandbox
        .recorded()
        .iter()
        .filter_map(|r| {
            Some(
                r.at_ms
                    .saturating_sub(r.body["accountId"].as_str()?.parse::<u64>().ok()?),
            )
        })
        .collect();
    latencies.sort_unstable();
    let pct = |p: usize| {
        latencies
            .get(latencies.len().saturating_sub(1) * p / 100)
            .copied()
            .unwrap_or(0)
    };
    // Steady state: from the first accepted call (after start-up and the group join) to the
    // last commit.
    let first_ms = sandbox
        .recorded()
        .iter()
        .map(|r| r.at_ms)
        .min()
        .unwrap_or(finished_ms);
    #[allow(clippy::cast_precision_loss)]
    let steady_seconds = (finished_ms.saturating_sub(first_ms) as f64 / 1000.0).max(0.001);
    Ok(Figures {
        events: done,
        seconds,
        steady_seconds,
        cpu_seconds: cpu,
        peak_rss_kib: peak,
        p50_ms: pct(50),
        p99_ms: pct(99),
        busiest_second: sandbox.busiest_second(),
        store,
    })
}

/// Microseconds of CPU per event.
pub(super) fn cpu_per_event(f: &Figures) -> f64 {
    #[allow(clippy::cast_precision_loss)]
    if f.events > 0 {
        f.cpu_seconds / f.events as f64 * 1_000_000.0
    } else {
        0.0
    }
}

fn print(label: &str, f: &Figures) {
    let cpu_per_event = cpu_per_event(f);
    println!(
        "{label:<28} events {:>8}  {:>7.0} events/s ({:>6.0} with start-up)  p50 {:>6} ms  p99 {:>6} ms  cpu {:.1} µs/event  peak RSS {:.1} MB",
        f.events,
        f.rate(),
        f.rate_with_startup(),
        f.p50_ms,
        f.p99_ms,
        cpu_per_event,
        f.peak_rss_kib as f64 / 1024.0
    );
    if let Some(store) = &f.store {
        println!("{:<28} {store}", "");
    }
}

pub async fn run(mut args: BenchArgs, baseline: bool) -> anyhow::Result<()> {
    println!(
        "workload: {} events backlog, endpoint latency {} ms, {} partitions (produce-to-2xx includes the backlog wait)",
        args.events, args.latency_ms, args.partitions
    );
    if args.stalled {
        let f = run_once(&args).await?;
        println!(
            "stalled endpoint, backlog {}: peak RSS {:.1} MB",
            args.events,
            f.peak_rss_kib as f64 / 1024.0
        );
        return Ok(());
    }
    if args.rate_limit > 0 {
        return budget::run(&args).await;
    }
    // This service first, then the other command on the same workload.
    let other_cmd = args.service_cmd.take();
    let main = run_once(&args).await?;
    print(&format!("max_in_flight = {}", args.max_in_flight), &main);
    if let Some(cmd) = other_cmd {
        let mut other_args = BenchArgs {
            service_cmd: Some(cmd.clone()),
            ..args
        };
        other_args.time_limit = other_args.time_limit.max(Duration::from_secs(600));
        let other = run_once(&other_args).await?;
        print(&cmd, &other);
        println!(
            "ratio (this service / {cmd}): {:.2}x events/s, {:.2}x less CPU per event, {:.2}x peak RSS",
            main.rate() / other.rate().max(f64::EPSILON),
            cpu_per_event(&other) / cpu_per_event(&main).max(f64::EPSILON),
            main.peak_rss_kib as f64 / (other.peak_rss_kib as f64).max(1.0)
        );
        return Ok(());
    }
    if baseline {
        args.max_in_flight = 1;
        args.time_limit = Duration::from_secs(20);
        let base = run_once(&args).await?;
        print("baseline max_in_flight = 1", &base);
        println!("ratio: {:.1}x", main.rate() / base.rate().max(f64::EPSILON));
    }
    Ok(())
}
