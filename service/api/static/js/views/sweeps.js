// #/sweeps and #/sweeps/<id>: a sweep's grid points side by side. Each row shows what the
// diagnosis found as coloured chips and two sparklines, the gradient norm by depth (red
// bars: vanished) and train vs validation loss (a widening gap: overfitting), so a sweep
// reads without a number. Live over the sweep's event stream.
import { api, gradients, mapLimit, POLL_MS, IDLE_POLL_MS } from "../api.js";
import { vocab, layerGroup } from "../vocabulary.js";
import { h, num, fmt, pct, when, statusBadge, progressBar, findingChip, healthyChip, COLORS } from "../util.js";
import { retryButton } from "./job.js";

const VANISHED_RATIO = 1e-3; // as the diagnosis: a layer this far below the last one
const SPARK = { w: 120, h: 30 };

export function renderSweeps(ctx, view) {
  const tbody = h("tbody", { "data-testid": "sweeps-body" });
  view.replaceChildren(
    h("div", { class: "page-head" }, h("h2", { text: "Sweeps" })),
    h("table", { class: "table", "data-testid": "sweeps-table" },
      h("thead", {}, h("tr", {}, ["Name", "Grid", "Points", "Jobs by status", "Created"].map((t) => h("th", { text: t })))),
      tbody),
  );
  ctx.poll(async () => {
    const page = await api("/v1/sweeps?limit=100");
    if (!ctx.alive) return null;
    tbody.replaceChildren(...page.items.map((s) => {
      const href = `#/sweeps/${encodeURIComponent(s.id)}`;
      return h("tr", { class: "clickable", "data-testid": "sweep-row", "data-sweep-id": s.id, onclick: (e) => { if (e.target.tagName !== "A") location.hash = href; } },
        h("td", {}, h("a", { href, "data-testid": "sweep-link", text: s.name || s.id.slice(0, 8) })),
        h("td", { class: "small", text: gridText(s.grid) }),
        h("td", { class: "num", text: s.points }),
        h("td", {}, Object.entries(s.status_counts).filter(([, c]) => c > 0).map(([st, c]) => h("span", { class: `status status-${st}`, text: `${c} ${st}` }))),
        h("td", { text: when(s.created_at) }));
    }));
    if (!page.items.length) tbody.append(h("tr", {}, h("td", { colspan: 5, class: "empty", text: "No sweeps yet: `trainlab submit examples/sweep-vanishing.json --watch`, or POST one to /v1/sweeps." })));
    const active = page.items.some((s) => [...vocab.active].some((st) => s.status_counts[st] > 0));
    return active ? POLL_MS : IDLE_POLL_MS;
  });
}

const gridText = (grid) => Object.entries(grid).map(([k, v]) => `${k} ∈ {${v.join(", ")}}`).join(" × ");

// Per job: the sparkline data; kept once finished. The rows carry the findings and their
// patches.
const cache = new Map();

async function rowDetails(row) {
  const key = row.job_id;
  if (cache.has(key)) return cache.get(key);
  const id = encodeURIComponent(key);
  const [grads, metrics] = await Promise.all([
    gradients(`/v1/jobs/${id}/gradients?stat=grad_norm&max_points=2`),
    api(`/v1/jobs/${id}/metrics`),
  ]);
  const details = { grads, metrics };
  if (!vocab.active.has(row.status)) cache.set(key, details);
  return details;
}

function sparkCanvas(testid, title) {
  const dpr = window.devicePixelRatio || 1;
  const canvas = h("canvas", { class: "spark", "data-testid": testid, title, width: SPARK.w * dpr, height: SPARK.h * dpr, style: `width:${SPARK.w}px;height:${SPARK.h}px` });
  const g = canvas.getContext("2d");
  g.scale(dpr, dpr);
  return { canvas, g };
}

