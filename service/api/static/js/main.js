// trainlab dashboard: a read-only view of /v1 (jobs, their statistics and diagnosis,
// sweeps, comparisons). Plain ES modules, no build step; charts are uPlot (vendored).
import { apiKey, clearBanner, ViewContext } from "./api.js";
import { loadVocabulary } from "./vocabulary.js";
import { renderJobs } from "./views/jobs.js";
import { renderJob } from "./views/job.js";
import { renderSweeps, renderSweep } from "./views/sweeps.js";
import { renderCompare } from "./views/compare.js";

let currentView = null;

function route() {
  if (currentView) currentView.dispose();
  clearBanner();
  document.title = "trainlab dashboard";
  delete document.body.dataset.live;
  const ctx = new ViewContext();
  currentView = ctx;
  const view = document.getElementById("view");
  const [path, query] = (location.hash.replace(/^#/, "") || "/jobs").split("?");
  const params = new URLSearchParams(query || "");
  const parts = path.split("/").filter(Boolean).map(decodeURIComponent);
  document.querySelectorAll(".topbar nav a").forEach((a) => {
    a.classList.toggle("active", a.getAttribute("href") === `#/${parts[0] || "jobs"}`);
  });
  view.dataset.view = parts[0] || "jobs";
  if (parts[0] === "jobs" && parts[1]) renderJob(ctx, view, parts[1]);
  else if (parts[0] === "sweeps" && parts[1]) renderSweep(ctx, view, parts[1]);
  else if (parts[0] === "sweeps") renderSweeps(ctx, view);
  else if (parts[0] === "compare") renderCompare(ctx, view, params);
  else renderJobs(ctx, view, params);
}

const keyForm = document.getElementById("apikey-form");
const keyInput = document.getElementById("apikey-input");
keyInput.value = apiKey.get();
keyForm.addEventListener("submit", (e) => {
  e.preventDefault();
  apiKey.set(keyInput.value.trim());
  route();
});

let resizeTimer = null;
window.addEventListener("resize", () => {
  clearTimeout(resizeTimer);
  resizeTimer = setTimeout(() => currentView && currentView.resize(), 150);
});

await loadVocabulary();
window.addEventListener("hashchange", route);
route();
