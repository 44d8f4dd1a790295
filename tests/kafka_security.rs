//! Kafka security. TLS with server verification on: a broker of this test's own behind stunnel
//! (Tansu 0.6 does not serve TLS itself: its `--cert` is accepted and ignored), with a CA
//! made here. The service consumes and annotates through it; a wrong CA is refused with an
//! error that names the broker and the setting to fix.
#![allow(clippy::unwrap_used)]

mod common;

use std::path::Path;
use std::time::{Duration, Instant};

use common::*;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Tansu on a plain loopback port, advertised as the TLS port stunnel serves in front of it.
struct TlsBroker {
    children: Vec<std::process::Child>,
    tls_port: u16,
}

impl Drop for TlsBroker {
    fn drop(&mut self) {
        for child in &mut self.children {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

fn wait_port(port: u16) {
    let started = Instant::now();
    while std::net::TcpStream::connect(("127.0.0.1", port)).is_err() {
        assert!(started.elapsed() < Duration::from_secs(10), "port {port}");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// A Tansu broker of the test's own (memory storage) listening on `listen`, advertising
/// `advertised`, with `extra` arguments.
fn spawn_tansu(listen: u16, advertised: u16, extra: &[&str]) -> std::process::Child {
    std::process::Command::new(Path::new(env!("CARGO_MANIFEST_DIR")).join(".tools/tansu"))
        .args(["broker", "--storage-engine", "memory://tansu/"])
        .args(extra)
        .arg("--listener-url")
        .arg(format!("tcp://127.0.0.1:{listen}"))
        .arg("--advertised-listener-url")
        .arg(format!("tcp://127.0.0.1:{advertised}"))
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect(".tools/tansu (scripts/tansu.sh fetches it)")
}

fn start_tls_broker(dir: &Path) -> TlsBroker {
    let plain = free_port();
    let tls = free_port();
    let mut broker = TlsBroker {
        children: vec![spawn_tansu(plain, tls, &[])],
        tls_port: tls,
    };
    wait_port(plain);
    let conf = dir.join("stunnel.conf");
    std::fs::write(
        &conf,
        format!(
            "foreground = yes\npid =\n[kafka]\naccept = 127.0.0.1:{tls}\nconnect = 127.0.0.1:{plain}\ncert = {cert}\nkey = {key}\n",
            cert = dir.join("server.pem").display(),
            key = dir.join("server.key").display(),
        ),
    )
    .unwrap();
    let stunnel = ["stunnel4", "stunnel"]
        .iter()
        .find_map(|bin| {
            std::process::Command::new(bin)
                .arg(&conf)
                .stdout(std::process::Stdio::null())
                .stderr(std::process::Stdio::null())
                .spawn()
                .ok()
        })
        .expect("stunnel4 (scripts/security-tools.sh installs it)");
    broker.children.push(stunnel);
    wait_port(tls);
    broker
}

fn tls_client(brokers: &str, ca: &Path) -> ClientConfig {
    let mut client = ClientConfig::new();
    client
        .set("bootstrap.servers", brokers)
        .set("security.protocol", "ssl")
        .set("ssl.ca.location", ca.to_str().unwrap());
    client
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_service_annotates_through_a_tls_broker_and_a_wrong_ca_is_refused_clearly() {
    let env = TestEnv::new("tls").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path(), "good", true);
    let wrong_ca = make_ca(dir.path(), "wrong", false);
    let broker = start_tls_broker(dir.path());
    let brokers = format!("127.0.0.1:{}", broker.tls_port);
    let topics: Vec<&str> = env.config_base.topics.iter().map(String::as_str).collect();
    recaptcha_annotator::kafka::create_topics_with(&tls_client(&brokers, &ca), &topics, 1)
        .await
        .unwrap();

    let tls = |ca: &Path| {
        format!(
            "[kafka]\nbrokers = \"{brokers}\"\n[kafka.properties]\n\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"{}\"\n",
            ca.display()
        )
    };
    let config =
        recaptcha_annotator::config::Config::from_toml(&env.config_toml(&tls(&ca))).unwrap();
    let service = env.start(config);
    let producer: FutureProducer = tls_client(&brokers, &ca).create().unwrap();
    for (_, key, value) in unique_events("tls", 5) {
        producer
            .send(
                FutureRecord::to(&env.topic("fraud-signals"))
                    .key(key.as_deref().unwrap())
                    .payload(&value),
                Duration::from_secs(10),
            )
            .await
            .unwrap();
    }
    env.wait_accepted(5, Duration::from_secs(60)).await;
    service.stop().await;

    // `check` with the right CA, then with a CA that did not sign the broker's certificate.
    let check = |extra: String| check_offline(env.config_file(&extra).path(), &[]).1;
    let out = check(tls(&ca));
    assert!(
        out.contains(&format!("ok   broker   {brokers} answers")),
        "{out}"
    );
    let out = check(tls(&wrong_ca));
    assert!(
        out.contains(&format!("FAIL broker   {brokers} unreachable"))
            && out.contains("certificate verify failed")
            && out.contains("ssl.ca.location"),
        "{out}"
    );
}

/// Tansu with `--authentication` asks for SCRAM. Its users can only be made with
/// `tansu user create`, which cannot authenticate to such a broker itself, and the memory
/// storage of this build is lost on restart: so no SASL login succeeds here. What can be
/// shown is the refusal: a clear error naming the broker and the settings, and never the
/// password.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sasl_broker_that_refuses_the_credentials_is_named_with_the_settings_to_fix() {
    let env = TestEnv::new("sasl").await;
    let port = free_port();
    let _broker = TlsBroker {
        children: vec![spawn_tansu(port, port, &["--authentication"])],
        tls_port: port,
    };
    wait_port(port);
    let file = env.config_file(&format!(
        "[kafka]\nbrokers = \"127.0.0.1:{port}\"\n[kafka.properties]\n\"security.protocol\" = \"sasl_plaintext\"\n\"sasl.mechanism\" = \"SCRAM-SHA-256\"\n\"sasl.username\" = \"annotator\"\n\"sasl.password\" = \"scram-SECRET-77\"\n"
    ));
    let (_, out) = check_offline(file.path(), &[]);
    assert!(
        out.contains(&format!("FAIL broker   127.0.0.1:{port} unreachable"))
            && out.contains("SASL authentication error")
            && out.contains("\"sasl.username\""),
        "{out}"
    );
    assert!(!out.contains("scram-SECRET-77"), "{out}");
}
