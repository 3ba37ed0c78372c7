// #/jobs/<id>: one job: status and summary, diagnosis (with the suggested patch and a
// retry button), loss and accuracy with the chance level, the gradient-flow heatmap,
// per-layer lines (layer kinds filterable), the vanishing picture, activations, NaN/Inf
// counts, histograms and the loss landscape. Live over the job's event stream.
import { api, gradients, optional, post, ApiError } from "../api.js";
import { vocab, layerGroup, saturationName } from "../vocabulary.js";
import { h, num, fmt, fmtSci, pct, duration, ranges, layerColor, statusBadge, progressBar, COLORS } from "../util.js";
import {
  panel, drawPlot, emptyPlot, exportButtons, tableOf, logFloor, onFloor, logScale, logAxis,
  axis, distinctValues, STEP_INCRS, referenceLines, drawHeatmap, drawHistogram,
} from "../charts.js";

// About 4 px per point on a wide panel: each point keeps its bucket's min and max, so a
// spike or a NaN is not lost to the narrower chart.
const MAX_POINTS = 300;
// What the page draws over steps: the heatmap and lines (grad_norm, update_ratio), the
// NaN/Inf table. The activation statistics are drawn at one step only, so they are asked
// for at that step (ACTIVATION_STATS): on a 1 M-row job the nine statistics over steps
// were 8 MB of JSON and most of the page's load.
const STEP_STATS = ["grad_norm", "update_ratio", "nan_count", "inf_count"];
const ACTIVATION_STATS = ["act_saturation", "act_mean", "act_std", "preact_mean", "preact_std"];
const GROUPS = [
  ["weight", "weight layers"],
  ["norm", "norm layers"],
  ["other", "output & projection"],
];