// Gradient norm of each weight layer at its last step, log bars, input on the left.
export function gradientSpark(series) {
  const bars = series.filter((s) => layerGroup(s.kind) !== "norm" && s.points.length)
    .map((s) => num(s.points[s.points.length - 1].grad_norm));
  const { canvas, g } = sparkCanvas("spark-gradient", "gradient norm by layer (log; red: vanished)");
  const positive = bars.filter((v) => v != null && v > 0);
  if (!positive.length) return canvas;
  const top = bars[bars.length - 1] || Math.max(...positive);
  const hi = Math.log10(Math.max(...positive));
  const lo = Math.min(Math.log10(Math.min(...positive)), hi - 3);
  const w = SPARK.w / bars.length;
  bars.forEach((v, i) => {
    const frac = v != null && v > 0 ? 0.08 + (0.92 * (Math.log10(v) - lo)) / Math.max(hi - lo, 1e-9) : 0.04;
    const vanished = v == null || v < VANISHED_RATIO * top;
    g.fillStyle = vanished ? COLORS.val : "#16a34a";
    g.fillRect(i * w + 0.5, SPARK.h * (1 - frac), Math.max(1, w - 1), SPARK.h * frac);
  });
  canvas.dataset.vanished = String(bars.some((v) => v == null || v < VANISHED_RATIO * top));
  return canvas;
}

// Train (blue) and validation (red) loss per epoch on one scale.
export function lossSpark(metrics) {
  const { canvas, g } = sparkCanvas("spark-loss", "train (blue) vs validation (red) loss per epoch");
  const train = metrics.map((m) => num(m.train_loss));
  const val = metrics.map((m) => num(m.val_loss));
  const all = [...train, ...val].filter((v) => v != null);
  if (metrics.length < 1 || !all.length) return canvas;
  const lo = Math.min(...all);
  const hi = Math.max(...all);
  const x = (i) => (metrics.length === 1 ? SPARK.w / 2 : (i * (SPARK.w - 4)) / (metrics.length - 1) + 2);
  const y = (v) => 2 + (SPARK.h - 4) * (hi > lo ? 1 - (v - lo) / (hi - lo) : 0.5);
  for (const [values, color] of [[train, COLORS.train], [val, COLORS.val]]) {
    g.strokeStyle = color;
    g.lineWidth = 1.5;
    g.beginPath();
    values.forEach((v, i) => { if (v != null) (i ? g.lineTo(x(i), y(v)) : g.moveTo(x(i), y(v))); });
    g.stroke();
  }
  return canvas;
}

const hasPatch = (f) => f.suggested_spec_patch && Object.keys(f.suggested_spec_patch).length;
const patchInline = (findings) => findings.filter(hasPatch)
  .map((f) => Object.entries(f.suggested_spec_patch).map(([k, v]) => `${k}=${JSON.stringify(v)}`).join(" ")).join("; ");

// "mean ± std (min–max)" of one figure over a point's seeds.
function spreadText(s, format) {
  if (!s) return "—";
  const std = s.std == null ? "" : ` ± ${format(s.std)}`;
  return s.n > 1 ? `${format(s.mean)}${std} (${format(s.min)}–${format(s.max)})` : format(s.mean);
}

function renderPoints(el, sweep, keys) {
  el.hidden = !sweep.seeds;
  if (!sweep.seeds) return;
  el.replaceChildren(
    h("h3", { text: `Over seeds ${sweep.seeds.join(", ")}` }),
    h("table", { class: "table", "data-testid": "sweep-points" },
      h("thead", {}, h("tr", {}, [...keys, "runs", "val acc", "val loss", "train loss"].map((t) => h("th", { text: t })))),
      h("tbody", {}, sweep.points.map((p) => h("tr", { "data-testid": "sweep-point" },
        keys.map((k) => h("td", { class: "mono", text: typeof p.point[k] === "string" ? p.point[k] : JSON.stringify(p.point[k]) })),
        h("td", { class: "num", text: `${(p.metrics.val_acc || { n: 0 }).n}/${p.job_ids.length}` }),
        h("td", { class: "num", "data-testid": "sweep-point-val-acc", text: spreadText(p.metrics.val_acc, pct) }),
        h("td", { class: "num", text: spreadText(p.metrics.val_loss, fmt) }),
        h("td", { class: "num", text: spreadText(p.metrics.train_loss, fmt) }))))));
}

