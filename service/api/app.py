"""The FastAPI application: ``create_app(settings)`` wires routers, errors and middleware."""

from __future__ import annotations

import logging
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import APIRouter, Depends, FastAPI, Request
from fastapi.encoders import jsonable_encoder
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, RedirectResponse
from prometheus_client import CollectorRegistry
from sqlalchemy import exc as sa_exc

from service.api.deps import require_api_key
from service.api.metrics import JobCountCollector, QueueAndRunCollector
from service.api.middleware import BodyLimitMiddleware, MetricsMiddleware
from service.api.routes import (
    compare,
    dashboard,
    datasets,
    diagnosis,
    docs,
    events,
    health,
    plots,
    telemetry,
)
from service.api.routes import jobs as job_routes
from service.api.routes import sweeps as sweep_routes
from service.api.schemas.common import error_responses
from service.config import Settings, get_settings
from service.db.session import engine_for, make_session_factory
from service.errors import DatabaseUnavailable, ServiceError
from service.kit.jsonnum import json_safe

logger = logging.getLogger(__name__)

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


async def validation_error_handler(_request: Request, exc: Exception) -> JSONResponse:
    """FastAPI's 422, except that inputs it cannot write as JSON (1e400 parses to inf)
    are echoed as strings instead of turning the 422 into a 500."""
    assert isinstance(exc, RequestValidationError)
    errors = [{**error, "input": json_safe(error.get("input"))} for error in exc.errors()]
    return JSONResponse({"detail": jsonable_encoder(errors)}, 422)


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
    router.include_router(plots.router)
    router.include_router(events.router)
    router.include_router(compare.router)
    return router


def create_app(settings: Settings | None = None) -> FastAPI:
    settings = settings or get_settings()
    engine = engine_for(settings)

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
    app.add_middleware(
        BodyLimitMiddleware,
        max_body=settings.max_body_bytes,
        max_upload=settings.max_upload_bytes,
    )
    app.add_middleware(MetricsMiddleware, registry=registry)
    return app


def _to_dashboard() -> RedirectResponse:
    return RedirectResponse("/dashboard")