export function renderJob(ctx, view, jobId) {
  const id = encodeURIComponent(jobId);
  const shown = new Set(["weight"]);
  const header = h("section", { class: "panel job-header", "data-testid": "job-header" });
  const findings = h("div", { class: "findings", "data-testid": "findings" });
  const layerFilter = h("div", { class: "layer-filter", "data-testid": "layer-filter" },
    h("span", { class: "muted small", text: "Layers shown: " }),
    GROUPS.map(([group, label]) => h("label", { class: "check" },
      h("input", { type: "checkbox", "data-testid": `layer-filter-${group}`, checked: shown.has(group),
        onchange: (e) => { if (e.target.checked) shown.add(group); else shown.delete(group); redraw(); } }),
      ` ${label}`)));
  const p = {
    loss: panel("Loss per epoch", "plot-loss", "train (solid) vs validation (dashed); dotted: chance level ln(classes)"),
    acc: panel("Accuracy per epoch", "plot-acc", "train (solid) vs validation (dashed); dotted: chance level 1/classes"),
    flow: panel("Gradient flow", "plot-gradient-flow", "‖∇W‖ per layer (rows, input at the bottom) and step (columns), log colour: a band that darkens towards the input is a vanishing gradient; red cells are exactly 0", "wide"),
    grad: panel("Gradient norm per layer", "plot-grad-norm", "‖∇W‖ over training steps, log scale; dark = input, orange = output, norm layers dashed; values exactly 0 sit on the floor marked 0", "wide"),
    vanish: panel("The vanishing picture", "plot-vanishing", "", "wide"),
    update: panel("Update ratio per layer", "plot-update-ratio", "‖ΔW‖ / ‖W‖ per step, log scale: around 1e-3 is healthy; far below, the layer is not learning", "wide"),
    act: panel("Activations by layer", "plot-activations", "at the latest recorded step: mean and std of each layer's outputs (act) and inputs to the activation (preact); batch norm keeps preact std near 1", "wide"),
    nonfinite: panel("NaN / Inf in gradients", "nonfinite", "non-finite gradient values counted per layer at the recorded steps"),
    hist: panel("Gradient histogram", "plot-histogram", ""),
    land: panel("Loss landscape", "plot-landscape", "", "wide"),
  };
  p.hist.el.hidden = true;
  p.land.el.hidden = true;
  p.land.el.dataset.testid = "landscape-panel";
  view.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs", text: "← all jobs" })),
    header,
    h("section", { class: "panel" }, h("h3", { text: "Diagnosis" }), findings),
    layerFilter,
    h("div", { class: "grid" }, p.loss.el, p.acc.el, p.flow.el, p.grad.el, p.vanish.el, p.update.el, p.act.el, p.nonfinite.el, p.hist.el, p.land.el),
  );

  let last = null; // the data of the latest load, for a redraw when the filter changes
  let landscapeDone = false;
  let histogramLayer = null;

  function redraw() {
    if (!last) return;
    const { layers, grads } = last;
    const kinds = new Map(layers.map((l) => [l.index, l.kind]));
    const series = grads.series.filter((s) => shown.has(layerGroup(kinds.get(s.layer_index) ?? s.kind)));
    renderFlow(p.flow, series);
    renderLayerLines(ctx, p.grad, series, "grad_norm", "grad norm");
    renderLayerLines(ctx, p.update, series, "update_ratio", "update ratio");
    renderVanishing(ctx, p.vanish, grads.series.filter((s) => layerGroup(s.kind) !== "norm"), layers);
    renderActivations(ctx, p.act, grads.series, layers);
  }

  // A refresh asks only for what can have changed since the last one: the layer table
  // once it is there (it never changes), the epoch metrics when an epoch ended, the
  // statistics and the diagnosis when training moved on. Every event of a running job
  // used to fetch all five.
  let fetched = null; // { status, epoch, step, metrics, layers, grads, diagnosis }
  async function load() {
    const job = await api(`/v1/jobs/${id}`);
    if (!ctx.alive) return false;
    const { epoch = null, step = null } = job.progress || {};
    const same = fetched && fetched.status === job.status;
    const [metrics, layers, grads, diagnosis] = await Promise.all([
      same && fetched.epoch === epoch ? fetched.metrics : api(`/v1/jobs/${id}/metrics`),
      fetched && fetched.layers.length ? fetched.layers : api(`/v1/jobs/${id}/layers`),
      same && fetched.step === step ? fetched.grads : statistics(id),
      same && fetched.step === step && fetched.epoch === epoch ? fetched.diagnosis : api(`/v1/jobs/${id}/diagnosis`),
    ]);
    if (!ctx.alive) return false;
    fetched = { status: job.status, epoch, step, metrics, layers, grads, diagnosis };
    const active = vocab.active.has(job.status);
    document.title = `${job.name || job.id} · trainlab`;
    const classes = outputClasses(layers);
    renderHeader(header, job, metrics);
    renderFindings(findings, diagnosis.findings, job);
    renderMetrics(ctx, p.loss, p.acc, metrics, classes);
    last = { layers, grads };
    redraw();
    renderNonFinite(p.nonfinite, grads.series);
    if ((job.spec.telemetry || {}).histogram_bins > 0) {
      p.hist.el.hidden = false;
      await renderHistograms(p.hist, id, layers, histogramLayer, (l) => { histogramLayer = l; load(); });
    }
    if (!active && !landscapeDone) {
      landscapeDone = true;
      const landscape = await optional(`/v1/jobs/${id}/landscape`);
      if (ctx.alive && landscape) renderLandscape(ctx, p.land, landscape);
    }
    return active;
  }

  ctx.live(`/v1/jobs/${id}/events`, load);
}

const statQuery = (stats) => stats.map((s) => `stat=${s}`).join("&");

// The statistics the page draws: STEP_STATS over steps, and ACTIVATION_STATS merged into
// the points where the vanishing picture and the activations panel read them: each
// layer's latest step, and its latest step with a finite gradient norm (on a diverged
// job, earlier: the picture shows the gradients before they went NaN). Each is one
// single-step read (one row per layer); there are two only when the job diverged.
async function statistics(id) {
  const grads = await gradients(`/v1/jobs/${id}/gradients?${statQuery(STEP_STATS)}&max_points=${MAX_POINTS}`);
  const wanted = new Set();
  for (const s of grads.series) {
    if (s.points.length) wanted.add(s.points[s.points.length - 1].step);
    const point = latestPoint(s, "grad_norm");
    if (point) wanted.add(point.step);
  }
  const atSteps = await Promise.all([...wanted].map((step) => gradients(
    `/v1/jobs/${id}/gradients?${statQuery(ACTIVATION_STATS)}&from_step=${step}&to_step=${step}&max_points=2`)));
  const byLayerStep = new Map();
  for (const answer of atSteps) {
    for (const s of answer.series) for (const point of s.points) byLayerStep.set(`${s.layer_index}:${point.step}`, point);
  }
  for (const s of grads.series) {
    for (const point of s.points) {
      const activations = byLayerStep.get(`${s.layer_index}:${point.step}`);
      if (activations) for (const stat of ACTIVATION_STATS) point[stat] = activations[stat];
    }
  }
  return grads;
}

