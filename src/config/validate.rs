//! Checks every value without IO, collecting all problems, each naming its key.

use std::net::SocketAddr;
use std::time::Duration;

use super::{CacheBackend, Config, ConfigError};
use crate::domain::api::{Annotation, Reason};
use crate::domain::assessment::{ProjectAllowList, ProjectRef};
use crate::domain::rules::{OutcomeTopic, Rules};

/// Checked values derived from the config.
#[derive(Debug, Clone)]
pub struct Validated {
    pub project: Option<ProjectRef>,
    pub allowed: ProjectAllowList,
    pub rules: Rules,
    pub endpoint: reqwest::Url,
    pub admin_listen: SocketAddr,
    /// Valid but worth a warning at start (and in `check`), each naming its key.
    pub warnings: Vec<String>,
}

/// Whether `url` points at this machine.
fn is_loopback(url: &reqwest::Url) -> bool {
    url.host_str().is_some_and(|host| {
        let host = host.trim_start_matches('[').trim_end_matches(']');
        host.eq_ignore_ascii_case("localhost")
            || host
                .parse::<std::net::IpAddr>()
                .is_ok_and(|ip| ip.is_loopback())
    })
}

/// What `recaptcha.allowed_projects = []` risks, for the start-up log and `check`.
pub const OPEN_PROJECTS_RISK: &str = "recaptcha.allowed_projects is empty: events may name any project; one the credentials cannot reach answers 403, its events wait and are dead-lettered `forbidden` after delivery.forbidden_grace. List the projects you annotate";

impl Config {
    /// The endpoint is a base URL (the service appends `/v1/...`), and credentials never go
    /// over plain `http` to another machine unless a private sandbox is declared.
    fn check_endpoint(&self, url: reqwest::Url, errors: &mut Vec<String>) -> Option<reqwest::Url> {
        let before = errors.len();
        if !matches!(url.scheme(), "http" | "https") || url.host().is_none() {
            errors.push("recaptcha.endpoint: must be an http or https URL with a host".into());
        }
        if !matches!(url.path(), "" | "/") || url.query().is_some() || url.fragment().is_some() {
            errors.push(
                "recaptcha.endpoint: must be a base URL without a path, query or fragment (the service adds /v1/projects/...)".into(),
            );
        }
        if !url.username().is_empty() || url.password().is_some() {
            // Every call would carry it to the endpoint (HTTP/2 sends it in `:authority`).
            errors.push(
                "recaptcha.endpoint: must not hold a user or password; use recaptcha.api_key or recaptcha.credentials_file".into(),
            );
        }
        if url.scheme() == "http"
            && url.host().is_some()
            && !is_loopback(&url)
            && !self.dry_run
            && !self.recaptcha.allow_insecure_endpoint
        {
            errors.push(
                "recaptcha.endpoint: plain http to a host that is not loopback would send the API key or token unencrypted; use https, or set recaptcha.allow_insecure_endpoint = true for a private sandbox".into(),
            );
        }
        (errors.len() == before).then_some(url)
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
        if crate::kafka::consumer_protocol(&self.kafka) {
            for key in crate::kafka::CLASSIC_GROUP_PROPERTIES {
                if self.kafka.properties.contains_key(key) {
                    errors.push(format!(
                        "kafka.properties.\"{key}\": not a client setting with \"group.protocol\" = \"consumer\" (KIP-848): the broker's group.consumer.* settings (or the group's own config) decide it; remove it"
                    ));
                }
            }
        }
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
            Ok(url) => self.check_endpoint(url, &mut errors),
            Err(e) => {
                errors.push(format!("recaptcha.endpoint: {e}"));
                None
            }
        };
        if self
            .recaptcha
            .api_key
            .as_ref()
            .is_some_and(|k| secrecy::ExposeSecret::expose_secret(k).trim().is_empty())
        {
            errors.push(
                "recaptcha.api_key: empty (ANNOTATOR__RECAPTCHA__API_KEY set to nothing?); give the key, or remove it to use Google Application Default Credentials".into(),
            );
        }
        if let Some(key) = &self.recaptcha.account_id_hmac_key {
            let len = secrecy::ExposeSecret::expose_secret(key).len();
            if len < 16 {
                errors.push(format!(
                    "recaptcha.account_id_hmac_key: {len} bytes; use at least 16 random bytes (32 recommended), kept as secret as the API key"
                ));
            }
        }
        if let Some(path) = &self.recaptcha.credentials_file
            && !path.is_file()
        {
            errors.push(format!(
                "recaptcha.credentials_file: {} is not a readable file",
                path.display()
            ));
        }
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
        if self.cache.backend == CacheBackend::Redis
            && let Err(e) = crate::cache::link::RedisTarget::from_config(&self.cache)
        {
            errors.push(e);
        }

