//! Redis as production runs it: over TLS with a password (`rediss://`, the server verified
//! against a CA made here), and as a Redis Cluster of three local servers joined with
//! `redis-cli --cluster create`. Mappings, done ids and the group's budget (a two-key
//! script: the group's limit and a project's cap) all work, and a wrong CA is refused.

use std::time::{Duration, Instant};

use crate::common::*;
use recaptcha_annotator::config::Config;

const PASSWORD: &str = "tls-redis-SECRET-3e1";

/// Assessments and their outcomes, joined through the cache: `n` of each.
async fn produce_joined(env: &TestEnv, tag: &str, n: usize) {
    let events: Vec<(String, Option<String>, Option<String>)> = (0..n)
        .flat_map(|i| {
            let key = format!("{tag}-k{i}");
            let name = format!("projects/{PROJECT}/assessments/{tag}{i}");
            [
                (
                    "assessments".to_owned(),
                    Some(key.clone()),
                    Some(format!(r#"{{"key":"{key}","assessment":"{name}"}}"#)),
                ),
                (
                    "logins".to_owned(),
                    Some(key.clone()),
                    Some(format!(
                        r#"{{"event_id":"{tag}-e{i}","outcome":"password_correct","key":"{key}"}}"#
                    )),
                ),
            ]
        })
        .collect();
    env.produce_many(&events).await;
}

/// The budget settings that make every call take from two keys in one script.
fn budget_toml() -> String {
    format!("[delivery]\nrate_limit = 1000\n[delivery.project_rate_limits]\n\"{PROJECT}\" = 500\n")
}

async fn run_and_check_budget(env: &TestEnv, config: Config, n: u64) {
    let service = env.start(config);
    produce_joined(env, "j", n as usize).await;
    env.wait_accepted(n, Duration::from_secs(60)).await;
    let (_, text) = env.http_get("/metrics").await;
    let granted = metric_sum(&text, "annotator_rate_budget_granted_total");
    let fallback = metric(&text, "annotator_rate_budget_fallback", &[]).unwrap_or(-1.0);
    service.stop().await;
    assert!(
        granted >= n as f64,
        "the budget granted every call: {granted}"
    );
    assert_eq!(
        fallback, 0.0,
        "the budget never fell back: Redis ran its script"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rediss_with_a_password_and_a_private_ca_carries_mappings_and_the_budget() {
    let env = TestEnv::new("redis-tls").await;
    let dir = tempfile::tempdir().unwrap();
    let ca = make_ca(dir.path(), "redis", true);
    let wrong = make_ca(dir.path(), "other", false);
    let redis = PrivateRedis::start_tls(
        dir.path(),
        &dir.path().join("server.pem"),
        &dir.path().join("server.key"),
        &["--requirepass", PASSWORD],
    );
    let url = format!("rediss://:{PASSWORD}@127.0.0.1:{}", redis.port);
    let toml = |ca: &std::path::Path| {
        format!(
            "{}redis_ca_file = \"{}\"\n{}",
            env.redis_toml(&url),
            ca.display(),
            budget_toml()
        )
    };
    let config = Config::from_toml(&env.config_toml(&toml(&ca))).unwrap();
    run_and_check_budget(&env, config, 20).await;

    // A CA that did not sign the server's certificate: `check` refuses the cache, names
    // it, and never shows the password.
    let file = env.config_file(&toml(&wrong));
    let (_, out) = check_offline(file.path(), &[]);
    assert!(out.contains("FAIL cache"), "{out}");
    assert!(!out.contains(PASSWORD), "{out}");
    // And plain TCP to the TLS port does not pass for Redis either.
    let plain = Config::from_toml(
        &env.config_toml(&env.redis_toml(&format!("redis://:{PASSWORD}@127.0.0.1:{}", redis.port))),
    )
    .unwrap();
    assert!(
        recaptcha_annotator::cache::open(&plain.cache)
            .await
            .is_err(),
        "a plain connection to a TLS port fails"
    );
}

/// Three cluster-enabled servers joined into one cluster (no replicas).
struct Cluster {
    nodes: Vec<PrivateRedis>,
}

fn start_cluster(dir: &std::path::Path) -> Cluster {
    let nodes: Vec<PrivateRedis> = (0..3)
        .map(|i| {
            let node_dir = dir.join(format!("node{i}"));
            std::fs::create_dir_all(&node_dir).unwrap();
            // The bus port is named too: by default it is the port + 10000, which lies in
            // the ephemeral range where any outgoing connection may hold it.
            let bus = free_port().to_string();
            PrivateRedis::start_with(
                &node_dir,
                &[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-port",
                    &bus,
                ],
            )
        })
        .collect();
    let addresses: Vec<String> = nodes
        .iter()
        .map(|n| format!("127.0.0.1:{}", n.port))
        .collect();
    let out = std::process::Command::new("redis-cli")
        .args(["--cluster", "create"])
        .args(&addresses)
        .args(["--cluster-replicas", "0", "--cluster-yes"])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "redis-cli --cluster create: {}",
        String::from_utf8_lossy(&out.stdout)
    );
    let started = Instant::now();
    loop {
        let ok = nodes.iter().all(|n| {
            let out = std::process::Command::new("redis-cli")
                .args(["-p", &n.port.to_string(), "cluster", "info"])
                .output()
                .unwrap();
            String::from_utf8_lossy(&out.stdout).contains("cluster_state:ok")
        });
        if ok {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(20),
            "cluster not ok"
        );
        std::thread::sleep(Duration::from_millis(200));
    }
    Cluster { nodes }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_redis_cluster_of_three_carries_mappings_done_ids_and_the_budget() {
    let env = TestEnv::new("redis-cluster").await;
    let dir = tempfile::tempdir().unwrap();
    let cluster = start_cluster(dir.path());
    // Two seed nodes: several URLs mean cluster mode.
    let url = format!(
        "redis://127.0.0.1:{},redis://127.0.0.1:{}",
        cluster.nodes[0].port, cluster.nodes[1].port
    );
    let config =
        Config::from_toml(&env.config_toml(&format!("{}{}", env.redis_toml(&url), budget_toml())))
            .unwrap();
    run_and_check_budget(&env, config, 30).await;

    // The keys landed on more than one node: mappings and done ids are spread by slot,
    // while the budget's keys share one slot.
    let mut holding = 0;
    let mut budget_keys = Vec::new();
    for node in &cluster.nodes {
        let out = std::process::Command::new("redis-cli")
            .args([
                "-p",
                &node.port.to_string(),
                "--scan",
                "--pattern",
                &format!("*{}*", env.prefix),
            ])
            .output()
            .unwrap();
        let keys = String::from_utf8_lossy(&out.stdout).to_string();
        if keys.lines().any(|k| k.contains("key:")) {
            holding += 1;
        }
        budget_keys.extend(
            keys.lines()
                .filter(|k| k.contains("budget:"))
                .map(|k| (node.port, k.to_owned())),
        );
    }
    assert!(holding >= 2, "mappings spread over the nodes: {holding}");
    assert_eq!(
        budget_keys.len(),
        2,
        "the group's key and the project's: {budget_keys:?}"
    );
    assert_eq!(budget_keys[0].0, budget_keys[1].0, "{budget_keys:?}");
    assert!(
        budget_keys.iter().all(|(_, k)| k.starts_with('{')),
        "{budget_keys:?}"
    );

    // A second run of the same events is suppressed by the done ids kept in the cluster.
    let accepted = env.sandbox.accepted_count();
    let mut again = Config::from_toml(&env.config_toml(&env.redis_toml(&url))).unwrap();
    again.kafka.group_id = format!("{}again", env.prefix);
    let service = env.start(again);
    tokio::time::sleep(Duration::from_secs(6)).await;
    service.stop().await;
    assert_eq!(
        env.sandbox.accepted_count(),
        accepted,
        "no event was sent twice"
    );
}