function outputClasses(layers) {
  const outputs = layers.filter((l) => l.kind === "output" && l.shape && l.shape.length);
  const classes = outputs.length ? outputs[outputs.length - 1].shape[0] : 0;
  return classes >= 2 ? classes : null;
}

const layerLabel = (s) => `${s.layer_index} ${s.name}`;

// --- header and diagnosis ------------------------------------------------------------

function field(label, value, testid) {
  return h("div", { class: "field" },
    h("span", { class: "field-label", text: label }),
    h("span", { class: "field-value", "data-testid": testid, text: value ?? "—" }));
}

function specLine(spec) {
  const m = spec.model || {};
  const t = spec.train || {};
  const d = spec.data || {};
  const parts = [
    `${m.arch} depth ${m.depth} × width ${m.width}`,
    m.activation,
    m.norm !== "none" ? `${m.norm} norm` : null,
    m.skip ? "residual" : null,
    m.init !== "default" ? `${m.init} init` : null,
    m.dropout ? `dropout ${m.dropout}` : null,
    m.dropconnect ? `dropconnect ${m.dropconnect}` : null,
  ];
  const train = [`${t.optimizer} lr ${t.lr}`, `${t.epochs} epochs`, `batch ${t.batch_size}`,
    t.l1 ? `l1 ${t.l1}` : null, t.l2 ? `l2 ${t.l2}` : null];
  return `${d.dataset} · ${parts.filter(Boolean).join(", ")} · ${train.filter(Boolean).join(", ")}`;
}

function renderHeader(el, job, metrics) {
  const p = job.progress;
  // While running there is no result yet: the summary shows the latest epoch.
  const latest = metrics.length ? metrics[metrics.length - 1] : {};
  const r = job.result || latest;
  const source = job.result ? "" : metrics.length ? ` (epoch ${latest.epoch})` : "";
  el.replaceChildren(...[
    h("div", { class: "job-title" },
      h("h2", { "data-testid": "job-name", text: job.name || "(unnamed)" }),
      statusBadge(job.status, "job-status"),
      job.cancel_requested && vocab.active.has(job.status) ? h("span", { class: "tag", text: "cancel requested" }) : null,
      job.tags.map((t) => h("span", { class: "tag", text: t })),
      h("span", { class: "live-dot", title: "live updates", "data-testid": "live-indicator" })),
    h("p", { class: "muted mono small", "data-testid": "job-id", text: job.id }),
    job.parent_id ? h("p", { class: "small" }, "Retry of ",
      h("a", { href: `#/jobs/${encodeURIComponent(job.parent_id)}`, class: "mono", "data-testid": "job-parent", text: job.parent_id.slice(0, 12) }),
      " with a changed spec") : null,
    h("p", { class: "spec-line", "data-testid": "job-spec", text: specLine(job.spec) }),
    h("div", { class: "progress-row" },
      progressBar(p.fraction, "job-progress"),
      h("span", { class: "small", "data-testid": "job-progress-text",
        text: `${Math.round(p.fraction * 100)}% · epoch ${p.epoch}/${p.epochs} · step ${p.step}/${p.total_steps}` })),
    h("div", { class: "fields" },
      field(`train loss${source}`, fmt(r.train_loss), "job-train-loss"),
      field(`val loss${source}`, fmt(r.val_loss), "job-val-loss"),
      field(`train acc${source}`, r.train_acc == null ? "—" : pct(r.train_acc), "job-train-acc"),
      field(`val acc${source}`, r.val_acc == null ? "—" : pct(r.val_acc), "job-val-acc"),
      field("device", job.device || job.queue, "job-device"),
      field("worker", job.worker, "job-worker"),
      field("created", new Date(job.created_at).toLocaleString(), "job-created"),
      field("run time", duration(job.started_at, job.finished_at), "job-duration")),
    job.error ? h("pre", { class: "error-box", "data-testid": "job-error", text: job.error }) : null,
  ].filter(Boolean));
}