export function renderSweep(ctx, view, sweepId) {
  const id = encodeURIComponent(sweepId);
  const head = h("div", { class: "panel", "data-testid": "sweep-header" });
  const points = h("section", { class: "panel", "data-testid": "sweep-points-panel", hidden: true });
  const table = h("table", { class: "table sweep", "data-testid": "sweep-table" });
  view.replaceChildren(
    h("p", { class: "crumbs" }, h("a", { href: "#/sweeps", text: "← all sweeps" })),
    head, points, table);

  async function load() {
    const sweep = await api(`/v1/sweeps/${id}`);
    const details = await mapLimit(sweep.rows, 4, rowDetails);
    if (!ctx.alive) return false;
    const keys = Object.keys(sweep.grid);
    const done = sweep.rows.filter((r) => !vocab.active.has(r.status)).length;
    const ids = sweep.rows.map((r) => r.job_id).join(",");
    head.replaceChildren(
      h("div", { class: "job-title" },
        h("h2", { "data-testid": "sweep-name", text: sweep.name || sweep.id }),
        h("span", { class: "live-dot", title: "live updates" }),
        h("a", { class: "button", href: `#/compare?jobs=${ids}`, "data-testid": "sweep-compare", text: "Compare these jobs" })),
      h("p", { class: "muted mono small", text: sweep.id }),
      h("p", { class: "small", text: gridText(sweep.grid) }),
      h("div", { class: "progress-row" }, progressBar(done / Math.max(1, sweep.rows.length), "sweep-progress"),
        h("span", { class: "small", "data-testid": "sweep-progress-text", text: `${done}/${sweep.rows.length} finished` })),
      h("p", { class: "legend small muted" },
        "Gradient sparkline: ‖∇W‖ per weight layer, input on the left, log height; ",
        h("span", { class: "swatch", style: `background:${COLORS.val}` }), " vanished (1000× below the last layer), ",
        h("span", { class: "swatch", style: "background:#16a34a" }), " flowing. Loss sparkline: ",
        h("span", { class: "swatch", style: `background:${COLORS.train}` }), " train, ",
        h("span", { class: "swatch", style: `background:${COLORS.val}` }), " validation: a widening gap is overfitting."));
    renderPoints(points, sweep, keys);
    const seeded = Boolean(sweep.seeds);
    table.replaceChildren(
      h("thead", {}, h("tr", {}, [...keys, ...(seeded ? ["seed"] : []), "status", "health", "gradient by depth", "loss", "val acc", "val loss", "fix", "job"].map((t) => h("th", { text: t })))),
      h("tbody", {}, sweep.rows.map((r, i) => {
        const d = details[i];
        const patched = r.findings.some(hasPatch);
        let health;
        if (r.findings.length) health = r.findings.map((f) => findingChip(f));
        else if (r.status === vocab.failed) health = h("span", { class: "chip code-failed", title: r.error || "", text: "✗ failed" });
        else if (r.status === vocab.succeeded) health = healthyChip();
        else health = h("span", { class: "muted", text: "…" });
        return h("tr", { "data-testid": "sweep-row", "data-job-id": r.job_id, class: `health-${r.findings.length ? r.findings[0].severity : r.status}` },
          keys.map((k) => h("td", { class: "mono", text: typeof r.point[k] === "string" ? r.point[k] : JSON.stringify(r.point[k]) })),
          seeded ? h("td", { class: "num", "data-testid": "sweep-row-seed", text: String(r.seed) }) : null,
          h("td", {}, statusBadge(r.status, "sweep-row-status")),
          h("td", { class: "findings-cell", "data-testid": "sweep-row-health" }, health),
          h("td", {}, gradientSpark(d.grads.series)),
          h("td", {}, lossSpark(d.metrics)),
          h("td", { class: "num", text: r.result ? pct(r.result.val_acc) : "—" }),
          h("td", { class: "num", text: r.result ? fmt(r.result.val_loss) : "—" }),
          h("td", { class: "small" }, patched
            ? [h("code", { class: "patch-inline", "data-testid": "sweep-row-patch", text: patchInline(r.findings) }),
              retryButton(r.job_id, "sweep-retry")]
            : h("span", { class: "muted", text: "—" })),
          h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(r.job_id)}`, "data-testid": "sweep-job-link", text: r.job_id.slice(0, 8) })));
      })),
    );
    return sweep.rows.some((r) => vocab.active.has(r.status));
  }

  ctx.live(`/v1/sweeps/${id}/events`, load, (e) => {
    if (e.event === "job") cache.delete(e.data.job_id);
  });
}
