// Small helpers shared by every view: DOM building, number formatting, colours.
// Every value from the API goes into the page with textContent, never innerHTML:
// job names and tags are user input.

export function h(tag, attrs, ...children) {
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
export function num(value) {
  if (value == null) return null;
  const n = typeof value === "number" ? value : Number(value);
  return Number.isFinite(n) ? n : null;
}

export function fmt(value) {
  const n = num(value);
  if (n == null) return value == null ? "—" : String(value);
  if (Number.isInteger(n) && Math.abs(n) < 1e6) return String(n);
  const a = Math.abs(n);
  if (a !== 0 && (a < 1e-3 || a >= 1e5)) return n.toExponential(2);
  return String(Number(n.toPrecision(4)));
}

export function fmtSci(v) {
  if (v == null) return "";
  const a = Math.abs(v);
  if (a >= 1e-2 && a < 1e4) return String(Number(v.toPrecision(3)));
  return v.toExponential(0).replace("e+", "e");
}

export const pct = (value) => {
  const n = num(value);
  return n == null ? "—" : `${(n * 100).toFixed(1)}%`;
};

export function when(iso) {
  if (!iso) return "—";
  const date = new Date(iso);
  const s = (Date.now() - date.getTime()) / 1000;
  if (s < 60) return `${Math.max(0, Math.round(s))} s ago`;
  if (s < 3600) return `${Math.round(s / 60)} min ago`;
  if (s < 86400) return `${Math.round(s / 3600)} h ago`;
  return date.toLocaleString();
}

export function duration(start, end) {
  if (!start) return "—";
  const s = ((end ? new Date(end) : new Date()) - new Date(start)) / 1000;
  return s < 120 ? `${s.toFixed(1)} s` : `${(s / 60).toFixed(1)} min`;
}

export function ranges(indexes) {
  const out = [];
  for (let i = 0; i < indexes.length; i++) {
    let j = i;
    while (j + 1 < indexes.length && indexes[j + 1] === indexes[j] + 1) j++;
    out.push(i === j ? `${indexes[i]}` : `${indexes[i]}–${indexes[j]}`);
    i = j;
  }
  return out.join(", ");
}

// Input layer dark blue ... output layer orange (plasma-like, readable on white).
const LAYER_STOPS = [[13, 8, 135], [106, 0, 168], [177, 42, 144], [225, 100, 98], [240, 150, 20]];
const VIRIDIS = [[68, 1, 84], [59, 82, 139], [33, 145, 140], [94, 201, 98], [253, 231, 37]];
export const COLORS = {
  train: "#2563eb", val: "#dc2626", sat: "#d97706", dead: "#7c3aed", bar: "#4f46e5",
  chance: "#6b7280", zero: "#ef4444",
};
// One colour per job in overlays (Tableau 10).
export const JOB_COLORS = ["#4e79a7", "#f28e2b", "#e15759", "#76b7b2", "#59a14f", "#edc948",
  "#b07aa1", "#ff9da7", "#9c755f", "#bab0ac"];

function ramp(stops, t) {
  const x = Math.min(1, Math.max(0, t)) * (stops.length - 1);
  const k = Math.min(stops.length - 2, Math.floor(x));
  const f = x - k;
  return `rgb(${stops[k].map((a, m) => Math.round(a + (stops[k + 1][m] - a) * f)).join(",")})`;
}

export const layerColor = (i, n) => ramp(LAYER_STOPS, n <= 1 ? 0 : i / (n - 1));
export const viridis = (t) => ramp(VIRIDIS, t);

export const statusBadge = (status, testid) =>
  h("span", { class: `status status-${status}`, "data-testid": testid, text: status });

export function progressBar(fraction, testid) {
  const f = Math.min(1, Math.max(0, num(fraction) || 0));
  return h(
    "div",
    { class: "progress", "data-testid": testid, title: pct(f), role: "progressbar",
      "aria-valuenow": Math.round(f * 100), "aria-valuemin": 0, "aria-valuemax": 100 },
    h("div", { class: "progress-fill", style: `width:${(f * 100).toFixed(1)}%` }),
  );
}

// What a finding looks like at a glance: a short label and a class that gives each code
// its own colour, so a sweep table reads without numbers (vanishing, overfitting, ...).
const FINDING_LABELS = {
  vanishing_gradient: "↓∇ vanishing",
  exploding_gradient: "↑∇ exploding",
  dead_units: "dead units",
  saturation: "saturated",
  overfitting: "overfitting",
  divergence: "NaN / diverged",
  not_learning: "not learning",
};

export const findingLabel = (code) => FINDING_LABELS[code] || code.replaceAll("_", " ");

export function findingChip(finding, testidPrefix = "finding-chip") {
  return h("span", {
    class: `chip code-${finding.code} chip-${finding.severity}`,
    title: `${finding.severity}: ${finding.summary || finding.code}`,
    "data-testid": `${testidPrefix}-${finding.code}`,
    text: findingLabel(finding.code),
  });
}

export const healthyChip = () =>
  h("span", { class: "chip code-healthy", "data-testid": "chip-healthy", text: "✓ healthy" });

// Download the series a chart shows, as CSV or JSON.
export function download(name, text, type) {
  const url = URL.createObjectURL(new Blob([text], { type }));
  const a = h("a", { href: url, download: name });
  document.body.append(a);
  a.click();
  a.remove();
  setTimeout(() => URL.revokeObjectURL(url), 1000);
}

export function toCsv(columns, rows) {
  const cell = (v) => {
    const s = v == null ? "" : String(v);
    return /[",\n]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
  };
  return [columns, ...rows].map((r) => r.map(cell).join(",")).join("\n") + "\n";
}