function patchText(patch) {
  return Object.entries(patch).map(([k, v]) => `${k}: ${JSON.stringify(v)}`).join(", ");
}

// POST /v1/jobs/{id}/retry-with {apply: "suggested"}: a new linked job with the
// diagnosis' patches applied; the page then follows the new job.
export function retryButton(jobId, testid = "retry-suggested") {
  const message = h("span", { class: "small muted", "data-testid": `${testid}-message` });
  const button = h("button", {
    class: "button primary", type: "button", "data-testid": testid, text: "Try the fix",
    title: "Run this job again with every finding's patch applied (a new job, linked to this one)",
    onclick: async (e) => {
      e.stopPropagation();
      button.disabled = true;
      message.textContent = "submitting…";
      try {
        const job = await post(`/v1/jobs/${encodeURIComponent(jobId)}/retry-with`, { apply: "suggested" });
        location.hash = `#/jobs/${encodeURIComponent(job.id)}`;
      } catch (err) {
        button.disabled = false;
        message.textContent = err instanceof ApiError && (err.status === 404 || err.status === 405)
          ? "This server has no retry-with endpoint yet."
          : `Retry failed: ${err.message}`;
      }
    },
  });
  return h("span", { class: "retry" }, button, " ", message);
}

function renderFindings(el, findings, job) {
  if (!findings.length) {
    let text;
    if (job.status === vocab.failed) text = `The job failed: ${job.error || "no error recorded"}`;
    else if (job.status === vocab.cancelled) text = "The job was cancelled before it finished; nothing found in what it recorded.";
    else if (job.status === vocab.initial) text = `No statistics yet: the job is ${job.status}.`;
    else if (vocab.active.has(job.status)) text = "No findings so far.";
    else text = "No problems found in the stored statistics.";
    el.replaceChildren(h("p", { class: job.status === vocab.failed ? "empty failed-note" : "empty", "data-testid": "no-findings", text }));
    return;
  }
  const patched = findings.filter((f) => f.suggested_spec_patch && Object.keys(f.suggested_spec_patch).length);
  el.replaceChildren(
    ...findings.map((f) => h(
      "article",
      { class: `finding severity-${f.severity}`, "data-testid": `finding-${f.code}` },
      h("div", { class: "finding-head" },
        h("span", { class: "finding-code", text: f.code.replaceAll("_", " ") }),
        h("span", { class: `severity severity-badge-${f.severity}`, text: f.severity })),
      h("p", { class: "finding-summary", text: f.summary }),
      f.layers.length ? h("p", { class: "small muted", text: `layers ${ranges(f.layers)}` }) : null,
      h("p", { class: "remedy" }, h("strong", { text: "Remedy: " }), f.remedy),
      f.suggested_spec_patch && Object.keys(f.suggested_spec_patch).length
        ? h("p", { class: "patch", "data-testid": `patch-${f.code}` }, h("strong", { text: "Patch: " }),
          h("code", { text: patchText(f.suggested_spec_patch) }))
        : null,
      h("dl", { class: "evidence" },
        Object.entries(f.evidence).map(([k, v]) => [h("dt", { text: k }), h("dd", { text: fmt(v) })])),
    )),
    ...(patched.length && !vocab.active.has(job.status) ? [h("div", { class: "retry-row" }, retryButton(job.id))] : []),
  );
}

// --- epoch metrics -------------------------------------------------------------------

