"""The dashboard in a real browser, one test per view, over the shared embedded stack.

Screenshots go to tests/e2e/artifacts/ (gitignored; TRAINLAB_E2E_ARTIFACTS moves it) so
that a person, or CI, can look at what the page showed.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import parse_qs, urlsplit

import pytest
from playwright.sync_api import Browser, Page, expect

from service.specs import EXAMPLE_SPEC
from tests.integration.conftest import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

FINISH_TIMEOUT_MS = 90_000
EXAMPLES = Path(__file__).resolve().parents[2] / "examples"
ARTIFACTS = Path(
    os.environ.get("TRAINLAB_E2E_ARTIFACTS", Path(__file__).resolve().parent / "artifacts")
)


@pytest.fixture
def page(browser: Browser) -> Iterator[Page]:
    page = browser.new_page(viewport={"width": 1360, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        yield page
    finally:
        page.close()
    assert errors == [], errors


def _shot(page: Page, name: str) -> None:
    ARTIFACTS.mkdir(parents=True, exist_ok=True)
    page.screenshot(path=ARTIFACTS / f"{name}.png", full_page=True)


@pytest.fixture(scope="module")
def sweep(embedded_stack: Stack) -> dict[str, Any]:
    """The vanishing lesson and its fixes (sigmoid/relu x no norm/batch norm)."""
    body = json.loads((EXAMPLES / "sweep-vanishing.json").read_text())
    response = embedded_stack.client.post("/v1/sweeps", json=body)
    assert response.status_code == 201, response.text
    created: dict[str, Any] = response.json()
    return created


def test_sweep_page_tells_vanishing_from_healthy_while_it_runs(
    browser: Browser, page: Page, embedded_stack: Stack, sweep: dict[str, Any]
) -> None:
    # Opened right after the submit: the rows fill in live, without a reload.
    page.goto(f"{embedded_stack.url}/dashboard#/sweeps/{sweep['id']}")
    expect(page.get_by_test_id("sweep-name")).to_have_text("fix-vanishing")
    expect(page.get_by_test_id("sweep-progress-text")).to_have_text(
        "4/4 finished", timeout=FINISH_TIMEOUT_MS
    )
    rows = page.get_by_test_id("sweep-row")
    expect(rows).to_have_count(4)
    # Grid order: sigmoid/none, sigmoid/batch, relu/none, relu/batch.
    sigmoid_plain = rows.nth(0)
    expect(sigmoid_plain.get_by_test_id("finding-chip-vanishing_gradient")).to_be_visible()
    expect(sigmoid_plain.get_by_test_id("spark-gradient")).to_have_attribute(
        "data-vanished", "true"
    )
    # Batch norm fixes the gradient flow; two epochs leave the runs underfit, which the
    # diagnosis says too (train longer), so the rows are free of vanishing, not of findings.
    for fixed in (rows.nth(1), rows.nth(3)):
        expect(fixed.get_by_test_id("finding-chip-vanishing_gradient")).to_have_count(0)
        expect(fixed.get_by_test_id("finding-chip-underfitting")).to_be_visible()
        expect(fixed.get_by_test_id("spark-gradient")).to_have_attribute("data-vanished", "false")
    assert page.evaluate("document.body.dataset.live") == "events"
    expect(page.get_by_test_id("sweep-points-panel")).to_be_hidden()  # no seeds: no means
    _shot(page, "sweep")


def test_sweep_with_seeds_shows_each_points_mean_and_spread(
    page: Page, embedded_stack: Stack
) -> None:
    base = {
        "data": {"dataset": "moons", "train_size": 128, "val_size": 64},
        "model": {"depth": 1, "width": 8},
        "train": {"epochs": 1, "checkpoint_every": 0},
    }
    body = {"base": base, "grid": {"model.activation": ["relu", "tanh"]}, "seeds": [0, 1]}
    sweep = embedded_stack.client.post("/v1/sweeps", json=body).raise_for_status().json()
    for job in sweep["jobs"]:
        embedded_stack.wait_for(job["id"], {"succeeded"})
    page.goto(f"{embedded_stack.url}/dashboard#/sweeps/{sweep['id']}")
    points = page.get_by_test_id("sweep-point")
    expect(points).to_have_count(2)
    expect(points.nth(0).get_by_test_id("sweep-point-val-acc")).to_contain_text("±")
    seeds = page.get_by_test_id("sweep-row-seed")
    expect(seeds).to_have_count(4)
    expect(seeds.nth(1)).to_have_text("1")
    _shot(page, "sweep-seeds")


def test_sweeps_list_links_to_the_sweep(
    page: Page, embedded_stack: Stack, sweep: dict[str, Any]
) -> None:
    page.goto(f"{embedded_stack.url}/dashboard#/sweeps")
    row = page.locator(f'[data-testid="sweep-row"][data-sweep-id="{sweep["id"]}"]')
    expect(row).to_contain_text("model.activation ∈ {sigmoid, relu}")
    _shot(page, "sweeps")
    row.get_by_test_id("sweep-link").click()
    expect(page.get_by_test_id("sweep-name")).to_have_text("fix-vanishing")


def test_jobs_list_shows_findings_and_filters_by_them(
    page: Page, embedded_stack: Stack, sweep: dict[str, Any]
) -> None:
    for job in sweep["jobs"]:
        embedded_stack.wait_for(job["id"], {"succeeded"})
    asked: list[str] = []
    page.on("request", lambda request: asked.append(request.url))
    page.goto(f"{embedded_stack.url}/dashboard#/jobs")
    vanishing = page.locator(f'[data-testid="job-row"][data-job-id="{sweep["jobs"][0]["id"]}"]')
    expect(vanishing.get_by_test_id("finding-chip-vanishing_gradient")).to_be_visible()
    healthy = page.locator(f'[data-testid="job-row"][data-job-id="{sweep["jobs"][3]["id"]}"]')
    expect(healthy.get_by_test_id("finding-chip-vanishing_gradient")).to_have_count(0)
    expect(healthy.get_by_test_id("finding-chip-underfitting")).to_be_visible()  # 2 epochs
    # The rows carry their findings: the list asks for no diagnosis job by job.
    assert not [url for url in asked if url.endswith("/diagnosis")], asked
    _shot(page, "jobs")

    page.get_by_test_id("finding-filter").select_option("vanishing_gradient")
    expect(page).to_have_url(f"{embedded_stack.url}/dashboard#/jobs?finding=vanishing_gradient")
    expect(vanishing).to_be_visible()
    expect(healthy).to_have_count(0)


def test_job_page_shows_vanishing_gradients_of_the_design_example(
    page: Page, embedded_stack: Stack
) -> None:
    response = embedded_stack.client.post("/v1/jobs", json=EXAMPLE_SPEC)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]
    page.goto(f"{embedded_stack.url}/dashboard")
    row = page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
    expect(row.get_by_test_id("job-link")).to_have_text(EXAMPLE_SPEC["name"])
    row.get_by_test_id("job-link").click()

    expect(page).to_have_url(f"{embedded_stack.url}/dashboard#/jobs/{job_id}")
    expect(page.get_by_test_id("job-status")).to_have_text("succeeded", timeout=FINISH_TIMEOUT_MS)
    expect(page.get_by_test_id("job-progress-text")).to_contain_text("100%")
    expect(page.get_by_test_id("job-val-loss")).not_to_have_text("—")

    expect(page.get_by_test_id("gradient-flow-heatmap")).to_be_visible()
    canvas = page.get_by_test_id("plot-grad-norm").locator("canvas").first
    expect(canvas).to_be_visible()
    box = canvas.bounding_box()
    assert box is not None and box["width"] > 0 and box["height"] > 0, box
    legend = page.get_by_test_id("plot-grad-norm").locator(".u-legend")
    expect(legend).to_contain_text("0 hidden.0.linear")  # layer names, not L0..L20
    expect(page.get_by_test_id("plot-vanishing-note")).to_contain_text("saturated")
    expect(page.get_by_test_id("nonfinite-none")).to_be_visible()

    finding = page.get_by_test_id("finding-vanishing_gradient")
    expect(finding).to_be_visible()
    expect(finding).to_contain_text("critical")
    expect(finding).to_contain_text("Remedy")

    # Only weight layers by default; norm layers come in with the filter (none here).
    expect(page.get_by_test_id("layer-filter-weight")).to_be_checked()
    expect(page.get_by_test_id("layer-filter-norm")).not_to_be_checked()
    with page.expect_download() as download:
        page.get_by_test_id("export-csv-grad_norm").click()
    header = Path(download.value.path()).read_text().splitlines()[0]
    assert header.startswith("step,0 hidden.0.linear,1 hidden.1.linear")
    _shot(page, "job")


def test_job_page_draws_a_diverged_jobs_activations_at_its_last_finite_gradients(
    page: Page, embedded_stack: Stack
) -> None:
    # The page asks for the activation statistics only at the steps it draws them
    # (views/job.js statistics()): here the vanishing picture's step, the last one whose
    # gradient norm is finite, earlier than the job's last recorded step.
    # SGD at the largest learning rate the spec allows: the loss is NaN within an epoch.
    spec = {
        "data": {"dataset": "spirals", "train_size": 256, "val_size": 64},
        "model": {"depth": 3, "width": 32, "activation": "relu"},
        "train": {"epochs": 5, "batch_size": 32, "lr": 10.0, "checkpoint_every": 0},
        "telemetry": {"every_n_steps": 2, "activations": True},
    }
    job_id = embedded_stack.client.post("/v1/jobs", json=spec).json()["id"]
    embedded_stack.wait_for(job_id, {"succeeded", "failed"})
    asked: list[str] = []
    page.on("request", lambda r: asked.append(r.url) if "/gradients?" in r.url else None)
    page.goto(f"{embedded_stack.url}/dashboard#/jobs/{job_id}")
    expect(page.get_by_test_id("nonfinite-table")).to_be_visible()
    note = page.get_by_test_id("plot-vanishing-note")
    expect(note).to_contain_text("Step ")
    match = re.search(r"Step (\d+)\.", note.inner_text())
    assert match is not None, note.inner_text()
    step = int(match.group(1))

    at_step = embedded_stack.client.get(
        f"/v1/jobs/{job_id}/gradients",
        params={"stat": "act_saturation", "from_step": step, "to_step": step},
    )
    expected = {
        s["layer_index"]: s["points"][0]["act_saturation"]
        for s in at_step.raise_for_status().json()["series"]
        if s["points"] and isinstance(s["points"][0]["act_saturation"], float)
    }
    assert expected, "no finite activation statistics at the pictured step"
    with page.expect_download() as download:
        page.get_by_test_id("export-json-vanishing").click()
    rows = json.loads(Path(download.value.path()).read_text())
    saturation = {row["layer"]: list(row.values())[2] for row in rows}
    for layer, value in expected.items():
        assert saturation[layer] == pytest.approx(value), (layer, saturation)
    expect(page.get_by_test_id("plot-activations").locator("canvas").first).to_be_visible()
    # Over steps only what is drawn over steps; the activation statistics at single steps.
    for url in asked:
        query = parse_qs(urlsplit(url).query)
        if "act_saturation" in query["stat"]:
            assert "from_step" in query and query["from_step"] == query.get("to_step"), url
        else:
            assert set(query["stat"]) <= {"grad_norm", "update_ratio", "nan_count", "inf_count"}
    assert len(asked) == 3, asked  # over steps; at the last step; at the pictured step
    _shot(page, "job-diverged")


def test_failed_job_shows_its_error_not_no_problems(page: Page, embedded_stack: Stack) -> None:
    # CUDA asked for on a machine without it: the worker fails the job.
    spec = {"data": {"dataset": "moons"}, "train": {"epochs": 1, "device": "cuda"}}
    job_id = embedded_stack.client.post("/v1/jobs", json=spec).json()["id"]
    job = embedded_stack.wait_for(job_id, {"failed", "succeeded"})
    if job["status"] != "failed":
        pytest.skip("this machine has CUDA: the job did not fail")
    page.goto(f"{embedded_stack.url}/dashboard#/jobs/{job_id}")
    note = page.get_by_test_id("no-findings")
    expect(note).to_contain_text("The job failed:")
    expect(page.get_by_test_id("job-error")).to_be_visible()


def test_try_the_fix_opens_the_linked_job(
    page: Page, embedded_stack: Stack, sweep: dict[str, Any]
) -> None:
    parent = sweep["jobs"][0]["id"]  # sigmoid, no norm: vanishing gradients
    embedded_stack.wait_for(parent, {"succeeded"})
    page.goto(f"{embedded_stack.url}/dashboard#/jobs/{parent}")
    expect(page.get_by_test_id("finding-vanishing_gradient")).to_be_visible()
    button = page.get_by_test_id("retry-suggested")
    if button.count():  # the finding carries a suggested patch: the button applies it
        expect(page.get_by_test_id("patch-vanishing_gradient")).to_be_visible()
        button.click()
        expect(page).not_to_have_url(f"{embedded_stack.url}/dashboard#/jobs/{parent}")
    else:  # rules without patches yet: the same link, made over the API
        fix = {"patch": {"model.activation": "relu", "model.init": "kaiming"}}
        child = embedded_stack.client.post(f"/v1/jobs/{parent}/retry-with", json=fix).json()
        page.goto(f"{embedded_stack.url}/dashboard#/jobs/{child['id']}")
    link = page.get_by_test_id("job-parent")
    expect(link).to_have_text(parent[:12])
    child_id = page.url.rsplit("/", 1)[-1]
    embedded_stack.client.post(f"/v1/jobs/{child_id}/cancel")  # its run is not the point
    _shot(page, "retry")
    link.click()
    expect(page).to_have_url(f"{embedded_stack.url}/dashboard#/jobs/{parent}")


def test_compare_view_overlays_jobs(
    page: Page, embedded_stack: Stack, sweep: dict[str, Any]
) -> None:
    ids = [sweep["jobs"][0]["id"], sweep["jobs"][3]["id"]]
    for job_id in ids:
        embedded_stack.wait_for(job_id, {"succeeded"})
    page.goto(f"{embedded_stack.url}/dashboard#/jobs")
    for job_id in ids:
        page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]').get_by_test_id(
            "job-select"
        ).check()
    page.get_by_test_id("compare-selected").click()
    expect(page.get_by_test_id("compare-job")).to_have_count(2)
    for testid in ("plot-compare-loss", "plot-compare-acc", "plot-compare-stat"):
        expect(page.get_by_test_id(testid).locator("canvas").first).to_be_visible()
    expect(page.get_by_test_id("plot-compare-stat-note")).to_contain_text("hidden.0.linear")
    page.get_by_test_id("compare-stat").select_option("update_ratio")
    expect(page).to_have_url(re.compile(r"#/compare\?jobs=.+&stat=update_ratio&layer=0$"))
    expect(page.get_by_test_id("plot-compare-stat").locator("canvas").first).to_be_visible()
    _shot(page, "compare")
