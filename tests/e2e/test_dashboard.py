"""The dashboard in a real browser: submit the docs/DESIGN.md example, watch it finish, and see
the vanishing-gradient lesson in the plots and the diagnosis."""

from __future__ import annotations

from pathlib import Path

import pytest
from playwright.sync_api import Browser, expect

from service.specs import EXAMPLE_SPEC
from tests.integration.conftest import Stack

pytestmark = [pytest.mark.e2e, pytest.mark.integration]

FINISH_TIMEOUT_MS = 45_000


def test_job_page_shows_vanishing_gradients_of_the_design_example(
    browser: Browser, embedded_stack: Stack, tmp_path: Path
) -> None:
    # browser first: without Chromium the test skips before the stack starts.
    response = embedded_stack.client.post("/v1/jobs", json=EXAMPLE_SPEC)
    assert response.status_code == 201, response.text
    job_id = response.json()["id"]

    page = browser.new_page(viewport={"width": 1360, "height": 900})
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    try:
        page.goto(f"{embedded_stack.url}/dashboard")
        row = page.locator(f'[data-testid="job-row"][data-job-id="{job_id}"]')
        expect(row).to_be_visible()
        expect(row.get_by_test_id("job-link")).to_have_text(EXAMPLE_SPEC["name"])
        row.get_by_test_id("job-link").click()

        expect(page).to_have_url(f"{embedded_stack.url}/dashboard#/jobs/{job_id}")
        expect(page.get_by_test_id("job-status")).to_have_text(
            "succeeded", timeout=FINISH_TIMEOUT_MS
        )
        expect(page.get_by_test_id("job-progress-text")).to_contain_text("100%")

        canvas = page.get_by_test_id("plot-grad-norm").locator("canvas").first
        expect(canvas).to_be_visible()
        box = canvas.bounding_box()
        assert box is not None and box["width"] > 0 and box["height"] > 0, box
        expect(page.get_by_test_id("plot-vanishing").locator("canvas").first).to_be_visible()

        finding = page.get_by_test_id("finding-vanishing_gradient")
        expect(finding).to_be_visible()
        expect(finding).to_contain_text("critical")
        expect(finding).to_contain_text("Remedy")

        page.screenshot(path=tmp_path / "dashboard-job.png", full_page=True)
        assert errors == [], errors
    finally:
        page.close()
