#!/usr/bin/env bash
# End to end on the embedded defaults: local broker, sandbox endpoint, sample events for
# every rule; the service runs until all of them are committed and prints what it did.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/build-deps.sh
scripts/kafka.sh "${KAFKA_PORT:-9092}"
export ANNOTATOR__KAFKA__BROKERS=${ANNOTATOR__KAFKA__BROKERS:-127.0.0.1:${KAFKA_PORT:-9092}}
cargo run --locked --quiet -- demo "$@"