        let mut warnings = Vec::new();
        if self
            .kafka
            .properties
            .get("isolation.level")
            .is_some_and(|v| v.eq_ignore_ascii_case("read_uncommitted"))
        {
            warnings.push(
                "kafka.properties.\"isolation.level\" = \"read_uncommitted\": events of transactions that are later aborted will be annotated; leave it at librdkafka's read_committed".into(),
            );
        }
        let d = &self.delivery;
        require(
            &mut errors,
            d.max_in_flight >= 1,
            "delivery.max_in_flight: must be at least 1",
        );
        require(
            &mut errors,
            d.worker_threads >= 1,
            "delivery.worker_threads: must be at least 1",
        );
        require(
            &mut errors,
            d.max_pending >= d.max_in_flight,
            "delivery.max_pending: must be at least delivery.max_in_flight",
        );
        require(
            &mut errors,
            d.rate_burst != Some(0),
            "delivery.rate_burst: must be at least 1",
        );
        for (project, cap) in &d.project_rate_limits {
            if ProjectRef::parse(project).is_err() {
                errors.push(format!(
                    "delivery.project_rate_limits: {project:?} is not a project id (6 to 30 lowercase letters, digits and hyphens)"
                ));
            }
            if *cap == 0 {
                errors.push(format!(
                    "delivery.project_rate_limits.{project}: must be at least 1 (remove the entry for no cap)"
                ));
            } else if let Some(why) = never_matches(project, self.recaptcha.project.as_deref()) {
                warnings.push(format!("delivery.project_rate_limits.{project}: {why}"));
            } else if d.rate_limit > 0 && *cap > d.rate_limit {
                warnings.push(format!(
                    "delivery.project_rate_limits.{project} = {cap} is above delivery.rate_limit = {}: the budget caps it first",
                    d.rate_limit
                ));
            }
        }
        if let Some(fallback) = d.rate_limit_fallback {
            require(
                &mut errors,
                fallback >= 1,
                "delivery.rate_limit_fallback: must be at least 1 (it is never unlimited)",
            );
            if d.rate_limit > 0 && fallback > d.rate_limit {
                warnings.push(format!(
                    "delivery.rate_limit_fallback = {fallback} is above delivery.rate_limit = {}: each instance could spend more than the whole budget while Redis is down",
                    d.rate_limit
                ));
            }
        }
        require(
            &mut errors,
            d.max_event_bytes >= 1024,
            "delivery.max_event_bytes: must be at least 1KiB",
        );
        require(
            &mut errors,
            d.max_pending_bytes >= d.max_event_bytes,
            "delivery.max_pending_bytes: must be at least delivery.max_event_bytes",
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
            !d.forbidden_grace.is_zero(),
            "delivery.forbidden_grace: must be above zero",
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
                let key = format!("rules.{topic}.{outcome}");
                if rule.annotation == Some(Annotation::Unspecified)
                    || rule.reasons.contains(&Reason::Unspecified)
                {
                    errors.push(format!("{key}: *_UNSPECIFIED is not a value to send"));
                }
                if matches!(
                    rule.annotation,
                    Some(Annotation::PasswordCorrect | Annotation::PasswordIncorrect)
                ) {
                    warnings.push(format!(
                        "{key}: annotation {} is deprecated by Google; use the reasons CORRECT_PASSWORD or INCORRECT_PASSWORD",
                        rule.annotation.map_or("", Annotation::as_str)
                    ));
                }
                overrides.push((topic, outcome.as_str(), rule.clone()));
            }
        }

        self.check_bounds(&mut errors);

        match (errors.is_empty(), endpoint, admin_listen) {
            (true, Some(endpoint), Some(admin_listen)) => Ok(Validated {
                project,
                allowed: ProjectAllowList::new(allowed),
                rules: Rules::with_overrides(overrides),
                endpoint,
                admin_listen,
                warnings,
            }),
            _ => Err(ConfigError::Invalid(errors)),
        }
    }
}

#[cfg(test)]
#[path = "validate_tests.rs"]
mod tests;

/// Why a project cap keyed `cap` never meets events when `recaptcha.project` (the project
/// events are named under) is written in the other form: caps, 429 throttles and halt gates
/// are keyed by the project exactly as assessment names spell it, a number or an id.
fn never_matches(cap: &str, project: Option<&str>) -> Option<String> {
    let project = project?;
    let number = |p: &str| !p.is_empty() && p.bytes().all(|b| b.is_ascii_digit());
    let form = |p: &str| {
        if number(p) {
            "a project number"
        } else {
            "a project id"
        }
    };
    (number(cap) != number(project)).then(|| {
        format!(
            "{cap} is {} but recaptcha.project = {project} is {}: assessment names spell their project one way, and this cap only applies to names spelling it exactly {cap:?}",
            form(cap),
            form(project)
        )
    })
}
