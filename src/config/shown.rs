//! The effective config as it may be shown (by `check` and on `/status`): every secret
//! `[REDACTED]`. Which `kafka.properties` may be printed is an allow-list, since librdkafka
//! keeps adding properties and a secret under an unknown name must stay hidden.

use super::Config;

/// librdkafka properties whose values are shown when the config is printed: settings and
/// file paths that hold no secret. Every other property prints as `[REDACTED]`, so a secret
/// under a name this list does not know (a new librdkafka property, a typo) is never shown.
const SHOWN_PROPERTIES: &[&str] = &[
    "acks",
    "api.version.request",
    "auto.offset.reset",
    "batch.num.messages",
    "broker.address.family",
    "client.id",
    "client.rack",
    "compression.type",
    "debug",
    "enable.idempotence",
    "enable.partition.eof",
    "enable.ssl.certificate.verification",
    "fetch.max.bytes",
    "fetch.min.bytes",
    "fetch.wait.max.ms",
    "group.instance.id",
    "heartbeat.interval.ms",
    "isolation.level",
    "linger.ms",
    "log_level",
    "max.partition.fetch.bytes",
    "max.poll.interval.ms",
    "message.max.bytes",
    "message.timeout.ms",
    "metadata.max.age.ms",
    "partition.assignment.strategy",
    "queued.max.messages.kbytes",
    "queued.min.messages",
    "reconnect.backoff.max.ms",
    "reconnect.backoff.ms",
    "request.timeout.ms",
    "retries",
    "retry.backoff.ms",
    "sasl.kerberos.principal",
    "sasl.kerberos.service.name",
    "sasl.mechanism",
    "sasl.mechanisms",
    "sasl.oauthbearer.client.id",
    "sasl.oauthbearer.method",
    "sasl.oauthbearer.scope",
    "sasl.oauthbearer.token.endpoint.url",
    "sasl.username",
    "security.protocol",
    "session.timeout.ms",
    "socket.keepalive.enable",
    "socket.timeout.ms",
    "ssl.ca.location",
    "ssl.certificate.location",
    "ssl.cipher.suites",
    "ssl.curves.list",
    "ssl.endpoint.identification.algorithm",
    "ssl.key.location",
    "ssl.sigalgs.list",
    "statistics.interval.ms",
    "topic.metadata.refresh.interval.ms",
];

/// Whether a librdkafka property's value may be shown (an allow-list: see
/// [`SHOWN_PROPERTIES`]).
fn is_shown_property(key: &str) -> bool {
    SHOWN_PROPERTIES.contains(&key.to_ascii_lowercase().as_str())
}

impl Config {
    /// The effective config as TOML with secrets redacted (the API key and Redis URL print
    /// as `[REDACTED]`, and so do librdkafka properties that hold secrets), every default
    /// written out, and the rules as they apply: the defaults with the config's additions.
    pub fn redacted_toml(&self) -> String {
        let mut value = match toml::Value::try_from(self) {
            Ok(value) => value,
            Err(e) => return format!("(cannot be shown: {e})"),
        };
        if let Some(table) = value.as_table_mut() {
            if let Some(properties) = table
                .get_mut("kafka")
                .and_then(|k| k.get_mut("properties"))
                .and_then(toml::Value::as_table_mut)
            {
                for (key, v) in properties.iter_mut() {
                    if !is_shown_property(key) {
                        *v = toml::Value::String("[REDACTED]".into());
                    }
                }
            }
            if let Ok(validated) = self.validate() {
                let mut rules = toml::Table::new();
                for (topic, outcome) in validated.rules.outcomes() {
                    let Some(rule) = validated.rules.get(topic, outcome) else {
                        continue;
                    };
                    let Ok(rule) = toml::Value::try_from(rule) else {
                        continue;
                    };
                    rules
                        .entry(topic.as_str())
                        .or_insert_with(|| toml::Value::Table(toml::Table::new()))
                        .as_table_mut()
                        .map(|t| t.insert(outcome.to_owned(), rule));
                }
                table.insert("rules".into(), toml::Value::Table(rules));
            }
        }
        toml::to_string_pretty(&value).unwrap_or_else(|e| format!("(cannot be shown: {e})"))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn secrets_are_redacted() {
        let config = Config::from_toml(
            "[recaptcha]\napi_key = \"AIzaSECRET\"\naccount_id_hmac_key = \"hmac-SECRET-0123456789\"\n[kafka.properties]\n\"sasl.password\" = \"hunter2\"\n\"sasl.oauthbearer.assertion.private.key.passphrase\" = \"pass-SECRET\"\n\"sasl.username\" = \"svc-annotator\"\n[cache]\nredis_url = \"redis://:pw@h\"",
        )
        .unwrap();
        let text = config.redacted_toml();
        // TOML, every default written out, the rules as they apply.
        for part in [
            "ttl = \"90d\"",
            "[rules.logins.password_correct]",
            "api_key = \"[REDACTED]\"",
            // Known settings stay readable; what the allow-list does not know is hidden.
            "\"sasl.username\" = \"svc-annotator\"",
        ] {
            assert!(text.contains(part), "{part} missing:\n{text}");
        }
        assert!(
            !text.contains("SECRET") && !text.contains("hunter2") && !text.contains(":pw@"),
            "{text}"
        );
    }
}
