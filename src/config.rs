//! Configuration: a TOML file layered under `ANNOTATOR__<SECTION>__<KEY>` environment
//! variables (figment), typed with `deny_unknown_fields`, then validated purely with every
//! problem collected before failing.
//!
//! The `///` doc on each field is the operator's manual; the README's table mirrors it.

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::time::Duration;

use figment::Figment;
use figment::providers::{Format, Toml};
use figment::value::{Dict, Map, Value};
use figment::{Metadata, Profile, Provider};
use secrecy::SecretString;
use serde::{Deserialize, Deserializer};
use thiserror::Error;

use crate::domain::assessment::{ProjectAllowList, ProjectRef};
use crate::domain::rules::{OutcomeTopic, Rule, Rules};

/// Prefix of environment overrides; `__` separates levels.
pub const ENV_PREFIX: &str = "ANNOTATOR__";

#[derive(Debug, Error)]
pub enum ConfigError {
    #[error("config file {0} does not exist")]
    Missing(PathBuf),
    #[error("{0}")]
    Load(Box<figment::Error>),
    #[error("invalid configuration:\n  - {}", .0.join("\n  - "))]
    Invalid(Vec<String>),
}

/// Accepts a string or an integer (a project number given through the environment parses
/// as an integer).
fn string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<String, D::Error> {
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        S(String),
        I(i64),
        U(u64),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::S(s) => s,
        Raw::I(i) => i.to_string(),
        Raw::U(u) => u.to_string(),
    })
}

fn opt_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Option<String>, D::Error> {
    string_or_number(d).map(Some)
}

/// A list, or one comma-separated string (`ANNOTATOR__RECAPTCHA__ALLOWED_PROJECTS=a,b`).
fn vec_string_or_number<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<String>, D::Error> {
    #[derive(Deserialize)]
    struct Item(#[serde(deserialize_with = "string_or_number")] String);
    #[derive(Deserialize)]
    #[serde(untagged)]
    enum Raw {
        Many(Vec<Item>),
        One(Item),
    }
    Ok(match Raw::deserialize(d)? {
        Raw::Many(items) => items.into_iter().map(|i| i.0).collect(),
        Raw::One(Item(one)) => one
            .split(',')
            .map(str::trim)
            .filter(|s| !s.is_empty())
            .map(str::to_owned)
            .collect(),
    })
}

/// The `ANNOTATOR__…` environment overrides as a figment provider. Names are split on `__`
/// and lower-cased; values parse as figment's own environment values do (`42` a number,
/// `true` a boolean, `[a, b]` a list), except that a value whose key wants a string is kept
/// verbatim (those keys are learned from the type error of a first try). Under
/// `kafka.properties` the rest of the name is a librdkafka property, `_` read as `.`
/// (`ANNOTATOR__KAFKA__PROPERTIES__SASL_PASSWORD` sets `sasl.password`), its value a string.
struct EnvOverrides {
    vars: Vec<(Vec<String>, String)>,
    verbatim: std::collections::BTreeSet<Vec<String>>,
}

impl EnvOverrides {
    fn from_process() -> Self {
        let vars = std::env::vars_os()
            .filter_map(|(k, v)| Some((k.into_string().ok()?, v.into_string().ok()?)))
            .filter_map(|(name, value)| Some((env_path(&name)?, value)))
            .collect();
        Self {
            vars,
            verbatim: Default::default(),
        }
    }
}

/// The config path an environment variable name overrides, if it is one of ours.
fn env_path(name: &str) -> Option<Vec<String>> {
    let prefix = name.get(..ENV_PREFIX.len())?;
    if !prefix.eq_ignore_ascii_case(ENV_PREFIX) {
        return None;
    }
    let parts: Vec<String> = name[ENV_PREFIX.len()..]
        .split("__")
        .map(str::to_ascii_lowercase)
        .collect();
    if parts.len() > 2 && parts[0] == "kafka" && parts[1] == "properties" {
        let property = parts[2..].join("__").replace('_', ".");
        return Some(vec![parts[0].clone(), parts[1].clone(), property]);
    }
    (!parts.iter().any(String::is_empty)).then_some(parts)
}

impl Provider for EnvOverrides {
    fn metadata(&self) -> Metadata {
        Metadata::named("environment variable(s)")
    }

    fn data(&self) -> Result<Map<Profile, Dict>, figment::Error> {
        let mut root = Dict::new();
        for (path, raw) in &self.vars {
            let verbatim = path.starts_with(&["kafka".to_owned(), "properties".to_owned()])
                || self.verbatim.contains(path);
            let value = if verbatim {
                Value::from(raw.clone())
            } else {
                raw.parse::<Value>()
                    .unwrap_or_else(|_| Value::from(raw.clone()))
            };
            let (last, parents) = path.split_last().expect("env_path is never empty");
            let mut dict = &mut root;
            for part in parents {
                let entry = dict
                    .entry(part.clone())
                    .or_insert_with(|| Value::from(Dict::new()));
                if !matches!(entry, Value::Dict(..)) {
                    *entry = Value::from(Dict::new());
                }
                let Value::Dict(_, inner) = entry else {
                    unreachable!("just made a dict")
                };
                dict = inner;
            }
            dict.insert(last.clone(), value);
        }
        Ok(Profile::Default.collect(root))
    }
}

/// The whole configuration.
#[derive(Debug, Default, Deserialize)]
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
    /// Decide and log every annotation, call nothing, still commit.
    pub dry_run: bool,
}

