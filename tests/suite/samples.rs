//! The sample producers (Python with confluent-kafka, Node.js with kafkajs) against the
//! local broker and the sandbox's `assessments.create`: what they write passes `validate`,
//! and the service annotates every outcome end to end, joined through the key.
//! `scripts/samples-deps.sh` installs their libraries (the test script runs it).

use std::path::Path;
use std::time::Duration;

use crate::common::*;

fn root() -> &'static Path {
    Path::new(env!("CARGO_MANIFEST_DIR"))
}

/// Runs a sample with this test's topics and endpoint; returns what it printed.
fn run_sample(env: &TestEnv, program: &Path, script: &Path, extra: &[&str]) -> String {
    let out = std::process::Command::new(program)
        .arg(script)
        .args(["--brokers", &brokers(), "--endpoint", &env.endpoint])
        .args(["--project", PROJECT, "--api-key", API_KEY, "--count", "3"])
        .args(["--assessments-topic", &env.topic("assessments")])
        .args(["--logins-topic", &env.topic("logins")])
        .args(["--fraud-signals-topic", &env.topic("fraud-signals")])
        .args(extra)
        .output()
        .unwrap_or_else(|e| panic!("{} (scripts/samples-deps.sh): {e}", program.display()));
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "{}: {text}", script.display());
    text
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_python_and_node_samples_write_what_validate_accepts_and_the_service_annotates() {
    let env = TestEnv::new("samples").await;
    let python = run_sample(
        &env,
        &root().join(".tools/py/bin/python"),
        &root().join("samples/python/producer.py"),
        // Batched, as confluent-kafka sends by default: `validate` reads each partition to
        // its end.
        &[],
    );
    assert!(
        python.contains("3 assessments, 6 outcomes delivered"),
        "{python}"
    );
    let node = run_sample(
        &env,
        Path::new("node"),
        &root().join("samples/node/producer.js"),
        // kafkajs's idempotent producer, as the sample runs by default.
        &[],
    );
    assert!(
        node.contains("3 assessments, 6 outcomes delivered"),
        "{node}"
    );

    let file = env.config_file("");
    for (topic, n) in [("assessments", 6), ("logins", 6), ("fraud-signals", 6)] {
        let (ok, out) = run_binary(
            &[
                "validate",
                "--config",
                file.path().to_str().unwrap(),
                "--topic",
                topic,
            ],
            &[],
        );
        assert!(ok, "{out}");
        assert!(
            out.contains(&format!("{n} checked: {n} ok, 0 failed")),
            "{topic}: {out}"
        );
    }

    // The service annotates all twelve outcomes, each for an assessment the samples created.
    let service = env.start(env.config());
    env.wait_accepted(12, Duration::from_secs(60)).await;
    env.wait_all_committed(Duration::from_secs(30)).await;
    service.stop().await;
    let recorded = env.sandbox.recorded();
    assert_eq!(recorded.len(), 12);
    assert!(
        recorded.iter().all(|r| r
            .name
            .starts_with(&format!("projects/{PROJECT}/assessments/"))),
        "{recorded:?}"
    );
    let chargebacks = recorded
        .iter()
        .filter(|r| r.body["transactionEvent"]["eventType"] == "CHARGEBACK")
        .count();
    assert_eq!(chargebacks, 6);
    assert!(env.dead_letters(0, Duration::from_secs(2)).is_empty());
}
