"""Liveness, readiness and Prometheus metrics (outside /v1, never behind API keys)."""

from __future__ import annotations

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from service import health
from service.api.deps import SessionFactoryDep, SettingsDep
from service.api.schemas.health import Health

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is unreachable"}},
    summary="Database and broker are reachable, and a worker is alive",
    description="Answers within `readiness_timeout_s` (0.8 s) whatever hangs; a check "
    "that has not answered by then counts as failed.",
)
def readyz(session_factory: SessionFactoryDep, settings: SettingsDep) -> Response:
    checks = health.readiness(session_factory=session_factory, settings=settings)
    ok = all(v == health.OK for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST
    )
