//! Apache Kafka brokers of a test's own (KRaft, combined broker and controller), from the
//! jars `scripts/kafka.sh` fetches into `.tools/kafka/lib`: for what the shared broker
//! cannot show, a restart, a leader's death, TLS, SASL and ACLs.
//!
//! Every node listens on a plain `INTERNAL` listener (the tests' own admin, producer and
//! reader, and the traffic between nodes) besides its controller; a test adds listeners of
//! its own (SASL_SSL, SSL) and properties. The log directories live in a temporary directory
//! kept for the cluster's life, so a node that is stopped and started again keeps its data.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use super::free_port;

/// What a test asks of its cluster.
#[derive(Debug, Clone, Default)]
pub struct BrokerSpec {
    /// 1 or 3 nodes; a cluster of 3 replicates everything 3 times, `min.insync.replicas` 2.
    pub nodes: usize,
    /// Listeners besides `INTERNAL` and `CONTROLLER` (single node only): name, protocol
    /// (PLAINTEXT, SSL, SASL_PLAINTEXT, SASL_SSL) and port.
    pub listeners: Vec<(String, String, u16)>,
    /// Broker properties written after the defaults.
    pub properties: Vec<(String, String)>,
    /// `--add-scram` arguments of the storage format (users made before the first start).
    pub scram: Vec<String>,
}

struct Node {
    id: usize,
    port: u16,
    config: PathBuf,
    log: PathBuf,
    child: Option<Child>,
}

/// A running cluster of the test's own; killed and deleted when dropped.
pub struct KafkaCluster {
    dir: tempfile::TempDir,
    nodes: Vec<Node>,
}

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// `java` with the broker's classpath and log configuration.
fn java() -> Command {
    let lib = root().join(".tools/kafka/lib");
    assert!(
        lib.join(".complete").exists(),
        "the Kafka jars are missing: run scripts/kafka.sh --fetch"
    );
    let mut command = Command::new("java");
    command
        .args([
            "-Xms64m",
            "-Xmx384m",
            "-XX:+UseG1GC",
            "-Djava.awt.headless=true",
        ])
        .arg(format!(
            "-Dlog4j2.configurationFile={}",
            root().join("scripts/kafka/log4j2.yaml").display()
        ))
        .arg("-cp")
        .arg(format!("{}/*", lib.display()));
    command
}

/// A fresh cluster id: 16 random bytes, URL-safe base64 without padding (Kafka's `Uuid`),
/// never starting with `-` (the format tool would read it as an option, as Kafka's own
/// `Uuid.randomUuid` avoids).
fn cluster_id() -> String {
    use base64::Engine as _;
    loop {
        let bytes: [u8; 16] = rand::random();
        let id = base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(bytes);
        if !id.starts_with('-') {
            return id;
        }
    }
}

impl KafkaCluster {
    /// `nodes` plain nodes (1 or 3), started.
    pub fn plain(nodes: usize) -> Self {
        Self::start(&BrokerSpec {
            nodes,
            ..BrokerSpec::default()
        })
    }

