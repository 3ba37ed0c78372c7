"""/docs and /redoc work on a closed network: every script and style comes from this app."""

from __future__ import annotations

from html.parser import HTMLParser
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.api.app import create_app
from service.keys import hash_key
from tests.service.conftest import make_settings

CONTENT_TYPES = {".js": "javascript", ".css": "text/css", ".png": "image/png"}
# What each asset must contain: the page calls these globals once the script has loaded.
SIGNATURES = {"swagger-ui-bundle.js": b"SwaggerUIBundle", "redoc.standalone.js": b"Redoc"}


class _AssetLinks(HTMLParser):
    """The URLs a page makes the browser fetch: scripts, stylesheets, icons."""

    def __init__(self) -> None:
        super().__init__()
        self.urls: list[str] = []

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        found = dict(attrs)
        url = found.get("src") if tag == "script" else found.get("href") if tag == "link" else None
        if url:
            self.urls.append(url)


def _asset_urls(html: str) -> list[str]:
    parser = _AssetLinks()
    parser.feed(html)
    return parser.urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_docs_page_references_no_external_host(client: TestClient, page: str) -> None:
    response = client.get(page)
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("text/html")
    # No CDN, no Google fonts: nothing the page loads may leave this host.
    assert "http://" not in response.text and "https://" not in response.text
    urls = _asset_urls(response.text)
    assert any(url.endswith(".js") for url in urls), urls
    assert all(url.startswith("/") and not url.startswith("//") for url in urls), urls


@pytest.mark.parametrize("page", ["/docs", "/redoc"])
def test_every_asset_of_a_docs_page_loads_with_its_content_type(
    client: TestClient, page: str
) -> None:
    for url in _asset_urls(client.get(page).text):
        response = client.get(url)
        assert response.status_code == 200, url
        assert CONTENT_TYPES[Path(url).suffix] in response.headers["content-type"], url
        assert SIGNATURES.get(Path(url).name, b"") in response.content, url
        assert response.headers["cache-control"] == "no-cache"


def test_swagger_ui_reads_the_openapi_schema_and_has_its_oauth2_redirect(
    client: TestClient,
) -> None:
    html = client.get("/docs").text
    assert "url: '/openapi.json'" in html
    assert client.get("/openapi.json").json()["paths"]["/v1/jobs"]
    assert "oauth2RedirectUrl: window.location.origin + '/docs/oauth2-redirect'" in html
    redirect = client.get("/docs/oauth2-redirect")
    assert redirect.status_code == 200 and "oauth2" in redirect.text


def test_docs_urls_carry_the_root_path_behind_a_proxy(tmp_path: Path, db_url: str) -> None:
    app = create_app(make_settings(tmp_path, db_url))
    with TestClient(app, root_path="/trainlab") as client:
        urls = _asset_urls(client.get("/docs").text)
    assert urls and all(url.startswith("/trainlab/docs/static/") for url in urls), urls


def test_docs_and_their_assets_need_no_api_key(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, api_keys=[hash_key("k1")])
    with TestClient(create_app(settings)) as client:
        assert client.get("/v1/jobs").status_code == 401
        for page in ("/docs", "/redoc"):
            assert client.get(page).status_code == 200
            for url in _asset_urls(client.get(page).text):
                assert client.get(url).status_code == 200, url


SPEC_MODELS = (
    "ExperimentSpec",
    "DataSpec",
    "AugmentSpec",
    "ModelSpec",
    "TrainSpec",
    "TelemetrySpec",
    "LandscapeSpec",
)


@pytest.fixture(scope="module")
def openapi(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    tmp = tmp_path_factory.mktemp("openapi")
    document: dict[str, Any] = create_app(make_settings(tmp, f"sqlite:///{tmp}/x.db")).openapi()
    return document


def _numeric_bounds(schema: dict[str, Any]) -> tuple[bool, bool]:
    """(has a lower bound, has an upper bound) of a number field, through anyOf [x, null]."""
    options = schema.get("anyOf", [schema])
    numbers = [o for o in options if o.get("type") in ("integer", "number") and "enum" not in o]
    low = all("minimum" in o or "exclusiveMinimum" in o for o in numbers)
    high = all("maximum" in o or "exclusiveMaximum" in o for o in numbers)
    return low, high


@pytest.mark.parametrize("model", SPEC_MODELS)
def test_every_spec_field_has_a_description_a_default_and_a_range(
    openapi: dict[str, Any], model: str
) -> None:
    schema = openapi["components"]["schemas"][model]
    for name, field in schema["properties"].items():
        assert field.get("description"), f"{model}.{name} has no description"
        assert "default" in field or name not in schema.get("required", []), f"{model}.{name}"
        assert _numeric_bounds(field) == (True, True), f"{model}.{name} has no range"


def test_every_parameter_is_described(openapi: dict[str, Any]) -> None:
    missing = [
        f"{method.upper()} {path} {parameter['name']}"
        for path, operations in openapi["paths"].items()
        for method, operation in operations.items()
        for parameter in operation.get("parameters", [])
        if not parameter.get("description")
    ]
    assert missing == []


def test_every_operation_documents_what_it_returns(openapi: dict[str, Any]) -> None:
    """A generated client needs a schema for each success body, and the errors it raises."""
    for path, operations in openapi["paths"].items():
        for method, operation in operations.items():
            where = f"{method.upper()} {path}"
            successes = {c: r for c, r in operation["responses"].items() if c.startswith("2")}
            assert successes, where
            for code, response in successes.items():
                if code == "204":  # No Content: nothing to describe
                    continue
                content = response.get("content", {})
                assert content, where
                for media in content.values():
                    assert media.get("schema"), where
            if path.startswith("/v1/"):
                assert {"401", "403", "429"} <= set(operation["responses"]), where
            if "{job_id}" in path or "{sweep_id}" in path or "{dataset_id}" in path:
                assert "404" in operation["responses"], where
