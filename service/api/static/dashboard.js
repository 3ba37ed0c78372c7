// trainlab dashboard: a read-only view of /v1 (jobs, their statistics, diagnosis, sweeps).
// Plain JS, no build step. Charts are uPlot (vendored). Every value from the API is put
// into the page with textContent, never innerHTML: job names and tags are user input.
"use strict";

(() => {
  const POLL_MS = 2000; // while something is queued or running
  const IDLE_POLL_MS = 10000; // job list with nothing active: pick up new submissions
  const RETRY_MS = 4000; // after a network error
  const KEY_STORAGE = "trainlab.apiKey";
  // The service's vocabulary (service/vocabulary.py), loaded from /dashboard/vocabulary.json
  // before the first view: job statuses are spelled once, on the server.
  let ACTIVE = new Set();
  let STATUSES = [];
  let INITIAL_STATUS = null; // where every job starts (before a worker claims it)
  const MAX_POINTS = 300;
  // Input layer dark blue ... output layer orange (plasma-like, readable on white).
  const LAYER_STOPS = [[13, 8, 135], [106, 0, 168], [177, 42, 144], [225, 100, 98], [240, 150, 20]];
  const COLORS = { train: "#2563eb", val: "#dc2626", sat: "#d97706", bar: "#4f46e5" };

  // ---------------------------------------------------------------- small helpers

  function h(tag, attrs, ...children) {
    const el = document.createElement(tag);
    for (const [key, value] of Object.entries(attrs || {})) {
      if (value == null || value === false) continue;
      if (key === "class") el.className = value;
      else if (key === "text") el.textContent = value;
      else if (key.startsWith("on")) el.addEventListener(key.slice(2), value);
      else el.setAttribute(key, value === true ? "" : String(value));
    }
    for (const child of children.flat(Infinity)) {
      if (child == null || child === false) continue;
      el.append(child instanceof Node ? child : document.createTextNode(String(child)));
    }
    return el;
  }

  // The API writes non-finite floats as "NaN"/"Infinity" strings (SQLite NaN reads as null).
  function num(value) {
    if (value == null) return null;
    const n = typeof value === "number" ? value : Number(value);
    return Number.isFinite(n) ? n : null;
  }

  const positive = (value) => {
    const n = num(value);
    return n != null && n > 0 ? n : null; // a log scale cannot show 0
  };

  function fmt(value) {
    const n = num(value);
    if (n == null) return value == null ? "—" : String(value);
    if (Number.isInteger(n) && Math.abs(n) < 1e6) return String(n);
    const a = Math.abs(n);
    if (a !== 0 && (a < 1e-3 || a >= 1e5)) return n.toExponential(2);
    return String(Number(n.toPrecision(4)));
  }

  function fmtSci(v) {
    if (v == null) return "";
    const a = Math.abs(v);
    if (a >= 1e-2 && a < 1e4) return String(Number(v.toPrecision(3)));
    return v.toExponential(0).replace("e+", "e");
  }

  const pct = (value) => {
    const n = num(value);
    return n == null ? "—" : `${(n * 100).toFixed(1)}%`;
  };

  function when(iso) {
    if (!iso) return "—";
    const date = new Date(iso);
    const s = (Date.now() - date.getTime()) / 1000;
    if (s < 60) return `${Math.max(0, Math.round(s))} s ago`;
    if (s < 3600) return `${Math.round(s / 60)} min ago`;
    if (s < 86400) return `${Math.round(s / 3600)} h ago`;
    return date.toLocaleString();
  }

  function duration(start, end) {
    if (!start) return "—";
    const s = ((end ? new Date(end) : new Date()) - new Date(start)) / 1000;
    return s < 120 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`;
  }

  function ranges(indexes) {
    const out = [];
    for (let i = 0; i < indexes.length; i++) {
      let j = i;
      while (j + 1 < indexes.length && indexes[j + 1] === indexes[j] + 1) j++;
      out.push(i === j ? `${indexes[i]}` : `${indexes[i]}–${indexes[j]}`);
      i = j;
    }
    return out.join(", ");
  }

  function layerColor(i, n) {
    const t = n <= 1 ? 0 : i / (n - 1);
    const x = t * (LAYER_STOPS.length - 1);
    const k = Math.min(LAYER_STOPS.length - 2, Math.floor(x));
    const f = x - k;
    const c = LAYER_STOPS[k].map((a, m) => Math.round(a + (LAYER_STOPS[k + 1][m] - a) * f));
    return `rgb(${c.join(",")})`;
  }

  function viridis(t) {
    const stops = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
    const x = Math.min(1, Math.max(0, t)) * (stops.length - 1);
    const k = Math.min(stops.length - 2, Math.floor(x));
    const f = x - k;
    return `rgb(${stops[k].map((a, m) => Math.round(a + (stops[k + 1][m] - a) * f)).join(",")})`;
  }

  const statusBadge = (status, testid) =>
    h("span", { class: `status status-${status}`, "data-testid": testid, text: status });

  function progressBar(fraction, testid) {
    const f = Math.min(1, Math.max(0, num(fraction) || 0));
    return h(
      "div",
      { class: "progress", "data-testid": testid, title: pct(f), role: "progressbar",
        "aria-valuenow": Math.round(f * 100), "aria-valuemin": 0, "aria-valuemax": 100 },
      h("div", { class: "progress-fill", style: `width:${(f * 100).toFixed(1)}%` }),
    );
  }

  // ---------------------------------------------------------------- API access

  class ApiError extends Error {
    constructor(status, detail) {
      super(typeof detail === "string" ? detail : JSON.stringify(detail));
      this.status = status;
    }
  }

  async function api(path) {
    const headers = { Accept: "application/json" };
    const key = localStorage.getItem(KEY_STORAGE);
    if (key) headers["X-API-Key"] = key;
    const response = await fetch(path, { headers });
    if (!response.ok) {
      let detail = response.statusText;
      try {
        detail = (await response.json()).detail ?? detail;
      } catch (_) { /* not JSON */ }
      throw new ApiError(response.status, detail);
    }
    return response.json();
  }

  async function optional(path) {
    try {
      return await api(path);
    } catch (err) {
      if (err instanceof ApiError && err.status === 404) return null;
      throw err;
    }
  }

  const banner = document.getElementById("banner");

  function showBanner(message, kind) {
    banner.textContent = message;
    banner.className = `banner banner-${kind || "error"}`;
    banner.hidden = false;
  }

  function clearBanner() {
    banner.hidden = true;
  }

  // Returns the delay before the next try, or null to stop (a missing key will not appear).
  function reportError(err) {
    if (err instanceof ApiError && (err.status === 401 || err.status === 403)) {
      showBanner(
        err.status === 401
          ? "This server needs an API key: paste one in the box at the top right."
          : "The API key was refused: paste a valid one in the box at the top right.",
        "warn",
      );
      return null;
    }
    if (err instanceof ApiError && err.status === 404) {
      showBanner(`Not found: ${err.message}`);
      return null;
    }
    showBanner(`Cannot reach the API (${err.message}); retrying…`);
    return RETRY_MS;
  }

  // ---------------------------------------------------------------- views and plots

  // One context per rendered view: its poll timer and its plots go when the view goes.
  class ViewContext {
    constructor() {
      this.alive = true;
      this.timer = null;
      this.plots = new Map();
    }

    poll(fn) {
      const tick = async () => {
        if (!this.alive) return;
        let delay;
        try {
          delay = await fn();
          if (this.alive) clearBanner();
        } catch (err) {
          if (!this.alive) return;
          console.error(err);
          delay = reportError(err);
        }
        if (this.alive && delay) this.timer = setTimeout(tick, delay);
      };
      tick();
    }

    dispose() {
      this.alive = false;
      clearTimeout(this.timer);
      for (const { plot } of this.plots.values()) plot.destroy();
      this.plots.clear();
    }

    resize() {
      for (const { plot, el, height } of this.plots.values()) {
        plot.setSize({ width: plotWidth(el), height });
      }
    }
  }

  const plotWidth = (el) => Math.max(240, el.clientWidth);

  // Create the plot, or feed new data to the existing one when its series are the same.
  function drawPlot(ctx, el, opts, data) {
    const key = el.dataset.testid;
    const height = opts.height || 240;
    const existing = ctx.plots.get(key);
    const signature = opts.series.map((s) => s.label || "").join("|");
    if (existing && existing.signature === signature) {
      existing.plot.setData(data);
      return;
    }
    if (existing) existing.plot.destroy();
    el.replaceChildren();
    const plot = new uPlot({ ...opts, width: plotWidth(el), height }, data, el);
    ctx.plots.set(key, { plot, el, height, signature });
  }

  function dropPlot(ctx, el) {
    const existing = ctx.plots.get(el.dataset.testid);
    if (existing) existing.plot.destroy();
    ctx.plots.delete(el.dataset.testid);
  }

  function emptyPlot(ctx, el, message) {
    dropPlot(ctx, el);
    el.replaceChildren(h("p", { class: "empty", text: message }));
  }

  // Log axes: one label per decade (or every few decades), written 1e-12, and only inside
  // the scale's range; a range narrower than two decades gets 2 and 5 as well.
  function logSplits(_u, _axis, min, max) {
    if (!(min > 0) || !(max > 0)) return [];
    const inside = (v) => v >= min * 0.999 && v <= max * 1.001;
    const lo = Math.floor(Math.log10(min));
    const hi = Math.ceil(Math.log10(max));
    const step = Math.max(1, Math.ceil((hi - lo) / 6));
    const decades = [];
    for (let e = lo; e <= hi; e += step) decades.push(10 ** e);
    const kept = decades.filter(inside);
    if (kept.length >= 2) return kept;
    const fine = [];
    for (let e = lo; e <= hi; e++) for (const m of [1, 2, 5]) fine.push(m * 10 ** e);
    return fine.filter(inside);
  }

  // Whole decades around the data, so that the smallest bar still shows.
  function logRange(_u, min, max) {
    if (!(min > 0) || !(max > 0)) return [1e-3, 1];
    const lo = Math.floor(Math.log10(min) - 0.15);
    const hi = Math.max(lo + 1, Math.ceil(Math.log10(max) + 0.05));
    return [10 ** lo, 10 ** hi];
  }

  const logScale = { distr: 3, range: logRange };

  const logAxis = (label, extra) => ({
    label,
    splits: logSplits,
    filter: (_u, splits) => splits, // uPlot's log filter would drop most decade labels
    values: (_u, vals) => vals.map((v) => (v == null ? "" : fmtSci(v))),
    size: 60,
    ...extra,
  });

  const axis = (label, extra) => ({ label, size: 50, ...extra });
  const STEP_INCRS = [1, 2, 5, 10, 20, 50, 100, 200, 500, 1e3, 2e3, 5e3, 1e4, 2e4, 5e4, 1e5, 2e5, 5e5, 1e6];

  let currentView = null;

  function panel(title, testid, note, extraClass) {
    const body = h("div", { class: "plot", "data-testid": testid });
    const noteEl = h("p", { class: "note", "data-testid": `${testid}-note`, text: note || "" });
    const el = h("section", { class: `panel ${extraClass || ""}` }, h("h3", { text: title }), noteEl, body);
    return { el, body, noteEl };
  }

  // ------------------------------------------------------------------- jobs list

  function renderJobs(ctx, view, params) {
    const status = params.get("status") || "";
    const select = h(
      "select",
      { id: "status-filter", "data-testid": "status-filter",
        onchange: (e) => { location.hash = e.target.value ? `#/jobs?status=${e.target.value}` : "#/jobs"; } },
      h("option", { value: "", text: "all statuses" }),
      STATUSES.map((s) => h("option", { value: s, text: s, selected: s === status })),
    );
    const tbody = h("tbody", { "data-testid": "jobs-body" });
    const footer = h("p", { class: "note", "data-testid": "jobs-footer" });
    view.replaceChildren(
      h("div", { class: "page-head" },
        h("h2", { text: "Jobs" }),
        h("label", { class: "filter" }, "Status ", select)),
      h("table", { class: "table jobs", "data-testid": "jobs-table" },
        h("thead", {}, h("tr", {},
          ["Name", "Status", "Progress", "val acc", "Created", "Id"].map((t) => h("th", { text: t })))),
        tbody),
      footer,
    );

    ctx.poll(async () => {
      const query = new URLSearchParams({ limit: "100" });
      if (status) query.set("status", status);
      const page = await api(`/v1/jobs?${query}`);
      if (!ctx.alive) return null;
      tbody.replaceChildren(...page.items.map(jobRow));
      if (!page.items.length) {
        tbody.append(h("tr", {}, h("td", { colspan: 6, class: "empty",
          text: status ? `No ${status} jobs.` : "No jobs yet: POST one to /v1/jobs (see /docs)." })));
      }
      footer.textContent = page.next_cursor ? "Showing the newest 100 jobs." : "";
      return page.items.some((j) => ACTIVE.has(j.status)) ? POLL_MS : IDLE_POLL_MS;
    });
  }

  function jobRow(job) {
    const href = `#/jobs/${encodeURIComponent(job.id)}`;
    const acc = job.result ? pct(job.result.val_acc) : "—";
    return h(
      "tr",
      { class: "clickable", "data-testid": "job-row", "data-job-id": job.id,
        onclick: (e) => { if (e.target.tagName !== "A") location.hash = href; } },
      h("td", {},
        h("a", { href, "data-testid": "job-link", text: job.name || "(unnamed)" }),
        job.tags.map((t) => h("span", { class: "tag", text: t }))),
      h("td", {}, statusBadge(job.status, "job-row-status")),
      h("td", { class: "progress-cell" }, progressBar(job.progress.fraction, "job-row-progress"),
        h("span", { class: "muted small", text: ` ${Math.round(job.progress.fraction * 100)}%` })),
      h("td", { class: "num", text: acc }),
      h("td", { title: new Date(job.created_at).toLocaleString(), text: when(job.created_at) }),
      h("td", { class: "mono muted", title: job.id, text: job.id.slice(0, 8) }),
    );
  }

  // ------------------------------------------------------------------- job detail

  function renderJob(ctx, view, jobId) {
    const id = encodeURIComponent(jobId);
    const header = h("section", { class: "panel job-header", "data-testid": "job-header" });
    const findings = h("div", { class: "findings", "data-testid": "findings" });
    const loss = panel("Loss per epoch", "plot-loss", "train (solid) vs validation (dashed)");
    const acc = panel("Accuracy per epoch", "plot-acc", "train (solid) vs validation (dashed)");
    const grad = panel("Gradient norm per layer", "plot-grad-norm",
      "‖∇W‖ over training steps, log scale; one line per weight layer, dark = input, orange = output",
      "wide");
    const vanish = panel("The vanishing picture", "plot-vanishing",
      "gradient norm by layer at the latest recorded step (bars, log scale) and activation saturation (line, right axis)",
      "wide");
    const update = panel("Update ratio per layer", "plot-update-ratio",
      "‖ΔW‖ / ‖W‖ per step, log scale: around 1e-3 is healthy; far below, the layer is not learning",
      "wide");
    const land = panel("Loss landscape", "plot-landscape", "", "wide");
    land.el.hidden = true;
    land.el.dataset.testid = "landscape-panel";
    view.replaceChildren(
      h("p", { class: "crumbs" }, h("a", { href: "#/jobs", text: "← all jobs" })),
      header,
      h("section", { class: "panel" }, h("h3", { text: "Diagnosis" }), findings),
      h("div", { class: "grid" }, loss.el, acc.el, grad.el, vanish.el, update.el, land.el),
    );

    let landscapeDone = false;
    ctx.poll(async () => {
      const [job, metrics, layers, grads, diagnosis] = await Promise.all([
        api(`/v1/jobs/${id}`),
        api(`/v1/jobs/${id}/metrics`),
        api(`/v1/jobs/${id}/layers`),
        api(`/v1/jobs/${id}/gradients?stat=grad_norm&stat=update_ratio&stat=act_saturation&max_points=${MAX_POINTS}`),
        api(`/v1/jobs/${id}/diagnosis`),
      ]);
      if (!ctx.alive) return null;
      const active = ACTIVE.has(job.status);
      document.title = `${job.name || job.id} · trainlab`;
      renderJobHeader(header, job);
      renderFindings(findings, diagnosis.findings, job.status);
      renderMetrics(ctx, loss.body, acc.body, metrics);
      renderLayerLines(ctx, grad.body, grads.series, "grad_norm", "grad norm");
      renderVanishing(ctx, vanish, grads.series, layers);
      renderLayerLines(ctx, update.body, grads.series, "update_ratio", "update ratio");
      if (!active && !landscapeDone) {
        landscapeDone = true;
        const landscape = await optional(`/v1/jobs/${id}/landscape`);
        if (ctx.alive && landscape) renderLandscape(ctx, land, landscape);
      }
      return active ? POLL_MS : null;
    });
  }

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

  function renderJobHeader(el, job) {
    const p = job.progress;
    const r = job.result || {};
    el.replaceChildren(...[
      h("div", { class: "job-title" },
        h("h2", { "data-testid": "job-name", text: job.name || "(unnamed)" }),
        statusBadge(job.status, "job-status"),
        job.cancel_requested && ACTIVE.has(job.status) ? h("span", { class: "tag", text: "cancel requested" }) : null,
        job.tags.map((t) => h("span", { class: "tag", text: t }))),
      h("p", { class: "muted mono small", "data-testid": "job-id", text: job.id }),
      h("p", { class: "spec-line", "data-testid": "job-spec", text: specLine(job.spec) }),
      h("div", { class: "progress-row" },
        progressBar(p.fraction, "job-progress"),
        h("span", { class: "small", "data-testid": "job-progress-text",
          text: `${Math.round(p.fraction * 100)}% · epoch ${p.epoch}/${p.epochs} · step ${p.step}/${p.total_steps}` })),
      h("div", { class: "fields" },
        field("train loss", fmt(r.train_loss), "job-train-loss"),
        field("val loss", fmt(r.val_loss), "job-val-loss"),
        field("train acc", r.train_acc == null ? "—" : pct(r.train_acc), "job-train-acc"),
        field("val acc", r.val_acc == null ? "—" : pct(r.val_acc), "job-val-acc"),
        field("device", job.device || job.queue, "job-device"),
        field("worker", job.worker, "job-worker"),
        field("created", new Date(job.created_at).toLocaleString(), "job-created"),
        field("run time", duration(job.started_at, job.finished_at), "job-duration")),
      job.error ? h("pre", { class: "error-box", "data-testid": "job-error", text: job.error }) : null,
    ].filter(Boolean));
  }

  function renderFindings(el, findings, status) {
    if (!findings.length) {
      const text = status === INITIAL_STATUS
        ? `No statistics yet: the job is ${status}.`
        : ACTIVE.has(status) ? "No findings so far." : "No problems found in the stored statistics.";
      el.replaceChildren(h("p", { class: "empty", "data-testid": "no-findings", text }));
      return;
    }
    el.replaceChildren(...findings.map((f) => h(
      "article",
      { class: `finding severity-${f.severity}`, "data-testid": `finding-${f.code}` },
      h("div", { class: "finding-head" },
        h("span", { class: "finding-code", text: f.code.replaceAll("_", " ") }),
        h("span", { class: `severity severity-badge-${f.severity}`, text: f.severity })),
      h("p", { class: "finding-summary", text: f.summary }),
      f.layers.length ? h("p", { class: "small muted", text: `layers ${ranges(f.layers)}` }) : null,
      h("p", { class: "remedy" }, h("strong", { text: "Remedy: " }), f.remedy),
      h("dl", { class: "evidence" },
        Object.entries(f.evidence).map(([k, v]) => [h("dt", { text: k }), h("dd", { text: fmt(v) })])),
    )));
  }

  function renderMetrics(ctx, lossEl, accEl, metrics) {
    if (!metrics.length) {
      emptyPlot(ctx, lossEl, "No finished epoch yet.");
      emptyPlot(ctx, accEl, "No finished epoch yet.");
      return;
    }
    const epochs = metrics.map((m) => m.epoch);
    const col = (k) => metrics.map((m) => num(m[k]));
    const xAxis = axis("epoch", { incrs: STEP_INCRS });
    const pair = (label, unitFmt) => [
      { label: "epoch" },
      { label: `train ${label}`, stroke: COLORS.train, width: 2, points: { show: true, size: 6 }, value: (_u, v) => unitFmt(v) },
      { label: `val ${label}`, stroke: COLORS.val, width: 2, dash: [6, 4], points: { show: true, size: 6 }, value: (_u, v) => unitFmt(v) },
    ];
    drawPlot(ctx, lossEl, {
      scales: { x: { time: false } },
      series: pair("loss", fmt),
      axes: [xAxis, axis("loss")],
    }, [epochs, col("train_loss"), col("val_loss")]);
    drawPlot(ctx, accEl, {
      scales: { x: { time: false }, y: { range: [0, 1] } },
      series: pair("acc", pct),
      axes: [xAxis, axis("accuracy", { values: (_u, vals) => vals.map((v) => `${Math.round(v * 100)}%`) })],
    }, [epochs, col("train_acc"), col("val_acc")]);
  }

  // One line per layer over steps; steps are aligned on their union (gaps stay gaps).
  function renderLayerLines(ctx, el, series, stat, label) {
    const withData = series.filter((s) => s.points.some((p) => positive(p[stat]) != null));
    if (!withData.length) {
      emptyPlot(ctx, el, `No ${label} recorded yet.`);
      return;
    }
    const steps = [...new Set(series.flatMap((s) => s.points.map((p) => p.step)))].sort((a, b) => a - b);
    const at = new Map(steps.map((s, i) => [s, i]));
    const n = series.length;
    const data = [steps, ...series.map((s) => {
      const ys = new Array(steps.length).fill(null);
      for (const p of s.points) ys[at.get(p.step)] = positive(p[stat]);
      return ys;
    })];
    drawPlot(ctx, el, {
      height: 300,
      scales: { x: { time: false }, y: logScale },
      series: [
        { label: "step" },
        ...series.map((s, i) => ({
          label: `L${s.layer_index}`,
          stroke: layerColor(i, n),
          width: 1.5,
          spanGaps: true,
          points: { show: steps.length < 30, size: 4 },
          value: (_u, v) => fmtSci(v),
        })),
      ],
      axes: [axis("step", { incrs: STEP_INCRS }), logAxis(label)],
      legend: { live: true },
      cursor: { focus: { prox: 16 } },
      focus: { alpha: 0.25 },
    }, data);
  }

  // The lesson in one picture: gradient norm by depth at one step, and how saturated
  // each layer's units are.
  function renderVanishing(ctx, pnl, series, layers) {
    const el = pnl.body;
    const latest = series.map((s) => {
      for (let k = s.points.length - 1; k >= 0; k--) {
        const g = positive(s.points[k].grad_norm);
        if (g != null) return { index: s.layer_index, step: s.points[k].step, g, sat: num(s.points[k].act_saturation) };
      }
      return null;
    }).filter(Boolean);
    if (!latest.length) {
      pnl.noteEl.textContent = "gradient norm by layer at the latest recorded step";
      emptyPlot(ctx, el, "No statistics recorded yet.");
      return;
    }
    const step = Math.max(...latest.map((l) => l.step));
    const names = new Map(layers.map((l) => [l.index, l.name]));
    const first = latest[0];
    const last = latest[latest.length - 1];
    pnl.noteEl.textContent =
      `Step ${step}. ‖∇W‖ of layer ${first.index} (${names.get(first.index) || "input"}) is ` +
      `${fmtSci(first.g / last.g)} × that of layer ${last.index} (${names.get(last.index) || "output"}). ` +
      "Bars: gradient norm (log); line: act_saturation, the fraction of sigmoid/tanh units at a bound or of ReLU units at 0 (right axis).";
    const xs = latest.map((l) => l.index);
    drawPlot(ctx, el, {
      height: 280,
      scales: { x: { time: false, range: [Math.min(...xs) - 0.6, Math.max(...xs) + 0.6] }, y: logScale, sat: { range: [0, 1] } },
      series: [
        { label: "layer", value: (_u, v) => (v == null ? "" : `L${v}`) },
        { label: "grad norm", fill: "rgba(79,70,229,0.55)", stroke: COLORS.bar, width: 1,
          paths: uPlot.paths.bars({ size: [0.7, 40] }), points: { show: false }, value: (_u, v) => fmtSci(v) },
        { label: "saturation", scale: "sat", stroke: COLORS.sat, width: 2, spanGaps: true,
          points: { show: true, size: 6, fill: COLORS.sat }, value: (_u, v) => pct(v) },
      ],
      axes: [
        axis("layer index (0 = input)", { incrs: [1, 2, 5, 10], values: (_u, vals) => vals.map((v) => String(v)) }),
        logAxis("grad norm"),
        axis("saturated units", { scale: "sat", side: 1, grid: { show: false },
          values: (_u, vals) => vals.map((v) => `${Math.round(v * 100)}%`) }),
      ],
    }, [xs, latest.map((l) => l.g), latest.map((l) => l.sat)]);
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
        scales: { x: { time: false }, y: log ? logScale : {} },
        series: [{ label: "α" }, { label: "loss", stroke: COLORS.val, width: 2, points: { show: true, size: 5 }, value: (_u, v) => fmt(v) }],
        axes: [axis("α (filter-norm units)"), log ? logAxis("loss") : axis("loss")],
      }, [land.alphas, log ? ys.map((v) => (v != null && v > 0 ? v : null)) : ys]);
      return;
    }
    pnl.noteEl.textContent = `Loss over two filter-normalized directions (colour: log loss; + marks the trained weights). ${figures}`;
    drawHeatmap(pnl.body, land);
  }

  // 2-D slice as coloured cells: x = first direction, y = second (up), colour = log loss.
  function drawHeatmap(el, land) {
    const n = land.alphas.length;
    const size = Math.min(420, Math.max(220, el.clientWidth - 120));
    const pad = { l: 48, b: 36, t: 8, r: 8 };
    const bar = 70;
    const dpr = window.devicePixelRatio || 1;
    const canvas = h("canvas", { "data-testid": "landscape-heatmap" });
    const w = pad.l + size + pad.r + bar;
    const hgt = pad.t + size + pad.b;
    canvas.width = w * dpr;
    canvas.height = hgt * dpr;
    canvas.style.width = `${w}px`;
    canvas.style.height = `${hgt}px`;
    const g = canvas.getContext("2d");
    g.scale(dpr, dpr);
    const logs = land.losses.flat().map((v) => { const x = positive(v); return x == null ? null : Math.log10(x); });
    const finite = logs.filter((v) => v != null);
    const lo = Math.min(...finite);
    const hi = Math.max(...finite);
    const cell = size / n;
    for (let i = 0; i < n; i++) {
      for (let j = 0; j < n; j++) {
        const v = positive(land.losses[i][j]);
        g.fillStyle = v == null ? "#9ca3af" : viridis(hi > lo ? (Math.log10(v) - lo) / (hi - lo) : 0);
        g.fillRect(pad.l + i * cell, pad.t + (n - 1 - j) * cell, Math.ceil(cell), Math.ceil(cell));
      }
    }
    const mid = (n - 1) / 2;
    const cx = pad.l + (mid + 0.5) * cell;
    const cy = pad.t + (n - 1 - mid + 0.5) * cell;
    g.strokeStyle = "#fff";
    g.lineWidth = 2;
    g.beginPath();
    g.moveTo(cx - 7, cy); g.lineTo(cx + 7, cy); g.moveTo(cx, cy - 7); g.lineTo(cx, cy + 7);
    g.stroke();
    g.fillStyle = "#374151";
    g.font = "12px system-ui, sans-serif";
    g.textAlign = "center";
    const a0 = land.alphas[0];
    const a1 = land.alphas[n - 1];
    g.fillText(fmt(a0), pad.l + cell / 2, pad.t + size + 16);
    g.fillText(fmt(a1), pad.l + size - cell / 2, pad.t + size + 16);
    g.fillText("α (direction 1)", pad.l + size / 2, pad.t + size + 30);
    g.textAlign = "right";
    g.fillText(fmt(a1), pad.l - 6, pad.t + cell / 2 + 4);
    g.fillText(fmt(a0), pad.l - 6, pad.t + size - cell / 2 + 4);
    g.save();
    g.translate(14, pad.t + size / 2);
    g.rotate(-Math.PI / 2);
    g.textAlign = "center";
    g.fillText("β (direction 2)", 0, 0);
    g.restore();
    // colour bar
    const bx = pad.l + size + pad.r + 16;
    for (let k = 0; k < size; k++) {
      g.fillStyle = viridis(1 - k / size);
      g.fillRect(bx, pad.t + k, 14, 1.5);
    }
    g.textAlign = "left";
    g.fillStyle = "#374151";
    g.fillText(fmtSci(10 ** hi), bx + 18, pad.t + 10);
    g.fillText(fmtSci(10 ** lo), bx + 18, pad.t + size);
    g.fillText("loss", bx + 18, pad.t + size / 2);
    el.replaceChildren(canvas);
  }

  // ------------------------------------------------------------------- sweeps

  function renderSweeps(ctx, view) {
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
        return h("tr", { class: "clickable", "data-testid": "sweep-row", onclick: (e) => { if (e.target.tagName !== "A") location.hash = href; } },
          h("td", {}, h("a", { href, text: s.name || s.id.slice(0, 8) })),
          h("td", { class: "small", text: Object.entries(s.grid).map(([k, v]) => `${k} ∈ {${v.join(", ")}}`).join(" × ") }),
          h("td", { class: "num", text: s.points }),
          h("td", {}, Object.entries(s.status_counts).filter(([, c]) => c > 0).map(([st, c]) => h("span", { class: `status status-${st}`, text: `${c} ${st}` }))),
          h("td", { text: when(s.created_at) }));
      }));
      if (!page.items.length) tbody.append(h("tr", {}, h("td", { colspan: 5, class: "empty", text: "No sweeps yet: POST one to /v1/sweeps." })));
      const active = page.items.some((s) => [...ACTIVE].some((st) => s.status_counts[st] > 0));
      return active ? POLL_MS : IDLE_POLL_MS;
    });
  }

  function renderSweep(ctx, view, sweepId) {
    const head = h("div", { class: "panel", "data-testid": "sweep-header" });
    const table = h("table", { class: "table", "data-testid": "sweep-table" });
    view.replaceChildren(
      h("p", { class: "crumbs" }, h("a", { href: "#/sweeps", text: "← all sweeps" })),
      head, table);
    ctx.poll(async () => {
      const sweep = await api(`/v1/sweeps/${encodeURIComponent(sweepId)}`);
      if (!ctx.alive) return null;
      const keys = Object.keys(sweep.grid);
      const done = sweep.rows.filter((r) => !ACTIVE.has(r.status)).length;
      head.replaceChildren(
        h("h2", { "data-testid": "sweep-name", text: sweep.name || sweep.id }),
        h("p", { class: "muted mono small", text: sweep.id }),
        h("p", { class: "small", text: keys.map((k) => `${k} ∈ {${sweep.grid[k].join(", ")}}`).join(" × ") }),
        h("div", { class: "progress-row" }, progressBar(done / Math.max(1, sweep.rows.length), "sweep-progress"),
          h("span", { class: "small", text: `${done}/${sweep.rows.length} finished` })));
      table.replaceChildren(
        h("thead", {}, h("tr", {}, [...keys, "status", "train acc", "val acc", "val loss", "findings", "job"].map((t) => h("th", { text: t })))),
        h("tbody", {}, sweep.rows.map((r) => h("tr", { "data-testid": "sweep-row", "data-job-id": r.job_id },
          keys.map((k) => h("td", { class: "mono", text: typeof r.point[k] === "string" ? r.point[k] : JSON.stringify(r.point[k]) })),
          h("td", {}, statusBadge(r.status, "sweep-row-status")),
          h("td", { class: "num", text: r.result ? pct(r.result.train_acc) : "—" }),
          h("td", { class: "num", text: r.result ? pct(r.result.val_acc) : "—" }),
          h("td", { class: "num", text: r.result ? fmt(r.result.val_loss) : "—" }),
          h("td", {}, r.findings.length
            ? r.findings.map((f) => h("span", { class: `chip severity-badge-${f.severity}`, title: f.summary, "data-testid": `finding-chip-${f.code}`, text: f.code }))
            : h("span", { class: "muted", text: ACTIVE.has(r.status) ? "…" : "none" })),
          h("td", {}, h("a", { href: `#/jobs/${encodeURIComponent(r.job_id)}`, "data-testid": "sweep-job-link", text: r.job_id.slice(0, 8) }))))),
      );
      return sweep.rows.some((r) => ACTIVE.has(r.status)) ? POLL_MS : null;
    });
  }

  // ------------------------------------------------------------------- routing

  function route() {
    if (currentView) currentView.dispose();
    clearBanner();
    document.title = "trainlab dashboard";
    const ctx = new ViewContext();
    currentView = ctx;
    const view = document.getElementById("view");
    const [path, query] = (location.hash.replace(/^#/, "") || "/jobs").split("?");
    const params = new URLSearchParams(query || "");
    const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
    document.querySelectorAll(".topbar nav a").forEach((a) => {
      a.classList.toggle("active", a.getAttribute("href") === `#/${parts[0] || "jobs"}`);
    });
    if (parts[0] === "jobs" && parts[1]) renderJob(ctx, view, parts[1]);
    else if (parts[0] === "sweeps" && parts[1]) renderSweep(ctx, view, parts[1]);
    else if (parts[0] === "sweeps") renderSweeps(ctx, view);
    else renderJobs(ctx, view, params);
  }

  const keyForm = document.getElementById("apikey-form");
  const keyInput = document.getElementById("apikey-input");
  keyInput.value = localStorage.getItem(KEY_STORAGE) || "";
  keyForm.addEventListener("submit", (e) => {
    e.preventDefault();
    const key = keyInput.value.trim();
    if (key) localStorage.setItem(KEY_STORAGE, key);
    else localStorage.removeItem(KEY_STORAGE);
    route();
  });

  let resizeTimer = null;
  window.addEventListener("resize", () => {
    clearTimeout(resizeTimer);
    resizeTimer = setTimeout(() => currentView && currentView.resize(), 150);
  });
  async function start() {
    const response = await fetch("/dashboard/vocabulary.json");
    const vocabulary = await response.json();
    STATUSES = vocabulary.job_statuses;
    ACTIVE = new Set(vocabulary.active_statuses);
    INITIAL_STATUS = vocabulary.initial_status;
    window.addEventListener("hashchange", route);
    route();
  }

  start();
})();
