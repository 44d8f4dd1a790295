#!/usr/bin/env bash
# Checks what cannot run here (no Docker engine): Prometheus rules and config with promtool
# (installed from Debian's packages when missing), docker-compose.yml and the dashboard as
# YAML/JSON with the services and files they refer to.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v promtool >/dev/null 2>&1; then
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  # The package starts a server we do not want.
  pkill -x prometheus 2>/dev/null || true
fi
promtool check rules deploy/alerts.yml
promtool test rules deploy/alerts.test.yml
promtool check config deploy/prometheus.yml
python3 - <<'PY'
import json, os, sys
try:
    import yaml
except ImportError:
    print("pyyaml missing: docker-compose.yml checked by the Rust test only")
    sys.exit(0)
compose = yaml.safe_load(open("docker-compose.yml"))
services = compose["services"]
for name in ["kafka", "redis", "sandbox", "annotator", "prometheus", "topics"]:
    assert name in services, f"service {name} missing"
for name, svc in services.items():
    for dep in (svc.get("depends_on") or {}):
        assert dep in services, f"{name} depends on unknown {dep}"
    for vol in svc.get("volumes", []):
        src = vol.split(":")[0]
        assert os.path.exists(src), f"{name}: {src} missing"
assert services["kafka"]["image"].startswith("apache/kafka:")
json.load(open("deploy/grafana-dashboard.json"))
print("docker-compose.yml and dashboard: ok")
PY
