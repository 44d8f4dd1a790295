//! Dead-letter records (SPEC section 4): the original key and value, the reason in headers.
//! The reasons themselves are a failure class ([`crate::failure::DeadLetterReason`]).

use std::sync::Arc;
use std::time::Duration;

use rdkafka::error::KafkaError;
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::types::RDKafkaErrorCode;

use crate::config::KafkaConfig;
use crate::failure::{DeadLetter, Failure, RetryCause};
use crate::health::Health;
use crate::kafka::{self, REPLAY_COUNT};
use crate::telemetry::Metrics;

/// Where a message came from.
#[derive(Debug, Clone)]
pub struct Source<'a> {
    pub topic: &'a str,
    pub partition: i32,
    pub offset: i64,
    pub key: Option<&'a [u8]>,
    pub payload: Option<&'a [u8]>,
    /// Carried over when a replayed event is dead-lettered again.
    pub replay_count: Option<u32>,
}

/// Room kept for the record's framing and headers besides the key, the detail and the value.
const RECORD_OVERHEAD: usize = 1024;

#[derive(Clone)]
pub struct DeadLetterWriter {
    producer: FutureProducer<kafka::LogContext>,
    topic: String,
    /// The largest record the producer sends (`message.max.bytes`).
    max_bytes: usize,
    /// Readiness: says why dead letters cannot be written while the broker refuses them.
    health: Arc<Health>,
    /// `annotator_dead_letters_refused`.
    metrics: Metrics,
}

impl DeadLetterWriter {
    /// A writer to the configured dead-letter topic.
    pub fn new(
        config: &KafkaConfig,
        log: &kafka::LogContext,
        health: Arc<Health>,
        metrics: Metrics,
    ) -> Result<Self, KafkaError> {
        Ok(Self {
            producer: kafka::dead_letter_producer(config, log)?,
            topic: config.topics.dead_letter.clone(),
            max_bytes: kafka::max_message_bytes(config),
            health,
            metrics,
        })
    }

    fn refused(&self, why: Option<String>) {
        self.metrics
            .dead_letters_refused
            .set(i64::from(why.is_some()));
        self.health.set_dead_letters_refused(why);
    }

    /// Writes one record and waits for the broker's acknowledgement; a failure is retried.
    /// A value the topic cannot take whole is cut to fit, with `annotator.truncated` = its
    /// size; a record refused as too large is cut further, never retried as it is. A key too
    /// large for the record even without a value is cut too, with `annotator.key_truncated`
    /// = its length and `annotator.key_sha256` = the whole key's hash, so it can be matched.
    pub async fn write(&self, source: &Source<'_>, letter: &DeadLetter) -> Result<(), Failure> {
        let payload = source.payload.unwrap_or_default();
        let key = source.key.unwrap_or_default();
        let room = self
            .max_bytes
            .saturating_sub(RECORD_OVERHEAD + letter.detail.len() + source.topic.len());
        // A key (small, as a rule) at most half the room; the value the rest.
        let mut keep_key = key.len().min(room / 2);
        let mut keep = payload.len().min(room - keep_key);
        loop {
            match self.send(source, letter, keep_key, keep).await {
                Err(KafkaError::MessageProduction(
                    RDKafkaErrorCode::MessageSizeTooLarge | RDKafkaErrorCode::InvalidMessageSize,
                )) if keep > 0 || keep_key > 0 => {
                    // Permanent for this size: cut the larger of the two further.
                    if keep_key > keep {
                        keep_key /= 2;
                    } else {
                        keep /= 2;
                    }
                }
                Err(e) => {
                    // The event keeps its partition's commit point and is tried again; a
                    // refusal that only an operator can lift is also said on `/readyz` and
                    // in `annotator_dead_letters_refused`.
                    if let Some(why) = self.refusal(&e) {
                        self.refused(Some(why));
                    }
                    return Err(Failure::retry(
                        RetryCause::DeadLetterWrite,
                        None,
                        format!("dead-letter topic {}: {e}", self.topic),
                    ));
                }
                Ok(()) => {
                    self.refused(None);
                    return Ok(());
                }
            }
        }
    }

