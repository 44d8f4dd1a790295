//! Operating the service: metrics, readiness, `check`, `dead-letter replay`, and logs that
//! never carry secrets. Real broker, real Redis, the sandbox endpoint.

use std::time::{Duration, Instant};

use crate::common::*;
use serde_json::json;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_move_and_lag_falls_to_zero() {
    let env = TestEnv::new("scrape").await;
    env.script(vec![], Some(answer(200, 20)));
    let good = 300;
    let mut records = Vec::new();
    for i in 0..good {
        let event = json!({"event_id": format!("m{i}"), "outcome": "chargeback", "account_id": "acct-must-not-show",
            "assessment": format!("projects/{PROJECT}/assessments/metric{i}")});
        records.push((
            "fraud-signals".to_owned(),
            Some(format!("k{i}")),
            event.to_string(),
        ));
    }
    for i in 0..3 {
        records.push((
            "fraud-signals".to_owned(),
            Some(format!("bad{i}")),
            "not json".to_owned(),
        ));
    }
    env.produce_bulk(records).await;
    let mut config = env.config();
    config.delivery.max_in_flight = 4;
    config.admin.lag_interval = Duration::from_millis(200);
    let service = env.start(config);
    // Lag is seen above zero while the backlog drains, then falls to zero.
    let started = Instant::now();
    let mut max_lag = 0.0f64;
    let text = loop {
        let (_, text) = env.http_get("/metrics").await;
        let lag = metric_sum(&text, "annotator_consumer_lag");
        max_lag = max_lag.max(lag);
        let annotated = metric(
            &text,
            "annotator_events_total",
            &[
                ("topic", &env.topic("fraud-signals")),
                ("result", "annotated"),
            ],
        );
        // Lag is measured from the committed offset, so it reaches zero only once the last
        // commit is sent.
        if annotated == Some(f64::from(good))
            && text.contains("annotator_consumer_lag{")
            && lag == 0.0
        {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "metrics never settled:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    };
    assert!(max_lag > 0.0, "lag was never seen above zero");
    assert_eq!(
        metric(
            &text,
            "annotator_events_total",
            &[
                ("topic", &env.topic("fraud-signals")),
                ("result", "dead_lettered")
            ]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(
            &text,
            "annotator_annotate_requests_total",
            &[("status_class", "2xx")]
        ),
        Some(f64::from(good))
    );
    assert_eq!(
        metric(&text, "annotator_annotate_duration_seconds_count", &[]),
        Some(f64::from(good))
    );
    assert_eq!(
        metric(
            &text,
            "annotator_dead_letters_total",
            &[("reason", "decode")]
        ),
        Some(3.0)
    );
    assert_eq!(
        metric(&text, "annotator_join_total", &[("result", "inline")]),
        Some(f64::from(good))
    );
    assert_eq!(metric(&text, "annotator_in_flight", &[]), Some(0.0));
    assert_eq!(metric(&text, "annotator_halted", &[]), Some(0.0));
    assert_eq!(metric(&text, "annotator_ready", &[]), Some(1.0));
    assert_eq!(metric(&text, "annotator_build_info", &[]), Some(1.0));
    assert!(metric(&text, "annotator_rebalances_total", &[("kind", "assign")]).unwrap() >= 1.0);
    assert_eq!(
        metric_sum(&text, "annotator_committed_offset"),
        f64::from(good + 3)
    );
    // Bounded labels only: no event ids, accounts or assessment ids.
    for leak in ["acct-must-not-show", "metric1", "m1\"", "bad0"] {
        assert!(!text.contains(leak), "{leak} in metrics");
    }
    // The service's own metrics carry the prefix; `process_*` are the standard process
    // collector's, named as every Prometheus client names them.
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        assert!(
            line.starts_with("annotator_") || line.starts_with("process_"),
            "metric without the prefix: {line}"
        );
    }
    service.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn readiness_goes_from_starting_to_ready() {
    let env = TestEnv::new("ready").await;
    let service = env.start(env.config());
    let started = Instant::now();
    let mut seen_starting = false;
    loop {
        let (status, body) = env.http_get("/readyz").await;
        if status == 503 {
            assert!(body.contains("consumer group"), "{body}");
            seen_starting = true;
        }
        if status == 200 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "never ready: {status} {body}"
        );
        // Apache Kafka forms a new group within milliseconds: look often, so the admin
        // port's first answers come before the assignment.
        tokio::time::sleep(Duration::from_millis(1)).await;
    }
    assert!(seen_starting, "was ready before joining the group");
    assert_eq!(env.http_get("/healthz").await.0, 200);
    service.stop().await;
    // Cache down and halted on credentials are covered in tests/suite/cache.rs and tests/suite/delivery.rs.
}

fn run_command(args: &[&str], env_vars: &[(&str, &str)]) -> (bool, String, String) {
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_recaptcha-annotator"))
        .args(args)
        .envs(env_vars.iter().copied())
        .output()
        .unwrap();
    (
        out.status.success(),
        String::from_utf8_lossy(&out.stdout).into_owned(),
        String::from_utf8_lossy(&out.stderr).into_owned(),
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn check_passes_on_a_live_stack_and_names_what_is_down() {
    let env = TestEnv::new("check").await;
    let file = env.config_file(&format!(
        "{}[delivery]\nrate_limit = 200\n",
        env.redis_toml(&redis_url())
    ));
    let path = file.path().to_str().unwrap();
    let (ok, stdout, stderr) =
        tokio::task::block_in_place(|| run_command(&["check", "--config", path], &[]));
    assert!(ok, "live stack: {stdout}\n{stderr}");
    for line in [
        "ok   broker",
        "ok   cache",
        "ok   budget",
        "200/s, burst 20 for the whole group, shared through Redis ",
        "(its script runs)",
        "ok   endpoint",
        "ok   credentials",
        "REDACTED",
        "recaptcha.allowed_projects is empty",
    ] {
        assert!(stdout.contains(line), "{line} missing:\n{stdout}");
    }
    // The server's version is named (the script needs Redis 5 or later).
    let version = stdout
        .split("shared through Redis ")
        .nth(1)
        .and_then(|rest| rest.split_whitespace().next())
        .unwrap_or_default();
    assert!(
        recaptcha_annotator::budget::redis::runs_the_script(version),
        "{version:?} in:\n{stdout}"
    );
    assert!(!stdout.contains(API_KEY), "API key printed:\n{stdout}");
    // A wrong key: the endpoint answers, the credentials probe fails, naming why.
    let (ok, stdout, _) = tokio::task::block_in_place(|| {
        run_command(
            &["check", "--config", path],
            &[("ANNOTATOR__RECAPTCHA__API_KEY", "wrong-key")],
        )
    });
    assert!(!ok, "a wrong key passed:\n{stdout}");
    assert!(
        stdout.contains("FAIL credentials") && stdout.contains("refuses the credentials"),
        "{stdout}"
    );
    assert!(
        !stdout.contains("wrong-key"),
        "the key was printed:\n{stdout}"
    );
    // A 400 for the probe is not proof: `run` would dead-letter every event as `rejected`.
    env.script(vec![scripted(400, 1)], None);
    let (ok, stdout, _) =
        tokio::task::block_in_place(|| run_command(&["check", "--config", path], &[]));
    assert!(
        !ok && stdout.contains("FAIL credentials") && stdout.contains("Google answers 404"),
        "{stdout}"
    );
    // --offline makes no call.
    let before = env.sandbox.attempts().len();
    let (ok, stdout, _) = tokio::task::block_in_place(|| {
        run_command(
            &["check", "--config", path, "--offline"],
            &[("ANNOTATOR__RECAPTCHA__API_KEY", "wrong-key")],
        )
    });
    assert!(ok && stdout.contains("not proven (--offline)"), "{stdout}");
    assert_eq!(
        env.sandbox.attempts().len(),
        before,
        "--offline called the endpoint"
    );
    // Nothing is created on disk: an embedded store that does not exist stays absent.
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("data/cache.redb");
    let (ok, stdout, _) = tokio::task::block_in_place(|| {
        run_command(
            &["check", "--config", path, "--offline"],
            &[
                ("ANNOTATOR__CACHE__BACKEND", "embedded"),
                ("ANNOTATOR__CACHE__PATH", store.to_str().unwrap()),
            ],
        )
    });
    assert!(ok && stdout.contains("does not exist yet"), "{stdout}");
    assert!(
        std::fs::read_dir(dir.path()).unwrap().next().is_none(),
        "check wrote to disk"
    );

    let dead = format!("127.0.0.1:{}", free_port());
    let vars = [
        ("ANNOTATOR__KAFKA__BROKERS", dead.as_str()),
        ("ANNOTATOR__CACHE__REDIS_URL", "redis://127.0.0.1:1"),
    ];
    let endpoint = format!("http://127.0.0.1:{}", free_port());
    let mut all = vars.to_vec();
    all.push(("ANNOTATOR__RECAPTCHA__ENDPOINT", endpoint.as_str()));
    let (ok, stdout, stderr) =
        tokio::task::block_in_place(|| run_command(&["check", "--config", path], &all));
    assert!(!ok, "dead stack passed:\n{stdout}");
    for line in [
        "FAIL broker",
        "FAIL cache",
        "FAIL budget",
        "FAIL endpoint",
        "FAIL credentials",
    ] {
        assert!(stdout.contains(line), "{line} missing:\n{stdout}");
    }
    assert!(stderr.contains("check failed"), "{stderr}");
    // A bad config is refused with the key named.
    let (ok, _, stderr) = tokio::task::block_in_place(|| {
        run_command(
            &["check", "--config", path],
            &[("ANNOTATOR__DELIVERY__MAX_IN_FLIGHT", "0")],
        )
    });
    assert!(!ok && stderr.contains("delivery.max_in_flight"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn after_a_quiet_restart_every_owned_partition_has_lag_and_topics_are_kafka_names() {
    let env = TestEnv::new("quiet-lag").await;
    env.produce_bulk(unique_events("q", 4)).await;
    let mut config = env.config();
    config.admin.lag_interval = Duration::from_millis(200);
    let service = env.start(config);
    env.wait_all_committed(Duration::from_secs(60)).await;
    service.stop().await;
    // Nothing new arrives after the restart.
    let mut config = env.config();
    config.admin.lag_interval = Duration::from_millis(200);
    let service = env.start(config);
    let started = Instant::now();
    let expected = 4 * usize::try_from(env.partitions).unwrap();
    let text = loop {
        let (_, text) = env.http_get("/metrics").await;
        let series = text
            .lines()
            .filter(|l| l.starts_with("annotator_consumer_lag{"))
            .count();
        if series == expected {
            break text;
        }
        assert!(
            started.elapsed() < Duration::from_secs(30),
            "{series} of {expected} lag series after a quiet restart:\n{text}"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    service.stop().await;
    // One convention on every family: `topic` is the Kafka topic's name.
    let mut topics = std::collections::BTreeSet::new();
    for line in text.lines().filter(|l| !l.starts_with('#')) {
        if let Some(rest) = line.split_once("topic=\"").map(|(_, r)| r) {
            topics.insert(rest.split('"').next().unwrap().to_owned());
        }
    }
    assert!(!topics.is_empty());
    for topic in &topics {
        assert!(
            topic.starts_with(&env.prefix),
            "topic label {topic:?} is not a Kafka topic"
        );
    }
    assert!(
        text.lines()
            .filter(|l| l.starts_with("annotator_consumer_lag{"))
            .all(|l| l.ends_with(" 0")),
        "a quiet partition shows lag:\n{text}"
    );
    // The partitions the first run committed show the group's commit without new traffic.
    let committed = text
        .lines()
        .filter(|l| l.starts_with("annotator_committed_offset{") && l.contains("fraud-signals"))
        .count();
    assert!(
        committed >= 1,
        "no committed-offset series after a quiet restart:\n{text}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_that_is_down_is_reported_once_not_in_every_connect_attempt() {
    let env = TestEnv::new("broker-down").await;
    let dead = format!("127.0.0.1:{}", free_port());
    let file = env.config_file(&format!(
        "[kafka]\nbrokers = \"{dead}\"\n[kafka.properties]\n\"socket.connection.setup.timeout.ms\" = \"1000\"\n\"reconnect.backoff.max.ms\" = \"1000\""
    ));
    let service = spawn_logged(file.path(), "info");
    tokio::time::sleep(Duration::from_secs(15)).await;
    let logs = service.stop("TERM");
    let lines: Vec<&str> = logs.lines().collect();
    eprintln!(
        "{} lines in 15 s with the broker down:\n{logs}",
        lines.len()
    );
    let about_it = lines
        .iter()
        .filter(|l| l.contains("unreachable") || l.contains("librdkafka"))
        .count();
    assert!(
        logs.contains("Kafka broker unreachable") && logs.contains(&dead),
        "no line naming the broker:\n{logs}"
    );
    assert!(about_it <= 2, "{about_it} lines about the broker:\n{logs}");
    assert!(lines.len() <= 12, "{} lines:\n{logs}", lines.len());
    assert!(!logs.contains("ERROR"), "ERROR lines:\n{logs}");
    assert!(
        logs.contains("the group was never joined") && !logs.contains("left the group"),
        "shutdown line:\n{logs}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dry_run_refuses_to_consume_as_the_real_group() {
    let env = TestEnv::new("dry-group").await;
    let file = env.config_file("");
    let path = file.path().to_str().unwrap();
    let real = env.config_base.group.clone();
    let (ok, _, stderr) = tokio::task::block_in_place(|| {
        run_command(
            &["run", "--config", path, "--dry-run", "--group", &real],
            &[],
        )
    });
    assert!(!ok, "a dry run started as the real group");
    assert!(
        stderr.contains("a dry run never consumes as the real group"),
        "{stderr}"
    );
    let (ok, _, stderr) = tokio::task::block_in_place(|| {
        run_command(&["run", "--config", path, "--group", "x"], &[])
    });
    assert!(!ok && stderr.contains("--dry-run"), "{stderr}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_letter_replay_republishes_once_with_a_replay_count() {
    let env = TestEnv::new("replay").await;
    // An outcome whose mapping comes too late, and a bad event that must not be replayed.
    let late = json!({"event_id": "late-1", "outcome": "two_factor_passed", "key": "late"});
    env.produce("logins", Some("late"), Some(&late.to_string()))
        .await;
    env.produce("logins", Some("broken"), Some("not json"))
        .await;
    let file = env.config_file("[delivery]\njoin_grace = \"500ms\"\njoin_retry = \"100ms\"");
    let mut child = spawn_binary(file.path());
    let letters = tokio::task::block_in_place(|| env.dead_letters(2, Duration::from_secs(30)));
    assert_eq!(letters.len(), 2);
    // The mapping arrives; the operator replays the unjoined event.
    let mapping =
        json!({"key": "late", "assessment": format!("projects/{PROJECT}/assessments/replayed")});
    env.produce("assessments", Some("late"), Some(&mapping.to_string()))
        .await;
    env.wait_all_committed(Duration::from_secs(30)).await;
    let path = file.path().to_str().unwrap();
    let replay = [
        "dead-letter",
        "replay",
        "--config",
        path,
        "--reason",
        "unjoined",
    ];
    let (ok, stdout, stderr) = tokio::task::block_in_place(|| run_command(&replay, &[]));
    assert!(ok, "{stdout}\n{stderr}");
    assert!(stdout.contains("replayed 1"), "{stdout}");
    assert!(
        stdout.contains("reason 1"),
        "the decode failure was filtered out: {stdout}"
    );
    env.wait_accepted(1, Duration::from_secs(30)).await;
    assert_eq!(
        env.sandbox.recorded()[0].name,
        format!("projects/{PROJECT}/assessments/replayed")
    );
    // The re-published record carries the replay count.
    let logins = tokio::task::block_in_place(|| {
        env.read_topic(&env.topic("logins"), 3, Duration::from_secs(10))
    });
    let replayed: Vec<_> = logins
        .iter()
        .filter(|r| r.headers.contains_key("annotator.replay_count"))
        .collect();
    assert_eq!(replayed.len(), 1);
    assert_eq!(replayed[0].headers["annotator.replay_count"], "1");
    assert_eq!(
        replayed[0].value.as_deref(),
        Some(late.to_string().as_str())
    );
    // The same command again replays nothing.
    let (ok, stdout, _) = tokio::task::block_in_place(|| run_command(&replay, &[]));
    assert!(ok && stdout.contains("replayed 0"), "{stdout}");
    // Another filter still finds what the first one passed over.
    let decode = [
        "dead-letter",
        "replay",
        "--config",
        path,
        "--reason",
        "decode",
        "--dry-run",
    ];
    let (ok, stdout, _) = tokio::task::block_in_place(|| run_command(&decode, &[]));
    assert!(ok && stdout.contains("would replay 1"), "{stdout}");
    signal(&child, "TERM");
    tokio::task::block_in_place(|| child.wait()).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn logs_never_carry_secrets_or_account_data() {
    let env = TestEnv::new("secrets").await;
    let secrets = [
        "AIzaSECRET-api-key-123",
        "sasl-secret-pass",
        "redis-secret-pass",
        "acct-secret-42",
        "tok-secret-payload",
    ];
    let extra = format!(
        "[cache]\nbackend = \"memory\"\nredis_url = \"redis://:{}@127.0.0.1:6379\"\n[log]\nformat = \"json\"",
        secrets[2]
    );
    let file = env.config_file(&extra);
    let text = std::fs::read_to_string(file.path())
        .unwrap()
        .replace(API_KEY, secrets[0])
        .replace(
            "[kafka.properties]\n",
            &format!(
                "[kafka.properties]\n\"sasl.password\" = \"{}\"\n",
                secrets[1]
            ),
        );
    std::fs::write(file.path(), text).unwrap();
    // Rejected (the sandbox expects another key), dead-lettered and invalid events all log.
    env.script(vec![scripted(400, 1)], None);
    let events = [
        json!({"event_id": "s1", "outcome": "chargeback", "account_id": secrets[3], "recaptcha_token": format!("{}:U=6ZZZZe73fZZZZZZ0", secrets[4])}),
        json!({"event_id": "s2", "outcome": "nope", "account_id": secrets[3]}),
        json!({"event_id": "s3", "outcome": "refund", "account_id": secrets[3], "recaptcha_token": secrets[4]}),
    ];
    for e in &events {
        env.produce("fraud-signals", None, Some(&e.to_string()))
            .await;
    }
    let service = spawn_logged(file.path(), "debug");
    env.wait_all_committed(Duration::from_secs(60)).await;
    let logs = service.stop("TERM");
    assert!(
        logs.contains("event dead-lettered"),
        "expected log lines:\n{logs}"
    );
    assert!(logs.lines().any(|l| l.starts_with('{')), "JSON logs");
    for secret in secrets {
        assert!(!logs.contains(secret), "{secret} reached the logs");
    }
    // Typed fields: numbers are numbers, absent values are absent (no Rust debug strings),
    // and a refused event's line still names its event id.
    let lines: Vec<serde_json::Value> = logs
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    for line in &lines {
        // The service's own lines (libraries' debug lines are theirs).
        if line["target"]
            .as_str()
            .is_some_and(|t| t.starts_with("recaptcha_annotator"))
        {
            let text = line.to_string();
            assert!(
                !text.contains("\"None\"") && !text.contains("Some("),
                "a Rust debug string in a JSON log line: {text}"
            );
        }
    }
    let unknown = lines
        .iter()
        .find(|l| l["reason"] == "unknown_outcome")
        .unwrap_or_else(|| panic!("no unknown_outcome line:\n{logs}"));
    assert_eq!(unknown["span"]["event_id"], "s2", "{unknown}");
    let rejected = lines
        .iter()
        .find(|l| l["reason"] == "rejected")
        .unwrap_or_else(|| panic!("no rejected line:\n{logs}"));
    assert_eq!(rejected["status"], 400, "{rejected}");
    assert!(rejected["span"]["partition"].is_number(), "{rejected}");
}
