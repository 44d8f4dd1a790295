//! The per-event work that needs no broker, no cache and no endpoint: decode, rules and the
//! request body (the plan), the lane, the offset bookkeeping, the call's URL. Run with
//! `cargo bench --bench hot_path`; criterion keeps the last run in `target/criterion` and
//! prints the change against it, so a regression shows without a broker.

use std::hint::black_box;
use std::sync::Arc;

use criterion::{Criterion, criterion_group, criterion_main};
use recaptcha_annotator::annotate::AnnotateClient;
use recaptcha_annotator::annotate::auth::Auth;
use recaptcha_annotator::config::RecaptchaConfig;
use recaptcha_annotator::domain::assessment::{AssessmentName, ProjectAllowList};
use recaptcha_annotator::domain::rules::{OutcomeTopic, Rules};
use recaptcha_annotator::pipeline::lanes::Lanes;
use recaptcha_annotator::pipeline::message::{Message, TopicKind};
use recaptcha_annotator::pipeline::offsets::{OffsetBook, TopicPartition};
use recaptcha_annotator::pipeline::plan::{Plan, Planner};

/// An outcome as the bench and most producers send it: inline name, an account id.
const INLINE: &str = r#"{"event_id":"b123456","outcome":"chargeback","assessment":"projects/1/assessments/b123456","account_id":"1764460800000"}"#;
/// An outcome that names its assessment by correlation key (joined through the cache).
const JOIN: &str = r#"{"event_id":"b123456","outcome":"password_correct","key":"k123456","account_id":"1764460800000"}"#;
/// An assessment mapping.
const MAPPING: &str = r#"{"key":"k123456","assessment":"projects/1/assessments/b123456"}"#;

fn message(kind: TopicKind, payload: &str) -> Message {
    Message {
        tp: TopicPartition::new("fraud-signals", 0),
        kind,
        offset: 123_456,
        key: Some(b"k123456".to_vec()),
        payload: Some(payload.as_bytes().to_vec()),
        timestamp_ms: Some(1_764_460_800_000),
        replay_count: None,
    }
}

fn plan(c: &mut Criterion) {
    let planner = Planner::new(
        Rules::default(),
        None,
        ProjectAllowList::new(vec![]),
        1 << 20,
    );
    let mut group = c.benchmark_group("plan");
    for (name, kind, payload) in [
        (
            "outcome_inline",
            TopicKind::Outcome(OutcomeTopic::FraudSignals),
            INLINE,
        ),
        (
            "outcome_join",
            TopicKind::Outcome(OutcomeTopic::Logins),
            JOIN,
        ),
        ("assessment", TopicKind::Assessments, MAPPING),
    ] {
        let msg = message(kind, payload);
        assert!(
            matches!(
                planner.plan(&msg),
                Ok(Plan::Annotate { .. } | Plan::Store { .. })
            ),
            "{name} plans"
        );
        group.bench_function(name, |b| b.iter(|| planner.plan(black_box(&msg))));
    }
    group.finish();
}

fn bookkeeping(c: &mut Criterion) {
    let msg = message(TopicKind::Outcome(OutcomeTopic::FraudSignals), INLINE);
    c.bench_function("message/identity", |b| {
        b.iter(|| black_box(&msg).identity())
    });

    // 1,024 events in flight on one partition, finished out of order.
    let book = OffsetBook::default();
    let tp = TopicPartition::new("fraud-signals", 0);
    book.assign(tp.clone());
    let mut next = 0_i64;
    let mut window: std::collections::VecDeque<_> = (0..1024)
        .map(|_| {
            next += 1;
            book.register(&tp, next).expect("owned")
        })
        .collect();
    c.bench_function("offsets/register_done_1024_in_flight", |b| {
        b.iter(|| {
            // The second oldest finishes first, as under concurrency.
            let ticket = window.remove(1).expect("1,024 in flight");
            book.done(&ticket);
            next += 1;
            window.push_back(book.register(&tp, next).expect("owned"));
            if next % 1024 == 0 {
                book.done(&window.pop_front().expect("in flight"));
                next += 1;
                window.push_back(book.register(&tp, next).expect("owned"));
            }
            book.committable(&tp)
        });
    });

    let lanes = Arc::new(Lanes::default());
    let mut i = 0_u64;
    c.bench_function("lanes/enter_release", |b| {
        b.iter(|| {
            i += 1;
            drop(lanes.enter(format!("projects/1/assessments/b{i}")));
        });
    });
}

fn call(c: &mut Criterion) {
    let endpoint = reqwest::Url::parse("https://recaptchaenterprise.googleapis.com").expect("url");
    let client =
        AnnotateClient::new(&endpoint, Auth::None, &RecaptchaConfig::default()).expect("client");
    let name = AssessmentName::parse("projects/1/assessments/b123456").expect("name");
    c.bench_function("call/url", |b| b.iter(|| client.url(black_box(&name))));
}

criterion_group!(benches, plan, bookkeeping, call);
criterion_main!(benches);
