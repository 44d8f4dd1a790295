#!/usr/bin/env bash
# The whole test suite on a clean machine: starts what the tests need (the Tansu broker,
# Redis if none answers), then fmt, clippy and every test against the real components.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

port=${TANSU_PORT:-9092}
export ANNOTATOR_TEST_BROKERS=${ANNOTATOR_TEST_BROKERS:-127.0.0.1:$port}
export ANNOTATOR_TEST_REDIS=${ANNOTATOR_TEST_REDIS:-redis://127.0.0.1:6379}
scripts/build-deps.sh
scripts/tansu.sh "$port"
scripts/redis.sh

scripts/check-deploy.sh
cargo fmt --all -- --check
cargo clippy --all-targets --locked -- -D warnings
cargo test --all-targets --locked
