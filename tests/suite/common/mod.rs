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

/// GET `path` from the admin listener at `address` (`host:port`): the status and body, or
/// `(0, "")` when it does not answer within 5 s. A wait that asks again keeps its own bound:
/// a call never hangs with it (one did for three minutes while a worker thread was blocked).
pub async fn admin_get(address: &str, path: &str) -> (u16, String) {
    let client = reqwest::Client::builder()
        .timeout(std::time::Duration::from_secs(5))
        .build()
        .unwrap();
    match client.get(format!("http://{address}{path}")).send().await {
        Ok(r) => (r.status().as_u16(), r.text().await.unwrap_or_default()),
        Err(_) => (0, String::new()),
    }
}

/// How much later than its grant a call may reach the sandbox: scheduling on two loaded
/// cores (the broker, Redis, the instances, the endpoint and the suite's other tests, four at
/// a time) delays each call by a variable amount. The busiest seconds measured in CI runs
/// put up to about 105 ms of calls over GCRA's bound (240 for 219 at 200 a second); twice
/// that leaves room and stays far below a limiter not applied at all.
pub const ARRIVAL_JITTER_MS: u64 = 200;

/// The most calls the sandbox may see in one second from limiters that grant `rate` a
/// second after a `burst`, together: GCRA grants at most `rate + burst - 1` in any second
/// of the limiter's clock, and calls delayed by up to [`ARRIVAL_JITTER_MS`] move at most
/// that fraction of a second's grants into one window. A bound in time, not a percentage:
/// a limiter not applied at all still shows far above it.
pub fn busiest_allowed(rate: u64, burst: u64) -> usize {
    usize::try_from(rate + burst - 1 + (rate * ARRIVAL_JITTER_MS).div_ceil(1000)).unwrap()
}

/// Where [`free_port`] hands out ports: below the kernel's ephemeral range (32768 and up
/// on Linux), where outgoing connections take their local ports.
const TEST_PORTS: std::ops::Range<u32> = 20_000..30_000;

/// A loopback port free now, never handed out before in this process: for a service's
/// admin listener, a private Redis, a node of a test's own Kafka cluster.
///
/// A port from `bind(0)` comes from the ephemeral range: between the test releasing it and
/// the service binding it (or a node restarting on it), any outgoing connection (the tests
/// open many) may take it as its local port, and the service then stops with "cannot
/// listen". Ports from [`TEST_PORTS`] are never picked by `connect`, and a counter keeps
/// the tests of the suite apart.
pub fn free_port() -> u16 {
    use std::sync::atomic::{AtomicU32, Ordering};
    static NEXT: AtomicU32 = AtomicU32::new(u32::MAX);
    let span = TEST_PORTS.end - TEST_PORTS.start;
    // Each process starts at its own place, so binaries run one after another do not
    // reuse the ports the previous one left in TIME_WAIT.
    let _ = NEXT.compare_exchange(
        u32::MAX,
        std::process::id().wrapping_mul(7919) % span,
        Ordering::Relaxed,
        Ordering::Relaxed,
    );
    for _ in 0..span {
        let port = TEST_PORTS.start + NEXT.fetch_add(1, Ordering::Relaxed) % span;
        let port = u16::try_from(port).unwrap();
        if std::net::TcpListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    panic!("no free port in {TEST_PORTS:?}");
}
