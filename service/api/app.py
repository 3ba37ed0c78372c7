"""The FastAPI application: ``create_app(settings)`` wires routers, errors and middleware."""

from __future__ import annotations

import logging
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Iterator, MutableMapping
from contextlib import asynccontextmanager
from typing import Any

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service import jobs
from service.api.deps import require_api_key
from service.api.routes import dashboard, datasets, diagnosis, docs, health, telemetry
from service.api.routes import jobs as job_routes
from service.api.routes import sweeps as sweep_routes
from service.api.schemas.common import error_responses
from service.config import Settings, get_settings
from service.db.session import make_engine, make_session_factory
from service.errors import ServiceError
from service.kit.jsonnum import json_safe

logger = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_PREFIX = "/v1/datasets"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


async def service_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """The one place where typed errors become HTTP responses."""
    assert isinstance(exc, ServiceError)
    return JSONResponse({"detail": exc.detail()}, exc.status_code, headers=exc.headers)


async def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, except that inputs it cannot write as JSON (1e400 parses to inf)
    are echoed as strings instead of turning the 422 into a 500."""
    assert isinstance(exc, RequestValidationError)
    errors = [{**error, "input": json_safe(error.get("input"))} for error in exc.errors()]
    return JSONResponse({"detail": jsonable_encoder(errors)}, 422)


class BodyLimitMiddleware:
    """413 for bodies over the limit, by Content-Length and by the bytes actually sent.

    The body is read here (at most ``limit`` bytes are kept) and replayed to the app, so
    a chunked request cannot get past the limit.
    """

    def __init__(self, app: ASGIApp, *, max_body: int, max_upload: int) -> None:
        self.app, self.max_body, self.max_upload = app, max_body, max_upload

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or scope["method"] not in BODY_METHODS:
            await self.app(scope, receive, send)
            return
        limit = self.max_upload if scope["path"].startswith(UPLOAD_PREFIX) else self.max_body
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        body = await _read_body(receive, limit)
        if body is None:
            await _too_large(limit)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse({"detail": f"request body larger than {limit} bytes"}, 413)


async def _read_body(receive: Receive, limit: int) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class MetricsMiddleware:
    """Request counts and latency by route template and status."""

    def __init__(self, app: ASGIApp, *, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "trainlab_http_requests",
            "HTTP requests",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "trainlab_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_template(scope)
            method = str(scope["method"])
            self.requests.labels(method, route, str(status)).inc()
            self.latency.labels(method, route).observe(time.perf_counter() - start)


def _route_template(scope: Scope) -> str:
    """The matched route's template (``/v1/jobs/{job_id}``): a label of low cardinality."""
    if scope.get("route") is None:
        return "unmatched"
    names = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    parts = str(scope["path"]).split("/")
    return "/".join(f"{{{names[p]}}}" if p in names else p for p in parts)


class JobCountCollector:
    """``trainlab_jobs{status}``: computed from the database at scrape time."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily("trainlab_jobs", "Jobs by status", labels=["status"])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("trainlab_jobs", "Jobs by status", labels=["status"])
        try:
            with self.factory() as session:
                counts = jobs.job_counts(session=session)
        except SQLAlchemyError:
            logger.warning("job counts unavailable", exc_info=True)
            return
        for status, count in counts.items():
            gauge.add_metric([status], count)
        yield gauge


def _v1_router() -> APIRouter:
    router = APIRouter(
        prefix="/v1",
        dependencies=[Depends(require_api_key)],
        responses=error_responses(401, 403),
    )
    router.include_router(job_routes.router)
    router.include_router(telemetry.router)
    router.include_router(diagnosis.router)
    router.include_router(datasets.router)
    router.include_router(sweep_routes.router)
    return router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = make_engine(settings.resolved_database_url)

    @asynccontextmanager
    async def lifespan(_app: FastAPI) -> AsyncIterator[None]:
        yield
        engine.dispose()

    app = FastAPI(
        title="trainlab",
        version="1.0.0",
        summary="Train PyTorch models as jobs and read their per-layer gradient statistics.",
        description="Plots of every job, its statistics and diagnosis: [/dashboard](/dashboard).",
        lifespan=lifespan,
        # Served by routes/docs.py from packaged files: FastAPI's own load from a CDN.
        docs_url=None,
        redoc_url=None,
    )
    app.state.settings = settings
    app.state.session_factory = make_session_factory(engine)
    registry = CollectorRegistry()
    registry.register(JobCountCollector(app.state.session_factory))
    app.state.metrics_registry = registry

    app.add_exception_handler(ServiceError, service_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.include_router(_v1_router())
    app.include_router(health.router)
    app.include_router(dashboard.router)
    app.include_router(docs.router)
    app.add_api_route("/", _to_docs, include_in_schema=False)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body=settings.max_body_bytes,
        max_upload=settings.max_upload_bytes,
    )
    app.add_middleware(MetricsMiddleware, registry=registry)
    return app


def _to_docs() -> RedirectResponse:
    return RedirectResponse("/docs")
