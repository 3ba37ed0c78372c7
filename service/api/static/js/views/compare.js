// #/compare?jobs=a,b,c&stat=grad_norm&layer=0: overlay two or more jobs: their loss and
// accuracy per epoch and one layer statistic per step, from GET /v1/compare.
import { api } from "../api.js";
import { vocab } from "../vocabulary.js";
import { h, num, fmt, fmtSci, pct, JOB_COLORS } from "../util.js";
import {
  panel, drawPlot, emptyPlot, exportButtons, tableOf, logFloor, onFloor, logScale, logAxis,
  axis, distinctValues, STEP_INCRS, referenceLines,
} from "../charts.js";

const STATS = ["grad_norm", "update_ratio", "weight_norm", "grad_abs_max", "grad_zero_frac", "act_saturation", "act_mean", "act_std", "preact_mean", "preact_std", "nan_count", "inf_count"];
const LOG_STATS = new Set(["grad_norm", "update_ratio", "weight_norm", "grad_abs_max"]);

export function renderCompare(ctx, view, params) {
  const ids = (params.get("jobs") || "").split(",").filter(Boolean);
  const stat = params.get("stat") || "grad_norm";
  const layer = params.get("layer") || "0";
  const go = (changes) => {
    const q = new URLSearchParams({ jobs: ids.join(","), stat, layer, ...changes });
    location.hash = `#/compare?${q}`;
  };
  const statSelect = h("select", { "data-testid": "compare-stat", onchange: (e) => go({ stat: e.target.value }) },
    STATS.map((s) => h("option", { value: s, text: s, selected: s === stat })));
  const layerInput = h("input", { class: "layer-input", "data-testid": "compare-layer", value: layer, size: 14,
    title: "layer index (0 = nearest the input) or module name", onchange: (e) => go({ layer: e.target.value.trim() || "0" }) });
  const jobsEl = h("div", { class: "compare-jobs", "data-testid": "compare-jobs" });
  const loss = panel("Loss per epoch", "plot-compare-loss", "validation (solid) and train (dashed) per job", "wide");
  const acc = panel("Validation accuracy per epoch", "plot-compare-acc", "");
  const layerPanel = panel(`Layer statistic`, "plot-compare-stat", "", "");
  view.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/jobs", text: "← all jobs" })),
    h("div", { class: "page-head" }, h("h2", { text: "Compare jobs" }),
      h("div", { class: "filters" }, h("label", { class: "filter" }, "Statistic ", statSelect), h("label", { class: "filter" }, "Layer ", layerInput))),
    h("section", { class: "panel" }, jobsEl),
    h("div", { class: "grid" }, loss.el, acc.el, layerPanel.el),
  );
  if (ids.length < 1) {
    jobsEl.replaceChildren(h("p", { class: "empty", text: "Select two or more jobs in the jobs list, then “Compare selected”." }));
    return;
  }
  const q = (extra) => `/v1/compare?jobs=${ids.map(encodeURIComponent).join(",")}&${extra}`;
  ctx.poll(async () => {
    const [trainLoss, valLoss, valAcc, layerStat] = await Promise.all([
      api(q("metric=train_loss")), api(q("metric=val_loss")), api(q("metric=val_acc")),
      api(q(`stat=${encodeURIComponent(stat)}&layer=${encodeURIComponent(layer)}&max_points=400`)),
    ]);
    if (!ctx.alive) return null;
    const jobs = valLoss.series;
    jobsEl.replaceChildren(h("ul", { class: "job-list" }, jobs.map((s, i) => h("li", { "data-testid": "compare-job" },
      h("span", { class: "swatch", style: `background:${JOB_COLORS[i % JOB_COLORS.length]}` }),
      h("a", { href: `#/jobs/${encodeURIComponent(s.job_id)}`, text: s.name || s.job_id.slice(0, 8) }),
      h("span", { class: "muted small mono", text: ` ${s.job_id.slice(0, 8)} · ${s.status}` }),
      " ",
      ids.length > 2 ? h("a", { class: "small", href: "#", text: "remove", onclick: (e) => { e.preventDefault(); location.hash = `#/compare?${new URLSearchParams({ jobs: ids.filter((x) => x !== s.job_id).join(","), stat, layer })}`; } }) : null))));
    renderEpochs(ctx, loss, [valLoss, trainLoss], "loss", fmt);
    renderEpochs(ctx, acc, [valAcc], "val acc", pct, true);
    layerPanel.el.querySelector("h3").textContent = `${stat} of layer ${layer}`;
    renderStat(ctx, layerPanel, layerStat, stat);
    const active = jobs.some((s) => vocab.active.has(s.status));
    return active ? 3000 : null;
  });
}

