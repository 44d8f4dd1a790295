//! recaptcha-annotator: Kafka outcome events -> reCAPTCHA Enterprise `assessments.annotate`.
//!
//! Map of the crate, from the bottom up (each floor imports only what stands below it):
//! - [`domain`]: pure types and decisions (assessment names, events, rules, the API body).
//! - [`telemetry`]: the metric catalogue and logging.
//! - [`config`], [`cache`], [`annotate`], [`dead_letter`], [`admin`]: the services an event
//!   meets; [`sandbox`]: the local annotate endpoint (shares only `domain`).
//! - [`pipeline`]: the only place that knows Kafka (poll loop, offsets, lanes, rebalance).
//! - [`app`], [`cli`], [`check`], [`replay`], [`demo`], [`bench`], [`tools`]: startup and
//!   commands; `main.rs` is thin.

pub mod admin;
pub mod annotate;
pub mod app;
pub mod bench;
pub mod cache;
pub mod check;
pub mod cli;
pub mod config;
pub mod dead_letter;
pub mod demo;
pub mod domain;
pub mod pipeline;
pub mod replay;
pub mod sandbox;
pub mod telemetry;
pub mod tools;
