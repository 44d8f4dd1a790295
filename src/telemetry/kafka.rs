//! A documented subset of librdkafka's statistics (emitted every `statistics.interval.ms`,
//! 15 s unless `kafka.properties` says otherwise) as metrics: what operators look at first
//! when the broker is the suspect.
//!
//! - `annotator_kafka_broker_rtt_seconds{broker}`: the mean round trip of requests to each
//!   broker over the last interval (`brokers[].rtt.avg`; the bootstrap entries are left out);
//! - `annotator_kafka_fetch_queue_messages`: messages fetched and waiting in librdkafka's
//!   queues for the poll loop (`topics[].partitions[].fetchq_cnt`, summed);
//! - `annotator_kafka_partition_lag{topic,partition}`: librdkafka's own view of each owned
//!   partition's lag (`consumer_lag`: the high watermark minus the committed offset), beside
//!   the service's `annotator_consumer_lag`.

use prometheus::{GaugeVec, IntGauge, IntGaugeVec, Opts, Registry};
use rdkafka::Statistics;

pub struct KafkaStats {
    /// `annotator_kafka_broker_rtt_seconds{broker}`.
    pub broker_rtt: GaugeVec,
    /// `annotator_kafka_fetch_queue_messages`.
    pub fetch_queue: IntGauge,
    /// `annotator_kafka_partition_lag{topic,partition}`.
    pub partition_lag: IntGaugeVec,
}

impl KafkaStats {
    pub fn new(registry: &Registry) -> Self {
        let broker_rtt = GaugeVec::new(
            Opts::new(
                "annotator_kafka_broker_rtt_seconds",
                "Mean round trip of requests to each broker over librdkafka's last statistics interval",
            ),
            &["broker"],
        )
        .expect("a valid metric");
        let fetch_queue = IntGauge::new(
            "annotator_kafka_fetch_queue_messages",
            "Messages fetched and waiting in librdkafka's queues for the poll loop",
        )
        .expect("a valid metric");
        let partition_lag = IntGaugeVec::new(
            Opts::new(
                "annotator_kafka_partition_lag",
                "librdkafka's view of each owned partition's lag (high watermark minus committed offset)",
            ),
            &["topic", "partition"],
        )
        .expect("a valid metric");
        for collector in [
            Box::new(broker_rtt.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(fetch_queue.clone()),
            Box::new(partition_lag.clone()),
        ] {
            // Names are unique in the catalogue; a second registration is a programming error.
            registry
                .register(collector)
                .expect("a metric registered once");
        }
        Self {
            broker_rtt,
            fetch_queue,
            partition_lag,
        }
    }

    /// Takes one statistics report; `owns` says which partitions are this instance's.
    pub fn update(&self, stats: &Statistics, owns: impl Fn(&str, i32) -> bool) {
        for broker in stats.brokers.values() {
            if broker.nodeid < 0 {
                continue;
            }
            if let Some(rtt) = &broker.rtt {
                #[allow(clippy::cast_precision_loss)]
                let seconds = rtt.avg as f64 / 1e6;
                self.broker_rtt
                    .with_label_values(&[broker.name.as_str()])
                    .set(seconds);
            }
        }
        let mut queued = 0;
        for (topic, t) in &stats.topics {
            for (partition, p) in &t.partitions {
                // librdkafka's internal partition (-1) holds nothing of a consumer's.
                if *partition < 0 {
                    continue;
                }
                queued += p.fetchq_cnt.max(0);
                if owns(topic, *partition) && p.consumer_lag >= 0 {
                    self.partition_lag
                        .with_label_values(&[topic.as_str(), &partition.to_string()])
                        .set(p.consumer_lag);
                }
            }
        }
        self.fetch_queue.set(queued);
    }
}
