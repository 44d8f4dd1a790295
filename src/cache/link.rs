//! Reaching Redis as production runs it: one server or a Redis Cluster, over plain TCP or TLS
//! (`rediss://`, the server verified against the system's roots or `cache.redis_ca_file`),
//! with the password in the URL. The cache and the budget share this; each keeps its own
//! connection.
//!
//! In a cluster every operation stays on one slot: mappings and done ids are one key per
//! command, and the budget's script names its keys under one hash tag
//! ([`budget_key`]).

use std::path::Path;
use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig};
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{Cmd, Pipeline, RedisFuture, TlsCertificates, Value};
use secrecy::{ExposeSecret as _, SecretString};

use crate::config::CacheConfig;

/// Where Redis is and how to reach it; never prints a password.
#[derive(Clone)]
pub struct RedisTarget {
    urls: Vec<SecretString>,
    cluster: bool,
    /// PEM of the CA that signs the servers' certificates (`cache.redis_ca_file`).
    ca: Option<Vec<u8>>,
}

impl std::fmt::Debug for RedisTarget {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "RedisTarget({})", self.address())
    }
}

/// Timeouts and retries of one connection.
#[derive(Debug, Clone, Copy)]
pub struct Patience {
    pub connect: Duration,
    pub response: Duration,
    pub retries: u32,
}

impl RedisTarget {
    /// `cache.redis_url` (several URLs separated by commas are a cluster's seed nodes),
    /// `cache.redis_cluster` and `cache.redis_ca_file`. Errors never quote a URL.
    pub fn from_config(config: &CacheConfig) -> Result<Self, String> {
        let urls: Vec<SecretString> = config
            .redis_url
            .expose_secret()
            .split(',')
            .map(str::trim)
            .filter(|u| !u.is_empty())
            .map(|u| SecretString::from(u.to_owned()))
            .collect();
        if urls.is_empty() {
            return Err("cache.redis_url: empty".into());
        }
        for url in &urls {
            redis::parse_redis_url(url.expose_secret()).ok_or_else(|| {
                "cache.redis_url: not a valid redis:// or rediss:// URL (not shown: it may hold a password)".to_owned()
            })?;
        }
        let ca = match &config.redis_ca_file {
            Some(path) => Some(read_ca(path)?),
            None => None,
        };
        Ok(Self {
            cluster: config.redis_cluster || urls.len() > 1,
            urls,
            ca,
        })
    }

    /// One server at `url`, no cluster, the system's roots.
    pub fn single(url: &SecretString) -> Self {
        Self {
            urls: vec![url.clone()],
            cluster: false,
            ca: None,
        }
    }

    pub fn is_cluster(&self) -> bool {
        self.cluster
    }

    /// `host:port` of each node, without user or password, for log lines.
    pub fn address(&self) -> String {
        let hosts: Vec<String> = self.urls.iter().map(address).collect();
        let tls = self
            .urls
            .iter()
            .any(|u| u.expose_secret().starts_with("rediss://"));
        format!(
            "{}{}{}",
            if self.cluster { "cluster " } else { "" },
            hosts.join(","),
            if tls { " (TLS)" } else { "" }
        )
    }

    /// A connection that reconnects by itself (a cluster's follows its slots).
    pub async fn connect(&self, patience: Patience) -> Result<RedisConn, redis::RedisError> {
        let certs = || TlsCertificates {
            client_tls: None,
            root_cert: self.ca.clone(),
        };
        if self.cluster {
            let mut builder = ClusterClientBuilder::new(
                self.urls
                    .iter()
                    .map(|u| u.expose_secret().to_owned())
                    .collect::<Vec<_>>(),
            )
            .connection_timeout(patience.connect)
            .response_timeout(patience.response)
            .retries(patience.retries);
            if self.ca.is_some() {
                builder = builder.certs(certs());
            }
            let client = builder.build()?;
            let conn = tokio::time::timeout(
                patience.connect + patience.response,
                client.get_async_connection(),
            )
            .await
            .map_err(|_| {
                redis::RedisError::from(std::io::Error::new(
                    std::io::ErrorKind::TimedOut,
                    "cluster connection timed out",
                ))
            })??;
            return Ok(RedisConn::Cluster(conn));
        }
        let url = self.urls[0].expose_secret();
        let client = if self.ca.is_some() {
            redis::Client::build_with_tls(url, certs())?
        } else {
            redis::Client::open(url)?
        };
        let config = ConnectionManagerConfig::new()
            .set_connection_timeout(Some(patience.connect))
            .set_response_timeout(Some(patience.response))
            .set_number_of_retries(patience.retries as usize);
        Ok(RedisConn::Single(
            ConnectionManager::new_with_config(client, config).await?,
        ))
    }
}

