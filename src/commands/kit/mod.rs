//! The producers' kit: `schemas` (the JSON Schemas of the events), `validate` (a topic or a
//! file checked against the contract, the service's own decoder and rules) and `publish`
//! (a JSON Lines or CSV file, validated, produced to a topic: history becomes annotations
//! through the same rules, quota and dead letters as live events).
//!
//! - [`cli`]: their command lines;
//! - [`validate`]: records judged by the service's own planner, from a topic or a file;
//! - [`records`]: the lines of a JSON Lines or CSV file, as events, and their message keys;
//! - [`publish`]: the good records produced in order, the rejected ones set aside.

pub mod cli;
pub mod publish;
pub mod records;
pub mod validate;

pub use self::publish::{PublishArgs, Published, publish};
pub use self::records::message_key;
pub use self::validate::{validate_file, validate_topic};

use std::path::Path;

use crate::config::Config;
use crate::domain::rules::OutcomeTopic;
use crate::domain::schema;
use crate::pipeline::message::{Message, TopicKind};
use crate::pipeline::offsets::TopicPartition;
use crate::pipeline::plan::Planner;

/// `schemas`: every schema for the config's rules, printed, or written into `out`.
pub fn schemas(config: &Config, out: Option<&Path>) -> anyhow::Result<()> {
    let validated = config.validate()?;
    for (file, schema) in schema::all(&validated.rules) {
        let text = format!("{}\n", serde_json::to_string_pretty(&schema)?);
        match out {
            Some(dir) => {
                std::fs::create_dir_all(dir)?;
                std::fs::write(dir.join(&file), text)?;
                println!("wrote {}", dir.join(&file).display());
            }
            None => print!("{text}"),
        }
    }
    Ok(())
}

/// One topic's contract: the service's planner for the topic's kind.
pub struct Contract {
    planner: Planner,
    kind: TopicKind,
    /// The Kafka topic's name.
    pub topic: String,
}

impl Contract {
    /// `topic`: a configured Kafka topic name, or a logical one (`assessments`, `logins`,
    /// `registrations`, `fraud-signals`).
    pub fn new(config: &Config, topic: &str) -> anyhow::Result<Self> {
        let validated = config.validate()?;
        let t = &config.kafka.topics;
        let logical = topic.replace('_', "-");
        let kind = if topic == t.assessments || logical == "assessments" {
            TopicKind::Assessments
        } else if let Some(o) = OutcomeTopic::ALL
            .into_iter()
            .find(|o| topic == t.outcome(*o) || logical == o.as_str().replace('_', "-"))
        {
            TopicKind::Outcome(o)
        } else {
            anyhow::bail!(
                "{topic} is none of the consumed topics ({}, {}, {}, {}), so it has no contract",
                t.assessments,
                t.logins,
                t.registrations,
                t.fraud_signals
            );
        };
        let name = match kind {
            TopicKind::Assessments => t.assessments.clone(),
            TopicKind::Outcome(o) => t.outcome(o).to_owned(),
        };
        let planner = Planner::new(
            validated.rules.clone(),
            validated.project.clone(),
            validated.allowed.clone(),
            config.delivery.max_event_bytes,
        );
        Ok(Self {
            planner,
            kind,
            topic: name,
        })
    }

    /// `Ok` when the service would take the record (annotate it, store it or wait for its
    /// key), else the dead-letter reason and why.
    pub fn check(&self, key: Option<&[u8]>, value: Option<&[u8]>) -> Result<(), (String, String)> {
        let msg = Message {
            tp: TopicPartition::new(&self.topic, 0),
            kind: self.kind,
            offset: 0,
            key: key.map(<[u8]>::to_vec),
            payload: value.map(<[u8]>::to_vec),
            timestamp_ms: None,
            replay_count: None,
        };
        self.planner
            .plan(&msg)
            .map(|_| ())
            .map_err(|d| (d.reason.as_str().to_owned(), d.detail))
    }
}
