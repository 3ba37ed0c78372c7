// Charts: uPlot (vendored, the global `uPlot`) for lines and bars, canvas for heatmaps.
// Log axes draw values that are exactly 0 on a marked floor instead of dropping them;
// linear axes label every tick distinctly; reference lines (chance level) via a hook.
import { h, num, fmt, fmtSci, viridis, COLORS, download, toCsv } from "./util.js";

const plotWidth = (el) => Math.max(240, el.clientWidth);

export function panel(title, testid, note, extraClass) {
  const body = h("div", { class: "plot", "data-testid": testid });
  const noteEl = h("p", { class: "note", "data-testid": `${testid}-note`, text: note || "" });
  const tools = h("div", { class: "panel-tools", "data-testid": `${testid}-tools` });
  const el = h("section", { class: `panel ${extraClass || ""}` },
    h("div", { class: "panel-head" }, h("h3", { text: title }), tools), noteEl, body);
  return { el, body, noteEl, tools };
}

// Create the plot, or feed new data to the existing one when its series are the same.
export function drawPlot(ctx, el, opts, data) {
  const key = el.dataset.testid;
  const height = opts.height || 240;
  const existing = ctx.plots.get(key);
  const signature = JSON.stringify([opts.series.map((s) => s.label || ""), opts.signature || ""]);
  if (existing && existing.signature === signature) {
    existing.plot.setData(data);
    return existing.plot;
  }
  if (existing) existing.plot.destroy();
  el.replaceChildren();
  const plot = new uPlot({ ...opts, width: plotWidth(el), height }, data, el);
  ctx.plots.set(key, { plot, el, height, signature });
  return plot;
}

export function dropPlot(ctx, el) {
  const existing = ctx.plots.get(el.dataset.testid);
  if (existing) existing.plot.destroy();
  ctx.plots.delete(el.dataset.testid);
}

export function emptyPlot(ctx, el, message) {
  dropPlot(ctx, el);
  el.replaceChildren(h("p", { class: "empty", text: message }));
}

// Export buttons for the series a panel shows: columns and rows come from `get()`.
export function exportButtons(tools, name, get) {
  const csv = () => {
    const { columns, rows } = get();
    download(`${name}.csv`, toCsv(columns, rows), "text/csv");
  };
  const json = () => {
    const { columns, rows } = get();
    const objects = rows.map((r) => Object.fromEntries(columns.map((c, i) => [c, r[i] ?? null])));
    download(`${name}.json`, JSON.stringify(objects, null, 1), "application/json");
  };
  tools.replaceChildren(
    h("button", { class: "tool", type: "button", "data-testid": `export-csv-${name}`, onclick: csv, text: "CSV" }),
    h("button", { class: "tool", type: "button", "data-testid": `export-json-${name}`, onclick: json, text: "JSON" }),
  );
}

// Columns and rows of a uPlot data array (x first), for exportButtons.
export function tableOf(labels, data) {
  const rows = data[0].map((_, i) => data.map((col) => col[i]));
  return { columns: labels, rows };
}

// --- axes ----------------------------------------------------------------------------

// A log scale cannot show 0: zeros are drawn one decade below the smallest positive
// value, on a floor line labelled "0".
export function logFloor(values) {
  let min = Infinity;
  for (const v of values) if (v != null && v > 0 && v < min) min = v;
  return Number.isFinite(min) ? 10 ** (Math.floor(Math.log10(min)) - 1) : null;
}

export const onFloor = (v, floor) => {
  const n = num(v);
  if (n == null || n < 0) return null;
  return n === 0 ? floor : n;
};

// Log axes: one label per decade (or every few decades), only inside the range.
function logSplits(floor) {
  return (_u, _axis, min, max) => {
    if (!(min > 0) || !(max > 0)) return [];
    const inside = (v) => v >= min * 0.999 && v <= max * 1.001;
    const lo = Math.floor(Math.log10(min));
    const hi = Math.ceil(Math.log10(max));
    const step = Math.max(1, Math.ceil((hi - lo) / 6));
    const decades = [];
    for (let e = hi; e >= lo; e -= step) decades.unshift(10 ** e);
    let kept = decades.filter(inside);
    if (kept.length < 2) {
      kept = [];
      for (let e = lo; e <= hi; e++) for (const m of [1, 2, 5]) if (inside(m * 10 ** e)) kept.push(m * 10 ** e);
    }
    if (floor != null && inside(floor) && !kept.includes(floor)) kept.unshift(floor);
    return kept;
  };
}

