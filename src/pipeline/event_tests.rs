//! The event runner against the in-process sandbox and a cache that fails on purpose.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use async_trait::async_trait;
use tokio_util::sync::CancellationToken;

use super::Runner;
use crate::annotate::AnnotateClient;
use crate::annotate::auth::Auth;
use crate::budget::Budget;
use crate::cache::memory::MemoryCache;
use crate::cache::{Cache, CacheError, Lookup};
use crate::config::{KafkaConfig, RecaptchaConfig};
use crate::dead_letter::DeadLetterWriter;
use crate::domain::assessment::{AssessmentName, CorrelationKey, ProjectAllowList};
use crate::health::Health;
use crate::pipeline::catchup::CatchUp;
use crate::pipeline::concurrency::Concurrency;
use crate::pipeline::deliver::{HaltGates, Sender};
use crate::pipeline::join::Joiner;
use crate::pipeline::message::{Message, TopicKind};
use crate::pipeline::offsets::{OffsetBook, TopicPartition};
use crate::pipeline::plan::{Plan, Target};
use crate::pipeline::store::Store;
use crate::sandbox::Sandbox;
use crate::telemetry::Metrics;

/// A memory cache whose writes of annotated ids fail the first `fail_marks` times, and
/// that panics on them when `panic` is set.
#[derive(Default)]
pub(super) struct FlakyCache {
    inner: MemoryCache,
    pub fail_marks: AtomicU32,
    pub panic: std::sync::atomic::AtomicBool,
}

#[async_trait]
impl Cache for FlakyCache {
    async fn get(&self, key: &CorrelationKey) -> Result<Lookup, CacheError> {
        self.inner.get(key).await
    }
    async fn put(
        &self,
        key: &CorrelationKey,
        name: &AssessmentName,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        self.inner.put(key, name, ttl).await
    }
    async fn remove(&self, key: &CorrelationKey) -> Result<(), CacheError> {
        self.inner.remove(key).await
    }
    async fn is_done(&self, event_id: &str, record: &str) -> Result<bool, CacheError> {
        self.inner.is_done(event_id, record).await
    }
    async fn mark_done(
        &self,
        event_id: &str,
        record: &str,
        ttl: Duration,
    ) -> Result<(), CacheError> {
        assert!(!self.panic.load(Ordering::Relaxed), "a bug on purpose");
        let left = self.fail_marks.load(Ordering::Relaxed);
        if left > 0 {
            self.fail_marks.store(left - 1, Ordering::Relaxed);
            return Err(CacheError("down on purpose".into()));
        }
        self.inner.mark_done(event_id, record, ttl).await
    }
    async fn ping(&self) -> Result<(), CacheError> {
        Ok(())
    }
    fn name(&self) -> &'static str {
        "flaky"
    }
}

/// A runner wired to a fresh sandbox and `cache`, with millisecond retries.
pub(super) struct Harness {
    pub runner: Arc<Runner>,
    pub book: Arc<OffsetBook>,
    pub sandbox: Sandbox,
    pub metrics: Metrics,
    pub health: Arc<Health>,
    next_offset: std::sync::atomic::AtomicI64,
}

impl Harness {
    pub async fn new(cache: Arc<dyn Cache>) -> Self {
        let sandbox = Sandbox::new(None, 10_000);
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let endpoint =
            reqwest::Url::parse(&format!("http://{}", listener.local_addr().unwrap())).unwrap();
        tokio::spawn(crate::sandbox::serve(listener, sandbox.clone()));
        let metrics = Metrics::new();
        let health = Arc::new(Health::default());
        let book = Arc::new(OffsetBook::default());
        let store = Arc::new(Store::new(
            cache,
            Duration::from_secs(60),
            Duration::from_secs(60),
            Arc::clone(&health),
        ));
        let joiner = Joiner {
            store: Arc::clone(&store),
            catch_up: Arc::new(CatchUp::default()),
            book: Arc::clone(&book),
            allowed: ProjectAllowList::new(vec![]),
            grace: Duration::from_secs(1),
            retry: Duration::from_millis(10),
            metrics: metrics.clone(),
        };
        let client =
            AnnotateClient::new(&endpoint, Auth::None, &RecaptchaConfig::default()).unwrap();
        let gate = HaltGates::new(
            Arc::clone(&health),
            metrics.clone(),
            Duration::from_millis(50),
            Duration::from_secs(60),
        );
        let runner = Runner {
            store,
            joiner,
            sender: Sender::new(
                client,
                Concurrency::new(16, false, metrics.clone()),
                Budget::unlimited(metrics.clone()),
                gate,
                metrics.clone(),
            ),
            dead_letters: DeadLetterWriter::new(
                &KafkaConfig::default(),
                &crate::kafka::LogContext::new("127.0.0.1:9092"),
                Arc::clone(&health),
                metrics.clone(),
            )
            .unwrap(),
            book: Arc::clone(&book),
            metrics: metrics.clone(),
            health: Arc::clone(&health),
            retry: (Duration::from_millis(1), Duration::from_millis(5)),
            dry_run: false,
        };
        book.assign(TopicPartition::new("t", 0));
        Self {
            runner: Arc::new(runner),
            book,
            sandbox,
            metrics,
            health,
            next_offset: Default::default(),
        }
    }

