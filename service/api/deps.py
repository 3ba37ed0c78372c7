"""Typed dependencies: ``SettingsDep``, ``SessionDep``, ``SessionFactoryDep``,
``DatabaseReadsDep``, ``PrincipalDep`` (who is calling, checked and rate-limited here),
and ``JobDep``, ``SweepDep``, ``DatasetDep``.

Every route that takes an id takes it through one of the last three, which look the row
up *as the caller*: another owner's id is a 404, exactly like an unknown one (a 403 would
tell that the id exists).
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from dataclasses import dataclass
from functools import partial
from typing import Annotated, Any, TypeVar

import anyio
from fastapi import Depends, Header, Path, Request
from sqlalchemy import Engine
from sqlalchemy.orm import Session, sessionmaker

from service import datasets, jobs, keys, sweeps
from service.config import Settings
from service.db.models import Dataset, Job, Sweep
from service.errors import Forbidden, Unauthorized
from service.keys import Principal
from service.quotas import RequestLimits

# The dependencies that do no I/O are coroutines: FastAPI runs each sync dependency in a
# worker thread of its own, and those hand-offs were most of the cost of a job read.


async def get_app_settings(request: Request) -> Settings:
    settings: Settings = request.app.state.settings
    return settings


def get_session(request: Request) -> Iterator[Session]:
    """One session per request. It never commits: the use cases that change something
    commit themselves, and anything left uncommitted is rolled back when it closes."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    with factory() as session:
        yield session


async def get_session_factory(request: Request) -> sessionmaker[Session]:
    """Short sessions of their own: for responses that outlive the request (event
    streams) and for checks that run in threads of their own (/readyz)."""
    factory: sessionmaker[Session] = request.app.state.session_factory
    return factory


T = TypeVar("T")


@dataclass(frozen=True)
class DatabaseReads:
    """Runs blocking reads in worker threads, no more at once than the pool keeps
    connections. With 50 polling clients, up to 40 threads (anyio's default) reached for
    a pool of 5: they queued on the pool's lock, and each connection past the five was
    opened for one read and closed after it (on PostgreSQL a new server session each
    time). Past the limit, a read now waits on the event loop instead, for free."""

    engine: Engine  # session.reading_engine
    limiter: anyio.CapacityLimiter

    async def run(self, read: Callable[..., T], /, **kwargs: Any) -> T:
        return await anyio.to_thread.run_sync(partial(read, **kwargs), limiter=self.limiter)


async def get_database_reads(request: Request) -> DatabaseReads:
    reads: DatabaseReads = request.app.state.database_reads
    return reads


SettingsDep = Annotated[Settings, Depends(get_app_settings)]
SessionDep = Annotated[Session, Depends(get_session)]
SessionFactoryDep = Annotated[sessionmaker[Session], Depends(get_session_factory)]
DatabaseReadsDep = Annotated[DatabaseReads, Depends(get_database_reads)]


def _client_address(request: Request) -> str:
    return request.client.host if request.client else "unknown"


async def get_principal(
    request: Request,
    x_api_key: Annotated[
        str | None,
        Header(
            alias="X-API-Key",
            description="An API key of this server, where it has any (TRAINLAB_API_KEYS, "
            "TRAINLAB_ADMIN_KEYS): the caller sees only what its key made.",
        ),
    ] = None,
) -> Principal:
    """The caller: the principal of its key, or the open principal with keys off.

    An address that sent too many wrong keys gets a 429 before its key is compared. A
    missing key is a 401 and does not count as a guess (a dashboard opened before its key
    is pasted must not lock itself out); a wrong one is a 403 and does. Then each
    principal (each client address with keys off) gets ``rate_limit`` requests.

    All on the event loop: the key check hashes a few bytes, and the rate counters are
    asyncio's (in memory, or in Redis without blocking the loop).
    """
    # From the app's state, not through SettingsDep: one dependency less to solve on
    # every request (each costs FastAPI a few microseconds of bookkeeping).
    settings: Settings = request.app.state.settings
    limits: RequestLimits = request.app.state.request_limits
    address = _client_address(request)
    if not settings.keys_enabled:
        await limits.hit_request(f"address:{address}")
        return keys.OPEN
    await limits.check_not_blocked(address)
    if not x_api_key:
        raise Unauthorized()
    principal = keys.authenticate(x_api_key, request.app.state.key_entries)
    if principal is None:
        await limits.count_auth_failure(address)
        raise Forbidden()
    await limits.hit_request(f"principal:{principal.id}")
    return principal


PrincipalDep = Annotated[Principal, Depends(get_principal)]


JobIdPath = Annotated[str, Path(max_length=64, description="The job's id.")]
IfNoneMatchDep = Annotated[
    str | None,
    Header(
        alias="If-None-Match",
        max_length=2000,
        description="ETags of representations the client holds: a 304 with no body when "
        "one of them is still current.",
    ),
]


def get_job(
    job_id: JobIdPath,
    session: SessionDep,
    principal: PrincipalDep,
) -> Job:
    return jobs.get_job(session=session, job_id=job_id, principal=principal)


def get_sweep(
    sweep_id: Annotated[str, Path(max_length=64, description="The sweep's id.")],
    session: SessionDep,
    principal: PrincipalDep,
) -> Sweep:
    return sweeps.get_sweep(session=session, sweep_id=sweep_id, principal=principal)


def get_dataset(
    dataset_id: Annotated[str, Path(max_length=64, description="The dataset's id (ds_...).")],
    session: SessionDep,
    principal: PrincipalDep,
) -> Dataset:
    return datasets.get_dataset(session=session, dataset_id=dataset_id, principal=principal)


JobDep = Annotated[Job, Depends(get_job)]
SweepDep = Annotated[Sweep, Depends(get_sweep)]
DatasetDep = Annotated[Dataset, Depends(get_dataset)]

IdempotencyKeyDep = Annotated[
    str | None,
    Header(
        alias="Idempotency-Key",
        min_length=1,
        max_length=200,
        description="Repeat a POST safely: the same key and body return the same job "
        "(keys are per API key: another key's equal string is another job).",
    ),
]