function logRange(floor) {
  return (_u, min, max) => {
    if (!(min > 0) || !(max > 0)) return [1e-3, 1];
    const lo = Math.floor(Math.log10(floor != null ? Math.min(min, floor) : min) - 0.15);
    const hi = Math.max(lo + 1, Math.ceil(Math.log10(max) + 0.05));
    return [10 ** lo, 10 ** hi];
  };
}

export const logScale = (floor) => ({ distr: 3, range: logRange(floor) });

export const logAxis = (label, floor, extra) => ({
  label,
  splits: logSplits(floor),
  filter: (_u, splits) => splits, // uPlot's log filter would drop most decade labels
  values: (_u, vals) => vals.map((v) => (v == null ? "" : floor != null && Math.abs(v - floor) < floor * 1e-9 ? "0" : fmtSci(v))),
  size: 60,
  ...extra,
});

// Linear axes: labels with just enough decimals that no two ticks read the same (a flat
// loss curve once showed 2.304, 2.304, 2.303).
export function distinctValues(suffix = "", scale = 1) {
  return (_u, vals) => {
    const finite = vals.filter((v) => v != null);
    if (finite.length < 2) return vals.map((v) => (v == null ? "" : `${fmt(v * scale)}${suffix}`));
    let step = Infinity;
    for (let i = 1; i < finite.length; i++) step = Math.min(step, Math.abs(finite[i] - finite[i - 1]) * scale);
    const decimals = Math.min(8, Math.max(0, Math.ceil(-Math.log10(step)) + (step < 1 ? 0 : 0)));
    return vals.map((v) => (v == null ? "" : `${(v * scale).toFixed(decimals)}${suffix}`));
  };
}

export const axis = (label, extra) => ({ label, size: 54, values: distinctValues(), ...extra });
export const STEP_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6];

// Horizontal reference lines, e.g. {value: 2.3026, label: "chance", scale: "y"}.
export function referenceLines(lines) {
  return {
    draw: [(u) => {
      const g = u.ctx;
      for (const line of lines) {
        if (line.value == null) continue;
        const scale = line.scale || "y";
        const y = Math.round(u.valToPos(line.value, scale, true));
        if (y < u.bbox.top || y > u.bbox.top + u.bbox.height) continue;
        g.save();
        g.strokeStyle = line.color || COLORS.chance;
        g.setLineDash(line.dash || [4, 4]);
        g.lineWidth = (line.width || 1.2) * devicePixelRatio;
        g.beginPath();
        g.moveTo(u.bbox.left, y);
        g.lineTo(u.bbox.left + u.bbox.width, y);
        g.stroke();
        g.setLineDash([]);
        g.fillStyle = line.color || COLORS.chance;
        g.font = `${11 * devicePixelRatio}px system-ui, sans-serif`;
        g.textAlign = "right";
        g.fillText(line.label, u.bbox.left + u.bbox.width - 4 * devicePixelRatio, y - 4 * devicePixelRatio);
        g.restore();
      }
    }],
  };
}

// --- heatmaps ------------------------------------------------------------------------