function color(i) {
  return JOB_COLORS[i % JOB_COLORS.length];
}

function renderEpochs(ctx, pnl, comparisons, label, unitFmt, percent) {
  const [main] = comparisons;
  if (!main.x.length) {
    emptyPlot(ctx, pnl.body, "No finished epoch yet.");
    return;
  }
  // Align every comparison on the first one's epochs (the same jobs, the same epochs).
  const x = main.x;
  const series = [{ label: "epoch" }];
  const data = [x];
  const columns = ["epoch"];
  comparisons.forEach((c, k) => {
    c.series.forEach((s, i) => {
      const at = new Map(c.x.map((e, j) => [e, j]));
      data.push(x.map((e) => (at.has(e) ? num(s.values[at.get(e)]) : null)));
      const name = `${s.name || s.job_id.slice(0, 8)} ${c.quantity}`;
      columns.push(`${s.job_id}:${c.quantity}`);
      series.push({ label: name, stroke: color(i), width: 2, dash: k ? [6, 4] : undefined, spanGaps: true, points: { show: x.length < 40, size: 5 }, value: (_u, v) => unitFmt(v) });
    });
  });
  drawPlot(ctx, pnl.body, {
    height: 280,
    scales: { x: { time: false }, y: percent ? { range: [0, 1] } : {} },
    series,
    axes: [axis("epoch", { incrs: [1, 2, 5, 10, 20, 50, 100], values: (_u, v) => v.map(String) }), percent ? axis(label, { values: distinctValues("%", 100) }) : axis(label)],
  }, data);
  exportButtons(pnl.tools, `compare-${label.replaceAll(" ", "-")}`, () => tableOf(columns, data));
}

function renderStat(ctx, pnl, body, stat) {
  const withData = body.series.filter((s) => s.values.some((v) => num(v) != null));
  if (!withData.length) {
    emptyPlot(ctx, pnl.body, `No ${stat} recorded for layer ${body.layer} in these jobs.`);
    pnl.tools.replaceChildren();
    return;
  }
  const log = LOG_STATS.has(stat);
  const floor = log ? logFloor(body.series.flatMap((s) => s.values.map(num))) : null;
  const hasZero = log && body.series.some((s) => s.values.some((v) => num(v) === 0));
  const names = [...new Set(body.series.map((s) => s.layer_name ?? "no such layer"))];
  pnl.noteEl.textContent = names.length === 1
    ? `layer ${body.layer} is ${names[0]} in every job`
    : body.series.map((s) => `${s.job_id.slice(0, 8)}: ${s.layer_name ?? "no such layer"}`).join(" · ");
  const data = [body.x, ...body.series.map((s) => s.values.map((v) => (log ? onFloor(v, floor) : num(v))))];
  drawPlot(ctx, pnl.body, {
    height: 280,
    scales: { x: { time: false }, y: log ? logScale(hasZero ? floor : null) : {} },
    series: [{ label: "step" }, ...body.series.map((s, i) => ({
      label: s.name || s.job_id.slice(0, 8), stroke: color(i), width: 1.8, spanGaps: true,
      value: (_u, v) => (hasZero && v === floor ? "0" : log ? fmtSci(v) : fmt(v)),
    }))],
    axes: [axis("step", { incrs: STEP_INCRS, values: (_u, v) => v.map(String) }), log ? logAxis(stat, hasZero ? floor : null) : axis(stat)],
    hooks: referenceLines(hasZero ? [{ value: floor, label: "exactly 0", color: "#ef4444", dash: [2, 3] }] : []),
    signature: `${stat}${hasZero}`,
  }, data);
  exportButtons(pnl.tools, `compare-${stat}`, () => tableOf(["step", ...body.series.map((s) => s.job_id)], [body.x, ...body.series.map((s) => s.values)]));
}
