// The service's vocabulary (service/vocabulary.py), loaded once from
// /dashboard/vocabulary.json before the first view: statuses and kinds are spelled once,
// on the server.
export const vocab = {
  statuses: [],
  active: new Set(),
  initial: null,
  succeeded: null, // the one status whose findings decide "healthy"
  failed: null, // the status that carries an error
  cancelled: null,
  weightKinds: new Set(),
  normKinds: new Set(),
};

export async function loadVocabulary() {
  const response = await fetch("/dashboard/vocabulary.json");
  const v = await response.json();
  vocab.statuses = v.job_statuses;
  vocab.active = new Set(v.active_statuses);
  vocab.initial = v.initial_status;
  vocab.succeeded = v.success_status;
  vocab.failed = v.failure_status;
  vocab.cancelled = v.cancelled_status;
  vocab.weightKinds = new Set(v.weight_kinds);
  vocab.normKinds = new Set(v.norm_kinds);
}

// Layer groups the charts filter on: weight layers carry the gradient-flow story and are
// shown by default; norm layers and the rest (output, projection) can be added.
export function layerGroup(kind) {
  if (vocab.weightKinds.has(kind)) return "weight";
  if (vocab.normKinds.has(kind)) return "norm";
  return "other";
}

// What act_saturation counts for a layer's activation: units at a bound (sigmoid, tanh)
// or units exactly 0 (ReLU, which is not "saturation").
export function saturationName(activation) {
  if (activation === "sigmoid" || activation === "tanh") return "saturated";
  if (activation === "relu") return "units at 0";
  return null;
}
