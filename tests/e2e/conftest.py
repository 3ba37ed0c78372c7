"""Browser fixtures for the dashboard tests, over the real embedded stack.

The stack is the integration tests' own fixture (``trainlab up``: API, Celery worker,
SQLite, filesystem broker). Chromium is the system's (Debian package ``chromium``):
Playwright never downloads a browser here. Without it the tests skip with a reason,
except under ``CI=true``, where its absence is a failure.
"""

from __future__ import annotations

import os
import shutil
from collections.abc import Iterator

import pytest
from playwright.sync_api import Browser, sync_playwright

from tests.integration.conftest import embedded_stack, mnist1d_cache  # noqa: F401

CHROMIUM_ARGS = [
    "--no-sandbox",
    "--disable-gpu",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--no-first-run",
]


def _chromium() -> str:
    path = shutil.which("chromium")
    if path is None:
        reason = "chromium is not installed (Debian: apt-get install chromium)"
        if os.environ.get("CI") == "true":
            pytest.fail(f"{reason}; under CI it must be")
        pytest.skip(reason)
    return path


@pytest.fixture(scope="session")
def browser() -> Iterator[Browser]:
    executable = _chromium()
    with sync_playwright() as playwright:
        browser = playwright.chromium.launch(executable_path=executable, args=CHROMIUM_ARGS)
        try:
            yield browser
        finally:
            browser.close()
