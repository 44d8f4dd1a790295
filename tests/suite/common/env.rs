//! One test's world: its own topics, consumer group and sandbox endpoint, and the one
//! config builder both the in-process service and the binary are started from.

use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use recaptcha_annotator::config::Config;
use recaptcha_annotator::sandbox::{DefaultAnswer, Sandbox, Script, Scripted};
use recaptcha_annotator::{app, kafka};
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

use super::{API_KEY, Offsets, PROJECT, brokers, free_port};

static COUNTER: AtomicU32 = AtomicU32::new(0);

pub struct TestEnv {
    pub prefix: String,
    /// The bootstrap list of the broker this test runs on (the shared one unless
    /// [`TestEnv::on`] named one of the test's own).
    pub brokers: String,
    pub config_base: ConfigBase,
    pub sandbox: Sandbox,
    pub endpoint: String,
    pub admin_port: u16,
    pub partitions: i32,
    /// The group joins with KIP-848's consumer protocol (`group.protocol = consumer`)
    /// instead of the classic one.
    pub consumer_protocol: bool,
    /// (topic, partition) -> one past the highest offset this test produced.
    pub(super) produced: std::sync::Mutex<Offsets>,
    /// Why an instance started by [`TestEnv::start`] stopped by itself, if one did: the
    /// waits name it instead of timing out in silence.
    pub(super) ended: std::sync::Arc<std::sync::Mutex<Option<String>>>,
}

/// What each test may tweak before starting the service.
#[derive(Clone)]
pub struct ConfigBase {
    pub topics: [String; 5],
    pub group: String,
}

pub struct Running {
    pub stop: CancellationToken,
    pub handle: JoinHandle<anyhow::Result<()>>,
}

impl Running {
    pub async fn stop(self) {
        self.stop.cancel();
        tokio::time::timeout(Duration::from_secs(60), self.handle)
            .await
            .expect("service stops within 60 s")
            .expect("service task")
            .expect("service result");
    }
}

impl TestEnv {
    pub async fn new(name: &str) -> Self {
        Self::with_partitions(name, 2).await
    }

    pub async fn with_partitions(name: &str, partitions: i32) -> Self {
        Self::on(&brokers(), name, partitions).await
    }

    /// A test's world on the broker `brokers` (a [`super::KafkaCluster`] of its own).
    pub async fn on(brokers: &str, name: &str, partitions: i32) -> Self {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(
                tracing_subscriber::EnvFilter::try_from_default_env()
                    .unwrap_or_else(|_| "info,rdkafka=warn".into()),
            )
            .with_test_writer()
            .try_init();
        let n = COUNTER.fetch_add(1, Ordering::Relaxed);
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .unwrap()
            .as_nanos();
        let prefix = format!("t-{name}-{nanos}-{n}-");
        let topics = [
            "assessments",
            "logins",
            "registrations",
            "fraud-signals",
            "annotator-dead-letter",
        ]
        .map(|t| format!("{prefix}{t}"));
        let refs: Vec<&str> = topics.iter().map(String::as_str).collect();
        kafka::create_topics(brokers, &refs, partitions)
            .await
            .expect("create topics");
        let sandbox = Sandbox::new(Some(API_KEY.into()), 1_000_000);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint = format!("http://{}", listener.local_addr().unwrap());
        tokio::spawn(recaptcha_annotator::sandbox::serve(
            listener,
            sandbox.clone(),
        ));
        Self {
            config_base: ConfigBase {
                topics,
                group: format!("{prefix}group"),
            },
            prefix,
            brokers: brokers.to_owned(),
            sandbox,
            endpoint,
            admin_port: free_port(),
            partitions,
            consumer_protocol: false,
            produced: std::sync::Mutex::default(),
            ended: std::sync::Arc::default(),
        }
    }

