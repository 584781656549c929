// Validates custom resources against the prometheus-operator and KEDA models (their JSON schemas,
// generated from the operators' Go types): reads a JSON array of objects on stdin, prints a JSON
// array of {kind, name, status: "valid" | "invalid" | "unknown", error} on stdout.
import { PrometheusRule, ServiceMonitor } from "@kubernetes-models/prometheus-operator/monitoring.coreos.com/v1";
import { ScaledObject, TriggerAuthentication } from "@kubernetes-models/keda/keda.sh/v1alpha1";

const MODELS = {
  "monitoring.coreos.com/v1/ServiceMonitor": ServiceMonitor,
  "monitoring.coreos.com/v1/PrometheusRule": PrometheusRule,
  "keda.sh/v1alpha1/ScaledObject": ScaledObject,
  "keda.sh/v1alpha1/TriggerAuthentication": TriggerAuthentication,
};

let input = "";
for await (const chunk of process.stdin) input += chunk;

const results = JSON.parse(input).map((object) => {
  const Model = MODELS[`${object.apiVersion}/${object.kind}`];
  const result = { kind: object.kind, name: object.metadata?.name ?? "" };
  if (!Model) return { ...result, status: "unknown" };
  try {
    new Model(object).validate();
    return { ...result, status: "valid" };
  } catch (error) {
    return { ...result, status: "invalid", error: String(error.message ?? error) };
  }
});
process.stdout.write(JSON.stringify(results));