    /// Formats every node's storage and starts them; returns once each lists every node in
    /// its metadata.
    pub fn start(spec: &BrokerSpec) -> Self {
        let n = spec.nodes.max(1);
        assert!(
            n == 1 || spec.listeners.is_empty(),
            "extra listeners on one node only"
        );
        let dir = tempfile::tempdir().unwrap();
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let voters = ports
            .iter()
            .enumerate()
            .map(|(i, (_, c))| format!("{}@127.0.0.1:{c}", i + 1))
            .collect::<Vec<_>>()
            .join(",");
        let base = std::fs::read_to_string(root().join("scripts/kafka/broker.properties")).unwrap();
        let id = cluster_id();
        let mut nodes = Vec::new();
        for (i, (port, controller)) in ports.iter().enumerate() {
            let mut listeners = vec![
                format!("INTERNAL://127.0.0.1:{port}"),
                format!("CONTROLLER://127.0.0.1:{controller}"),
            ];
            let mut advertised = vec![format!("INTERNAL://127.0.0.1:{port}")];
            let mut protocols = vec![
                "INTERNAL:PLAINTEXT".to_owned(),
                "CONTROLLER:PLAINTEXT".to_owned(),
            ];
            for (name, protocol, p) in &spec.listeners {
                listeners.push(format!("{name}://127.0.0.1:{p}"));
                advertised.push(format!("{name}://127.0.0.1:{p}"));
                protocols.push(format!("{name}:{protocol}"));
            }
            let mut props = base.clone();
            let data = dir.path().join(format!("data-{}", i + 1));
            props.push_str(&format!(
                "node.id={}\ncontroller.quorum.voters={voters}\nlisteners={}\nadvertised.listeners={}\nlistener.security.protocol.map={}\ninter.broker.listener.name=INTERNAL\nlog.dirs={}\n",
                i + 1,
                listeners.join(","),
                advertised.join(","),
                protocols.join(","),
                data.display(),
            ));
            if n > 1 {
                props.push_str(&format!(
                    "default.replication.factor={n}\noffsets.topic.replication.factor={n}\ntransaction.state.log.replication.factor={n}\nshare.coordinator.state.topic.replication.factor={n}\nmin.insync.replicas=2\ntransaction.state.log.min.isr=2\nshare.coordinator.state.topic.min.isr=2\n"
                ));
            }
            for (k, v) in &spec.properties {
                props.push_str(&format!("{k}={v}\n"));
            }
            let config = dir.path().join(format!("node-{}.properties", i + 1));
            std::fs::write(&config, props).unwrap();
            let mut format = java();
            format.args([
                "kafka.tools.StorageTool",
                "format",
                "--cluster-id",
                &id,
                "--config",
            ]);
            format.arg(&config);
            for user in &spec.scram {
                format.args(["--add-scram", user]);
            }
            let out = format.output().unwrap();
            assert!(
                out.status.success(),
                "formatting node {}: {}{}",
                i + 1,
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
            nodes.push(Node {
                id: i + 1,
                port: *port,
                config,
                log: dir.path().join(format!("node-{}.log", i + 1)),
                child: None,
            });
        }
        let mut cluster = Self { dir, nodes };
        for i in 0..n {
            cluster.spawn(i);
        }
        for i in 0..n {
            cluster.wait_node(i, n);
        }
        cluster
    }

    fn spawn(&mut self, i: usize) {
        let node = &mut self.nodes[i];
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(&node.log)
            .unwrap();
        let child = java()
            .arg("kafka.Kafka")
            .arg(&node.config)
            .stdout(Stdio::from(log.try_clone().unwrap()))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("java (scripts/kafka.sh installs openjdk-17-jre-headless)");
        node.child = Some(child);
    }

    /// Waits until node `i` answers a metadata request listing at least `brokers` nodes.
    pub fn wait_node(&mut self, i: usize, brokers: usize) {
        let started = Instant::now();
        loop {
            let out = Command::new("python3")
                .arg(root().join("scripts/kafka/metadata.py"))
                .arg(format!("127.0.0.1:{}", self.nodes[i].port))
                .arg("1")
                .output()
                .unwrap();
            let listed: usize = String::from_utf8_lossy(&out.stdout)
                .trim()
                .parse()
                .unwrap_or(0);
            if out.status.success() && listed >= brokers {
                return;
            }
            if let Some(status) = self.nodes[i]
                .child
                .as_mut()
                .and_then(|c| c.try_wait().unwrap())
            {
                panic!("node {} exited ({status}): {}", i + 1, self.log_tail(i));
            }
            assert!(
                started.elapsed() < Duration::from_secs(90),
                "node {} never answered: {}",
                i + 1,
                self.log_tail(i)
            );
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    fn log_tail(&self, i: usize) -> String {
        let text = std::fs::read_to_string(&self.nodes[i].log).unwrap_or_default();
        let lines: Vec<&str> = text.lines().collect();
        lines[lines.len().saturating_sub(30)..].join("\n")
    }

    /// The `INTERNAL` bootstrap list (plain, super user where ACLs are on).
    pub fn bootstrap(&self) -> String {
        self.nodes
            .iter()
            .map(|n| format!("127.0.0.1:{}", n.port))
            .collect::<Vec<_>>()
            .join(",")
    }

    /// The node whose id is `id` (Kafka's node ids are 1-based).
    pub fn index_of(&self, id: i32) -> usize {
        self.nodes
            .iter()
            .position(|n| n.id as i32 == id)
            .expect("a node of this cluster")
    }

    /// Ends node `i` with `signal` (TERM: a controlled shutdown; KILL: a crash) and waits
    /// for its exit.
    pub fn stop_node(&mut self, i: usize, signal: &str) {
        if let Some(mut child) = self.nodes[i].child.take() {
            super::signal(&child, signal);
            let started = Instant::now();
            while child.try_wait().unwrap().is_none() {
                assert!(
                    started.elapsed() < Duration::from_secs(60),
                    "node {} did not stop on {signal}",
                    i + 1
                );
                std::thread::sleep(Duration::from_millis(50));
            }
        }
    }

    /// Starts node `i` again on its log directory and waits until it answers listing
    /// `brokers` nodes.
    pub fn restart_node(&mut self, i: usize, brokers: usize) {
        self.spawn(i);
        self.wait_node(i, brokers);
    }

    /// Runs one of Kafka's command-line tools (`org.apache.kafka.tools.AclCommand`, ...)
    /// against the `INTERNAL` listener; panics with its output when it fails.
    pub fn tool(&self, class: &str, args: &[&str]) -> String {
        let out = java()
            .arg(class)
            .arg("--bootstrap-server")
            .arg(format!("127.0.0.1:{}", self.nodes[0].port))
            .args(args)
            .output()
            .unwrap();
        let text = format!(
            "{}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        assert!(out.status.success(), "{class} {args:?}: {text}");
        text
    }

    /// The directory the cluster's files live in (certificates may go there too).
    pub fn dir(&self) -> &Path {
        self.dir.path()
    }
}

impl Drop for KafkaCluster {
    fn drop(&mut self) {
        for node in &mut self.nodes {
            if let Some(mut child) = node.child.take() {
                let _ = child.kill();
                let _ = child.wait();
            }
        }
    }
}