#[derive(Debug, Deserialize)]
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
    #[serde(with = "humantime_serde")]
    pub commit_interval: Duration,
}

/// Prefixes of `kafka.properties` that say how to reach the cluster (TLS, SASL, client id,
/// sockets): every client the service or a command creates gets them.
const CONNECTION_PROPERTY_PREFIXES: [&str; 6] = [
    "security.",
    "sasl.",
    "ssl.",
    "client.id",
    "socket.",
    "broker.address.family",
];

impl KafkaConfig {
    /// The `kafka.properties` that say how to reach the cluster.
    pub fn connection_properties(&self) -> Vec<(String, String)> {
        self.properties
            .iter()
            .filter(|(k, _)| {
                CONNECTION_PROPERTY_PREFIXES
                    .iter()
                    .any(|p| k.starts_with(p))
            })
            .map(|(k, v)| (k.clone(), v.clone()))
            .collect()
    }

    /// A client config that reaches the cluster: `brokers` and the connection properties.
    pub fn client(&self) -> rdkafka::ClientConfig {
        let mut client = rdkafka::ClientConfig::new();
        for (k, v) in self.connection_properties() {
            client.set(k, v);
        }
        client.set("bootstrap.servers", &self.brokers);
        client
    }
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

#[derive(Debug, Clone, Deserialize)]
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

#[derive(Debug, Deserialize)]
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
    pub api_key: Option<SecretString>,
    /// Deadline of one annotate call.
    #[serde(with = "humantime_serde")]
    pub request_timeout: Duration,
    /// Connections kept open to the endpoint per HTTP client.
    pub max_idle_connections: usize,
    /// Independent HTTP clients used in turn. With HTTP/2 each keeps one connection whose
    /// concurrent streams the server caps (about 100 at Google), so in-flight calls are
    /// bounded by about `clients` x 100: raise it with `delivery.max_in_flight`.
    pub clients: usize,
    /// Speak HTTP/2 without TLS negotiation to a plain `http://` endpoint (the sandbox
    /// supports it). `https://` endpoints negotiate HTTP/2 by ALPN whatever this says.
    pub http2_prior_knowledge: bool,
}

impl Default for RecaptchaConfig {
    fn default() -> Self {
        Self {
            endpoint: "https://recaptchaenterprise.googleapis.com".into(),
            project: None,
            allowed_projects: Vec::new(),
            api_key: None,
            request_timeout: Duration::from_secs(10),
            max_idle_connections: 512,
            clients: 16,
            http2_prior_knowledge: false,
        }
    }
}

/// Where `key -> assessment` mappings live.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum CacheBackend {
    /// Embedded persistent store (redb) in `cache.path`: one instance only.
    Embedded,
    /// Redis at `cache.redis_url`: shared by every instance of the group.
    Redis,
    /// Process memory: lost on restart; for tests and demos.
    Memory,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct CacheConfig {
    /// `embedded` (default, one instance), `redis` (consumer groups) or `memory`.
    pub backend: CacheBackend,
    /// Redis URL for `backend = "redis"`.
    pub redis_url: SecretString,
    /// Prefix of Redis keys; a mapping is `SET <prefix><key> <assessment name> EX <ttl>`.
    pub redis_prefix: String,
    /// Prefix of the Redis keys that remember annotated event ids (duplicate suppression).
    pub redis_done_prefix: String,
    /// How long an annotated `event_id` is remembered so a redelivered event is not sent
    /// again; `0s` turns duplicate suppression off.
    #[serde(with = "humantime_serde")]
    pub dedup_ttl: Duration,
    /// File of the embedded store.
    pub path: PathBuf,
    /// How long a mapping is kept: chargebacks arrive weeks to months later.
    #[serde(with = "humantime_serde")]
    pub ttl: Duration,
}

