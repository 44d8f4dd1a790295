// Validates the custom resources of rendered manifests (a YAML stream on the command line)
// against the KEDA and Prometheus Operator CRD schemas of @kubernetes-models (installed in
// .tools/node by scripts/deploy-tools.sh). Prints each object checked; exits 1 on the first
// invalid one and on a custom resource of a kind it has no schema for.
"use strict";
const path = require("path");
const fs = require("fs");
const modules = path.join(__dirname, "..", "..", ".tools", "node", "node_modules");
const need = (name) => require(path.join(modules, name));
const yaml = need("js-yaml");
const models = {
  "keda.sh/v1alpha1/ScaledObject": () => need("@kubernetes-models/keda/keda.sh/v1alpha1/ScaledObject").ScaledObject,
  "keda.sh/v1alpha1/TriggerAuthentication": () => need("@kubernetes-models/keda/keda.sh/v1alpha1/TriggerAuthentication").TriggerAuthentication,
  "monitoring.coreos.com/v1/ServiceMonitor": () => need("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/ServiceMonitor").ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": () => need("@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1/PrometheusRule").PrometheusRule,
};
let checked = 0;
for (const file of process.argv.slice(2)) {
  for (const doc of yaml.loadAll(fs.readFileSync(file, "utf8"))) {
    if (!doc || !doc.apiVersion) continue;
    const group = doc.apiVersion.split("/")[0];
    if (!group.includes(".") || group.endsWith(".k8s.io")) continue; // the core API's: kubernetes-validate
    const key = `${doc.apiVersion}/${doc.kind}`;
    const model = models[key];
    if (!model) {
      console.error(`${file}: ${key} ${doc.metadata.name}: no schema to check it against`);
      process.exit(1);
    }
    const Model = model();
    try {
      new Model(doc).validate();
    } catch (e) {
      console.error(`${file}: ${key} ${doc.metadata.name}: ${e.message}`);
      process.exit(1);
    }
    console.log(`${file}: ${key} ${doc.metadata.name}: valid`);
    checked += 1;
  }
}
if (checked === 0) {
  console.log("no custom resources rendered");
}
