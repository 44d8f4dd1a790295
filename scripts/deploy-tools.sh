#!/usr/bin/env bash
# The tools scripts/check-helm.sh needs, installed once into the ignored .tools/ and reused:
#   helm 4.3.2            from the Go module proxy (go install; about 4 minutes once)
#   kubernetes-validate   from PyPI, in a virtualenv: the Kubernetes API's JSON schemas
#   @kubernetes-models/keda, @kubernetes-models/prometheus-operator
#                         from npm: the KEDA and Prometheus Operator CRDs' schemas
#   chromium, tmux        from Debian: the /status page's browser test, top's terminal test
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
tools="$root/.tools"
mkdir -p "$tools"

if [ ! -x "$tools/go/bin/helm" ]; then
  echo "installing helm v4.3.2 from the Go module proxy (once)" >&2
  GOBIN="$tools/go/bin" GOFLAGS=-mod=mod go install helm.sh/helm/v4/cmd/helm@v4.3.2 >&2
fi

if [ ! -x "$tools/venv/bin/kubernetes-validate" ]; then
  echo "installing kubernetes-validate from PyPI (once)" >&2
  python3 -m venv "$tools/venv" >&2
  "$tools/venv/bin/pip" install --quiet kubernetes-validate==1.37.0 >&2
fi

if [ ! -d "$tools/node/node_modules/@kubernetes-models/keda" ]; then
  echo "installing the KEDA and Prometheus Operator models from npm (once)" >&2
  mkdir -p "$tools/node"
  (cd "$tools/node" && npm install --silent --no-audit --no-fund \
    @kubernetes-models/keda@2.0.0 @kubernetes-models/prometheus-operator@6.0.0 js-yaml@4 >&2)
fi

missing=()
command -v chromium >/dev/null 2>&1 || missing+=(chromium)
command -v tmux >/dev/null 2>&1 || missing+=(tmux)
if [ ${#missing[@]} -gt 0 ]; then
  echo "installing ${missing[*]} from Debian (once)" >&2
  apt-get update -qq >&2
  DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >&2
fi
