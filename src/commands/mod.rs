//! The commands beside the service (`run` is [`crate::app`]): each uses the same parts the
//! service uses.
//!
//! - [`check`]: validate the config and reach the broker, the cache and the endpoint.
//! - [`replay`]: re-publish dead letters to their source topics.
//! - [`demo`]: the whole flow on local defaults.
//! - [`bench`]: throughput, latency, CPU and memory against the local broker.
//! - [`create_topics`]: the configured topics on the broker.
//! - [`kit`]: for producers: `schemas`, `validate`, `publish`.

pub mod bench;
pub mod check;
pub mod demo;
pub mod kit;
pub mod replay;
pub mod top;

use crate::config::Config;
use crate::kafka;

/// `create-topics`: the consumed topics and the dead-letter topic, with `partitions` each.
pub async fn create_topics(config: &Config, partitions: i32) -> anyhow::Result<()> {
    let t = &config.kafka.topics;
    let mut all = t.consumed().to_vec();
    all.push(&t.dead_letter);
    // A broker that does not answer is said in seconds, naming it, not after the admin
    // request's minute as `OperationTimedOut`.
    let probe = kafka::metadata_client(&config.kafka)?;
    let reached = tokio::task::spawn_blocking(move || {
        rdkafka::consumer::Consumer::fetch_metadata(&probe, None, kafka::QUERY_TIMEOUT).map(|_| ())
    })
    .await?;
    if let Err(e) = reached {
        anyhow::bail!(
            "the broker {} does not answer within {} s ({e}); start it (scripts/kafka.sh for a local one) or fix kafka.brokers",
            config.kafka.brokers,
            kafka::QUERY_TIMEOUT.as_secs()
        );
    }
    kafka::create_topics_with(&kafka::client(&config.kafka), &all, partitions).await?;
    println!("topics ready: {}", all.join(", "));
    Ok(())
}
