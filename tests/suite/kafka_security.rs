//! Kafka security on Apache Kafka itself: a broker of the test's own with SASL/SCRAM-SHA-512
//! over TLS (users made when its storage is formatted, a CA made here), mutual TLS, and
//! ACLs under the broker's StandardAuthorizer. The service's principal may read only its
//! topics and group and write only the dead-letter topic, and it works so; without its
//! write on the dead-letter topic it holds the event, says why on `/readyz`, and goes on
//! when the ACL is back. Wrong credentials and a wrong CA are named with the setting to fix,
//! never with the password.

use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use crate::common::*;

const PRINCIPAL: &str = "annotator";
const PASSWORD: &str = "scram-SECRET-5e1d";

/// One broker: `INTERNAL` (plain, the tests' super user), `SASL` (SASL_SSL, SCRAM-SHA-512)
/// and `MTLS` (SSL, client certificates required), ACLs on.
struct SecureBroker {
    cluster: KafkaCluster,
    sasl: u16,
    mtls: u16,
    ca: PathBuf,
    wrong_ca: PathBuf,
    client: (PathBuf, PathBuf),
}

fn secure_broker() -> SecureBroker {
    let dir = tempfile::tempdir().unwrap();
    let certs = dir.path();
    let ca = make_ca(certs, "kafka", true);
    let wrong_ca = make_ca(certs, "wrong", false);
    let client = make_client_cert(certs, "kafka", PRINCIPAL);
    // Kafka reads a PEM key store: the private key (PKCS#8) and its certificate.
    let keystore = certs.join("server-keystore.pem");
    std::fs::write(
        &keystore,
        format!(
            "{}{}",
            std::fs::read_to_string(certs.join("server.key")).unwrap(),
            std::fs::read_to_string(certs.join("server.pem")).unwrap()
        ),
    )
    .unwrap();
    let (sasl, mtls) = (free_port(), free_port());
    let props = [
        (
            "authorizer.class.name",
            "org.apache.kafka.metadata.authorizer.StandardAuthorizer",
        ),
        // The plain listeners (the tests' own clients, the controller) act as ANONYMOUS.
        ("super.users", "User:ANONYMOUS"),
        ("allow.everyone.if.no.acl.found", "false"),
        ("sasl.enabled.mechanisms", "SCRAM-SHA-512"),
        (
            "listener.name.sasl.scram-sha-512.sasl.jaas.config",
            "org.apache.kafka.common.security.scram.ScramLoginModule required;",
        ),
        ("ssl.keystore.type", "PEM"),
        ("ssl.keystore.location", keystore.to_str().unwrap()),
        ("ssl.truststore.type", "PEM"),
        ("ssl.truststore.location", ca.to_str().unwrap()),
        ("listener.name.mtls.ssl.client.auth", "required"),
        // A client certificate's CN is its principal: `User:annotator`, as over SASL.
        (
            "ssl.principal.mapping.rules",
            "RULE:^CN=([^,]+)$/$1/,DEFAULT",
        ),
    ];
    let cluster = KafkaCluster::start(&BrokerSpec {
        nodes: 1,
        listeners: vec![
            ("SASL".into(), "SASL_SSL".into(), sasl),
            ("MTLS".into(), "SSL".into(), mtls),
        ],
        properties: props
            .iter()
            .map(|(k, v)| ((*k).to_owned(), (*v).to_owned()))
            .collect(),
        scram: vec![format!(
            "SCRAM-SHA-512=[name={PRINCIPAL},password={PASSWORD}]"
        )],
    });
    // The certificates live as long as the cluster.
    for file in std::fs::read_dir(certs).unwrap() {
        let file = file.unwrap();
        std::fs::copy(file.path(), cluster.dir().join(file.file_name())).unwrap();
    }
    let moved = |p: &Path| cluster.dir().join(p.file_name().unwrap());
    SecureBroker {
        sasl,
        mtls,
        ca: moved(&ca),
        wrong_ca: moved(&wrong_ca),
        client: (moved(&client.0), moved(&client.1)),
        cluster,
    }
}

