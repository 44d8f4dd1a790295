//! Redis for the tests: the suite's server under a key namespace per test, and private
//! servers a test can stop and start.

use std::time::{Duration, Instant};

use recaptcha_annotator::config::{CacheBackend, Config};
use secrecy::SecretString;

use super::{TestEnv, free_port};

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
        config.cache.redis_budget_prefix = format!("{}budget:", self.prefix);
    }

    /// The TOML lines for the same, for `config_file`.
    pub fn redis_toml(&self, url: &str) -> String {
        format!(
            "[cache]\nbackend = \"redis\"\nredis_url = \"{url}\"\nredis_prefix = \"{p}key:\"\nredis_done_prefix = \"{p}done:\"\nredis_budget_prefix = \"{p}budget:\"\n",
            p = self.prefix
        )
    }
}

/// A private redis-server on a spare port, persisting to `dir` (append-only, fsync always),
/// so it can be stopped and started again with its data.
pub struct PrivateRedis {
    pub port: u16,
    dir: std::path::PathBuf,
    args: Vec<String>,
    child: Option<std::process::Child>,
}

impl PrivateRedis {
    pub fn start(dir: &std::path::Path) -> Self {
        Self::start_with(dir, &[])
    }

    /// A private server with extra `redis-server` arguments (`--requirepass`, TLS).
    pub fn start_with(dir: &std::path::Path, args: &[&str]) -> Self {
        let mut redis = Self {
            port: free_port(),
            dir: dir.to_owned(),
            args: args.iter().map(|&a| a.to_owned()).collect(),
            child: None,
        };
        redis.restart();
        redis
    }

    /// A private server that speaks only TLS on its port, with `cert` and `key` (made by
    /// [`super::make_ca`]) and `extra` arguments.
    pub fn start_tls(
        dir: &std::path::Path,
        cert: &std::path::Path,
        key: &std::path::Path,
        extra: &[&str],
    ) -> Self {
        let port = free_port();
        let mut args: Vec<String> = [
            "--port",
            "0",
            "--tls-port",
            &port.to_string(),
            "--tls-cert-file",
            cert.to_str().unwrap(),
            "--tls-key-file",
            key.to_str().unwrap(),
            "--tls-auth-clients",
            "no",
        ]
        .iter()
        .map(|&a| a.to_owned())
        .collect();
        args.extend(extra.iter().map(|&a| a.to_owned()));
        let mut redis = Self {
            port,
            dir: dir.to_owned(),
            args,
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
            .args(["--bind", "127.0.0.1", "--save", ""])
            .args(if self.args.iter().any(|a| a == "--tls-port") {
                vec![]
            } else {
                vec!["--port".to_owned(), self.port.to_string()]
            })
            .args(["--appendonly", "yes", "--appendfsync", "always", "--dir"])
            .arg(&self.dir)
            .args(&self.args)
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
