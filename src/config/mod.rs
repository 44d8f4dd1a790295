//! Configuration: a TOML file layered under `ANNOTATOR__<SECTION>__<KEY>` environment
//! variables (figment), typed with `deny_unknown_fields`, then validated purely with every
//! problem collected before failing.
//!
//! - this file: the sections, one struct each; the `///` doc on each field is the operator's
//!   manual (the README's table mirrors it).
//! - [`env`]: the environment provider and the serde helpers it needs.
//! - [`validate`]: every check without IO, and the values it derives.

mod bounds;
mod env;
mod secret_files;
mod shown;
mod validate;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use secrecy::SecretString;
use serde::{Deserialize, Serialize};
use thiserror::Error;

pub use self::env::ENV_PREFIX;
use self::env::{byte_size, opt_string_or_number, redacted, redacted_opt, vec_string_or_number};
pub use self::validate::{OPEN_PROJECTS_RISK, Validated};
use crate::domain::rules::{OutcomeTopic, Rule};
use crate::telemetry::LogFormat;

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("{0}")]
    Load(Box<figment::Error>),
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// The whole configuration.
#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub kafka: KafkaConfig,
    pub recaptcha: RecaptchaConfig,
    pub cache: CacheConfig,
    pub delivery: DeliveryConfig,
    pub admin: AdminConfig,
    pub log: LogConfig,
    /// Outcome rules added to or replacing the defaults of SPEC 2.3, per topic:
    /// `[rules.logins.captcha_solved] annotation = "LEGITIMATE", reasons = []`.
    pub rules: RulesConfig,
    /// Decide and log every annotation, call nothing, and commit as the consumer group
    /// `<kafka.group_id>-dry-run`, never as the real group.
    pub dry_run: bool,
    /// The group a dry run consumes as (`run --dry-run --group`); default
    /// `<kafka.group_id>-dry-run`. Not a config key.
    #[serde(skip)]
    pub dry_run_group: Option<String>,
}

