"""The FastAPI application: ``create_app(settings)`` wires routers, errors and middleware."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from typing import Any

import anyio
from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import CollectorRegistry
from sqlalchemy import Engine
from sqlalchemy import exc as sa_exc
from sqlalchemy.pool import QueuePool

from service.api.deps import DatabaseReads, get_principal
from service.api.metrics import JobCountCollector, QueueAndRunCollector
from service.api.middleware import BodyLimitMiddleware, InputGuardMiddleware, MetricsMiddleware
from service.api.routes import (
    compare,
    dashboard,
    datasets,
    diagnosis,
    docs,
    events,
    health,
    plots,
    retry,
    telemetry,
)
from service.api.routes import jobs as job_routes
from service.api.routes import sweeps as sweep_routes
from service.api.schemas.common import error_responses
from service.config import Settings, get_settings
from service.db.session import engine_for, make_session_factory, reading_engine
from service.errors import DatabaseUnavailable, ServiceError
from service.kit import text
from service.kit.jsonnum import json_safe
from service.quotas import RequestLimits

logger = logging.getLogger(__name__)

# Reads at once in worker threads where the pool keeps no fixed number of connections
# (a single-connection SQLite pool in tests, NullPool).
DEFAULT_READ_THREADS = 5

# What a database outage raises: refused, cut, timed out, no pool connection in time.
DATABASE_UNAVAILABLE: tuple[type[Exception], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)


async def service_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """The one place where typed errors become HTTP responses."""
    assert isinstance(exc, ServiceError)
    return JSONResponse({"detail": exc.detail()}, exc.status_code, headers=exc.headers)


async def database_error_handler(request: Request, exc: Exception) -> JSONResponse:
    """An unreachable, cut or timed-out database is a 503 with Retry-After, never a 500
    (other database errors are bugs, and stay 500s)."""
    lost = isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated
    if not (isinstance(exc, DATABASE_UNAVAILABLE) or lost):
        raise exc
    logger.warning("database error in %s %s: %s", request.method, request.url.path, exc)
    return await service_error_handler(request, DatabaseUnavailable())


def _echoable(value: Any) -> Any:
    """An input as a 422 can echo it: non-finite numbers as jsonnum strings (1e400 parses
    to inf), NUL and lone surrogates replaced (they cannot be written as UTF-8)."""
    value = json_safe(value)
    if isinstance(value, str):
        return text.printable(value)
    if isinstance(value, dict):
        return {text.printable(str(k)): _echoable(v) for k, v in value.items()}
    if isinstance(value, list):
        return [_echoable(v) for v in value]
    return value


async def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, with every echoed input made writable (see ``_echoable``), so that
    no input can turn the 422 into a 500."""
    assert isinstance(exc, RequestValidationError)
    errors = [
        {**error, "input": _echoable(error.get("input")), "msg": text.printable(error["msg"])}
        for error in exc.errors()
    ]
    return JSONResponse({"detail": _echoable(jsonable_encoder(errors))}, 422)


def _v1_router() -> APIRouter:
    router = APIRouter(
        prefix="/v1",
        dependencies=[Depends(get_principal)],
        responses=error_responses(401, 403, 429),
    )
    router.include_router(job_routes.router)
    router.include_router(telemetry.router)
    router.include_router(diagnosis.router)
    router.include_router(datasets.router)
    router.include_router(sweep_routes.router)
    router.include_router(plots.router)
    router.include_router(events.router)
    router.include_router(compare.router)
    router.include_router(retry.router)
    return router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    # Requests do not ping each connection they check out (see service.db.session).
    engine = engine_for(settings, ping="idle")

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
    app.state.key_entries = settings.key_entries
    app.state.request_limits = RequestLimits.from_strings(
        requests=settings.rate_limit,
        auth_failures=settings.auth_failure_limit,
        storage_url=settings.rate_limit_storage_url,
    )
    app.state.session_factory = make_session_factory(engine)
    app.state.database_reads = DatabaseReads(
        reading_engine(engine), anyio.CapacityLimiter(_pooled_connections(engine))
    )
    registry = CollectorRegistry()
    registry.register(JobCountCollector(app.state.session_factory))
    registry.register(QueueAndRunCollector(app.state.session_factory))
    app.state.metrics_registry = registry

    app.add_exception_handler(ServiceError, service_error_handler)
    for unavailable in (*DATABASE_UNAVAILABLE, sa_exc.DBAPIError):
        app.add_exception_handler(unavailable, database_error_handler)
    app.add_exception_handler(RequestValidationError, validation_error_handler)
    app.include_router(_v1_router())
    app.include_router(health.router)
    app.include_router(dashboard.router)
    app.include_router(docs.router)
    app.add_api_route("/", _to_dashboard, include_in_schema=False)
    # The last added runs first: metrics, then body limits and timeouts, then hygiene.
    app.add_middleware(InputGuardMiddleware)
    app.add_middleware(
        BodyLimitMiddleware,
        max_body=settings.max_body_bytes,
        max_upload=settings.max_upload_bytes,
        read_timeout_s=settings.body_read_timeout_s,
        total_timeout_s=settings.body_total_timeout_s,
    )
    app.add_middleware(MetricsMiddleware, registry=registry)
    return app


def _pooled_connections(engine: Engine) -> int:
    """How many connections ``engine``'s pool keeps open between requests."""
    pool = engine.pool
    return pool.size() if isinstance(pool, QueuePool) else DEFAULT_READ_THREADS


def _to_dashboard() -> RedirectResponse:
    return RedirectResponse("/dashboard")
