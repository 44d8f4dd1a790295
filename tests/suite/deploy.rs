//! The deployment files refer only to metrics the service exports, and to files that exist.

use std::collections::BTreeSet;

fn names_in(text: &str) -> BTreeSet<String> {
    let mut out = BTreeSet::new();
    let mut rest = text;
    while let Some(i) = rest.find("annotator_") {
        let tail = &rest[i..];
        let end = tail
            .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
            .unwrap_or(tail.len());
        out.insert(tail[..end].to_owned());
        rest = &tail[end..];
    }
    out
}

#[test]
fn alerts_and_dashboard_use_exported_metrics() {
    let mut catalogue = names_in(include_str!("../../src/telemetry/mod.rs"));
    catalogue.extend(names_in(include_str!("../../src/telemetry/kafka.rs")));
    for (file, text) in [
        ("deploy/alerts.yml", include_str!("../../deploy/alerts.yml")),
        (
            "deploy/grafana-dashboard.json",
            include_str!("../../deploy/grafana-dashboard.json"),
        ),
    ] {
        let used = names_in(text);
        assert!(!used.is_empty(), "{file} uses no metric");
        for name in used {
            let base = ["_bucket", "_count", "_sum"]
                .iter()
                .find_map(|s| name.strip_suffix(s))
                .unwrap_or(&name);
            assert!(catalogue.contains(base), "{file}: {name} is not exported");
        }
    }
}

#[test]
fn compose_runs_the_whole_stack() {
    let compose = include_str!("../../docker-compose.yml");
    for needle in [
        "image: apache/kafka:4.",
        "KAFKA_PROCESS_ROLES: broker,controller",
        "PLAINTEXT_HOST://localhost:29092",
        "\"29092:29092\"",
        "image: redis:",
        "image: prom/prometheus:",
        "\"sandbox\", \"--listen\"",
        "ANNOTATOR__KAFKA__BROKERS: kafka:9092",
        "ANNOTATOR__CACHE__BACKEND: redis",
        "./deploy/alerts.yml:/etc/prometheus/alerts.yml",
        "recaptcha-annotator publish --config /etc/recaptcha-annotator/local.toml",
        "./deploy/sample-events:/samples:ro",
        "image: grafana/grafana:",
        "./deploy/grafana-dashboard.json:/etc/grafana/dashboards/",
        "http://localhost:3000",
    ] {
        assert!(
            compose.contains(needle),
            "docker-compose.yml lacks {needle}"
        );
    }
    let dockerfile = include_str!("../../Dockerfile");
    assert!(
        dockerfile.contains("USER 10001"),
        "the image runs as non-root"
    );
    assert!(
        dockerfile.matches("FROM ").count() >= 2,
        "multi-stage build"
    );
}

/// The compose stack's one-shot producer publishes these: each line passes `validate`
/// against the topic it is published to, with the image's config.
#[test]
fn the_compose_sample_events_are_valid_for_their_topics() {
    for topic in ["fraud-signals", "logins"] {
        let file = format!(
            "{}/deploy/sample-events/{topic}.jsonl",
            env!("CARGO_MANIFEST_DIR")
        );
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_recaptcha-annotator"))
            .args(["validate", "--config"])
            .arg(format!("{}/config/local.toml", env!("CARGO_MANIFEST_DIR")))
            .args(["--topic", topic, "--file", &file])
            .output()
            .unwrap();
        let text = String::from_utf8_lossy(&out.stdout);
        assert!(out.status.success(), "{topic}: {text}");
        assert!(text.contains(", 0 failed"), "{topic}: {text}");
    }
}

/// Every alert names its runbook entry, and the entry exists in docs/RUNBOOK.md.
#[test]
fn every_alert_has_a_runbook_entry() {
    let alerts = include_str!("../../deploy/alerts.yml");
    let runbook = include_str!("../../docs/RUNBOOK.md");
    let headings: BTreeSet<String> = runbook
        .lines()
        .filter_map(|l| l.strip_prefix("## "))
        .map(|h| h.trim().to_ascii_lowercase())
        .collect();
    let mut alerts_seen = 0;
    let mut current = None;
    for line in alerts.lines() {
        if let Some(name) = line.trim().strip_prefix("- alert: ") {
            assert!(current.is_none(), "{current:?} has no runbook_url");
            current = Some(name.to_owned());
            alerts_seen += 1;
        }
        if let Some(url) = line.trim().strip_prefix("runbook_url: ") {
            let name = current.take().expect("a runbook_url outside an alert");
            let anchor = name.to_ascii_lowercase();
            assert_eq!(url, format!("docs/RUNBOOK.md#{anchor}"), "{name}");
            assert!(
                headings.contains(&anchor),
                "docs/RUNBOOK.md has no section {name}"
            );
        }
    }
    assert!(current.is_none(), "{current:?} has no runbook_url");
    assert!(alerts_seen >= 10, "{alerts_seen} alerts");
}