    /// Why the broker refuses every dead letter, with what to do, for an error that lasts
    /// until an operator acts (an ACL, a missing topic); `None` for a passing fault.
    fn refusal(&self, e: &KafkaError) -> Option<String> {
        let topic = &self.topic;
        let KafkaError::MessageProduction(code) = e else {
            return None;
        };
        Some(match code {
            RDKafkaErrorCode::TopicAuthorizationFailed => format!(
                "the broker refuses writes to the dead-letter topic {topic} (TOPIC_AUTHORIZATION_FAILED): grant the service's principal WRITE and DESCRIBE on it"
            ),
            RDKafkaErrorCode::ClusterAuthorizationFailed => format!(
                "the broker refuses the idempotent producer of the dead-letter topic {topic} (CLUSTER_AUTHORIZATION_FAILED): grant the service's principal WRITE on the topic (or IDEMPOTENT_WRITE on the cluster)"
            ),
            RDKafkaErrorCode::UnknownTopicOrPartition | RDKafkaErrorCode::UnknownTopic => {
                format!(
                    "the dead-letter topic {topic} does not exist: create it (recaptcha-annotator create-topics) or fix kafka.topics.dead_letter"
                )
            }
            RDKafkaErrorCode::PolicyViolation | RDKafkaErrorCode::InvalidRecord => format!(
                "the broker refuses records for the dead-letter topic {topic} ({code}): check its configuration (a compacted topic needs a key)"
            ),
            _ => return None,
        })
    }

    /// Sends the record with the first `keep_key` bytes of the key and `keep` of the value.
    async fn send(
        &self,
        source: &Source<'_>,
        letter: &DeadLetter,
        keep_key: usize,
        keep: usize,
    ) -> Result<(), KafkaError> {
        let origin = format!("{}/{}/{}", source.topic, source.partition, source.offset);
        let status = letter.status.map(|s| s.to_string());
        let mut headers = OwnedHeaders::new_with_capacity(6)
            .insert(Header {
                key: "annotator.error",
                value: Some(letter.reason.as_str()),
            })
            .insert(Header {
                key: "annotator.detail",
                value: Some(letter.detail.as_str()),
            })
            .insert(Header {
                key: "annotator.source",
                value: Some(origin.as_str()),
            });
        let replays = source.replay_count.map(|n| n.to_string());
        if let Some(replays) = &replays {
            headers = headers.insert(Header {
                key: REPLAY_COUNT,
                value: Some(replays.as_str()),
            });
        }
        if let Some(status) = &status {
            headers = headers.insert(Header {
                key: "annotator.status",
                value: Some(status.as_str()),
            });
        }
        let payload = source.payload.map(|p| &p[..keep.min(p.len())]);
        let original = source.payload.map(<[u8]>::len).unwrap_or_default();
        let truncated = (keep < original).then(|| original.to_string());
        if let Some(size) = &truncated {
            headers = headers.insert(Header {
                key: "annotator.truncated",
                value: Some(size.as_str()),
            });
        }
        let key = source.key.map(|k| &k[..keep_key.min(k.len())]);
        let key_cut = source
            .key
            .filter(|k| keep_key < k.len())
            .map(|k| (k.len().to_string(), sha256_hex(k)));
        if let Some((length, hash)) = &key_cut {
            headers = headers
                .insert(Header {
                    key: "annotator.key_truncated",
                    value: Some(length.as_str()),
                })
                .insert(Header {
                    key: "annotator.key_sha256",
                    value: Some(hash.as_str()),
                });
        }
        let mut record: FutureRecord<'_, [u8], [u8]> =
            FutureRecord::to(&self.topic).headers(headers);
        if let Some(key) = key {
            record = record.key(key);
        }
        if let Some(payload) = payload {
            record = record.payload(payload);
        }
        self.producer
            .send(record, Duration::from_secs(5))
            .await
            .map(|_| ())
            .map_err(|(e, _)| e)
    }
}

/// The SHA-256 of `bytes`, in hex.
fn sha256_hex(bytes: &[u8]) -> String {
    use std::fmt::Write as _;
    let digest = aws_lc_rs::digest::digest(&aws_lc_rs::digest::SHA256, bytes);
    digest
        .as_ref()
        .iter()
        .fold(String::with_capacity(64), |mut hex, b| {
            let _ = write!(hex, "{b:02x}");
            hex
        })
}