function renderMetrics(ctx, lossPanel, accPanel, metrics, classes) {
  if (!metrics.length) {
    emptyPlot(ctx, lossPanel.body, "No finished epoch yet.");
    emptyPlot(ctx, accPanel.body, "No finished epoch yet.");
    return;
  }
  const epochs = metrics.map((m) => m.epoch);
  const col = (k) => metrics.map((m) => num(m[k]));
  const xAxis = axis("epoch", { incrs: [1, 2, 5, 10, 20, 50, 100, 200, 500, 1000], values: (_u, v) => v.map(String) });
  const pair = (label, unitFmt) => [
    { label: "epoch" },
    { label: `train ${label}`, stroke: COLORS.train, width: 2, points: { show: true, size: 6 }, value: (_u, v) => unitFmt(v) },
    { label: `val ${label}`, stroke: COLORS.val, width: 2, dash: [6, 4], points: { show: true, size: 6 }, value: (_u, v) => unitFmt(v) },
  ];
  const chanceLoss = classes ? Math.log(classes) : null;
  const lossData = [epochs, col("train_loss"), col("val_loss")];
  const lossValues = lossData.slice(1).flat().filter((v) => v != null);
  // Keep the chance level in view unless the loss is far below it.
  const lossRange = (_u, min, max) => {
    let lo = min;
    let hi = max;
    if (chanceLoss != null && chanceLoss <= max * 1.5) { lo = Math.min(lo, chanceLoss); hi = Math.max(hi, chanceLoss); }
    const pad = Math.max((hi - lo) * 0.08, Math.abs(hi) * 1e-3, 1e-6);
    return [lo - pad, hi + pad];
  };
  drawPlot(ctx, lossPanel.body, {
    scales: { x: { time: false }, y: { range: lossRange } },
    series: pair("loss", fmt),
    axes: [xAxis, axis("loss")],
    hooks: referenceLines([{ value: chanceLoss, label: `chance ${fmt(chanceLoss)}` }]),
    signature: String(lossValues.length > 0),
  }, lossData);
  exportButtons(lossPanel.tools, "loss", () => tableOf(["epoch", "train_loss", "val_loss"], lossData));
  const accData = [epochs, col("train_acc"), col("val_acc")];
  drawPlot(ctx, accPanel.body, {
    scales: { x: { time: false }, y: { range: [0, 1] } },
    series: pair("acc", pct),
    axes: [xAxis, axis("accuracy", { values: distinctValues("%", 100) })],
    hooks: referenceLines([{ value: classes ? 1 / classes : null, label: classes ? `chance ${pct(1 / classes)}` : "" }]),
  }, accData);
  exportButtons(accPanel.tools, "accuracy", () => tableOf(["epoch", "train_acc", "val_acc"], accData));
}

// --- per-layer statistics ------------------------------------------------------------

function alignedSteps(series) {
  const steps = [...new Set(series.flatMap((s) => s.points.map((p) => p.step)))].sort((a, b) => a - b);
  return { steps, at: new Map(steps.map((s, i) => [s, i])) };
}

function renderFlow(pnl, series) {
  const withData = series.filter((s) => s.points.some((p) => num(p.grad_norm) != null));
  if (!withData.length) {
    pnl.body.replaceChildren(h("p", { class: "empty", text: "No gradient statistics recorded yet." }));
    pnl.tools.replaceChildren();
    return;
  }
  const { steps, at } = alignedSteps(withData);
  const matrix = withData.map((s) => {
    const row = new Array(steps.length).fill(null);
    for (const p of s.points) row[at.get(p.step)] = num(p.grad_norm);
    return row;
  });
  drawHeatmap(pnl.body, {
    matrix, rowLabels: withData.map(layerLabel), colLabels: steps,
    xLabel: "training step", yLabel: "layer", legend: "‖∇W‖", testid: "gradient-flow-heatmap",
  });
  exportButtons(pnl.tools, "gradient-flow", () => ({
    columns: ["step", ...withData.map(layerLabel)],
    rows: steps.map((step, c) => [step, ...matrix.map((row) => row[c])]),
  }));
}