impl Default for CacheConfig {
    fn default() -> Self {
        Self {
            backend: CacheBackend::Embedded,
            redis_url: SecretString::from("redis://127.0.0.1:6379"),
            redis_prefix: "recaptcha-annotator:key:".into(),
            redis_done_prefix: "recaptcha-annotator:done:".into(),
            dedup_ttl: Duration::from_secs(7 * 24 * 3600),
            path: PathBuf::from("data/annotator-cache.redb"),
            ttl: Duration::from_secs(90 * 24 * 3600),
        }
    }
}

#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Annotate calls in flight at once, across all partitions.
    pub max_in_flight: usize,
    /// Events taken from Kafka and not yet finished (in flight, queued behind the same
    /// assessment, or parked); fetching pauses above it.
    pub max_pending: usize,
    /// How long an outcome whose key is not in the cache yet waits before it is dead-lettered
    /// as `unjoined`.
    #[serde(with = "humantime_serde")]
    pub join_grace: Duration,
    /// How often parked outcomes look in the cache again.
    #[serde(with = "humantime_serde")]
    pub join_retry: Duration,
    /// First retry delay after 429, 5xx, a timeout or a connection error.
    #[serde(with = "humantime_serde")]
    pub retry_initial: Duration,
    /// Cap of the exponential retry delay.
    #[serde(with = "humantime_serde")]
    pub retry_max: Duration,
    /// While halted on credentials (401, 403, invalid key), how often one call probes.
    #[serde(with = "humantime_serde")]
    pub halt_retry: Duration,
    /// Most annotate calls per second (the project's quota); 0 = no limit.
    pub rate_limit: u32,
    /// How long revoked partitions may drain before their work is abandoned.
    #[serde(with = "humantime_serde")]
    pub rebalance_timeout: Duration,
    /// How long SIGTERM/SIGINT may drain before the rest is abandoned (it is redelivered).
    #[serde(with = "humantime_serde")]
    pub shutdown_timeout: Duration,
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        Self {
            max_in_flight: 1024,
            max_pending: 4096,
            join_grace: Duration::from_secs(60),
            join_retry: Duration::from_millis(500),
            retry_initial: Duration::from_secs(1),
            retry_max: Duration::from_secs(32),
            halt_retry: Duration::from_secs(30),
            rate_limit: 0,
            rebalance_timeout: Duration::from_secs(10),
            shutdown_timeout: Duration::from_secs(30),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    /// Address of `/metrics`, `/healthz` and `/readyz`.
    pub listen: String,
    /// How often consumer lag (`annotator_consumer_lag`) is measured from the broker.
    #[serde(with = "humantime_serde")]
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

#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "lowercase")]
pub enum LogFormat {
    Text,
    Json,
}

#[derive(Debug, Deserialize)]
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

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields, default)]
pub struct RulesConfig {
    pub logins: BTreeMap<String, Rule>,
    pub registrations: BTreeMap<String, Rule>,
    pub fraud_signals: BTreeMap<String, Rule>,
}

/// The librdkafka keys the service owns.
pub const RESERVED_KAFKA_PROPERTIES: &[&str] = &[
    "enable.auto.commit",
    "enable.auto.offset.store",
    "group.id",
    "bootstrap.servers",
];

/// Checked values derived from the config.
#[derive(Debug, Clone)]
pub struct Validated {
    pub project: Option<ProjectRef>,
    pub allowed: ProjectAllowList,
    pub rules: Rules,
    pub endpoint: reqwest::Url,
    pub admin_listen: SocketAddr,
}

impl Config {
    /// Loads `path` (when given) under the environment overrides.
    pub fn load(path: Option<&Path>) -> Result<Self, ConfigError> {
        Self::load_with_env(path, EnvOverrides::from_process())
    }

