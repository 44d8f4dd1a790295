//! A three-node Apache Kafka cluster (KRaft, every node a voter), replication factor 3 and
//! `min.insync.replicas` 2: the leader of the consumed partitions dies mid-stream, and in
//! another run the group coordinator does. Nothing is lost, repeated calls stay within the
//! calls in flight, and dead letters are still written (`acks=all`, idempotent).
//!
//! Three brokers take a minute of CI's two cores: these run with `scripts/test.sh --long`
//! (`cargo test --test suite -- --ignored cluster::`).

use std::collections::BTreeSet;
use std::time::Duration;

use crate::common::*;
use rdkafka::ClientConfig;
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::producer::{FutureProducer, FutureRecord};

/// Which node to take away.
#[derive(Clone, Copy, Debug)]
enum Victim {
    /// The leader of the first `fraud-signals` partition.
    Leader,
    /// The group's coordinator.
    Coordinator,
}

/// The node id leading `topic`'s partition 0.
fn leader(brokers: &str, topic: &str) -> i32 {
    let client: BaseConsumer = ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .create()
        .unwrap();
    let metadata = client
        .fetch_metadata(Some(topic), Duration::from_secs(10))
        .unwrap();
    metadata.topics()[0]
        .partitions()
        .iter()
        .find(|p| p.id() == 0)
        .unwrap()
        .leader()
}

/// The node id coordinating `group`, as Kafka's own group tool reports it
/// (`COORDINATOR (ID)` = `host:port  (id)`).
fn coordinator(cluster: &KafkaCluster, group: &str) -> i32 {
    let out = cluster.tool(
        "org.apache.kafka.tools.consumer.group.ConsumerGroupCommand",
        &["--describe", "--group", group, "--state"],
    );
    let line = out
        .lines()
        .find(|l| l.contains(group) && l.contains('('))
        .unwrap_or_else(|| panic!("no coordinator in: {out}"));
    let id = line.split('(').nth(1).unwrap().split(')').next().unwrap();
    id.trim().parse().unwrap()
}

async fn failover(victim: Victim) {
    let mut cluster = tokio::task::block_in_place(|| KafkaCluster::plain(3));
    let env = TestEnv::on(&cluster.bootstrap(), &format!("{victim:?}"), 2).await;
    env.script(vec![], Some(answer(200, 50)));
    let max_in_flight = 64;
    let (_file, mut service) = env.spawn_logged_service(max_in_flight);
    let producer: FutureProducer = ClientConfig::new()
        .set("bootstrap.servers", &env.brokers)
        .set("enable.idempotence", "true")
        .set("message.timeout.ms", "120000")
        .create()
        .unwrap();
    let topic = env.topic("fraud-signals");
    let send = |key: String, value: String| {
        let producer = producer.clone();
        let topic = topic.clone();
        async move {
            producer
                .send(
                    FutureRecord::to(&topic).key(&key).payload(&value),
                    Duration::from_secs(120),
                )
                .await
                .map_err(|(e, _)| e)
                .unwrap();
        }
    };
    let total = 400;
    let events = unique_events(&format!("{victim:?}"), total);
    let (before, after) = events.split_at(total / 2);
    for (_, key, value) in before.iter().cloned() {
        send(key.unwrap(), value).await;
    }
    // Two events that must be dead-lettered, on either side of the failover.
    send("bad-before".into(), "not json".into()).await;
    env.wait_accepted(100, Duration::from_secs(60)).await;

    let id = match victim {
        Victim::Leader => tokio::task::block_in_place(|| leader(&env.brokers, &topic)),
        Victim::Coordinator => {
            tokio::task::block_in_place(|| coordinator(&cluster, &env.config_base.group))
        }
    };
    let index = cluster.index_of(id);
    tokio::task::block_in_place(|| cluster.stop_node(index, "KILL"));
    eprintln!("{victim:?}: killed node {id} mid-stream");

    // The rest goes to the two nodes left (min.insync.replicas 2 still holds).
    let sends = after
        .iter()
        .cloned()
        .map(|(_, key, value)| send(key.unwrap(), value));
    futures::future::join_all(sends).await;
    send("bad-after".into(), "not json either".into()).await;
    env.wait_all_committed(Duration::from_secs(180)).await;
    assert!(service.running(), "the service exited");
    let log = service.stop("TERM");
    let repeated = env.assert_all_annotated(total, max_in_flight, &log);
    eprintln!("{victim:?}: {repeated} repeated calls");
    let letters = env.dead_letters(2, Duration::from_secs(30));
    let keys: BTreeSet<_> = letters.iter().filter_map(|l| l.key.clone()).collect();
    assert_eq!(
        keys,
        BTreeSet::from(["bad-after".to_owned(), "bad-before".to_owned()]),
        "{letters:?}"
    );
    assert_eq!(
        letters.len(),
        2,
        "each dead letter written once: {letters:?}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "three brokers: scripts/test.sh --long"]
async fn the_leader_of_the_consumed_partitions_dies_mid_stream_and_nothing_is_lost() {
    failover(Victim::Leader).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
#[ignore = "three brokers: scripts/test.sh --long"]
async fn the_group_coordinator_dies_mid_stream_and_nothing_is_lost() {
    failover(Victim::Coordinator).await;
}
