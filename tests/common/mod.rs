//! Shared helpers: each test gets its own topics, group, cache and sandbox endpoint, against
//! the real broker (`ANNOTATOR_TEST_BROKERS`, default 127.0.0.1:9092; `.ci/run` starts one).
#![allow(dead_code, clippy::unwrap_used, clippy::expect_used)]

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::{Duration, Instant};

use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::message::{Headers as _, Message as _};
use rdkafka::{Offset, TopicPartitionList};
use recaptcha_annotator::config::{CacheBackend, Config};
use recaptcha_annotator::sandbox::{DefaultAnswer, Sandbox, Script, Scripted};
use recaptcha_annotator::{app, kafka};
use secrecy::SecretString;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;

/// (topic, partition) -> offset.
pub type Offsets = BTreeMap<(String, i32), i64>;

pub const API_KEY: &str = "test-api-key";
pub const PROJECT: &str = "123456789";

pub fn brokers() -> String {
    std::env::var("ANNOTATOR_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

static COUNTER: AtomicU32 = AtomicU32::new(0);

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

pub struct TestEnv {
    pub prefix: String,
    pub config_base: ConfigBase,
    pub sandbox: Sandbox,
    pub endpoint: String,
    pub admin_port: u16,
    pub partitions: i32,
    /// (topic, partition) -> one past the highest offset this test produced.
    produced: std::sync::Mutex<Offsets>,
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
        kafka::create_topics(&brokers(), &refs, partitions)
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
            sandbox,
            endpoint,
            admin_port: free_port(),
            partitions,
            produced: std::sync::Mutex::default(),
        }
    }

    pub fn topic(&self, short: &str) -> String {
        format!("{}{short}", self.prefix)
    }

    pub fn dead_letter_topic(&self) -> String {
        self.config_base.topics[4].clone()
    }

    /// The service config for this test: memory cache, short timeouts.
    pub fn config(&self) -> Config {
        let mut c = Config::from_toml("").unwrap();
        c.kafka.brokers = brokers();
        c.kafka.group_id = self.config_base.group.clone();
        let [a, l, r, f, d] = self.config_base.topics.clone();
        c.kafka.topics.assessments = a;
        c.kafka.topics.logins = l;
        c.kafka.topics.registrations = r;
        c.kafka.topics.fraud_signals = f;
        c.kafka.topics.dead_letter = d;
        c.kafka
            .properties
            .insert("session.timeout.ms".into(), "3000".into());
        c.kafka
            .properties
            .insert("heartbeat.interval.ms".into(), "300".into());
        // The rebalance timeout: seen with Tansu under load, a join can wait that long for a
        // member that already left; the default (300 s) would outlast every test.
        c.kafka
            .properties
            .insert("max.poll.interval.ms".into(), "15000".into());
        c.kafka.commit_interval = Duration::from_millis(200);
        c.recaptcha.endpoint = self.endpoint.clone();
        c.recaptcha.api_key = Some(SecretString::from(API_KEY));
        c.recaptcha.project = Some(PROJECT.into());
        // Long enough that a loaded machine does not time out a call the sandbox accepted
        // (it would be retried and recorded twice); tests of timeouts set their own.
        c.recaptcha.request_timeout = Duration::from_secs(10);
        c.cache.backend = CacheBackend::Memory;
        c.admin.listen = format!("127.0.0.1:{}", self.admin_port);
        c.delivery.retry_initial = Duration::from_millis(50);
        c.delivery.retry_max = Duration::from_millis(500);
        c.delivery.halt_retry = Duration::from_millis(500);
        c.delivery.join_grace = Duration::from_secs(5);
        c.delivery.join_retry = Duration::from_millis(100);
        c
    }

    pub fn start(&self, config: Config) -> Running {
        let stop = CancellationToken::new();
        let handle = tokio::spawn(app::run(config, stop.clone()));
        Running { stop, handle }
    }

    pub fn script(&self, responses: Vec<Scripted>, default: Option<DefaultAnswer>) {
        self.sandbox.set_script(Script { responses, default });
    }

    pub async fn produce(&self, topic_short: &str, key: Option<&str>, value: Option<&str>) {
        let producer = kafka::producer(&brokers()).unwrap();
        let topic = self.topic(topic_short);
        let at = kafka::produce(&producer, &topic, key, value.map(str::as_bytes))
            .await
            .unwrap();
        self.produced(&topic, at);
    }

    /// Records a produced offset: the end offsets the tests wait for come from here, since
    /// Tansu's watermarks can read low.
    fn produced(&self, topic: &str, (partition, offset): (i32, i64)) {
        let mut ends = self.produced.lock().unwrap();
        let end = ends.entry((topic.to_owned(), partition)).or_insert(0);
        *end = (*end).max(offset + 1);
    }

    pub async fn produce_many(&self, records: &[(String, Option<String>, Option<String>)]) {
        let producer = kafka::producer(&brokers()).unwrap();
        for (topic, key, value) in records {
            let topic = self.topic(topic);
            let at = kafka::produce(
                &producer,
                &topic,
                key.as_deref(),
                value.as_deref().map(str::as_bytes),
            )
            .await
            .unwrap();
            self.produced(&topic, at);
        }
    }

    /// (end offsets, committed offsets) of the consumed topics.
    pub fn offsets(&self) -> (Offsets, Offsets) {
        self.try_offsets().unwrap()
    }

    fn try_offsets(&self) -> anyhow::Result<(Offsets, Offsets)> {
        let reader = kafka::offset_reader(&brokers(), &self.config_base.group)?;
        let topics: Vec<&str> = self.config_base.topics[..4]
            .iter()
            .map(String::as_str)
            .collect();
        let mut ends = kafka::end_offsets(&reader, &topics)?;
        for (tp, end) in self.produced.lock().unwrap().iter() {
            let e = ends.entry(tp.clone()).or_insert(0);
            *e = (*e).max(*end);
        }
        let parts: Vec<_> = ends.keys().cloned().collect();
        let committed = kafka::committed_offsets(&reader, &parts)?;
        drop(reader);
        Ok((ends, committed))
    }

    /// Waits until every consumed partition's committed offset reaches its end offset.
    pub async fn wait_all_committed(&self, within: Duration) {
        let started = Instant::now();
        loop {
            // A slow broker answer is "not yet", not a failure.
            let state = tokio::task::block_in_place(|| self.try_offsets());
            if let Ok((ends, committed)) = &state {
                let done = ends
                    .iter()
                    .all(|(tp, end)| *end == 0 || committed.get(tp).is_some_and(|c| c >= end));
                if done {
                    return;
                }
            }
            assert!(
                started.elapsed() < within,
                "not committed within {within:?}: {state:?}"
            );
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    /// Waits until the sandbox accepted `n` calls.
    pub async fn wait_accepted(&self, n: u64, within: Duration) {
        let started = Instant::now();
        while self.sandbox.accepted_count() < n {
            assert!(
                started.elapsed() < within,
                "only {} of {n} accepted",
                self.sandbox.accepted_count()
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
    }

    /// Every record of the dead-letter topic (at least `expect`, waiting up to `within`).
    pub fn dead_letters(&self, expect: usize, within: Duration) -> Vec<DeadLetterRecord> {
        self.read_topic(&self.dead_letter_topic(), expect, within)
    }

    /// Every record of `topic`: reads from the beginning until every partition reports its
    /// end (and at least `expect` records, within `within`).
    pub fn read_topic(
        &self,
        topic: &str,
        expect: usize,
        within: Duration,
    ) -> Vec<DeadLetterRecord> {
        let consumer: BaseConsumer =
            kafka::topic_reader(&brokers(), &format!("{}reader", self.prefix)).unwrap();
        let mut tpl = TopicPartitionList::new();
        for p in 0..self.partitions {
            tpl.add_partition_offset(topic, p, Offset::Beginning)
                .unwrap();
        }
        consumer.assign(&tpl).unwrap();
        let started = Instant::now();
        let mut out = Vec::new();
        let mut at_end = BTreeSet::new();
        while (out.len() < expect || at_end.len() < self.partitions as usize)
            && started.elapsed() < within.max(Duration::from_secs(5))
        {
            match consumer.poll(Duration::from_millis(200)) {
                Some(Ok(m)) => {
                    let mut headers = BTreeMap::new();
                    if let Some(h) = m.headers() {
                        for header in h.iter() {
                            headers.insert(
                                header.key.to_owned(),
                                String::from_utf8_lossy(header.value.unwrap_or_default())
                                    .into_owned(),
                            );
                        }
                    }
                    out.push(DeadLetterRecord {
                        key: m.key().map(|k| String::from_utf8_lossy(k).into_owned()),
                        value: m.payload().map(|v| String::from_utf8_lossy(v).into_owned()),
                        headers,
                    });
                }
                Some(Err(rdkafka::error::KafkaError::PartitionEOF(p))) => {
                    at_end.insert(p);
                }
                _ => {}
            }
        }
        assert_eq!(
            at_end.len(),
            self.partitions as usize,
            "{topic} not read to its end"
        );
        out
    }

    pub async fn http_get(&self, path: &str) -> (u16, String) {
        let r = reqwest::get(format!("http://127.0.0.1:{}{path}", self.admin_port)).await;
        match r {
            Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
            Err(_) => (0, String::new()),
        }
    }
}

#[derive(Debug, Clone)]
pub struct DeadLetterRecord {
    pub key: Option<String>,
    pub value: Option<String>,
    pub headers: BTreeMap<String, String>,
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

impl TestEnv {
    /// Produces many records fast: pipelined, still one record per batch.
    pub async fn produce_bulk(&self, records: Vec<(String, Option<String>, String)>) {
        let producer = kafka::producer(&brokers()).unwrap();
        for chunk in records.chunks(2000) {
            let sends = chunk.iter().map(|(topic, key, value)| {
                let topic = self.topic(topic);
                let producer = &producer;
                async move {
                    let mut record =
                        rdkafka::producer::FutureRecord::<str, str>::to(&topic).payload(value);
                    if let Some(k) = key {
                        record = record.key(k);
                    }
                    let delivery = producer
                        .send(record, Duration::from_secs(30))
                        .await
                        .map_err(|(e, _)| e)
                        .unwrap();
                    self.produced(&topic, (delivery.partition, delivery.offset));
                }
            });
            futures::future::join_all(sends).await;
        }
    }

    /// A TOML file with this test's config, for running the binary as a process.
    pub fn config_file(&self, extra: &str) -> tempfile::NamedTempFile {
        use std::io::Write as _;
        let [a, l, r, f, d] = &self.config_base.topics;
        let text = format!(
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
"max.poll.interval.ms" = "15000"
[recaptcha]
endpoint = "{endpoint}"
api_key = "{API_KEY}"
project = "{PROJECT}"
request_timeout = "10s"
{cache}
[admin]
listen = "127.0.0.1:{port}"
{extra}
"#,
            brokers = brokers(),
            group = self.config_base.group,
            endpoint = self.endpoint,
            port = free_port(),
            cache = if extra.contains("[cache]") {
                ""
            } else {
                "[cache]\nbackend = \"memory\""
            },
        );
        let mut file = tempfile::NamedTempFile::new().unwrap();
        file.write_all(text.as_bytes()).unwrap();
        file
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

/// Runs the service binary with a config file.
pub fn spawn_binary(config: &std::path::Path) -> Process {
    spawn_binary_with_env(config, &[])
}

/// A service process that is killed if the test ends (or panics) while it still runs.
pub struct Process(std::process::Child);

impl std::ops::Deref for Process {
    type Target = std::process::Child;
    fn deref(&self) -> &Self::Target {
        &self.0
    }
}

impl std::ops::DerefMut for Process {
    fn deref_mut(&mut self) -> &mut Self::Target {
        &mut self.0
    }
}

impl Drop for Process {
    fn drop(&mut self) {
        if matches!(self.0.try_wait(), Ok(None)) {
            let _ = self.0.kill();
            let _ = self.0.wait();
        }
    }
}

/// Runs the service binary with a config file and extra environment overrides.
pub fn spawn_binary_with_env(config: &std::path::Path, vars: &[(&str, &str)]) -> Process {
    Process(
        std::process::Command::new(env!("CARGO_BIN_EXE_recaptcha-annotator"))
            .args(["run", "--config"])
            .arg(config)
            .envs(vars.iter().copied())
            .env("RUST_LOG", "warn")
            .stdout(std::process::Stdio::null())
            .spawn()
            .unwrap(),
    )
}

/// A service process whose stdout and stderr are read as it runs (so a chatty log level
/// cannot fill the pipe and block it).
pub struct Logged {
    child: Process,
    output: Arc<std::sync::Mutex<String>>,
    readers: Vec<std::thread::JoinHandle<()>>,
}

impl Logged {
    /// Waits until the output contains `text`; false after `within`.
    pub async fn wait_for(&self, text: &str, within: Duration) -> bool {
        let started = Instant::now();
        while started.elapsed() < within {
            if self.output.lock().unwrap().contains(text) {
                return true;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        false
    }

    /// Sends `sig`, waits for the exit and returns everything it wrote.
    pub fn stop(mut self, sig: &str) -> String {
        signal(&self.child, sig);
        tokio::task::block_in_place(|| {
            self.child.wait().unwrap();
            for reader in self.readers.drain(..) {
                reader.join().unwrap();
            }
        });
        std::mem::take(&mut *self.output.lock().unwrap())
    }
}

/// Runs the service binary with its stdout and stderr captured, logging at `level`.
pub fn spawn_logged(config: &std::path::Path, level: &str) -> Logged {
    let mut child = Process(
        std::process::Command::new(env!("CARGO_BIN_EXE_recaptcha-annotator"))
            .args(["run", "--config"])
            .arg(config)
            .env("RUST_LOG", level)
            .stderr(std::process::Stdio::piped())
            .stdout(std::process::Stdio::piped())
            .spawn()
            .unwrap(),
    );
    let output = Arc::new(std::sync::Mutex::new(String::new()));
    let pipes: [Box<dyn std::io::Read + Send>; 2] = [
        Box::new(child.stdout.take().unwrap()),
        Box::new(child.stderr.take().unwrap()),
    ];
    let readers = pipes
        .into_iter()
        .map(|pipe| {
            let output = Arc::clone(&output);
            std::thread::spawn(move || {
                use std::io::BufRead as _;
                for line in std::io::BufReader::new(pipe).lines() {
                    let Ok(line) = line else { break };
                    let mut out = output.lock().unwrap();
                    out.push_str(&line);
                    out.push('\n');
                }
            })
        })
        .collect();
    Logged {
        child,
        output,
        readers,
    }
}

pub fn signal(child: &std::process::Child, sig: &str) {
    let status = std::process::Command::new("kill")
        .args(["-s", sig, &child.id().to_string()])
        .status()
        .unwrap();
    assert!(status.success());
}

/// The Redis server of the suite (`ANNOTATOR_TEST_REDIS`; `scripts/test.sh` starts one).
pub fn redis_url() -> String {
    std::env::var("ANNOTATOR_TEST_REDIS").unwrap_or_else(|_| "redis://127.0.0.1:6379".into())
}

impl TestEnv {
    /// Points `config` at Redis under this test's own key prefixes.
    pub fn use_redis(&self, config: &mut Config, url: &str) {
        config.cache.backend = CacheBackend::Redis;
        config.cache.redis_url = SecretString::from(url.to_owned());
        config.cache.redis_prefix = format!("{}key:", self.prefix);
        config.cache.redis_done_prefix = format!("{}done:", self.prefix);
    }

    /// The TOML lines for the same, for `config_file`.
    pub fn redis_toml(&self, url: &str) -> String {
        format!(
            "[cache]\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_prefix = \"{p}key:\"\nredis_done_prefix = \"{p}done:\"\n",
            p = self.prefix
        )
    }
}

/// A private redis-server on a spare port, persisting to `dir` (append-only, fsync always),
/// so it can be stopped and started again with its data.
pub struct PrivateRedis {
    pub port: u16,
    dir: std::path::PathBuf,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub fn start(dir: &std::path::Path) -> Self {
        let mut redis = Self {
            port: free_port(),
            dir: dir.to_owned(),
            child: None,
        };
        redis.restart();
        redis
    }

    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    pub fn restart(&mut self) {
        let child = std::process::Command::new("redis-server")
            .args([
                "--bind",
                "127.0.0.1",
                "--port",
                &self.port.to_string(),
                "--save",
                "",
            ])
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .stdout(std::process::Stdio::null())
            .spawn()
            .expect("redis-server on PATH");
        self.child = Some(child);
        let started = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                started.elapsed() < Duration::from_secs(10),
                "redis-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn stop(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for PrivateRedis {
    fn drop(&mut self) {
        self.stop();
    }
}

/// The value of one sample in Prometheus text: `name` with every label of `labels`.
pub fn metric(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .find_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let (metric, rest) = series.split_once('{').unwrap_or((series, ""));
            if metric != name {
                return None;
            }
            let all = labels
                .iter()
                .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")));
            all.then(|| value.parse().ok()).flatten()
        })
}

/// Sum of every sample of `name`.
pub fn metric_sum(text: &str, name: &str) -> f64 {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|line| {
            let (series, value) = line.rsplit_once(' ')?;
            let metric = series.split_once('{').map_or(series, |(m, _)| m);
            (metric == name)
                .then(|| value.parse::<f64>().ok())
                .flatten()
        })
        .sum()
}

impl TestEnv {
    /// Waits until `/readyz` answers 503 with `reason` in its body.
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
