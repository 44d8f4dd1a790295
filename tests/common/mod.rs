//! Shared helpers: each test gets its own topics, group, cache namespace and sandbox
//! endpoint, against the real broker (`ANNOTATOR_TEST_BROKERS`, default 127.0.0.1:9092;
//! `.ci/run` starts one) and the real Redis (`ANNOTATOR_TEST_REDIS`).
//!
//! - [`broker`]: Apache Kafka clusters of a test's own (restarts, security, failover);
//! - [`env`]: the test's world and the one config builder;
//! - [`kafka`]: producing, offsets, dead letters;
//! - [`process`]: the binary as a process;
//! - [`redis`]: Redis namespaces and private servers;
//! - [`google`]: service-account keys and configs without the API key;
//! - [`tls`]: throwaway CAs and server certificates;
//! - [`metrics`]: reading `/metrics`.
#![allow(dead_code, unused_imports, clippy::unwrap_used, clippy::expect_used)]

mod broker;
mod env;
mod google;
mod kafka;
mod metrics;
mod process;
mod redis;
mod tls;

use std::collections::BTreeMap;

pub use self::broker::*;
pub use self::env::*;
pub use self::google::*;
pub use self::kafka::*;
pub use self::metrics::*;
pub use self::process::*;
pub use self::redis::*;
pub use self::tls::*;

/// (topic, partition) -> offset.
pub type Offsets = BTreeMap<(String, i32), i64>;

pub const API_KEY: &str = "test-api-key";
pub const PROJECT: &str = "123456789";

pub fn brokers() -> String {
    std::env::var("ANNOTATOR_TEST_BROKERS").unwrap_or_else(|_| "127.0.0.1:9092".into())
}

/// A free loopback port.
pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}
