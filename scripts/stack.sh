#!/usr/bin/env bash
# Local stack: Apache Kafka on loopback (scripts/kafka.sh) and the configured topics.
#   scripts/stack.sh [--config FILE] [--partitions N]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/kafka.sh "${KAFKA_PORT:-9092}"
export ANNOTATOR__KAFKA__BROKERS=${ANNOTATOR__KAFKA__BROKERS:-127.0.0.1:${KAFKA_PORT:-9092}}
# The installed binary (cargo install --path .), else the release build (built if absent).
if command -v recaptcha-annotator >/dev/null 2>&1; then
  bin=recaptcha-annotator
else
  [ -x target/release/recaptcha-annotator ] || cargo build --release --locked --quiet
  bin=target/release/recaptcha-annotator
fi
"$bin" create-topics "$@"