// A matrix as coloured cells on a log colour scale: rows (bottom = first) x columns.
// Cells that are exactly 0 get the marked floor colour, missing ones grey.
export function drawHeatmap(el, { matrix, rowLabels, colLabels, xLabel, yLabel, legend, testid }) {
  const rows = matrix.length;
  const cols = rows ? matrix[0].length : 0;
  const labelWidth = Math.min(170, 12 + 6.5 * Math.max(...rowLabels.map((l) => l.length), 4));
  const pad = { l: labelWidth, b: 38, t: 8, r: 92 };
  const width = Math.max(320, el.clientWidth);
  const cellH = Math.max(6, Math.min(22, 360 / Math.max(rows, 1)));
  const plotW = width - pad.l - pad.r;
  const plotH = cellH * rows;
  const dpr = window.devicePixelRatio || 1;
  const canvas = h("canvas", { "data-testid": testid });
  const hgt = pad.t + plotH + pad.b;
  canvas.width = width * dpr;
  canvas.height = hgt * dpr;
  canvas.style.width = `${width}px`;
  canvas.style.height = `${hgt}px`;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  const logs = matrix.flat().filter((v) => v != null && v > 0).map(Math.log10);
  const lo = logs.length ? Math.min(...logs) : 0;
  const hi = logs.length ? Math.max(...logs) : 1;
  const cellW = plotW / Math.max(cols, 1);
  let zeros = 0;
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) {
      const v = matrix[r][c];
      if (v === 0) zeros++;
      g.fillStyle = v == null ? "#e5e7eb" : v === 0 ? COLORS.zero : viridis(hi > lo ? (Math.log10(v) - lo) / (hi - lo) : 0.5);
      g.fillRect(pad.l + c * cellW, pad.t + (rows - 1 - r) * cellH, Math.ceil(cellW), Math.ceil(cellH));
    }
  }
  g.fillStyle = "#374151";
  g.font = "11px system-ui, sans-serif";
  g.textAlign = "right";
  g.textBaseline = "middle";
  const every = Math.ceil(rows / Math.max(1, Math.floor(plotH / 12)));
  for (let r = 0; r < rows; r += every) {
    g.fillText(rowLabels[r], pad.l - 6, pad.t + (rows - 1 - r + 0.5) * cellH);
  }
  g.textAlign = "center";
  g.textBaseline = "alphabetic";
  const ticks = Math.min(cols, 8);
  for (let k = 0; k < ticks; k++) {
    const c = ticks === 1 ? 0 : Math.round((k * (cols - 1)) / (ticks - 1));
    g.fillText(String(colLabels[c]), pad.l + (c + 0.5) * cellW, pad.t + plotH + 14);
  }
  g.fillText(xLabel, pad.l + plotW / 2, pad.t + plotH + 30);
  g.save();
  g.translate(10, pad.t + plotH / 2);
  g.rotate(-Math.PI / 2);
  g.fillText(yLabel, 0, 0);
  g.restore();
  // colour bar
  const bx = width - pad.r + 14;
  const barH = Math.max(plotH, 60);
  for (let k = 0; k < barH; k++) {
    g.fillStyle = viridis(1 - k / barH);
    g.fillRect(bx, pad.t + k, 12, 1.5);
  }
  g.textAlign = "left";
  g.fillStyle = "#374151";
  g.fillText(fmtSci(10 ** hi), bx + 16, pad.t + 10);
  g.fillText(fmtSci(10 ** lo), bx + 16, pad.t + barH);
  g.fillText(legend, bx + 16, pad.t + barH / 2);
  if (zeros) {
    g.fillStyle = COLORS.zero;
    g.fillRect(bx, pad.t + barH + 8, 12, 10);
    g.fillStyle = "#374151";
    g.fillText("= 0", bx + 16, pad.t + barH + 17);
  }
  el.replaceChildren(canvas);
}

// A gradient histogram: counts per bin between lo and hi, as bars on a canvas.
export function drawHistogram(el, hist, testid) {
  const width = Math.max(260, el.clientWidth);
  const height = 150;
  const dpr = window.devicePixelRatio || 1;
  const canvas = h("canvas", { "data-testid": testid });
  canvas.width = width * dpr;
  canvas.height = height * dpr;
  canvas.style.width = `${width}px`;
  canvas.style.height = `${height}px`;
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  const pad = { l: 8, r: 8, t: 6, b: 30 };
  const counts = hist.counts;
  const peak = Math.max(1, ...counts);
  const bw = (width - pad.l - pad.r) / Math.max(1, counts.length);
  g.fillStyle = COLORS.bar;
  counts.forEach((c, i) => {
    const bh = ((height - pad.t - pad.b) * Math.sqrt(c)) / Math.sqrt(peak); // sqrt: tails stay visible
    g.fillRect(pad.l + i * bw, height - pad.b - bh, Math.max(1, bw - 1), bh);
  });
  g.fillStyle = "#374151";
  g.font = "11px system-ui, sans-serif";
  g.textAlign = "left";
  g.fillText(fmtSci(num(hist.lo)), pad.l, height - pad.b + 14);
  g.textAlign = "right";
  g.fillText(fmtSci(num(hist.hi)), width - pad.r, height - pad.b + 14);
  g.textAlign = "center";
  g.fillText(`gradient value (step ${hist.step}; bar height: √count)`, width / 2, height - 4);
  el.replaceChildren(canvas);
}