impl Config {
    /// The consumer group this run commits as: the real one, or for a dry run its own, so a
    /// dry run never moves the real group's offsets.
    pub fn consumer_group(&self) -> Result<String, String> {
        if !self.dry_run {
            return Ok(self.kafka.group_id.clone());
        }
        let group = self
            .dry_run_group
            .clone()
            .unwrap_or_else(|| format!("{}-dry-run", self.kafka.group_id));
        if group == self.kafka.group_id {
            return Err(format!(
                "--group: a dry run never consumes as the real group {group:?}: its commits would make the real run skip those events"
            ));
        }
        Ok(group)
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct KafkaConfig {
    /// Bootstrap servers, comma separated.
    pub brokers: String,
    /// Consumer group; every instance of one deployment uses the same id.
    pub group_id: String,
    pub topics: TopicsConfig,
    /// Raw librdkafka properties (TLS, SASL, timeouts ...), applied first. The keys that define
    /// offset semantics (`enable.auto.commit`, `enable.auto.offset.store`, `group.id`,
    /// `bootstrap.servers`) are set after them and cannot be overridden.
    pub properties: BTreeMap<String, String>,
    /// How often finished offsets are committed (also on revoke and shutdown).
    #[serde(with = "env::duration")]
    pub commit_interval: Duration,
}

impl Default for KafkaConfig {
    fn default() -> Self {
        Self {
            brokers: "127.0.0.1:9092".into(),
            group_id: "recaptcha-annotator".into(),
            topics: TopicsConfig::default(),
            properties: BTreeMap::new(),
            commit_interval: Duration::from_secs(1),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct TopicsConfig {
    /// Assessment-created events; they feed the cache.
    pub assessments: String,
    /// Login outcomes.
    pub logins: String,
    /// Registration outcomes.
    pub registrations: String,
    /// Later fraud or legitimacy evidence.
    pub fraud_signals: String,
    /// Where events are set aside, with the reason in headers.
    pub dead_letter: String,
}

impl Default for TopicsConfig {
    fn default() -> Self {
        Self {
            assessments: "assessments".into(),
            logins: "logins".into(),
            registrations: "registrations".into(),
            fraud_signals: "fraud-signals".into(),
            dead_letter: "annotator-dead-letter".into(),
        }
    }
}

impl TopicsConfig {
    /// The topic name carrying outcomes for `topic`.
    pub fn outcome(&self, topic: OutcomeTopic) -> &str {
        match topic {
            OutcomeTopic::Logins => &self.logins,
            OutcomeTopic::Registrations => &self.registrations,
            OutcomeTopic::FraudSignals => &self.fraud_signals,
        }
    }

    /// The four consumed topics.
    pub fn consumed(&self) -> [&str; 4] {
        [
            &self.assessments,
            &self.logins,
            &self.registrations,
            &self.fraud_signals,
        ]
    }
}

/// Config keys whose values are secrets: printed `[REDACTED]`, never quoted in an error.
/// Every value under `kafka.properties` is treated the same way in errors.
pub const SECRET_KEYS: &[&str] = &["api_key", "redis_url", "account_id_hmac_key"];

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RecaptchaConfig {
    /// API base URL; tests and the demo point it at the sandbox.
    pub endpoint: String,
    /// Project (id or number) for bare assessment ids.
    #[serde(deserialize_with = "opt_string_or_number")]
    pub project: Option<String>,
    /// When not empty, the only projects whose assessments may be annotated.
    #[serde(deserialize_with = "vec_string_or_number")]
    pub allowed_projects: Vec<String>,
    /// API key, sent as `x-goog-api-key`. Without it, Google Application Default Credentials.
    #[serde(serialize_with = "redacted_opt")]
    pub api_key: Option<SecretString>,
    /// A file holding `api_key` (a mounted Kubernetes Secret); its contents less one
    /// trailing line break. Not with `api_key`.
    pub api_key_file: Option<PathBuf>,
    /// Google credentials file (a service account's key, or a user's refresh token from
    /// `gcloud auth application-default login`), used when `api_key` is not set. Without it,
    /// Application Default Credentials: `GOOGLE_APPLICATION_CREDENTIALS`, gcloud's file, or
    /// the metadata server (GKE workload identity, GCE).
    pub credentials_file: Option<PathBuf>,
    /// Project billed for quota, sent as `x-goog-user-project` with Google credentials (user
    /// credentials need it). `GOOGLE_CLOUD_QUOTA_PROJECT` overrides it.
    #[serde(deserialize_with = "opt_string_or_number")]
    pub quota_project: Option<String>,
    /// When set, `accountId` is never sent: it goes as `hashedAccountId`, the HMAC-SHA256 of
    /// the account id under this key, so raw account ids never leave the site.
    #[serde(serialize_with = "redacted_opt")]
    pub account_id_hmac_key: Option<SecretString>,
    /// A file holding `account_id_hmac_key`. Not with `account_id_hmac_key`.
    pub account_id_hmac_key_file: Option<PathBuf>,
    /// Deadline of one annotate call.
    #[serde(with = "env::duration")]
    pub request_timeout: Duration,
    /// Idle connections kept open to the endpoint per HTTP client (over HTTP/1.1 to an
    /// `http://` endpoint, `clients` times this in one pool).
    pub max_idle_connections: usize,
    /// Independent HTTP clients, each filled to 100 calls before the next. With HTTP/2 each keeps one connection whose
    /// concurrent streams the server caps (about 100 at Google), so in-flight calls are
    /// bounded by about `clients` x 100: raise it with `delivery.max_in_flight`. Over
    /// HTTP/1.1 to an `http://` endpoint it only multiplies `max_idle_connections`.
    pub clients: usize,
    /// Speak HTTP/2 without TLS negotiation to a plain `http://` endpoint (the sandbox
    /// supports it). `https://` endpoints negotiate HTTP/2 by ALPN whatever this says.
    pub http2_prior_knowledge: bool,
    /// Allow a plain `http://` endpoint on a host that is not loopback (a private sandbox,
    /// as in the compose file). Without it the service refuses to start rather than send an
    /// API key or token unencrypted.
    pub allow_insecure_endpoint: bool,
}

impl Default for RecaptchaConfig {
    fn default() -> Self {
        Self {
            endpoint: "https://recaptchaenterprise.googleapis.com".into(),
            project: None,
            allowed_projects: Vec::new(),
            api_key: None,
            credentials_file: None,
            api_key_file: None,
            account_id_hmac_key_file: None,
            quota_project: None,
            account_id_hmac_key: None,
            request_timeout: Duration::from_secs(10),
            max_idle_connections: 512,
            clients: 16,
            http2_prior_knowledge: false,
            allow_insecure_endpoint: false,
        }
    }
}

/// Where `key -> assessment` mappings live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackend {
    /// Embedded persistent store (redb) in `cache.path`: one instance only.
    Embedded,
    /// Redis at `cache.redis_url`: shared by every instance of the group.
    Redis,
    /// Process memory: lost on restart; for tests and demos.
    Memory,
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `embedded` (default, one instance), `redis` (consumer groups) or `memory`.
    pub backend: CacheBackend,
    /// Redis URL for `backend = "redis"`: `redis://` or `rediss://` (TLS, the server
    /// verified), with the password in it (`rediss://:password@host:6380`). Several URLs
    /// separated by commas are the seed nodes of a Redis Cluster.
    #[serde(serialize_with = "redacted")]
    pub redis_url: SecretString,
    /// A file holding `redis_url` (it holds the password); when set it replaces `redis_url`.
    pub redis_url_file: Option<PathBuf>,
    /// `redis_url` is a Redis Cluster node (several URLs imply it).
    pub redis_cluster: bool,
    /// PEM file of the CA that signs the Redis servers' certificates (`rediss://`); without
    /// it, the system's roots.
    pub redis_ca_file: Option<PathBuf>,
    /// Prefix of Redis keys; a mapping is `SET <prefix><key> <assessment name> EX <ttl>`.
    pub redis_prefix: String,
    /// Prefix of the Redis keys that remember annotated event ids (duplicate suppression).
    pub redis_done_prefix: String,
    /// Keys of the group's quota budget (`{<prefix>}all`, `{<prefix>}project:<id>`: one hash
    /// tag, so a cluster keeps them on one slot); instances that share it share one budget.
    pub redis_budget_prefix: String,
    /// How long an annotated `event_id` is remembered so a redelivered event is not sent
    /// again; `0s` turns duplicate suppression off.
    #[serde(with = "env::duration")]
    pub dedup_ttl: Duration,
    /// File of the embedded store.
    pub path: PathBuf,
    /// How long a mapping is kept: chargebacks arrive weeks to months later.
    #[serde(with = "env::duration")]
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            backend: CacheBackend::Embedded,
            redis_url: SecretString::from("redis://127.0.0.1:6379"),
            redis_cluster: false,
            redis_ca_file: None,
            redis_url_file: None,
            redis_prefix: "recaptcha-annotator:key:".into(),
            redis_done_prefix: "recaptcha-annotator:done:".into(),
            redis_budget_prefix: "recaptcha-annotator:budget:".into(),
            dedup_ttl: Duration::from_secs(7 * 24 * 3600),
            path: PathBuf::from("data/annotator-cache.redb"),
            ttl: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Annotate calls in flight at once, across all partitions.
    pub max_in_flight: usize,
    /// Events taken from Kafka and not yet finished (in flight, queued behind the same
    /// assessment, or parked); fetching pauses above it.
    pub max_pending: usize,
    /// The same bound in bytes of event values: large events cannot take memory past it
    /// (`16MiB`; a number of bytes or with a unit).
    #[serde(deserialize_with = "byte_size")]
    pub max_pending_bytes: usize,
    /// Larger events (key and value) are dead-lettered as `decode` without being read
    /// (`64KiB`).
    #[serde(deserialize_with = "byte_size")]
    pub max_event_bytes: usize,
    /// How long an outcome whose key is not in the cache yet waits before it is dead-lettered
    /// as `unjoined`.
    #[serde(with = "env::duration")]
    pub join_grace: Duration,
    /// How often parked outcomes look in the cache again.
    #[serde(with = "env::duration")]
    pub join_retry: Duration,
    /// First retry delay after 429, 5xx, a timeout or a connection error.
    #[serde(with = "env::duration")]
    pub retry_initial: Duration,
    /// Cap of the exponential retry delay.
    #[serde(with = "env::duration")]
    pub retry_max: Duration,
    /// While calls are halted (credentials, endpoint, or a project answering 403), how
    /// often one call probes.
    #[serde(with = "env::duration")]
    pub halt_retry: Duration,
    /// How long a project may answer 403 to every probe before its waiting and new events
    /// are dead-lettered `forbidden` (one probe per `halt_retry` still tests it).
    #[serde(with = "env::duration")]
    pub forbidden_grace: Duration,
    /// Most annotate calls per second. The default, 100, is a tenth of a project's default
    /// quota (1,000/s, shared with the site's own `assessments.create` calls); `0` means no
    /// limit, explicitly.
    pub rate_limit: u32,
    /// Calls that may go at once above the rate (a token bucket's depth); default a tenth of
    /// `rate_limit` (at least 1). No one-second window exceeds rate + burst.
    pub rate_burst: Option<u32>,
    /// Caps of single projects inside the budget, calls per second: `{ "my-project" = 50 }`
    /// (burst a tenth of the cap). Shared by the group like the budget.
    pub project_rate_limits: BTreeMap<String, u32>,
    /// What one instance spends while Redis (the group's shared budget) is unreachable;
    /// default the budget divided by the members of the consumer group it last saw.
    pub rate_limit_fallback: Option<u32>,
    /// Adapt the in-flight limit (AIMD) between 1 and `max_in_flight`: it grows while the
    /// round trip holds and is cut on 429, 503 and timeouts. `false`: always `max_in_flight`.
    pub adaptive_concurrency: bool,
    /// How long revoked partitions may drain before their work is abandoned.
    #[serde(with = "env::duration")]
    pub rebalance_timeout: Duration,
    /// How long SIGTERM/SIGINT may drain before the rest is abandoned (it is redelivered).
    #[serde(with = "env::duration")]
    pub shutdown_timeout: Duration,
    /// Threads that run the event tasks and the HTTP calls (the async runtime's workers;
    /// librdkafka's own threads come on top). One spends the least CPU per event: no task
    /// wakes another across threads (README, Benchmark); one carries about 30,000 events/s.
    pub worker_threads: usize,
}

impl DeliveryConfig {
    /// `rate_burst`, or its default: a tenth of the rate, at least 1.
    pub fn burst(&self) -> u32 {
        self.rate_burst.unwrap_or(self.rate_limit / 10).max(1)
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            max_pending: 4096,
            max_pending_bytes: 16 * 1024 * 1024,
            max_event_bytes: 64 * 1024,
            join_grace: Duration::from_secs(60),
            join_retry: Duration::from_millis(500),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(32),
            halt_retry: Duration::from_secs(30),
            forbidden_grace: Duration::from_secs(15 * 60),
            rate_limit: 100,
            rate_burst: None,
            project_rate_limits: BTreeMap::new(),
            rate_limit_fallback: None,
            adaptive_concurrency: true,
            rebalance_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
            worker_threads: 1,
        }
    }
}

#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: String,
    /// How often consumer lag (`annotator_consumer_lag`) is measured from the broker.
    #[serde(with = "env::duration")]
    pub lag_interval: Duration,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: "127.0.0.1:9464".into(),
            lag_interval: Duration::from_secs(5),
        }
    }
}
#[derive(Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// `text` (default) or `json`.
    pub format: LogFormat,
    /// `tracing` filter, e.g. `info` or `recaptcha_annotator=debug`; `RUST_LOG` wins.
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Text,
            level: "info".into(),
        }
    }
}

#[derive(Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    pub logins: BTreeMap<String, Rule>,
    pub registrations: BTreeMap<String, Rule>,
    pub fraud_signals: BTreeMap<String, Rule>,
}

impl Config {
    /// Loads `path` (when given) under the environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        env::load(path).and_then(secret_files::resolve)
    }

    /// Parses a TOML string (tests and examples).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        let figment = Figment::new().merge(Toml::string(text));
        figment
            .extract()
            .map_err(|e| env::every_problem(&figment, &e))
            .and_then(secret_files::resolve)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unknown_keys_are_named() {
        let err = Config::from_toml("[kafka]\nbrokerz = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("brokerz"), "{err}");
        let err = Config::from_toml("[recaptcha]\napi_kee = \"x\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("api_kee"), "{err}");
    }
}