    fn load_with_env(path: Option<&Path>, mut env: EnvOverrides) -> Result<Self, ConfigError> {
        if let Some(path) = path
            && !path.exists()
        {
            return Err(ConfigError::Missing(path.to_owned()));
        }
        loop {
            let mut figment = Figment::new();
            if let Some(path) = path {
                figment = figment.merge(Toml::file_exact(path));
            }
            let error = match figment.merge(&env).extract() {
                Ok(config) => return Ok(config),
                Err(e) => e,
            };
            // An environment value that parsed as a number or boolean where a string is
            // wanted (`ANNOTATOR__KAFKA__GROUP_ID=42`): keep it verbatim and try again.
            let wants_string: Vec<Vec<String>> = error
                .clone()
                .into_iter()
                .filter(|e| {
                    e.metadata
                        .as_ref()
                        .is_some_and(|m| m.name == env.metadata().name)
                        && matches!(&e.kind, figment::error::Kind::InvalidType(_, expected) if expected.contains("string"))
                })
                .map(|e| e.path)
                .filter(|p| !env.verbatim.contains(p))
                .collect();
            if wants_string.is_empty() {
                return Err(ConfigError::Load(Box::new(error)));
            }
            env.verbatim.extend(wants_string);
        }
    }

    /// Parses a TOML string (tests and examples).
    pub fn from_toml(text: &str) -> Result<Self, ConfigError> {
        Figment::new()
            .merge(Toml::string(text))
            .extract()
            .map_err(|e| ConfigError::Load(Box::new(e)))
    }

    /// Checks every value without IO, collecting all problems, each naming its key.
    pub fn validate(&self) -> Result<Validated, ConfigError> {
        let mut errors = Vec::new();
        fn require(errors: &mut Vec<String>, ok: bool, msg: &str) {
            if !ok {
                errors.push(msg.to_owned());
            }
        }

        require(
            &mut errors,
            !self.kafka.brokers.trim().is_empty(),
            "kafka.brokers: must not be empty",
        );
        require(
            &mut errors,
            !self.kafka.group_id.trim().is_empty(),
            "kafka.group_id: must not be empty",
        );
        let t = &self.kafka.topics;
        let named = [
            ("assessments", &t.assessments),
            ("logins", &t.logins),
            ("registrations", &t.registrations),
            ("fraud_signals", &t.fraud_signals),
            ("dead_letter", &t.dead_letter),
        ];
        for (i, (key, name)) in named.iter().enumerate() {
            let legal = !name.is_empty()
                && name.len() <= 249
                && name
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'_' | b'-'));
            if !(legal) {
                errors.push(format!(
                    "kafka.topics.{key}: {name:?} is not a legal topic name"
                ));
            }
            if let Some((other, _)) = named[..i].iter().find(|(_, n)| n == name) {
                errors.push(format!(
                    "kafka.topics.{key}: same topic as kafka.topics.{other}"
                ));
            }
        }
        require(
            &mut errors,
            !self.kafka.commit_interval.is_zero(),
            "kafka.commit_interval: must be above zero",
        );

        let endpoint = match reqwest::Url::parse(&self.recaptcha.endpoint) {
            Ok(url) if matches!(url.scheme(), "http" | "https") && url.host().is_some() => {
                Some(url)
            }
            Ok(_) => {
                errors.push("recaptcha.endpoint: must be an http or https URL with a host".into());
                None
            }
            Err(e) => {
                errors.push(format!("recaptcha.endpoint: {e}"));
                None
            }
        };
        let project = match self
            .recaptcha
            .project
            .as_deref()
            .map(ProjectRef::parse)
            .transpose()
        {
            Ok(p) => p,
            Err(e) => {
                errors.push(format!("recaptcha.project: {e}"));
                None
            }
        };
        let mut allowed = Vec::new();
        for (i, raw) in self.recaptcha.allowed_projects.iter().enumerate() {
            match ProjectRef::parse(raw) {
                Ok(p) => allowed.push(p),
                Err(e) => errors.push(format!("recaptcha.allowed_projects[{i}]: {e}")),
            }
        }
        if let (Some(p), false) = (&project, allowed.is_empty())
            && !allowed.contains(p)
        {
            errors.push("recaptcha.project: not in recaptcha.allowed_projects".into());
        }
        require(
            &mut errors,
            !self.recaptcha.request_timeout.is_zero(),
            "recaptcha.request_timeout: must be above zero",
        );

        require(
            &mut errors,
            self.cache.ttl >= Duration::from_secs(1),
            "cache.ttl: must be at least 1s",
        );
        require(
            &mut errors,
            !self.cache.redis_prefix.is_empty(),
            "cache.redis_prefix: must not be empty",
        );
        require(
            &mut errors,
            !self.cache.redis_done_prefix.is_empty()
                && self.cache.redis_done_prefix != self.cache.redis_prefix,
            "cache.redis_done_prefix: must not be empty or equal to cache.redis_prefix",
        );
        // The URL may hold a password: the message never repeats it.
        require(
            &mut errors,
            self.cache.backend != CacheBackend::Redis
                || redis::Client::open(secrecy::ExposeSecret::expose_secret(&self.cache.redis_url))
                    .is_ok(),
            "cache.redis_url: not a valid redis:// or rediss:// URL",
        );

        let d = &self.delivery;
        require(
            &mut errors,
            d.max_in_flight >= 1,
            "delivery.max_in_flight: must be at least 1",
        );
        require(
            &mut errors,
            d.max_pending >= d.max_in_flight,
            "delivery.max_pending: must be at least delivery.max_in_flight",
        );
        require(
            &mut errors,
            !d.join_retry.is_zero(),
            "delivery.join_retry: must be above zero",
        );
        require(
            &mut errors,
            !d.retry_initial.is_zero(),
            "delivery.retry_initial: must be above zero",
        );
        require(
            &mut errors,
            d.retry_max >= d.retry_initial,
            "delivery.retry_max: must be at least delivery.retry_initial",
        );
        require(
            &mut errors,
            !d.halt_retry.is_zero(),
            "delivery.halt_retry: must be above zero",
        );

        require(
            &mut errors,
            self.recaptcha.clients >= 1,
            "recaptcha.clients: must be at least 1",
        );

        require(
            &mut errors,
            !self.admin.lag_interval.is_zero(),
            "admin.lag_interval: must be above zero",
        );

        let admin_listen = match self.admin.listen.parse::<SocketAddr>() {
            Ok(a) => Some(a),
            Err(e) => {
                errors.push(format!("admin.listen: {e}"));
                None
            }
        };

        let mut overrides = Vec::new();
        for topic in OutcomeTopic::ALL {
            let table = match topic {
                OutcomeTopic::Logins => &self.rules.logins,
                OutcomeTopic::Registrations => &self.rules.registrations,
                OutcomeTopic::FraudSignals => &self.rules.fraud_signals,
            };
            for (outcome, rule) in table {
                if outcome.is_empty() {
                    errors.push(format!("rules.{topic}: empty outcome name"));
                }
                overrides.push((topic, outcome.as_str(), rule.clone()));
            }
        }

        match (errors.is_empty(), endpoint, admin_listen) {
            (true, Some(endpoint), Some(admin_listen)) => Ok(Validated {
                project,
                allowed: ProjectAllowList::new(allowed),
                rules: Rules::with_overrides(overrides),
                endpoint,
                admin_listen,
            }),
            _ => Err(ConfigError::Invalid(errors)),
        }
    }

    /// The effective config as TOML-ish text with secrets redacted, for `check`.
    pub fn redacted(&self) -> String {
        let mut text = format!("{self:#?}");
        for (key, _) in self
            .kafka
            .properties
            .iter()
            .filter(|(k, _)| is_secret_property(k))
        {
            text = text.replace(
                &format!("{key:?}: {:?}", self.kafka.properties[key]),
                &format!("{key:?}: \"[redacted]\""),
            );
        }
        text
    }
}

