//! A Kafka message copied out of librdkafka's buffer, and which consumed topic it came from.

use std::sync::Arc;

use rdkafka::message::{BorrowedMessage, Message as _};

use super::offsets::TopicPartition;
use crate::config::TopicsConfig;
use crate::dead_letter::Source;
use crate::domain::rules::OutcomeTopic;
use crate::kafka;

/// Which of the consumed topics a message came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TopicKind {
    Assessments,
    Outcome(OutcomeTopic),
}

/// A Kafka message, copied out of librdkafka's buffer.
#[derive(Debug, Clone)]
pub struct Message {
    pub tp: TopicPartition,
    pub kind: TopicKind,
    pub offset: i64,
    pub key: Option<Vec<u8>>,
    pub payload: Option<Vec<u8>>,
    /// Producer or log-append time, for the end-to-end latency metric.
    pub timestamp_ms: Option<i64>,
    /// `annotator.replay_count` of a message re-published by `dead-letter replay`.
    pub replay_count: Option<u32>,
}

impl Message {
    /// The Kafka record this message is (topic, partition, offset, timestamp): the same
    /// for a redelivery, different for a new record that reuses an `event_id`.
    pub fn identity(&self) -> String {
        format!(
            "{}/{}/{}/{}",
            self.tp.topic,
            self.tp.partition,
            self.offset,
            self.timestamp_ms.unwrap_or(-1)
        )
    }

    /// The message as the dead-letter writer copies it.
    pub fn source(&self) -> Source<'_> {
        Source {
            topic: &self.tp.topic,
            partition: self.tp.partition,
            offset: self.offset,
            key: self.key.as_deref(),
            payload: self.payload.as_deref(),
            replay_count: self.replay_count,
        }
    }

    /// The Kafka message key, when it is UTF-8.
    pub fn kafka_key(&self) -> Option<&str> {
        self.key
            .as_deref()
            .and_then(|k| std::str::from_utf8(k).ok())
    }
}

/// The consumed topics by name.
pub struct Topics {
    /// Each consumed topic's name (shared by every message of it) and kind.
    kinds: Vec<(Arc<str>, TopicKind)>,
}

impl Topics {
    pub fn new(topics: &TopicsConfig) -> Self {
        let mut kinds = vec![(
            Arc::from(topics.assessments.as_str()),
            TopicKind::Assessments,
        )];
        for t in OutcomeTopic::ALL {
            kinds.push((Arc::from(topics.outcome(t)), TopicKind::Outcome(t)));
        }
        Self { kinds }
    }

    /// Copies `m` out of librdkafka's buffer; `None` for a topic that is not consumed.
    pub fn copy(&self, m: &BorrowedMessage<'_>) -> Option<Message> {
        let (topic, kind) = self.kinds.iter().find(|(name, _)| **name == *m.topic())?;
        Some(Message {
            tp: TopicPartition {
                topic: Arc::clone(topic),
                partition: m.partition(),
            },
            kind: *kind,
            offset: m.offset(),
            key: m.key().map(<[u8]>::to_vec),
            payload: m.payload().map(<[u8]>::to_vec),
            timestamp_ms: m.timestamp().to_millis(),
            replay_count: m.headers().and_then(kafka::replay_count),
        })
    }
}
