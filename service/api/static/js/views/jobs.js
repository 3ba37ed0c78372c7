// #/jobs: the newest jobs with status, progress, accuracy and what the diagnosis found;
// filter by status and by finding; pick jobs to compare.
import { api, POLL_MS, IDLE_POLL_MS } from "../api.js";
import { vocab } from "../vocabulary.js";
import { h, pct, when, statusBadge, progressBar, findingChip, healthyChip, findingLabel } from "../util.js";

const HEALTHY = "healthy";
const ANY_PROBLEM = "any";

export function renderJobs(ctx, view, params) {
  const status = params.get("status") || "";
  const finding = params.get("finding") || "";
  const selected = new Set();
  const navigate = (changes) => {
    const q = new URLSearchParams({ status, finding, ...changes });
    for (const [k, v] of [...q]) if (!v) q.delete(k);
    location.hash = `#/jobs${q.toString() ? `?${q}` : ""}`;
  };
  const statusSelect = h("select", { "data-testid": "status-filter", onchange: (e) => navigate({ status: e.target.value }) },
    h("option", { value: "", text: "all statuses" }),
    vocab.statuses.map((s) => h("option", { value: s, text: s, selected: s === status })));
  const findingSelect = h("select", { "data-testid": "finding-filter", onchange: (e) => navigate({ finding: e.target.value }) });
  const compareButton = h("button", {
    class: "button", type: "button", "data-testid": "compare-selected", disabled: true,
    onclick: () => { location.hash = `#/compare?jobs=${[...selected].join(",")}`; },
    text: "Compare selected",
  });
  const tbody = h("tbody", { "data-testid": "jobs-body" });
  const footer = h("p", { class: "note", "data-testid": "jobs-footer" });
  view.replaceChildren(
    h("div", { class: "page-head" },
      h("h2", { text: "Jobs" }),
      h("div", { class: "filters" },
        h("label", { class: "filter" }, "Status ", statusSelect),
        h("label", { class: "filter" }, "Finding ", findingSelect),
        compareButton)),
    h("table", { class: "table jobs", "data-testid": "jobs-table" },
      h("thead", {}, h("tr", {},
        ["", "Name", "Status", "Progress", "val acc", "Findings", "Created", "Id"].map((t) => h("th", { text: t })))),
      tbody),
    footer,
  );

  const updateCompare = () => {
    compareButton.disabled = selected.size < 2;
    compareButton.textContent = selected.size >= 2 ? `Compare ${selected.size} jobs` : "Compare selected";
  };

  ctx.poll(async () => {
    const query = new URLSearchParams({ limit: "100" });
    if (status) query.set("status", status);
    const page = await api(`/v1/jobs?${query}`);
    // Each row carries its diagnosis in brief, kept current by the worker: no call per job.
    const found = page.items.map((job) => job.findings || []);
    if (!ctx.alive) return null;
    const codes = new Set(found.flat().map((f) => f.code));
    if (finding && finding !== HEALTHY && finding !== ANY_PROBLEM) codes.add(finding);
    findingSelect.replaceChildren(
      h("option", { value: "", text: "any or none" }),
      h("option", { value: HEALTHY, text: "✓ healthy (no findings)", selected: finding === HEALTHY }),
      h("option", { value: ANY_PROBLEM, text: "any problem", selected: finding === ANY_PROBLEM }),
      ...[...codes].sort().map((c) => h("option", { value: c, text: findingLabel(c), selected: c === finding })));
    const rows = page.items.map((job, i) => ({ job, findings: found[i] })).filter(({ job, findings }) => {
      if (!finding) return true;
      if (finding === HEALTHY) return !findings.length && job.status === vocab.succeeded;
      if (finding === ANY_PROBLEM) return findings.length > 0;
      return findings.some((f) => f.code === finding);
    });
    tbody.replaceChildren(...rows.map(({ job, findings }) => jobRow(job, findings, selected, updateCompare)));
    if (!rows.length) {
      tbody.append(h("tr", {}, h("td", { colspan: 8, class: "empty",
        text: status || finding ? "No jobs match these filters." : "No jobs yet: `trainlab submit examples/vanishing.json --watch`, or POST one to /v1/jobs (see /docs)." })));
    }
    footer.textContent = page.next_cursor ? "Showing the newest 100 jobs." : "";
    return page.items.some((j) => vocab.active.has(j.status)) ? POLL_MS : IDLE_POLL_MS;
  });
}

function jobRow(job, findings, selected, onSelect) {
  const href = `#/jobs/${encodeURIComponent(job.id)}`;
  const acc = job.result ? pct(job.result.val_acc) : "—";
  const box = h("input", { type: "checkbox", "data-testid": "job-select", title: "select to compare", checked: selected.has(job.id),
    onchange: (e) => { if (e.target.checked) selected.add(job.id); else selected.delete(job.id); onSelect(); } });
  let health;
  if (findings.length) health = findings.map((f) => findingChip(f));
  else if (job.status === vocab.failed) health = h("span", { class: "chip code-failed", text: "✗ failed" });
  else if (job.status === vocab.succeeded) health = healthyChip();
  else health = h("span", { class: "muted", text: vocab.active.has(job.status) ? "…" : "—" });
  return h(
    "tr",
    { class: "clickable", "data-testid": "job-row", "data-job-id": job.id,
      onclick: (e) => { if (!["A", "INPUT"].includes(e.target.tagName)) location.hash = href; } },
    h("td", {}, box),
    h("td", {},
      h("a", { href, "data-testid": "job-link", text: job.name || "(unnamed)" }),
      job.tags.map((t) => h("span", { class: "tag", text: t }))),
    h("td", {}, statusBadge(job.status, "job-row-status")),
    h("td", { class: "progress-cell" }, progressBar(job.progress.fraction, "job-row-progress"),
      h("span", { class: "muted small", text: ` ${Math.round(job.progress.fraction * 100)}%` })),
    h("td", { class: "num", text: acc }),
    h("td", { class: "findings-cell", "data-testid": "job-row-findings" }, health),
    h("td", { title: new Date(job.created_at).toLocaleString(), text: when(job.created_at) }),
    h("td", { class: "mono muted", title: job.id, text: job.id.slice(0, 8) }),
  );
}