fn read_ca(path: &Path) -> Result<Vec<u8>, String> {
    let pem = std::fs::read(path)
        .map_err(|e| format!("cache.redis_ca_file: cannot read {}: {e}", path.display()))?;
    if !pem.windows(27).any(|w| w == b"-----BEGIN CERTIFICATE-----") {
        return Err(format!(
            "cache.redis_ca_file: {} holds no PEM certificate",
            path.display()
        ));
    }
    Ok(pem)
}

/// `host:port` of a Redis URL, without user or password.
pub fn address(url: &SecretString) -> String {
    reqwest::Url::parse(url.expose_secret()).map_or_else(
        |_| "the configured Redis".to_owned(),
        |u| {
            format!(
                "{}:{}",
                u.host_str().unwrap_or("?"),
                u.port().unwrap_or(6379)
            )
        },
    )
}

/// The key of one budget limit: every limit of a group under one hash tag, so the budget's
/// script (which takes from the group's limit and a project's at once) touches one slot of
/// a cluster. A prefix that already holds a `{tag}` keeps it.
pub fn budget_key(prefix: &str, limit: &str) -> String {
    let tagged = prefix
        .find('{')
        .is_some_and(|open| prefix[open + 1..].find('}').is_some_and(|len| len > 0));
    if tagged {
        format!("{prefix}{limit}")
    } else {
        format!("{{{prefix}}}{limit}")
    }
}

/// A connection to one server or to a cluster.
#[derive(Clone)]
pub enum RedisConn {
    Single(ConnectionManager),
    Cluster(ClusterConnection),
}

impl ConnectionLike for RedisConn {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Self::Single(c) => c.req_packed_command(cmd),
            Self::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        cmd: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Self::Single(c) => c.req_packed_commands(cmd, offset, count),
            Self::Cluster(c) => c.req_packed_commands(cmd, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Self::Single(c) => c.get_db(),
            Self::Cluster(c) => c.get_db(),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_budget_limit_of_a_group_shares_one_hash_tag() {
        assert_eq!(budget_key("ra:budget:", "all"), "{ra:budget:}all");
        assert_eq!(
            budget_key("ra:budget:", "project:p"),
            "{ra:budget:}project:p"
        );
        assert_eq!(budget_key("{team-a}:budget:", "all"), "{team-a}:budget:all");
        // `{}` is no tag (Redis hashes the whole key): wrap it.
        assert_eq!(budget_key("a{}b:", "all"), "{a{}b:}all");
    }

    #[test]
    fn several_urls_are_a_cluster_and_errors_never_quote_a_url() {
        let config = |url: &str| CacheConfig {
            redis_url: SecretString::from(url.to_owned()),
            ..CacheConfig::default()
        };
        let target =
            RedisTarget::from_config(&config("redis://:pw@h1:7000, redis://:pw@h2:7001")).unwrap();
        assert!(target.is_cluster());
        assert_eq!(target.address(), "cluster h1:7000,h2:7001");
        let target = RedisTarget::from_config(&config("rediss://:pw@h1:6380")).unwrap();
        assert!(!target.is_cluster());
        assert_eq!(target.address(), "h1:6380 (TLS)");
        let e = RedisTarget::from_config(&config("nonsense://:hunter2@x")).unwrap_err();
        assert!(!e.contains("hunter2"), "{e}");
    }
}