// One line per layer over steps, aligned on the union of their steps (gaps stay gaps).
function renderLayerLines(ctx, pnl, series, stat, label) {
  const withData = series.filter((s) => s.points.some((p) => num(p[stat]) != null));
  if (!withData.length) {
    emptyPlot(ctx, pnl.body, `No ${label} recorded yet.`);
    pnl.tools.replaceChildren();
    return;
  }
  const { steps, at } = alignedSteps(withData);
  const floor = logFloor(withData.flatMap((s) => s.points.map((p) => num(p[stat]))));
  const data = [steps, ...withData.map((s) => {
    const ys = new Array(steps.length).fill(null);
    for (const p of s.points) ys[at.get(p.step)] = onFloor(p[stat], floor);
    return ys;
  })];
  const n = withData.length;
  const hasZero = withData.some((s) => s.points.some((p) => num(p[stat]) === 0));
  drawPlot(ctx, pnl.body, {
    height: 300,
    scales: { x: { time: false }, y: logScale(hasZero ? floor : null) },
    series: [
      { label: "step" },
      ...withData.map((s, i) => ({
        label: layerLabel(s),
        stroke: layerColor(i, n),
        width: 1.5,
        dash: layerGroup(s.kind) === "norm" ? [5, 3] : undefined, // norm layers dashed
        spanGaps: true,
        points: { show: steps.length < 30, size: 4 },
        value: (_u, v) => (hasZero && v === floor ? "0" : fmtSci(v)),
      })),
    ],
    axes: [axis("step", { incrs: STEP_INCRS, values: (_u, v) => v.map(String) }), logAxis(label, hasZero ? floor : null)],
    hooks: referenceLines(hasZero ? [{ value: floor, label: "exactly 0", color: COLORS.zero, dash: [2, 3] }] : []),
    legend: { live: true },
    cursor: { focus: { prox: 16 } },
    focus: { alpha: 0.25 },
    signature: String(hasZero),
  }, data);
  exportButtons(pnl.tools, stat, () => ({
    columns: ["step", ...withData.map(layerLabel)],
    rows: steps.map((step, i) => [step, ...withData.map((s) => {
      const point = s.points.find((p) => p.step === step);
      return point ? point[stat] : null;
    })]),
  }));
}

function latestPoint(s, stat) {
  for (let k = s.points.length - 1; k >= 0; k--) if (num(s.points[k][stat]) != null) return s.points[k];
  return null;
}

// The lesson in one picture: gradient norm by depth at one step, and how many units sit
// at a bound (sigmoid/tanh: "saturated") or at 0 (ReLU: "units at 0").
function renderVanishing(ctx, pnl, series, layers) {
  const byIndex = new Map(layers.map((l) => [l.index, l]));
  const latest = series.map((s) => {
    const point = latestPoint(s, "grad_norm");
    if (!point) return null;
    const layer = byIndex.get(s.layer_index) || {};
    return { index: s.layer_index, name: s.name, step: point.step, g: num(point.grad_norm), sat: num(point.act_saturation), satName: saturationName(layer.activation) };
  }).filter(Boolean);
  if (!latest.length) {
    pnl.noteEl.textContent = "gradient norm by layer at the latest recorded step";
    emptyPlot(ctx, pnl.body, "No statistics recorded yet.");
    pnl.tools.replaceChildren();
    return;
  }
  const step = Math.max(...latest.map((l) => l.step));
  const first = latest[0];
  const last = latest[latest.length - 1];
  const names = [...new Set(latest.map((l) => l.satName).filter(Boolean))];
  const satLabel = names.length === 1 ? names[0] : names.length ? names.join(" / ") : "saturated";
  const ratio = last.g > 0 && first.g != null ? ` ‖∇W‖ of layer ${first.index} (${first.name}) is ${fmtSci(first.g / last.g)} × that of layer ${last.index} (${last.name}).` : "";
  pnl.noteEl.textContent = `Step ${step}.${ratio} Bars: gradient norm (log; 0 on the floor); line: ${satLabel} (right axis).`;
  const floor = logFloor(latest.map((l) => l.g));
  const hasZero = latest.some((l) => l.g === 0);
  const xs = latest.map((l) => l.index);
  const data = [xs, latest.map((l) => onFloor(l.g, floor)), latest.map((l) => (l.satName ? l.sat : null))];
  drawPlot(ctx, pnl.body, {
    height: 280,
    scales: { x: { time: false, range: [Math.min(...xs) - 0.6, Math.max(...xs) + 0.6] }, y: logScale(hasZero ? floor : null), sat: { range: [0, 1] } },
    series: [
      { label: "layer", value: (_u, v) => (v == null ? "" : `${v} ${(byIndex.get(v) || {}).name || ""}`) },
      { label: "grad norm", fill: "rgba(79,70,229,0.55)", stroke: COLORS.bar, width: 1,
        paths: uPlot.paths.bars({ size: [0.7, 40] }), points: { show: false }, value: (_u, v) => (hasZero && v === floor ? "0" : fmtSci(v)) },
      { label: satLabel, scale: "sat", stroke: satLabel === "units at 0" ? COLORS.dead : COLORS.sat, width: 2, spanGaps: true,
        points: { show: true, size: 6, fill: satLabel === "units at 0" ? COLORS.dead : COLORS.sat }, value: (_u, v) => pct(v) },
    ],
    axes: [
      axis("layer index (0 = input)", { incrs: [1, 2, 5, 10], values: (_u, vals) => vals.map((v) => String(v)) }),
      logAxis("grad norm", hasZero ? floor : null),
      axis(satLabel, { scale: "sat", side: 1, grid: { show: false }, values: distinctValues("%", 100) }),
    ],
    signature: satLabel + hasZero,
  }, data);
  exportButtons(pnl.tools, "vanishing", () => tableOf(["layer", "grad_norm", satLabel.replaceAll(" ", "_")], [xs, latest.map((l) => l.g), data[2]]));
}

