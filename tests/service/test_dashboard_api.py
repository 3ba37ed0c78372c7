"""/dashboard: the page and its assets are served, typed, and public like /docs."""

from __future__ import annotations

import posixpath
import re
from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.keys import hash_key
from tests.service.conftest import make_settings

ASSETS = {
    "/dashboard/static/js/main.js": "javascript",
    "/dashboard/static/dashboard.css": "text/css",
    "/dashboard/static/vendor/uplot/uPlot.iife.min.js": "javascript",
    "/dashboard/static/vendor/uplot/uPlot.min.css": "text/css",
}


def test_dashboard_serves_html_that_loads_only_local_assets(client: TestClient) -> None:
    response = client.get("/dashboard")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    html = response.text
    for path in ASSETS:
        assert f'"{path}"' in html, path
    assert "https://" not in html and "http://" not in html  # works offline: no CDN
    assert client.get("/dashboard/", follow_redirects=False).headers["location"] == "/dashboard"


@pytest.mark.parametrize(("path", "content_type"), ASSETS.items())
def test_static_assets_have_their_content_types(
    client: TestClient, path: str, content_type: str
) -> None:
    response = client.get(path)
    assert response.status_code == 200
    assert content_type in response.headers["content-type"]
    assert response.headers["cache-control"] == "no-cache"
    assert response.content


def test_vendored_uplot_ships_its_licence(client: TestClient) -> None:
    assert "MIT License" in client.get("/dashboard/static/vendor/uplot/LICENSE").text


def test_unknown_and_escaping_paths_are_404(client: TestClient) -> None:
    for path in (
        "/dashboard/static/missing.js",
        "/dashboard/static/../routes/dashboard.py",
        "/dashboard/static/%2e%2e/routes/dashboard.py",
        "/dashboard/static/vendor/uplot/../../../app.py",
    ):
        assert client.get(path).status_code == 404, path


def test_dashboard_is_reachable_without_an_api_key(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, api_keys=[hash_key("k1")])
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs").status_code == 401
        for path in ("/dashboard", *ASSETS):
            assert client.get(path).status_code == 200, path


def test_dashboard_is_not_in_the_openapi_schema(client: TestClient) -> None:
    paths = client.get("/openapi.json").json()["paths"]
    assert not [p for p in paths if p.startswith("/dashboard")]


def test_every_module_the_page_imports_is_served(client: TestClient) -> None:
    """ES modules by view, no build step: each relative import resolves to a served file."""
    seen: set[str] = set()
    pending = ["/dashboard/static/js/main.js"]
    while pending:
        path = pending.pop()
        if path in seen:
            continue
        seen.add(path)
        response = client.get(path)
        assert response.status_code == 200, path
        assert "javascript" in response.headers["content-type"], path
        base = path.rsplit("/", 1)[0]
        for module in re.findall(r'from "(\.{1,2}/[^"]+)"', response.text):
            pending.append(posixpath.normpath(f"{base}/{module}"))
    assert {"/dashboard/static/js/views/job.js", "/dashboard/static/js/views/compare.js"} <= seen