    pub fn topic(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    pub fn dead_letter_topic(&self) -> String {
        self.config_base.topics[4].clone()
    }

    /// This test's config as TOML, with `extra` (TOML too) laid over it: memory cache,
    /// short timeouts and retries. The one source of both [`TestEnv::config`] and
    /// [`TestEnv::config_file`].
    pub fn config_toml(&self, extra: &str) -> String {
        let [a, l, r, f, d] = &self.config_base.topics;
        let base = format!(
            r#"
[kafka]
brokers = "{brokers}"
group_id = "{group}"
commit_interval = "100ms"
[kafka.topics]
assessments = "{a}"
logins = "{l}"
registrations = "{r}"
fraud_signals = "{f}"
dead_letter = "{d}"
[kafka.properties]
"session.timeout.ms" = "3000"
"heartbeat.interval.ms" = "300"
# The rebalance timeout: under load a join can wait that long for a member that already
# left; the default (300 s) would outlast every test.
"max.poll.interval.ms" = "15000"
[recaptcha]
endpoint = "{endpoint}"
api_key = "{API_KEY}"
project = "{PROJECT}"
# Long enough that a loaded machine does not time out a call the sandbox accepted (it
# would be retried and recorded twice); tests of timeouts set their own.
request_timeout = "10s"
[cache]
backend = "memory"
[admin]
listen = "127.0.0.1:{port}"
[delivery]
# Tests measure delivery, not a quota (the default is 100/s).
rate_limit = 0
retry_initial = "50ms"
retry_max = "500ms"
halt_retry = "500ms"
join_grace = "5s"
join_retry = "100ms"
"#,
            brokers = self.brokers,
            group = self.config_base.group,
            endpoint = self.endpoint,
            port = self.admin_port,
        );
        let mut merged: toml::Table = base.parse().expect("the base config is TOML");
        if self.consumer_protocol {
            // The broker owns the session and the assignment (broker.properties sets its
            // group.consumer.* settings short for tests).
            let properties = merged["kafka"]["properties"].as_table().unwrap().clone();
            let mut properties: toml::Table = properties
                .into_iter()
                .filter(|(k, _)| {
                    !recaptcha_annotator::kafka::CLASSIC_GROUP_PROPERTIES.contains(&k.as_str())
                })
                .collect();
            properties.insert("group.protocol".into(), "consumer".into());
            merged["kafka"]
                .as_table_mut()
                .unwrap()
                .insert("properties".into(), properties.into());
        }
        let over: toml::Table = extra.parse().expect("extra config is TOML");
        merge(&mut merged, over);
        merged.to_string()
    }

    /// The service config for this test (see [`TestEnv::config_toml`]).
    pub fn config(&self) -> Config {
        Config::from_toml(&self.config_toml("")).expect("the test config is valid")
    }

    /// A TOML file with this test's config and `extra`, for running the binary. Its admin
    /// port is a fresh one, so several processes of one test can run side by side.
    pub fn config_file(&self, extra: &str) -> tempfile::NamedTempFile {
        use std::io::Write as _;
        let port = format!("[admin]\nlisten = \"127.0.0.1:{}\"\n", free_port());
        let mut over: toml::Table = port.parse().expect("TOML");
        merge(&mut over, extra.parse().expect("extra config is TOML"));
        let text = self.config_toml(&over.to_string());
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
    }

    /// The binary on this test's config with `delivery.max_in_flight`, its admin on
    /// [`TestEnv::admin_port`] (so `/readyz` and `/metrics` reach it), logging warnings.
    /// The config file lives as long as the process needs it.
    pub fn spawn_logged_service(
        &self,
        max_in_flight: usize,
    ) -> (tempfile::NamedTempFile, super::Logged) {
        let file = self.config_file(&format!(
            "[delivery]\nmax_in_flight = {max_in_flight}\n[admin]\nlisten = \"127.0.0.1:{}\"\n",
            self.admin_port
        ));
        let service = super::spawn_logged(file.path(), "warn");
        (file, service)
    }

    /// Every one of `total` distinct events was annotated, and the calls repeated past one
    /// per event stay within `max_in_flight` (only calls in flight when something failed may
    /// repeat); `log` is shown if not. Returns how many were repeated.
    pub fn assert_all_annotated(&self, total: usize, max_in_flight: usize, log: &str) -> usize {
        let recorded = self.sandbox.recorded();
        let names: std::collections::BTreeSet<_> = recorded.iter().map(|r| &r.name).collect();
        assert_eq!(names.len(), total, "every event annotated: {log}");
        let repeated = recorded.len() - total;
        assert!(
            repeated <= max_in_flight,
            "{repeated} repeated calls, more than the {max_in_flight} in flight"
        );
        repeated
    }

    /// The service in this process. If it stops by itself with an error, the error is
    /// logged and kept for [`TestEnv::service_error`].
    pub fn start(&self, config: Config) -> Running {
        let stop = CancellationToken::new();
        let run = app::run(config, stop.clone());
        let ended = std::sync::Arc::clone(&self.ended);
        let handle = tokio::spawn(async move {
            let result = run.await;
            if let Err(e) = &result {
                tracing::error!("the service stopped: {e:#}");
                *ended.lock().unwrap() = Some(format!("{e:#}"));
            }
            result
        });
        Running { stop, handle }
    }

    /// The error an instance of [`TestEnv::start`] stopped with, if one did.
    pub fn service_error(&self) -> Option<String> {
        self.ended.lock().unwrap().clone()
    }

    pub fn script(&self, responses: Vec<Scripted>, default: Option<DefaultAnswer>) {
        self.sandbox.set_script(Script {
            responses,
            default,
            forbidden: None,
            quota: None,
        });
    }

    /// Names the sandbox refuses with 403 from now on (a project `projects/p/`, or one
    /// assessment); empty to refuse none.
    pub fn forbid(&self, names: &[String]) {
        self.sandbox.set_script(Script {
            forbidden: Some(names.to_vec()),
            quota: None,
            ..Script::default()
        });
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        super::admin_get(&format!("127.0.0.1:{}", self.admin_port), path).await
    }

    /// Waits until `/readyz` answers 200.
    pub async fn wait_ready(&self, within: Duration) {
        let started = Instant::now();
        loop {
            let (status, body) = self.http_get("/readyz").await;
            if status == 200 {
                return;
            }
            assert!(started.elapsed() < within, "never ready: {status} {body}");
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    pub async fn wait_not_ready(&self, reason: &str, within: Duration) {
        let started = Instant::now();
        loop {
            let (status, body) = self.http_get("/readyz").await;
            if status == 503 && body.contains(reason) {
                return;
            }
            assert!(
                started.elapsed() < within,
                "readyz never reported {reason:?}: {status} {body}"
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }
}

/// Lays `over` over `base`, table by table.
fn merge(base: &mut toml::Table, over: toml::Table) {
    for (key, value) in over {
        match (base.get_mut(&key), value) {
            (Some(toml::Value::Table(inner)), toml::Value::Table(value)) => merge(inner, value),
            (_, value) => {
                base.insert(key, value);
            }
        }
    }
}

pub fn scripted(status: u16, times: u32) -> Scripted {
    Scripted {
        status,
        times,
        retry_after: None,
        delay_ms: 0,
    }
}

pub fn answer(status: u16, delay_ms: u64) -> DefaultAnswer {
    DefaultAnswer {
        status,
        delay_ms,
        jitter_ms: 0,
        retry_after: None,
    }
}

/// One outcome event per assessment: `n` events named `<tag>-<i>`.
pub fn unique_events(tag: &str, n: usize) -> Vec<(String, Option<String>, String)> {
    (0..n)
        .map(|i| {
            let event = serde_json::json!({"event_id": format!("{tag}-{i}"), "outcome": "chargeback",
                "assessment": format!("projects/{PROJECT}/assessments/{tag}{i}")});
            ("fraud-signals".to_owned(), Some(format!("k{i}")), event.to_string())
        })
        .collect()
}

/// Outcome events with inline names: `(event_id, project, id)` each.
pub fn inline_events(items: &[(&str, &str, &str)]) -> Vec<(String, Option<String>, String)> {
    items
        .iter()
        .map(|(event_id, project, id)| {
            let event = serde_json::json!({"event_id": event_id, "outcome": "chargeback",
                "assessment": format!("projects/{project}/assessments/{id}")});
            (
                "fraud-signals".to_owned(),
                Some((*id).to_owned()),
                event.to_string(),
            )
        })
        .collect()
}

/// Waits until the instance whose admin port is `port` owns at least one partition
/// (`annotator_assigned_partitions`): a ready member may be a standby with none.
pub async fn wait_assigned(port: u16, within: Duration) {
    let started = Instant::now();
    loop {
        let (_, text) = super::admin_get(&format!("127.0.0.1:{port}"), "/metrics").await;
        if super::metric(&text, "annotator_assigned_partitions", &[]).is_some_and(|n| n > 0.0) {
            return;
        }
        assert!(
            started.elapsed() < within,
            "the instance on {port} never owned a partition"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}
