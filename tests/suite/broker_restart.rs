//! A broker that goes away under load and comes back on the same log directory: SIGTERM (a
//! controlled shutdown) and SIGKILL (a crash) of an Apache Kafka broker of the test's own.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

use crate::common::*;
use rdkafka::ClientConfig;
use rdkafka::producer::{FutureProducer, FutureRecord, Producer as _};

/// A producer as a producer team writes one: batching, idempotent, and patient enough to
/// outlast a broker restart.
fn team_producer(brokers: &str) -> FutureProducer {
    ClientConfig::new()
        .set("bootstrap.servers", brokers)
        .set("enable.idempotence", "true")
        .set("linger.ms", "20")
        .set("message.timeout.ms", "180000")
        .create()
        .unwrap()
}

async fn send(producer: &FutureProducer, topic: &str, key: &str, value: &str) {
    producer
        .send(
            FutureRecord::to(topic).key(key).payload(value),
            Duration::from_secs(180),
        )
        .await
        .map_err(|(e, _)| e)
        .unwrap();
}

/// The broker goes away under load and comes back on the same log directory: nothing is
/// lost, repeated calls stay within the calls in flight, the service never exits, `/readyz`
/// says the brokers are unreachable meanwhile, and lag and commits resume.
async fn broker_restart_under_load(signal_name: &str) {
    let mut cluster = tokio::task::block_in_place(|| KafkaCluster::plain(1));
    let env = TestEnv::on(&cluster.bootstrap(), &format!("restart-{signal_name}"), 2).await;
    // Calls take 200 ms, so many are in flight when the broker goes.
    env.script(vec![], Some(answer(200, 200)));
    let max_in_flight = 32;
    let (_file, mut service) = env.spawn_logged_service(max_in_flight);

    let total = 600;
    let producer = team_producer(&env.brokers);
    let topic = env.topic("fraud-signals");
    let produced = Arc::new(AtomicBool::new(false));
    let events = unique_events(&format!("r{signal_name}"), total);
    let feeding = {
        let producer = producer.clone();
        let produced = Arc::clone(&produced);
        tokio::spawn(async move {
            // About 60 events a second for 10 s: the stream flows through the restart.
            for (_, key, value) in events {
                let producer = producer.clone();
                let topic = topic.clone();
                tokio::spawn(async move {
                    send(&producer, &topic, key.as_deref().unwrap(), &value).await;
                });
                tokio::time::sleep(Duration::from_millis(16)).await;
            }
            // A blocking call: off the runtime's workers, which the test's waits need.
            tokio::task::block_in_place(|| producer.flush(Duration::from_secs(180))).unwrap();
            produced.store(true, Ordering::Release);
        })
    };
    env.wait_accepted(100, Duration::from_secs(120)).await;
    let started = Instant::now();
    let mark = |what: &str| eprintln!("{signal_name}: {what} at {:?}", started.elapsed());

    tokio::task::block_in_place(|| cluster.stop_node(0, signal_name));
    mark("broker stopped");
    env.wait_not_ready("Kafka brokers unreachable", Duration::from_secs(30))
        .await;
    assert!(
        service.running(),
        "the service exited when the broker went away"
    );
    mark("not ready");
    tokio::time::sleep(Duration::from_secs(2)).await;
    tokio::task::block_in_place(|| cluster.restart_node(0, 1));
    mark("broker answers again");

    feeding.await.unwrap();
    assert!(produced.load(Ordering::Acquire));
    mark("everything produced");
    env.wait_all_committed(Duration::from_secs(180)).await;
    mark("everything committed");
    env.wait_ready(Duration::from_secs(60)).await;
    // Lag falls to zero once commits resume.
    let started = Instant::now();
    loop {
        let (_, text) = env.http_get("/metrics").await;
        if metric_sum(&text, "annotator_consumer_lag") == 0.0 {
            break;
        }
        assert!(
            started.elapsed() < Duration::from_secs(60),
            "lag never fell to zero"
        );
        tokio::time::sleep(Duration::from_millis(500)).await;
    }
    assert!(service.running(), "the service exited");
    let log = service.stop("TERM");
    let repeated = env.assert_all_annotated(total, max_in_flight, &log);
    eprintln!("broker {signal_name}: {repeated} repeated calls");
    assert!(
        env.dead_letters(0, Duration::from_secs(5)).is_empty(),
        "nothing dead-lettered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_stopped_with_sigterm_under_load_loses_nothing() {
    broker_restart_under_load("TERM").await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_broker_killed_with_sigkill_under_load_loses_nothing() {
    broker_restart_under_load("KILL").await;
}