function renderActivations(ctx, pnl, series, layers) {
  const byIndex = new Map(layers.map((l) => [l.index, l]));
  const rows = series.map((s) => {
    const point = latestPoint(s, "act_std") || latestPoint(s, "preact_std");
    return point ? { index: s.layer_index, name: s.name, point } : null;
  }).filter(Boolean);
  if (!rows.length) {
    emptyPlot(ctx, pnl.body, "No activation statistics recorded (telemetry.activations is off, or nothing yet).");
    pnl.tools.replaceChildren();
    return;
  }
  const xs = rows.map((r) => r.index);
  const keys = ["act_mean", "act_std", "preact_mean", "preact_std"];
  const colors = ["#0f766e", "#14b8a6", "#9333ea", "#c084fc"];
  const data = [xs, ...keys.map((k) => rows.map((r) => num(r.point[k])))];
  drawPlot(ctx, pnl.body, {
    height: 260,
    scales: { x: { time: false, range: [Math.min(...xs) - 0.5, Math.max(...xs) + 0.5] } },
    series: [
      { label: "layer", value: (_u, v) => (v == null ? "" : `${v} ${(byIndex.get(v) || {}).name || ""}`) },
      ...keys.map((k, i) => ({ label: k, stroke: colors[i], width: 2, dash: k.startsWith("pre") ? [5, 3] : undefined, spanGaps: true, points: { show: true, size: 5 }, value: (_u, v) => fmt(v) })),
    ],
    axes: [axis("layer index (0 = input)", { incrs: [1, 2, 5, 10], values: (_u, vals) => vals.map(String) }), axis("value")],
    hooks: referenceLines([{ value: 1, label: "std 1" }, { value: 0, label: "" }]),
  }, data);
  exportButtons(pnl.tools, "activations", () => tableOf(["layer", ...keys], data));
}

