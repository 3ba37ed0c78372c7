"""Liveness, readiness and Prometheus metrics (outside /v1, never behind API keys)."""

from __future__ import annotations

import logging

from fastapi import APIRouter, Request, Response
from fastapi.responses import JSONResponse
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from sqlalchemy.exc import SQLAlchemyError

from service import queue
from service.api.deps import SessionDep, SettingsDep
from service.api.schemas import Health
from service.db import repository

logger = logging.getLogger(__name__)

router = APIRouter(tags=["health"])


@router.get("/healthz", response_model=Health, summary="The process is up")
def healthz() -> Health:
    return Health(status="ok")


@router.get(
    "/readyz",
    response_model=Health,
    responses={503: {"model": Health, "description": "A dependency is unreachable"}},
    summary="Database and broker are reachable",
)
def readyz(session: SessionDep, settings: SettingsDep) -> Response:
    checks = {"database": "ok", "broker": "ok"}
    try:
        repository.ping(session=session)
    except SQLAlchemyError:
        logger.warning("database not reachable", exc_info=True)
        checks["database"] = "unreachable"
    if not queue.broker_reachable(settings):
        checks["broker"] = "unreachable"
    ok = all(v == "ok" for v in checks.values())
    body = Health(status="ok" if ok else "unavailable", checks=checks)
    return JSONResponse(body.model_dump(), status_code=200 if ok else 503)


@router.get("/metrics", include_in_schema=False)
def metrics(request: Request) -> Response:
    return Response(
        generate_latest(request.app.state.metrics_registry), media_type=CONTENT_TYPE_LATEST
    )
