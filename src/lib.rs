//! recaptcha-annotator: Kafka outcome events -> reCAPTCHA Enterprise `assessments.annotate`.
//!
//! Map of the crate, from the bottom up (each floor imports only what stands below it):
//! - [`domain`]: pure types and decisions (assessment names, events, rules, the API body);
//!   [`failure`]: the one failure type, and how Google's answers map to it; [`health`]:
//!   readiness.
//! - [`telemetry`]: the metric catalogue, named events that log and count, logging setup.
//! - [`config`]: the operator's file and environment, validated without IO.
//! - the services one event meets: [`cache`], [`annotate`], [`dead_letter`], [`budget`] (the
//!   quota budget, shared through Redis); beside them
//!   [`kafka`] (every rdkafka client) and [`admin`] (`/metrics`, `/healthz`, `/readyz`, and
//!   [`status`]: `/status.json`, `/status`, what `top` shows);
//!   [`sandbox`]: the local annotate endpoint (shares only `domain`).
//! - [`pipeline`]: the only place that consumes Kafka: the poll loop and one file per step of
//!   an event (plan, lanes, join, gates and delivery, offsets, commit), rebalance.
//! - [`app`]: all wiring; [`commands`]: check, replay, demo, bench; [`cli`]; `main.rs` is
//!   thin.

pub mod admin;
pub mod annotate;
pub mod app;
pub mod budget;
pub mod cache;
pub mod cli;
pub mod commands;
pub mod config;
pub mod dead_letter;
pub mod domain;
pub mod failure;
pub mod health;
pub mod kafka;
pub mod pipeline;
pub mod sandbox;
pub mod status;
pub mod telemetry;

/// The map of the per-event paths (lanes, offsets, partitions' tokens, halt gates, the
/// in-process cache): foldhash, seeded per process, so keys that events choose still cannot
/// be aimed at one bucket, at a fraction of SipHash's cost (docs/CAPACITY.md).
pub type FastMap<K, V> = std::collections::HashMap<K, V, foldhash::fast::RandomState>;
