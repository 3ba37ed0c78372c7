"""/docs (Swagger UI) and /redoc, with their scripts and styles served by this app.

FastAPI's own pages load Swagger UI and ReDoc from a CDN, which leaves a blank page on a
closed network. The same pages (FastAPI's ``get_swagger_ui_html`` and ``get_redoc_html``)
here point at the dist files that the ``fastapi-offline`` package ships. Like /dashboard,
the pages and their assets are public: what they show comes from /openapi.json, and the
API key is pasted into Swagger UI's *Authorize*.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable

from fastapi import APIRouter, FastAPI, Request, Response
from fastapi.openapi.docs import (
    get_redoc_html,
    get_swagger_ui_html,
    get_swagger_ui_oauth2_redirect_html,
)
from fastapi.responses import HTMLResponse
from starlette.staticfiles import StaticFiles

DOCS_URL = "/docs"
OAUTH2_REDIRECT_URL = "/docs/oauth2-redirect"
REDOC_URL = "/redoc"
ASSET_PREFIX = "/docs/static"
SWAGGER_JS = "swagger-ui-bundle.js"
SWAGGER_CSS = "swagger-ui.css"
REDOC_JS = "redoc.standalone.js"
FAVICON = "favicon.png"

# StaticFiles finds the package's folder and does content types and ETag/304 for us.
_files = StaticFiles(packages=[("fastapi_offline", "static")])

router = APIRouter(include_in_schema=False)


def _root(request: Request) -> str:
    # Behind a proxy that mounts the app under a prefix, every URL carries that prefix.
    return str(request.scope.get("root_path", "")).rstrip("/")


def _asset(request: Request, name: str) -> str:
    return f"{_root(request)}{ASSET_PREFIX}/{name}"


def _openapi_url(app: FastAPI, request: Request) -> str:
    assert app.openapi_url is not None  # the docs pages exist only with a schema
    return _root(request) + app.openapi_url


@router.get(DOCS_URL)
def swagger_ui(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    return get_swagger_ui_html(
        openapi_url=_openapi_url(app, request),
        title=f"{app.title} - Swagger UI",
        swagger_js_url=_asset(request, SWAGGER_JS),
        swagger_css_url=_asset(request, SWAGGER_CSS),
        swagger_favicon_url=_asset(request, FAVICON),
        oauth2_redirect_url=_root(request) + OAUTH2_REDIRECT_URL,
        init_oauth=app.swagger_ui_init_oauth,
        swagger_ui_parameters=app.swagger_ui_parameters,
    )


@router.get(OAUTH2_REDIRECT_URL)
def swagger_ui_oauth2_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get(REDOC_URL)
def redoc(request: Request) -> HTMLResponse:
    app: FastAPI = request.app
    return get_redoc_html(
        openapi_url=_openapi_url(app, request),
        title=f"{app.title} - ReDoc",
        redoc_js_url=_asset(request, REDOC_JS),
        redoc_favicon_url=_asset(request, FAVICON),
        # Its default pulls fonts from Google; the system fonts do on a closed network.
        with_google_fonts=False,
    )


def _serve(name: str) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        response = await _files.get_response(name, request.scope)
        # Revalidate (a cheap 304): an upgraded package must never mix old and new files.
        response.headers["Cache-Control"] = "no-cache"
        return response

    return serve


# One fixed route per file (as /dashboard does): the Prometheus route label stays one
# value per asset, and nothing else in the package's folder is reachable.
for _name in (SWAGGER_JS, SWAGGER_CSS, REDOC_JS, FAVICON):
    router.add_api_route(f"{ASSET_PREFIX}/{_name}", _serve(_name), methods=["GET", "HEAD"])
