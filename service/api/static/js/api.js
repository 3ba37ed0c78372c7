// Access to /v1: JSON calls with the pasted API key, event streams, and the per-view
// context that owns a view's timers, streams and plots.

export const POLL_MS = 2000; // while something is queued or running
export const IDLE_POLL_MS = 10000; // job list with nothing active: pick up new submissions
export const RETRY_MS = 4000; // after a network error
const KEY_STORAGE = "trainlab.apiKey";
const REFRESH_MIN_MS = 700; // event-driven reloads of a view's data, at most this often

export const apiKey = {
  get: () => localStorage.getItem(KEY_STORAGE) || "",
  set: (key) => (key ? localStorage.setItem(KEY_STORAGE, key) : localStorage.removeItem(KEY_STORAGE)),
};

export class ApiError extends Error {
  constructor(status, detail) {
    super(typeof detail === "string" ? detail : JSON.stringify(detail));
    this.status = status;
    this.detail = detail;
  }
}

function headers(extra) {
  const out = { Accept: "application/json", ...extra };
  const key = apiKey.get();
  if (key) out["X-API-Key"] = key;
  return out;
}

async function check(response) {
  if (!response.ok) {
    let detail = response.statusText;
    try {
      detail = (await response.json()).detail ?? detail;
    } catch (_) { /* not JSON */ }
    throw new ApiError(response.status, detail);
  }
  return response.json();
}

export async function api(path) {
  return check(await fetch(path, { headers: headers() }));
}

// /gradients asked for in its columnar form (one array per key: ~40% of the bytes of
// one object per point, and built by the server without a Python object per point),
// handed to the charts as the point lists they read.
export async function gradients(path) {
  const body = await api(`${path}${path.includes("?") ? "&" : "?"}format=columns`);
  return { ...body, series: body.series.map(({ columns, ...s }) => ({ ...s, points: pointsOf(columns) })) };
}

function pointsOf(columns) {
  const keys = Object.keys(columns);
  const n = columns.step ? columns.step.length : 0;
  const points = new Array(n);
  for (let i = 0; i < n; i++) {
    const point = {};
    for (const key of keys) point[key] = columns[key][i];
    points[i] = point;
  }
  return points;
}

export async function post(path, body) {
  const response = await fetch(path, {
    method: "POST",
    headers: headers({ "Content-Type": "application/json" }),
    body: JSON.stringify(body ?? {}),
  });
  return check(response);
}

export async function optional(path) {
  try {
    return await api(path);
  } catch (err) {
    if (err instanceof ApiError && err.status === 404) return null;
    throw err;
  }
}

// At most `limit` calls in flight: the sweep view asks for details per grid point.
export async function mapLimit(items, limit, fn) {
  const out = new Array(items.length);
  let next = 0;
  const worker = async () => {
    while (next < items.length) {
      const i = next++;
      out[i] = await fn(items[i], i);
    }
  };
  await Promise.all(Array.from({ length: Math.min(limit, items.length) }, worker));
  return out;
}

const banner = () => document.getElementById("banner");

export function showBanner(message, kind) {
  const el = banner();
  el.textContent = message;
  el.className = `banner banner-${kind || "error"}`;
  el.hidden = false;
}

export function clearBanner() {
  banner().hidden = true;
}

// Returns the delay before the next try, or null to stop (a missing key will not appear).
export function reportError(err) {
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

// Server-Sent Events over fetch (EventSource cannot send the X-API-Key header). Calls
// onEvent({event, id, data}) per event; resolves when the stream ends, rejects on errors.
export async function readEvents(path, { signal, lastEventId, onEvent }) {
  const extra = { Accept: "text/event-stream" };
  if (lastEventId) extra["Last-Event-ID"] = lastEventId;
  const response = await fetch(path, { headers: headers(extra), signal });
  if (!response.ok || !response.body) {
    await check(response);
    throw new Error("no event stream");
  }
  const reader = response.body.pipeThrough(new TextDecoderStream()).getReader();
  let buffer = "";
  let fields = {};
  for (;;) {
    const { value, done } = await reader.read();
    if (done) return;
    buffer += value;
    const lines = buffer.split(/\r?\n/);
    buffer = lines.pop();
    for (const line of lines) {
      if (line === "") {
        if (fields.data !== undefined) onEvent({ event: fields.event || "message", id: fields.id, data: JSON.parse(fields.data) });
        fields = {};
      } else if (!line.startsWith(":")) {
        const at = line.indexOf(":");
        const key = at < 0 ? line : line.slice(0, at);
        fields[key] = at < 0 ? "" : line.slice(at + 1).replace(/^ /, "");
      }
    }
  }
}

// One context per rendered view: its poll timer, its streams and its plots go when the
// view goes.
export class ViewContext {
  constructor() {
    this.alive = true;
    this.timer = null;
    this.plots = new Map();
    this.abort = new AbortController();
  }

  // Run fn now and again after the delay it returns (null: stop).
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

  // Load once, then reload on the stream's events (throttled) until it ends; where the
  // stream fails (an old server, a proxy that buffers), poll instead. load() returns
  // whether the thing watched is still active.
  live(path, load, onEvent) {
    let lastId = null;
    let pending = null;
    let lastRun = 0;
    const reload = () => {
      if (pending) return;
      const wait = Math.max(0, REFRESH_MIN_MS - (Date.now() - lastRun));
      pending = setTimeout(async () => {
        pending = null;
        lastRun = Date.now();
        if (!this.alive) return;
        try {
          await load();
          clearBanner();
        } catch (err) {
          console.error(err);
          reportError(err);
        }
      }, wait);
    };
    const fallback = () => this.poll(async () => ((await load()) ? POLL_MS : null));
    (async () => {
      let active;
      try {
        active = await load();
        lastRun = Date.now();
      } catch (err) {
        console.error(err);
        const delay = reportError(err);
        if (delay) setTimeout(() => this.alive && this.live(path, load, onEvent), delay);
        return;
      }
      if (!active || !this.alive) return;
      document.body.dataset.live = "connecting";
      for (let attempt = 0; attempt < 3 && this.alive; attempt++) {
        try {
          let ended = false;
          await readEvents(path, {
            signal: this.abort.signal,
            lastEventId: lastId,
            onEvent: (e) => {
              lastId = e.id || lastId;
              document.body.dataset.live = "events";
              if (onEvent) onEvent(e);
              if (e.event === "end") ended = true;
              reload();
            },
          });
          if (ended || !this.alive) return;
        } catch (err) {
          if (!this.alive) return;
          console.warn("event stream failed; retrying or polling", err);
        }
      }
      if (this.alive) {
        document.body.dataset.live = "polling";
        fallback();
      }
    })();
  }

  dispose() {
    this.alive = false;
    clearTimeout(this.timer);
    this.abort.abort();
    for (const { plot } of this.plots.values()) plot.destroy();
    this.plots.clear();
  }

  resize() {
    for (const { plot, el, height } of this.plots.values()) {
      plot.setSize({ width: Math.max(240, el.clientWidth), height });
    }
  }
}
