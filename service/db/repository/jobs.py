"""Queries of the job lifecycle: create, claim, heartbeat, progress, finish, cancel, list."""

from __future__ import annotations

import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import ColumnElement, CursorResult, func, insert, select, update
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.models import Job, JobTag
from service.db.repository import keyset
from service.kit.jsonnum import json_safe
from service.kit.pagination import Position
from service.kit.specpath import SpecPath
from service.specs import ExperimentSpec
from service.vocabulary import FINISHED_STATUSES, JOB_STATUSES, JobStatus


def _rowcount(result: Any) -> int:
    return int(cast("CursorResult[Any]", result).rowcount)


# --- write side -----------------------------------------------------------------------


def create_job(
    *,
    session: Session,
    spec: ExperimentSpec,
    queue: str,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    sweep_id: str | None = None,
    grid_point: Mapping[str, Any] | None = None,
) -> Job:
    job = Job(
        id=uuid.uuid4().hex,
        name=spec.name,
        tags=list(spec.tags),
        status="queued",
        spec=spec.model_dump(mode="json"),
        queue=queue,
        epochs=spec.train.epochs,
        created_at=utcnow(),
        cancel_requested=False,
        idempotency_key=idempotency_key,
        request_hash=request_hash,
        sweep_id=sweep_id,
        grid_point=dict(grid_point) if grid_point is not None else None,
    )
    session.add(job)
    session.flush()
    if spec.tags:
        session.execute(
            insert(JobTag), [{"job_id": job.id, "tag": tag} for tag in dict.fromkeys(spec.tags)]
        )
    return job


def claim_job(*, session: Session, job_id: str, worker: str) -> Job | None:
    """Atomically move a queued job to running; None when it was not queued."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
        .values(status="running", started_at=(now := utcnow()), heartbeat_at=now, worker=worker)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def record_heartbeat(*, session: Session, job_id: str) -> bool:
    """Stamp a running job's heartbeat; False when the job is not running any more."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running")
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


def fail_stale_jobs(*, session: Session, stale_before: datetime) -> list[str]:
    """Fail running jobs whose worker stopped writing heartbeats; return their ids."""
    stale = (
        select(Job.id)
        .where(Job.status == "running", Job.heartbeat_at < stale_before)
        .with_for_update(skip_locked=True)
    )
    job_ids = list(session.scalars(stale))
    if job_ids:
        error = (
            f"worker lost: no heartbeat since before {stale_before.isoformat()} "
            "(the worker process was killed or its machine stopped); resubmit the job"
        )
        session.execute(
            update(Job)
            .where(Job.id.in_(job_ids), Job.status == "running")
            .values(status="failed", error=error, finished_at=utcnow())
            .execution_options(synchronize_session=False)
        )
    return job_ids


def update_progress(*, session: Session, job_id: str, epoch: int, step: int) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(epoch=int(epoch), step=int(step))
        .execution_options(synchronize_session=False)
    )


def finish_job(
    *,
    session: Session,
    job_id: str,
    status: JobStatus,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> bool:
    """Record the outcome; a job that already finished keeps its first outcome (False)."""
    if status not in FINISHED_STATUSES:
        raise ValueError(f"not a final status: {status!r}")
    outcome = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.not_in(FINISHED_STATUSES))
        .values(
            status=status,
            result=json_safe(dict(result)) if result is not None else None,
            error=error,
            finished_at=utcnow(),
        )
        .execution_options(synchronize_session="fetch")
    )
    return _rowcount(outcome) == 1


def is_cancel_requested(*, session: Session, job_id: str) -> bool:
    value = session.scalar(select(Job.cancel_requested).where(Job.id == job_id))
    return bool(value)


