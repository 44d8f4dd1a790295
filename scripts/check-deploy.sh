#!/usr/bin/env bash
# Checks what cannot run here (no Docker engine): Prometheus rules and config with promtool
# (installed from Debian's packages when missing), docker-compose.yml, the dashboard, the
# Grafana provisioning files and the sample events as YAML/JSON, with the services and
# files they refer to.
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
if ! command -v promtool >/dev/null 2>&1; then
  # The package would start a Prometheus server of its own: policy-rc.d (Debian's way)
  # refuses every service start while it installs, so nothing is started and nothing has
  # to be stopped (a Prometheus this script did not start is never touched).
  added_policy=false
  if [ ! -e /usr/sbin/policy-rc.d ]; then
    printf '#!/bin/sh\nexit 101\n' > /usr/sbin/policy-rc.d
    chmod +x /usr/sbin/policy-rc.d
    added_policy=true
  fi
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends prometheus >/dev/null
  if $added_policy; then rm -f /usr/sbin/policy-rc.d; fi
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
named_volumes = compose.get("volumes") or {}
for name in ["kafka", "redis", "sandbox", "annotator", "prometheus", "topics", "producer", "grafana"]:
    assert name in services, f"service {name} missing"
for name, svc in services.items():
    for dep in (svc.get("depends_on") or {}):
        assert dep in services, f"{name} depends on unknown {dep}"
    for vol in svc.get("volumes", []):
        src = vol.split(":")[0]
        if not src.startswith((".", "/")):
            assert src in named_volumes, f"{name}: volume {src} is not declared"
            continue
        assert os.path.exists(src), f"{name}: {src} missing"
assert services["kafka"]["image"].startswith("apache/kafka:")
assert services["grafana"]["image"].startswith("grafana/grafana:")
json.load(open("deploy/grafana-dashboard.json"))
# Grafana provisioning: valid YAML, the data source is the compose Prometheus, and the
# dashboard provider reads the folder the dashboard is mounted in.
datasources = yaml.safe_load(open("deploy/grafana/provisioning/datasources/prometheus.yml"))
prometheus = [d for d in datasources["datasources"] if d["type"] == "prometheus"]
assert len(prometheus) == 1 and prometheus[0]["url"] == "http://prometheus:9090", prometheus
assert prometheus[0].get("uid"), "the provisioned data source has no fixed uid"
providers = yaml.safe_load(open("deploy/grafana/provisioning/dashboards/dashboards.yml"))
paths = [p["options"]["path"] for p in providers["providers"]]
mounted = [v.split(":")[1] for v in services["grafana"].get("volumes", [])]
assert any(m.startswith(p.rstrip("/") + "/") for p in paths for m in mounted
           if m.endswith(".json")), f"no dashboard mounted under {paths}"
# The producer's samples: one JSON object per line.
for path in sorted(os.listdir("deploy/sample-events")):
    if path.endswith(".jsonl"):
        with open(os.path.join("deploy/sample-events", path)) as lines:
            for n, line in enumerate(lines, 1):
                if line.strip():
                    assert isinstance(json.loads(line), dict), f"{path}:{n}: not an object"
print("docker-compose.yml, dashboard, Grafana provisioning and sample events: ok")
PY
