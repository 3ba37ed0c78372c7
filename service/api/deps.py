"""Typed dependencies: ``SettingsDep``, ``SessionDep``, ``SessionFactoryDep``, ``JobDep``
and the API-key check."""

from __future__ import annotations

import secrets
from collections.abc import Iterator
from typing import Annotated

from fastapi import Depends, Header, Path, Request
from sqlalchemy.orm import Session, sessionmaker

from service import jobs
from service.config import Settings
from service.db.models import Job
from service.errors import Forbidden, Unauthorized


def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request. It never commits: the use cases that change something
    commit themselves, and anything left uncommitted is rolled back when it closes."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    with factory() as session:
        yield session


def get_session_factory(request: Request) -> sessionmaker[Session]:
    """Short sessions of their own: for responses that outlive the request (event
    streams) and for checks that run in threads of their own (/readyz)."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]


def get_job(
    job_id: Annotated[str, Path(max_length=64, description="The job's id.")],
    session: SessionDep,
) -> Job:
    return jobs.get_job(session=session, job_id=job_id)


JobDep = Annotated[Job, Depends(get_job)]

IdempotencyKeyDep = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Repeat a POST safely: the same key and body return the same job.",
    ),
]


def require_api_key(
    settings: SettingsDep,
    x_api_key: Annotated[
        str | None,
        Header(
            alias="X-API-Key",
            description="One of the server's API keys, where it has any (TRAINLAB_API_KEYS).",
        ),
    ] = None,
) -> None:
    if not settings.api_keys:
        return
    if not x_api_key:
        raise Unauthorized()
    if not any(
        secrets.compare_digest(x_api_key.encode(), key.encode()) for key in settings.api_keys
    ):
        raise Forbidden()