/// librdkafka properties that hold secrets.
pub fn is_secret_property(key: &str) -> bool {
    let key = key.to_ascii_lowercase();
    [
        "password",
        "secret",
        "key.pem",
        "token",
        "sasl.oauthbearer.config",
        "ssl.key",
    ]
    .iter()
    .any(|s| key.contains(s))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_validate() {
        let config = Config::from_toml("").unwrap();
        assert_eq!(config.kafka.brokers, "127.0.0.1:9092");
        assert_eq!(config.kafka.topics.fraud_signals, "fraud-signals");
        assert_eq!(config.cache.ttl, Duration::from_secs(90 * 86400));
        assert!(config.validate().is_ok());
    }

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

    #[test]
    fn bad_values_are_all_reported_with_their_key() {
        let config = Config::from_toml(
            "[recaptcha]\nendpoint = \"ftp://x\"\nproject = \"a/b\"\n[delivery]\nmax_in_flight = 0\n[admin]\nlisten = \"nope\"",
        )
        .unwrap();
        let err = config.validate().unwrap_err().to_string();
        for key in [
            "recaptcha.endpoint",
            "recaptcha.project",
            "delivery.max_in_flight",
            "admin.listen",
        ] {
            assert!(err.contains(key), "{key} missing from {err}");
        }
        let err = Config::from_toml("[cache]\nttl = \"forever\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("ttl"), "{err}");
    }

    #[test]
    #[allow(clippy::result_large_err)]
    fn environment_overrides_every_level() {
        figment::Jail::expect_with(|jail| {
            jail.create_file(
                "c.toml",
                "[kafka]\nbrokers = \"file:1\"\n[recaptcha]\nproject = \"p\"",
            )?;
            jail.set_env("ANNOTATOR__KAFKA__BROKERS", "127.0.0.1:19092");
            jail.set_env("ANNOTATOR__KAFKA__TOPICS__LOGINS", "my-logins");
            jail.set_env("ANNOTATOR__RECAPTCHA__PROJECT", "123456789");
            jail.set_env(
                "ANNOTATOR__RECAPTCHA__ALLOWED_PROJECTS",
                "[123456789, \"other\"]",
            );
            jail.set_env("ANNOTATOR__DRY_RUN", "true");
            let config = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.kafka.brokers, "127.0.0.1:19092");
            assert_eq!(config.kafka.topics.logins, "my-logins");
            assert_eq!(config.recaptcha.project.as_deref(), Some("123456789"));
            assert_eq!(
                config.recaptcha.allowed_projects,
                vec!["123456789", "other"]
            );
            assert!(config.dry_run);
            // Values that parse as numbers where strings are wanted, librdkafka properties
            // (`_` read as `.`), a comma-separated list.
            jail.set_env("ANNOTATOR__KAFKA__GROUP_ID", "42");
            jail.set_env("ANNOTATOR__KAFKA__TOPICS__DEAD_LETTER", "1234");
            jail.set_env("ANNOTATOR__KAFKA__PROPERTIES__SASL_PASSWORD", "s3cret");
            jail.set_env("ANNOTATOR__KAFKA__PROPERTIES__SESSION_TIMEOUT_MS", "6000");
            jail.set_env("ANNOTATOR__RECAPTCHA__ALLOWED_PROJECTS", "123456789, other");
            let config = Config::load(Some(Path::new("c.toml"))).map_err(|e| e.to_string())?;
            assert_eq!(config.kafka.group_id, "42");
            assert_eq!(config.kafka.topics.dead_letter, "1234");
            assert_eq!(config.kafka.properties["sasl.password"], "s3cret");
            assert_eq!(config.kafka.properties["session.timeout.ms"], "6000");
            assert_eq!(
                config.recaptcha.allowed_projects,
                vec!["123456789", "other"]
            );
            jail.set_env("ANNOTATOR__KAFKA__NOPE", "1");
            let err = Config::load(Some(Path::new("c.toml")))
                .unwrap_err()
                .to_string();
            assert!(err.contains("nope"), "{err}");
            Ok(())
        });
    }

    #[test]
    fn tls_and_sasl_properties_are_supported_by_the_kafka_client() {
        // librdkafka is built with OpenSSL: SASL_SSL with SCRAM is accepted (creating the
        // client does not wait for the broker).
        let config = Config::from_toml(
            "[kafka.properties]\n\"security.protocol\" = \"SASL_SSL\"\n\"sasl.mechanism\" = \"SCRAM-SHA-512\"\n\"sasl.username\" = \"u\"\n\"sasl.password\" = \"p\"\n\"session.timeout.ms\" = \"6000\"",
        )
        .unwrap();
        let connection = config.kafka.connection_properties();
        assert_eq!(connection.len(), 4, "{connection:?}");
        let client: Result<rdkafka::consumer::BaseConsumer, _> = config.kafka.client().create();
        assert!(client.is_ok(), "{:?}", client.err());
    }

    #[test]
    fn rules_from_config_are_checked_against_the_enums() {
        let config = Config::from_toml(
            "[rules.logins.captcha_solved]\nannotation = \"LEGITIMATE\"\nreasons = [\"CORRECT_PASSWORD\"]",
        )
        .unwrap();
        let v = config.validate().unwrap();
        assert!(
            v.rules
                .get(OutcomeTopic::Logins, "captcha_solved")
                .is_some()
        );
        let err = Config::from_toml("[rules.logins.x]\nannotation = \"MAYBE\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("MAYBE"), "{err}");
    }

    #[test]
    fn secrets_are_redacted() {
        let config = Config::from_toml(
            "[recaptcha]\napi_key = \"AIzaSECRET\"\n[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n[cache]\nredis_url = \"redis://:pw@h\"",
        )
        .unwrap();
        let text = config.redacted();
        assert!(
            !text.contains("AIzaSECRET") && !text.contains("hunter2") && !text.contains(":pw@"),
            "{text}"
        );
    }
}