impl SecureBroker {
    fn acl(&self, args: &[&str]) {
        self.cluster.tool("org.apache.kafka.tools.AclCommand", args);
    }

    /// The service's ACLs: read its four topics and its group, write the dead-letter topic.
    fn grant(&self, env: &TestEnv) {
        let topics = &env.config_base.topics;
        let principal = format!("User:{PRINCIPAL}");
        let mut read = vec!["--add", "--allow-principal", &principal];
        read.extend(["--operation", "Read", "--operation", "Describe"]);
        for t in &topics[..4] {
            read.extend(["--topic", t.as_str()]);
        }
        read.extend(["--group", env.config_base.group.as_str()]);
        self.acl(&read);
        self.grant_dead_letter_write(env);
    }

    fn grant_dead_letter_write(&self, env: &TestEnv) {
        let principal = format!("User:{PRINCIPAL}");
        self.acl(&[
            "--add",
            "--allow-principal",
            &principal,
            "--operation",
            "Write",
            "--operation",
            "Describe",
            "--topic",
            &env.dead_letter_topic(),
        ]);
    }

    fn revoke_dead_letter_write(&self, env: &TestEnv) {
        let principal = format!("User:{PRINCIPAL}");
        self.acl(&[
            "--remove",
            "--force",
            "--allow-principal",
            &principal,
            "--operation",
            "Write",
            "--topic",
            &env.dead_letter_topic(),
        ]);
    }

    /// The service's config over SASL_SSL with `password`.
    fn sasl_toml(&self, password: &str) -> String {
        format!(
            "[kafka]\nbrokers = \"127.0.0.1:{}\"\n[kafka.properties]\n\"security.protocol\" = \"sasl_ssl\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"{PRINCIPAL}\"\n\"sasl.password\" = \"{password}\"\n\"ssl.ca.location\" = \"{}\"\n",
            self.sasl,
            self.ca.display()
        )
    }

    /// The service's config over mutual TLS, trusting `ca`.
    fn mtls_toml(&self, ca: &Path) -> String {
        format!(
            "[kafka]\nbrokers = \"127.0.0.1:{}\"\n[kafka.properties]\n\"security.protocol\" = \"ssl\"\n\"ssl.ca.location\" = \"{}\"\n\"ssl.certificate.location\" = \"{}\"\n\"ssl.key.location\" = \"{}\"\n",
            self.mtls,
            ca.display(),
            self.client.0.display(),
            self.client.1.display()
        )
    }
}

