#!/usr/bin/env bash
# What the sample producers need, installed once: a Python virtualenv in .tools/py with
# confluent-kafka (PyPI) and kafkajs in samples/node/node_modules (npm, from the lock file).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! .tools/py/bin/python -c "import confluent_kafka" 2>/dev/null; then
  echo "installing confluent-kafka into .tools/py (Python sample)" >&2
  python3 -m venv .tools/py
  .tools/py/bin/pip install --quiet -r samples/python/requirements.txt
fi
if [ ! -d samples/node/node_modules/kafkajs ]; then
  echo "installing kafkajs into samples/node (Node.js sample)" >&2
  (cd samples/node && npm ci --no-audit --no-fund --silent)
fi
