#!/usr/bin/env bash
# The whole test suite on a clean machine: starts what the tests need (Apache Kafka on
# loopback, Redis if none answers), then fmt, clippy and every test against the real
# components.
#
#   scripts/test.sh          the suite CI runs (fuzzing bounded to about a minute)
#   scripts/test.sh --long   the same, with the fuzzers run 25 times longer (about 20 minutes)
#                            and the three-broker failover tests (tests/cluster.rs) and
#                            the chaos at the halt gates (tests/halts.rs)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Cases per fuzz property (tests/fuzz.rs, the config's environment layer).
export PROPTEST_CASES=${PROPTEST_CASES:-20000}
long=false
if [ "${1:-}" = "--long" ]; then
  export PROPTEST_CASES=500000
  long=true
fi

port=${KAFKA_PORT:-9092}
export ANNOTATOR_TEST_BROKERS=${ANNOTATOR_TEST_BROKERS:-127.0.0.1:$port}
export ANNOTATOR_TEST_REDIS=${ANNOTATOR_TEST_REDIS:-redis://127.0.0.1:6379}
scripts/build-deps.sh
scripts/kafka.sh "$port"
scripts/redis.sh
scripts/security-tools.sh
scripts/samples-deps.sh
scripts/deploy-tools.sh

scripts/check-deploy.sh
scripts/check-helm.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# Licences, banned duplicate majors, sources (deny.toml); cargo-deny reads the crates of
# every platform in the lock file, which a build on this one does not download.
cargo fetch --locked
cargo deny --offline check licenses bans sources
cargo test --all-targets --locked
if $long; then
  cargo test --locked --test cluster -- --ignored
  cargo test --locked --test halts -- --ignored
fi
