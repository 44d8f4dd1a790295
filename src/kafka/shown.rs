//! Which `kafka.properties` may be printed (by `check`): an allow-list, since librdkafka
//! keeps adding properties and a secret under an unknown name must stay hidden.

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
pub fn is_shown_property(key: &str) -> bool {
    SHOWN_PROPERTIES.contains(&key.to_ascii_lowercase().as_str())
}
