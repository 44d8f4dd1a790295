#!/usr/bin/env bash
# The Helm chart, offline: helm lint; helm template under the default values and under
# deploy/helm/full-values.yaml (every option on); every rendered object validated against
# the Kubernetes API's schemas (kubernetes-validate) and the KEDA and Prometheus Operator
# CRDs' (@kubernetes-models); the service's config in the ConfigMap parsed; the chart's
# refusals (more replicas than partitions, a grace period not longer than the shutdown).
set -euo pipefail
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"
scripts/deploy-tools.sh
helm=.tools/go/bin/helm
chart=deploy/helm/recaptcha-annotator
full=deploy/helm/full-values.yaml
kube_version=1.31.0
out=$(mktemp -d)
trap 'rm -rf "$out"' EXIT

"$helm" lint --strict "$chart"
"$helm" lint --strict "$chart" -f "$full"
"$helm" template annotator "$chart" --kube-version "$kube_version" > "$out/default.yaml"
"$helm" template annotator "$chart" --kube-version "$kube_version" -f "$full" > "$out/full.yaml"

for name in default full; do
  # The core objects against the API's schemas; the custom resources below.
  python3 - "$out/$name.yaml" "$out/core-$name.yaml" <<'PY'
import sys, yaml
docs = [d for d in yaml.safe_load_all(open(sys.argv[1])) if d]
core = [d for d in docs if "." not in d["apiVersion"].split("/")[0] or "/" not in d["apiVersion"]
        or d["apiVersion"].split("/")[0].endswith(".k8s.io")]
yaml.safe_dump_all(core, open(sys.argv[2], "w"))
PY
  .tools/venv/bin/kubernetes-validate --strict --kubernetes-version "$kube_version" "$out/core-$name.yaml"
done
node scripts/helm/validate-crds.js "$out/default.yaml" "$out/full.yaml"

python3 - "$out/default.yaml" "$out/full.yaml" <<'PY'
import sys, tomllib, yaml
for path in sys.argv[1:]:
    docs = [d for d in yaml.safe_load_all(open(path)) if d]
    kinds = sorted(d["kind"] for d in docs)
    config = next(d for d in docs if d["kind"] == "ConfigMap")["data"]["config.toml"]
    parsed = tomllib.loads(config)
    assert parsed["admin"]["listen"] == "0.0.0.0:9464", parsed["admin"]
    deployment = next(d for d in docs if d["kind"] == "Deployment")
    pod = deployment["spec"]["template"]["spec"]
    container = pod["containers"][0]
    assert container["securityContext"]["readOnlyRootFilesystem"] is True
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert container["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert container["livenessProbe"]["httpGet"]["path"] == "/healthz"
    if path.endswith("full.yaml"):
        # Secrets are files named by their *_file keys, never values in the ConfigMap.
        assert parsed["recaptcha"]["api_key_file"].startswith("/var/run/secrets/"), parsed
        assert parsed["cache"]["redis_url_file"].startswith("/var/run/secrets/"), parsed
        assert parsed["kafka"]["properties"]["sasl.password_file"].startswith("/var/run/secrets/")
        assert "api_key" not in parsed["recaptcha"] and "redis_url" not in parsed["cache"]
        assert {"ScaledObject", "ServiceMonitor", "PrometheusRule"} <= set(kinds), kinds
        rule = next(d for d in docs if d["kind"] == "PrometheusRule")
        alerts = [r for g in rule["spec"]["groups"] for r in g["rules"]]
        assert all(a["annotations"]["runbook_url"].startswith("https://git.example.com/") for a in alerts)
    print(f"{path.rsplit('/', 1)[1]}: {', '.join(kinds)}; config.toml parses")
PY

# What the chart refuses.
if "$helm" template annotator "$chart" --set autoscaling.enabled=true \
    --set autoscaling.maxReplicaCount=7 --set partitions=6 > /dev/null 2> "$out/err"; then
  echo "more replicas than partitions was accepted" >&2; exit 1
fi
grep -q "maxReplicaCount (7) is above partitions (6)" "$out/err"
if "$helm" template annotator "$chart" --set terminationGracePeriodSeconds=30 > /dev/null 2> "$out/err"; then
  echo "a grace period no longer than delivery.shutdown_timeout was accepted" >&2; exit 1
fi
grep -q "must be longer than delivery.shutdown_timeout (30s)" "$out/err"
if "$helm" template annotator "$chart" --set config.recaptcha.api_key=inline > /dev/null 2> "$out/err"; then
  echo "an API key in the ConfigMap was accepted" >&2; exit 1
fi
echo "Helm chart: lint, templates, schemas and refusals ok"