def cancel_queued_job(*, session: Session, job_id: str) -> bool:
    """queued -> cancelled in one statement; False when the job was not queued."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued")
        .values(status="cancelled", cancel_requested=True, finished_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    return _rowcount(result) == 1


def request_cancel(*, session: Session, job_id: str) -> bool:
    """Flag a running job; the worker stops it within one step. False if not running."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running")
        .values(cancel_requested=True)
        .execution_options(synchronize_session="fetch")
    )
    return _rowcount(result) == 1


# --- read side ------------------------------------------------------------------------


def get_job(*, session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def get_jobs(*, session: Session, job_ids: Sequence[str]) -> Sequence[Job]:
    """The jobs among ``job_ids`` that exist, in no particular order."""
    return session.scalars(select(Job).where(Job.id.in_(job_ids))).all()


def get_job_by_idempotency_key(*, session: Session, key: str) -> Job | None:
    return session.scalars(select(Job).where(Job.idempotency_key == key)).one_or_none()


def count_jobs_by_status(*, session: Session) -> dict[JobStatus, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    counts: dict[JobStatus, int] = dict.fromkeys(JOB_STATUSES, 0)
    counts.update({status: int(n) for status, n in rows})
    return counts


def count_queued_by_queue(*, session: Session) -> dict[str, int]:
    """Queued jobs per broker queue: the backlog no worker has claimed yet."""
    rows = session.execute(
        select(Job.queue, func.count()).where(Job.status == "queued").group_by(Job.queue)
    ).all()
    return {str(queue): int(n) for queue, n in rows}


def list_recent_run_times(
    *, session: Session, limit: int
) -> list[tuple[JobStatus, datetime, datetime, int]]:
    """(status, started_at, finished_at, steps) of the newest ``limit`` jobs that ran."""
    stmt = (
        select(Job.status, Job.started_at, Job.finished_at, Job.step)
        .where(Job.started_at.is_not(None), Job.finished_at.is_not(None))
        .order_by(Job.finished_at.desc())
        .limit(limit)
    )
    rows = session.execute(stmt).all()
    return [(r[0], r[1], r[2], int(r[3])) for r in rows if r[1] is not None and r[2] is not None]


@dataclass(frozen=True)
class SpecFilter:
    """``path`` inside the stored spec equals ``value`` (None: the field is null)."""

    path: SpecPath
    value: str | int | float | bool | None


def _spec_condition(spec_filter: SpecFilter) -> ColumnElement[bool]:
    # JSON path ops: JSON_EXTRACT on SQLite, #>> on PostgreSQL.
    field = Job.spec[spec_filter.path]
    value = spec_filter.value
    condition: Any
    if value is None:
        condition = field.as_string().is_(None)
    elif isinstance(value, bool):
        condition = field.as_boolean() == value
    elif isinstance(value, int):
        condition = field.as_integer() == value
    elif isinstance(value, float):
        condition = field.as_float() == value
    else:
        condition = field.as_string() == value
    return cast("ColumnElement[bool]", condition)


def list_jobs(
    *,
    session: Session,
    statuses: Sequence[JobStatus] = (),
    tag: str | None = None,
    name: str | None = None,
    spec_filters: Sequence[SpecFilter] = (),
    newest_first: bool = True,
    after: Position | None = None,
    limit: int = 50,
) -> Sequence[Job]:
    """Keyset pagination on (created_at, id); ``after`` is the last row of the previous page."""
    stmt = select(Job)
    if statuses:
        stmt = stmt.where(Job.status.in_(statuses))
    if tag is not None:
        stmt = stmt.where(Job.id.in_(select(JobTag.job_id).where(JobTag.tag == tag)))
    if name is not None:
        stmt = stmt.where(Job.name == name)
    for spec_filter in spec_filters:
        stmt = stmt.where(_spec_condition(spec_filter))
    if after is not None:
        stmt = stmt.where(
            keyset.after(key=Job.created_at, row_id=Job.id, position=after, descending=newest_first)
        )
    order = keyset.order(key=Job.created_at, row_id=Job.id, descending=newest_first)
    return session.scalars(stmt.order_by(*order).limit(limit)).all()
