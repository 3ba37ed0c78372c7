"""/dashboard: a read-only single-page dashboard over the /v1 API (static files only).

The page and its assets are public, like /docs: the data comes from /v1, which the page
calls with the API key a person pastes into it. Each file gets its own fixed route (no
``{path:path}`` parameter), so a request for an unknown file is unmatched and the
Prometheus route label stays one value per file that exists.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from pathlib import Path

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse, RedirectResponse
from starlette.staticfiles import StaticFiles

from service import vocabulary

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
STATIC_PREFIX = "/dashboard/static"

# StaticFiles for its lookup, content types and ETag/304 handling; the routing is ours.
_files = StaticFiles(directory=STATIC_DIR)

router = APIRouter(include_in_schema=False)


def _serve(relative: str) -> Callable[[Request], Awaitable[Response]]:
    async def serve(request: Request) -> Response:
        response = await _files.get_response(relative, request.scope)
        # Revalidate on every load: a redeploy must never mix old and new assets.
        response.headers["Cache-Control"] = "no-cache"
        return response

    return serve


def _static_files() -> list[str]:
    return sorted(
        path.relative_to(STATIC_DIR).as_posix()
        for path in STATIC_DIR.rglob("*")
        if path.is_file() and path.name != "index.html"
    )


def _to_dashboard() -> RedirectResponse:
    return RedirectResponse("/dashboard")


def _vocabulary() -> JSONResponse:
    """The words the page shows and branches on, as ``service.vocabulary`` spells them."""
    return JSONResponse(
        {
            "job_statuses": list(vocabulary.JOB_STATUSES),
            "initial_status": vocabulary.INITIAL_STATUS,
            "success_status": vocabulary.SUCCESS_STATUS,
            "failure_status": vocabulary.FAILURE_STATUS,
            "cancelled_status": vocabulary.CANCELLED_STATUS,
            "active_statuses": [
                s for s in vocabulary.JOB_STATUSES if s in vocabulary.ACTIVE_STATUSES
            ],
            "finished_statuses": [
                s for s in vocabulary.JOB_STATUSES if s in vocabulary.FINISHED_STATUSES
            ],
            "layer_kinds": list(vocabulary.LAYER_KINDS),
            "norm_kinds": sorted(vocabulary.NORM_KINDS),
            "weight_kinds": sorted(vocabulary.HIDDEN_WEIGHT_KINDS),
            "saturation_kinds": list(vocabulary.SATURATION_KINDS),
            "data_layouts": list(vocabulary.DATA_LAYOUTS),
        },
        headers={"Cache-Control": "no-cache"},
    )


router.add_api_route("/dashboard", _serve("index.html"), methods=["GET", "HEAD"])
router.add_api_route("/dashboard/", _to_dashboard, methods=["GET"])
router.add_api_route("/dashboard/vocabulary.json", _vocabulary, methods=["GET"])
for _relative in _static_files():
    router.add_api_route(f"{STATIC_PREFIX}/{_relative}", _serve(_relative), methods=["GET", "HEAD"])