    /// Runs one annotation for `name` to its end; returns its Kafka record identity.
    pub async fn annotate(&self, event_id: &str, name: &str) -> String {
        let (record, run) = self.run(event_id, name, CancellationToken::new());
        tokio::time::timeout(Duration::from_secs(10), run)
            .await
            .expect("the event finishes");
        record
    }

    /// The run of one annotation for `name`, abandoned when `abandon` fires, and its Kafka
    /// record identity.
    pub fn run(
        &self,
        event_id: &str,
        name: &str,
        abandon: CancellationToken,
    ) -> (String, impl Future<Output = ()> + use<>) {
        let offset = self.next_offset.fetch_add(1, Ordering::Relaxed);
        let msg = Message {
            tp: TopicPartition::new("t", 0),
            kind: TopicKind::Outcome(crate::domain::rules::OutcomeTopic::Logins),
            offset,
            key: None,
            payload: Some(b"{}".to_vec()),
            timestamp_ms: Some(1),
            replay_count: None,
        };
        let record = msg.identity();
        let ticket = self.book.register(&msg.tp, offset).unwrap();
        let plan = Plan::Annotate {
            event_id: event_id.to_owned(),
            target: Target::Known(AssessmentName::parse(name).unwrap()),
            body: bytes::Bytes::from_static(b"{}"),
        };
        let run = Arc::clone(&self.runner).run(msg, ticket, Ok(plan), None, abandon);
        (record, run)
    }
}

#[tokio::test]
async fn an_annotated_id_is_remembered_however_often_the_cache_fails_first() {
    let cache = Arc::new(FlakyCache::default());
    cache.fail_marks.store(10, Ordering::Relaxed);
    let h = Harness::new(Arc::clone(&cache) as Arc<dyn Cache>).await;
    let record = h.annotate("e-1", "projects/p/assessments/a1").await;
    assert_eq!(h.sandbox.accepted_count(), 1);
    assert!(
        cache.is_done("e-1", &record).await.unwrap(),
        "the id was given up on, so a redelivery would be sent again"
    );
    assert_eq!(h.book.committable(&TopicPartition::new("t", 0)), Some(1));
}

#[tokio::test]
async fn a_crashed_event_is_counted_and_its_partition_shown_as_stalled() {
    let cache = Arc::new(FlakyCache::default());
    cache.panic.store(true, Ordering::Relaxed);
    let h = Harness::new(Arc::clone(&cache) as Arc<dyn Cache>).await;
    // The task returns (the panic does not escape it), the offset stays unfinished.
    h.annotate("e-1", "projects/p/assessments/a1").await;
    assert_eq!(h.metrics.event_crashes.get(), 1);
    assert_eq!(h.metrics.stalled_partitions.get(), 1);
    assert_eq!(h.book.committable(&TopicPartition::new("t", 0)), Some(0));
    let readiness = h.health.readiness();
    assert!(
        readiness
            .notes
            .iter()
            .any(|n| n.contains("partition t/0 stalled")),
        "{readiness:?}"
    );
    // Later events still flow.
    cache.panic.store(false, Ordering::Relaxed);
    h.annotate("e-2", "projects/p/assessments/a2").await;
    assert_eq!(h.sandbox.accepted_count(), 2);
}

#[tokio::test]
async fn an_abandoned_call_is_no_longer_counted_in_flight() {
    let h = Harness::new(Arc::new(FlakyCache::default()) as Arc<dyn Cache>).await;
    h.sandbox.set_script(crate::sandbox::Script {
        default: Some(crate::sandbox::DefaultAnswer {
            delay_ms: 60_000,
            ..Default::default()
        }),
        ..Default::default()
    });
    let abandon = CancellationToken::new();
    let (_, run) = h.run("e-1", "projects/p/assessments/a1", abandon.clone());
    let run = tokio::spawn(run);
    while h.metrics.in_flight.get() == 0 {
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    // The partition is revoked while the call is out.
    abandon.cancel();
    run.await.unwrap();
    assert_eq!(h.metrics.in_flight.get(), 0);
}