function renderNonFinite(pnl, series) {
  const rows = series.map((s) => {
    let steps = 0;
    let first = null;
    let nan = 0;
    let inf = 0;
    for (const p of s.points) {
      // A downsampled point stands for a bucket: its max, not its last value, says
      // whether any step in it counted a NaN or an Inf.
      const a = Math.max(num(p.nan_count) || 0, num(p.nan_count_max) || 0);
      const b = Math.max(num(p.inf_count) || 0, num(p.inf_count_max) || 0);
      if (a || b) {
        steps++;
        if (first == null) first = p.step;
        nan = Math.max(nan, a);
        inf = Math.max(inf, b);
      }
    }
    return { s, steps, first, nan, inf };
  }).filter((r) => r.steps);
  if (!rows.length) {
    const recorded = series.some((s) => s.points.length);
    pnl.body.replaceChildren(h("p", { class: recorded ? "ok-note" : "empty", "data-testid": "nonfinite-none",
      text: recorded ? "✓ None: every recorded gradient value is finite." : "No statistics recorded yet." }));
    return;
  }
  pnl.body.replaceChildren(h("table", { class: "table compact", "data-testid": "nonfinite-table" },
    h("thead", {}, h("tr", {}, ["layer", "steps with NaN/Inf", "first step", "max NaN", "max Inf"].map((t) => h("th", { text: t })))),
    h("tbody", {}, rows.map((r) => h("tr", {},
      h("td", { text: layerLabel(r.s) }), h("td", { class: "num", text: r.steps }), h("td", { class: "num", text: r.first }),
      h("td", { class: "num", text: fmt(r.nan) }), h("td", { class: "num", text: fmt(r.inf) }))))));
}

async function renderHistograms(pnl, id, layers, chosen, onChoose) {
  const weights = layers.filter((l) => layerGroup(l.kind) !== "norm");
  const layer = chosen ?? (weights.length ? weights[0].index : null);
  if (layer == null) return;
  const rows = await api(`/v1/jobs/${id}/histograms?layer=${layer}`);
  const select = h("select", { "data-testid": "histogram-layer", onchange: (e) => onChoose(Number(e.target.value)) },
    weights.map((l) => h("option", { value: l.index, text: `${l.index} ${l.name}`, selected: l.index === layer })));
  pnl.tools.replaceChildren(select);
  if (!rows.length) {
    pnl.body.replaceChildren(h("p", { class: "empty", text: "No histogram recorded yet for this layer." }));
    return;
  }
  const latest = rows[rows.length - 1];
  pnl.noteEl.textContent = `Gradient values of layer ${layer} at step ${latest.step} (${rows.length} histograms recorded).`;
  drawHistogram(pnl.body, latest, "histogram-canvas");
}

function renderLandscape(ctx, pnl, land) {
  pnl.el.hidden = false;
  const figures = `roughness ${fmt(land.roughness)} · sharpness ${fmt(land.sharpness)} · ` +
    `local minima ${land.local_minima} · ${land.examples} training examples`;
  if (land.dims === 1) {
    pnl.noteEl.textContent = `Loss along one filter-normalized direction through the trained weights (α = 0). ${figures}`;
    const ys = land.losses.map(num);
    const finite = ys.filter((v) => v != null && v > 0);
    const log = finite.length && Math.max(...finite) / Math.min(...finite) > 100;
    drawPlot(ctx, pnl.body, {
      height: 260,
      scales: { x: { time: false }, y: log ? logScale(null) : {} },
      series: [{ label: "α" }, { label: "loss", stroke: COLORS.val, width: 2, points: { show: true, size: 5 }, value: (_u, v) => fmt(v) }],
      axes: [axis("α (filter-norm units)"), log ? logAxis("loss", null) : axis("loss")],
    }, [land.alphas, log ? ys.map((v) => (v != null && v > 0 ? v : null)) : ys]);
    exportButtons(pnl.tools, "landscape", () => tableOf(["alpha", "loss"], [land.alphas, ys]));
    return;
  }
  pnl.noteEl.textContent = `Loss over two filter-normalized directions (colour: log loss; the trained weights are at the centre). ${figures}`;
  const n = land.alphas.length;
  // losses[i][j] at (alphas[i], alphas[j]): rows of the heatmap are the second direction.
  const matrix = Array.from({ length: n }, (_, j) => Array.from({ length: n }, (_, i) => num(land.losses[i][j])));
  drawHeatmap(pnl.body, {
    matrix, rowLabels: land.alphas.map((a) => fmt(a)), colLabels: land.alphas.map((a) => fmt(a)),
    xLabel: "α (direction 1)", yLabel: "β", legend: "loss", testid: "landscape-heatmap",
  });
  exportButtons(pnl.tools, "landscape", () => ({
    columns: ["alpha", "beta", "loss"],
    rows: land.alphas.flatMap((a, i) => land.alphas.map((b, j) => [a, b, land.losses[i][j]])),
  }));
}
