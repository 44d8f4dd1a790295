#!/usr/bin/env bash
# The whole test suite on a clean machine: starts what the tests need (Apache Kafka on
# loopback, Redis if none answers), then fmt, clippy and every test against the real
# components.
#
#   scripts/test.sh          the suite CI runs (fuzzing bounded to about a minute)
#   scripts/test.sh --long   the same, with the fuzzers run 25 times longer (about 20 minutes)
#                            and the three-broker failover tests (tests/suite/cluster.rs) and
#                            the chaos at the halt gates (tests/suite/halts.rs)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

# Cases per fuzz property (tests/suite/fuzz.rs, the config's environment layer).
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
# The deployment tools install once in the background while cargo builds: helm compiles
# from the Go module proxy (about 3 minutes, much of it downloads). At the lowest priority,
# so it takes the cores cargo leaves idle (its serial compiles and links) without slowing
# cargo. Nothing else here uses apt until it is done; the tests need its chromium and tmux.
mkdir -p .tools
nice -n 19 scripts/deploy-tools.sh >.tools/deploy-tools.log 2>&1 &
deploy_tools=$!

cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
# Licences, banned duplicate majors, sources (deny.toml); cargo-deny reads the crates of
# every platform in the lock file, which a build on this one does not download.
cargo fetch --locked
cargo deny --offline check licenses bans sources
cargo test --all-targets --locked --no-run

if ! wait "$deploy_tools"; then
  cat .tools/deploy-tools.log >&2
  echo "scripts/deploy-tools.sh failed (its output is above)" >&2
  exit 1
fi
scripts/check-deploy.sh
scripts/check-helm.sh
# The integration tests are one binary (tests/suite); most of their time is spent waiting
# on the broker, timers and child processes, so four run at once on two cores.
export RUST_TEST_THREADS=${RUST_TEST_THREADS:-4}
cargo test --all-targets --locked
if $long; then
  cargo test --locked --test suite -- --ignored cluster::
  cargo test --locked --test suite -- --ignored halts::
fi
