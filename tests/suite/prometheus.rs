//! A real Prometheus (Debian's, which `scripts/check-deploy.sh` installs) scrapes a running
//! instance: the metrics operators' tools expect are there as Prometheus reads them
//! (`process_*`, `annotator_build_info` with the revision, event latency buckets reaching a
//! day, librdkafka's statistics).

use std::time::Duration;

use crate::common::*;
use serde_json::Value;

/// A Prometheus scraping `target` every second, on a port of its own; killed on drop.
struct Prometheus {
    child: std::process::Child,
    port: u16,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Self {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: recaptcha-annotator\n    static_configs:\n      - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = std::process::Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(std::process::Stdio::null())
            .stderr(std::process::Stdio::null())
            .spawn()
            .expect("prometheus (Debian's package; scripts/check-deploy.sh installs it)");
        Self {
            child,
            port,
            _dir: dir,
        }
    }

    /// The series of an instant query.
    async fn query(&self, query: &str) -> Vec<Value> {
        let url = format!("http://127.0.0.1:{}/api/v1/query", self.port);
        let Ok(answer) = reqwest::Client::new()
            .get(url)
            .query(&[("query", query)])
            .send()
            .await
        else {
            return Vec::new();
        };
        let body: Value = answer.json().await.unwrap_or_default();
        body["data"]["result"]
            .as_array()
            .cloned()
            .unwrap_or_default()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_what_operators_tools_expect() {
    let env = TestEnv::with_partitions("prometheus", 1).await;
    env.produce_bulk(unique_events("prom", 5)).await;
    let config = recaptcha_annotator::config::Config::from_toml(
        &env.config_toml("[kafka.properties]\n\"statistics.interval.ms\" = \"1000\"\n"),
    )
    .unwrap();
    let service = env.start(config);
    env.wait_all_committed(Duration::from_secs(60)).await;
    let prometheus = Prometheus::start(&format!("127.0.0.1:{}", env.admin_port));
    let wanted = [
        "process_resident_memory_bytes",
        "process_cpu_seconds_total",
        "process_open_fds",
        "annotator_build_info",
        "annotator_event_latency_seconds_bucket{le=\"86400\"}",
        "annotator_kafka_broker_rtt_seconds",
        "annotator_kafka_fetch_queue_messages",
        "annotator_kafka_partition_lag",
        "annotator_assigned_partitions",
    ];
    let started = std::time::Instant::now();
    let mut missing: Vec<&str> = wanted.to_vec();
    while !missing.is_empty() && started.elapsed() < Duration::from_secs(60) {
        tokio::time::sleep(Duration::from_millis(500)).await;
        let mut still = Vec::new();
        for query in missing {
            if prometheus.query(query).await.is_empty() {
                still.push(query);
            }
        }
        missing = still;
    }
    let build = prometheus.query("annotator_build_info").await;
    let rss = prometheus.query("process_resident_memory_bytes").await;
    service.stop().await;
    assert!(missing.is_empty(), "Prometheus never saw {missing:?}");
    let revision = build[0]["metric"]["revision"].as_str().unwrap_or_default();
    // git's revision in a checkout ("unknown" only where there is neither .git nor
    // ANNOTATOR_REVISION).
    assert!(!revision.is_empty(), "{:?}", build[0]["metric"]);
    let rss: f64 = rss[0]["value"][1].as_str().unwrap().parse().unwrap();
    assert!(rss > 1e6, "resident memory {rss}");
}