/// The committed offset of partition 0 of the test's `fraud-signals` topic.
fn committed(env: &TestEnv) -> Option<i64> {
    let (_, committed) = env.offsets();
    committed.get(&(env.topic("fraud-signals"), 0)).copied()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_sasl_scram_and_tls_the_service_does_what_its_acls_allow_and_holds_without_them() {
    let broker = tokio::task::block_in_place(secure_broker);
    let env = TestEnv::on(&broker.cluster.bootstrap(), "acl", 1).await;
    tokio::task::block_in_place(|| broker.grant(&env));
    let config = recaptcha_annotator::config::Config::from_toml(
        &env.config_toml(&broker.sasl_toml(PASSWORD)),
    )
    .unwrap();
    let service = env.start(config);
    for (_, key, value) in unique_events("acl", 5) {
        env.produce("fraud-signals", key.as_deref(), Some(&value))
            .await;
    }
    env.produce("fraud-signals", Some("bad1"), Some("not json"))
        .await;
    env.wait_all_committed(Duration::from_secs(60)).await;
    assert_eq!(env.sandbox.accepted_count(), 5);
    assert_eq!(env.dead_letters(1, Duration::from_secs(10)).len(), 1);
    env.wait_ready(Duration::from_secs(10)).await;

    // Without its write on the dead-letter topic: the bad event holds the partition, and
    // `/readyz` names the topic and the permission.
    tokio::task::block_in_place(|| broker.revoke_dead_letter_write(&env));
    let held_at = committed(&env).unwrap();
    env.produce("fraud-signals", Some("bad2"), Some("still not json"))
        .await;
    for (_, key, value) in unique_events("after", 3) {
        env.produce("fraud-signals", key.as_deref(), Some(&value))
            .await;
    }
    env.wait_not_ready(&env.dead_letter_topic(), Duration::from_secs(60))
        .await;
    let (_, body) = env.http_get("/readyz").await;
    assert!(
        body.contains("TOPIC_AUTHORIZATION_FAILED") && body.contains("WRITE"),
        "{body}"
    );
    let (_, metrics) = env.http_get("/metrics").await;
    assert_eq!(
        metric(&metrics, "annotator_dead_letters_refused", &[]),
        Some(1.0)
    );
    env.wait_accepted(8, Duration::from_secs(30)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    assert_eq!(
        committed(&env),
        Some(held_at),
        "nothing committed past the event that cannot be dead-lettered"
    );

    // The ACL is back: the dead letter is written, commits and readiness resume.
    tokio::task::block_in_place(|| broker.grant_dead_letter_write(&env));
    env.wait_all_committed(Duration::from_secs(60)).await;
    env.wait_ready(Duration::from_secs(30)).await;
    let (_, metrics) = env.http_get("/metrics").await;
    assert_eq!(
        metric(&metrics, "annotator_dead_letters_refused", &[]),
        Some(0.0)
    );
    service.stop().await;
    assert_eq!(env.dead_letters(2, Duration::from_secs(10)).len(), 2);
    assert_eq!(env.sandbox.accepted_count(), 8);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_mutual_tls_the_service_annotates_and_a_wrong_ca_or_password_is_named_without_secrets()
{
    let broker = tokio::task::block_in_place(secure_broker);
    let env = TestEnv::on(&broker.cluster.bootstrap(), "mtls", 1).await;
    tokio::task::block_in_place(|| broker.grant(&env));
    let config = recaptcha_annotator::config::Config::from_toml(
        &env.config_toml(&broker.mtls_toml(&broker.ca)),
    )
    .unwrap();
    let service = env.start(config);
    for (_, key, value) in unique_events("mtls", 3) {
        env.produce("fraud-signals", key.as_deref(), Some(&value))
            .await;
    }
    env.wait_all_committed(Duration::from_secs(60)).await;
    service.stop().await;
    assert_eq!(env.sandbox.accepted_count(), 3);

    let check = |extra: String| check_offline(env.config_file(&extra).path(), &[]).1;
    let mtls = format!("127.0.0.1:{}", broker.mtls);
    let out = check(broker.mtls_toml(&broker.ca));
    assert!(
        out.contains(&format!("ok   broker   {mtls} answers")),
        "{out}"
    );
    let out = check(broker.mtls_toml(&broker.wrong_ca));
    assert!(
        out.contains(&format!("FAIL broker   {mtls} unreachable"))
            && out.contains("certificate verify failed")
            && out.contains("ssl.ca.location"),
        "{out}"
    );

    // A wrong password: `check` names SASL and the broker; neither its output nor the
    // service's log at debug level carries the password.
    let wrong = "wrong-SECRET-0b7";
    let sasl = format!("127.0.0.1:{}", broker.sasl);
    let file = env.config_file(&broker.sasl_toml(wrong));
    let (ok, out) = check_offline(file.path(), &[]);
    assert!(!ok, "{out}");
    assert!(
        out.contains(&format!("FAIL broker   {sasl} unreachable"))
            && out.contains("SASL")
            && out.contains("\"sasl.password\""),
        "{out}"
    );
    let logged = spawn_logged(file.path(), "debug");
    let started = Instant::now();
    assert!(
        logged
            .wait_for("Authentication failed", Duration::from_secs(30))
            .await,
        "no SASL failure logged within {:?}",
        started.elapsed()
    );
    let log = logged.stop("TERM");
    for secret in [wrong, PASSWORD] {
        assert!(!out.contains(secret), "check printed a password: {out}");
        assert!(!log.contains(secret), "the log carries a password");
    }
}
