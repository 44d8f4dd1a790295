#!/usr/bin/env bash
# Local stack: the Tansu broker on loopback (fetched into .tools/) and the configured topics.
#   scripts/stack.sh [--config FILE] [--partitions N]
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/tansu.sh "${TANSU_PORT:-9092}"
export ANNOTATOR__KAFKA__BROKERS=${ANNOTATOR__KAFKA__BROKERS:-127.0.0.1:${TANSU_PORT:-9092}}
cargo run --locked --quiet -- create-topics "$@"
