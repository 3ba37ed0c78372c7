"""Queries of the job lifecycle: create, send, claim, guard and lease, release, progress,
finish, cancel, list; and the rows of live worker processes."""

from __future__ import annotations

import json
import math
import operator
import uuid
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any, Literal, cast

from sqlalchemy import (
    ColumnElement,
    Connection,
    CursorResult,
    Row,
    Select,
    bindparam,
    case,
    delete,
    exists,
    func,
    insert,
    literal,
    or_,
    select,
    text,
    tuple_,
    update,
)
from sqlalchemy import cast as sql_cast
from sqlalchemy.dialects.postgresql import JSONPATH
from sqlalchemy.orm import Session, aliased

from service.db.base import utcnow
from service.db.models import JOB_FIELD_STRING_MAX, Job, JobField, JobTag, WorkerNode
from service.db.repository import keyset
from service.errors import StaleAttempt
from service.kit.jsonnum import json_safe
from service.kit.pagination import Position
from service.kit.specpath import SpecPath, value_at
from service.specs import ExperimentSpec
from service.vocabulary import (
    ACTIVE_STATUSES,
    FINISHED_STATUSES,
    JOB_STATUSES,
    FieldKind,
    FilterOp,
    JobStatus,
)


def _rowcount(result: Any) -> int:
    return int(cast("CursorResult[Any]", result).rowcount)


# --- write side -----------------------------------------------------------------------


def create_job(
    *,
    session: Session,
    owner: str,
    spec: ExperimentSpec,
    queue: str,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
    sweep_id: str | None = None,
    grid_point: Mapping[str, Any] | None = None,
    max_attempts: int = 3,
    parent_id: str | None = None,
) -> Job:
    job = Job(
        id=uuid.uuid4().hex,
        owner=owner,
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
        attempt=0,
        max_attempts=max_attempts,
        preemptions=0,
        parent_id=parent_id,
    )
    session.add(job)
    session.flush()
    _write_fields(session, job_id=job.id, owner=owner, document=job.spec, prefix="")
    if spec.tags:
        session.execute(
            insert(JobTag), [{"job_id": job.id, "tag": tag} for tag in dict.fromkeys(spec.tags)]
        )
    return job


# A result field's name in ``job_field`` (and in search): ``result.val_acc``.
RESULT_FIELD = "result."


def _scalar_fields(document: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in document.items():
        if isinstance(value, Mapping):
            yield from _scalar_fields(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def job_field_rows(
    *, job_id: str, owner: str, document: Mapping[str, Any], prefix: str
) -> list[dict[str, Any]]:
    """The numbers and strings of a spec (``prefix`` "") or result (``RESULT_FIELD``)
    document as ``job_field`` rows; booleans, nulls, lists and NaN (a string) have none."""
    rows: list[dict[str, Any]] = []
    for path, value in _scalar_fields(document, prefix):
        row: dict[str, Any] = {
            "job_id": job_id,
            "path": path,
            "owner": owner,
            "number": None,
            "string": None,
        }
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):  # never here (json_safe spells them), but cheap
                continue
            row["number"] = value
        elif isinstance(value, str) and len(value) <= JOB_FIELD_STRING_MAX:
            row["string"] = value
        else:
            continue
        rows.append(row)
    return rows


def _write_fields(
    session: Session, *, job_id: str, owner: str, document: Mapping[str, Any], prefix: str
) -> None:
    rows = job_field_rows(job_id=job_id, owner=owner, document=document, prefix=prefix)
    if rows:
        session.execute(insert(JobField), rows)


def mark_enqueued(*, session: Session, job_ids: Sequence[str], sent: bool) -> None:
    """Stamp when queued jobs reached the broker; ``sent=False`` clears the stamp, so
    the reconciler sends them again at its next sweep."""
    if not job_ids:
        return
    session.execute(
        update(Job)
        .where(Job.id.in_(job_ids), Job.status == "queued")
        .values(enqueued_at=utcnow() if sent else None)
        .execution_options(synchronize_session=False)
    )


def take_jobs_to_resend(*, session: Session, sent_before: datetime, limit: int = 100) -> list[Job]:
    """Queued jobs never sent, or sent before ``sent_before`` and still unclaimed (their
    message was lost, e.g. with a broker restart). They are stamped as sent now, in this
    transaction, so that of several reconcilers only one sends each."""
    due = (
        select(Job)
        .where(
            Job.status == "queued",
            Job.cancel_requested.is_(False),
            or_(Job.enqueued_at.is_(None), Job.enqueued_at < sent_before),
        )
        .order_by(Job.created_at)
        .limit(limit)
        .with_for_update(skip_locked=True)
    )
    jobs = list(session.scalars(due))
    mark_enqueued(session=session, job_ids=[job.id for job in jobs], sent=True)
    return jobs


def claim_job(
    *,
    session: Session,
    job_id: str,
    worker: str,
    worker_id: str | None = None,
    worker_pid: int | None = None,
    lease_s: float = 30.0,
) -> Job | None:
    """Atomically move a queued job to running as its next attempt; None when it was not
    queued (a duplicate or late delivery: harmless)."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
        .values(
            status="running",
            attempt=Job.attempt + 1,
            started_at=func.coalesce(Job.started_at, now),
            heartbeat_at=now,
            lease_expires_at=now + timedelta(seconds=lease_s),
            worker=worker,
            worker_id=worker_id,
            worker_pid=worker_pid,
        )
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def guard_attempt(*, session: Session, job_id: str, attempt: int) -> None:
    """Open a worker's write transaction: lock the job row if ``attempt`` is still the
    running one, else raise :class:`StaleAttempt`.

    Every write of a worker starts with this, whatever it then writes (multi-row
    inserts, COPY): the reaper's requeue takes the same row lock, so either it waits for
    this transaction or this one sees the new attempt and writes nothing. PostgreSQL:
    ``FOR NO KEY UPDATE`` (the inserts' foreign-key checks still share the row). SQLite
    has one writer at a time, but a plain SELECT takes no lock there, so a no-op UPDATE
    takes the database's write lock first and its row count answers the question.
    """
    current = (Job.id == job_id, Job.attempt == attempt, Job.status == "running")
    if session.get_bind().dialect.name == "sqlite":
        result = session.execute(
            update(Job)
            .where(*current)
            .values(attempt=Job.attempt)
            .execution_options(synchronize_session=False)
        )
        found = _rowcount(result) == 1
    else:
        locked = select(Job.id).where(*current).with_for_update(key_share=True)
        found = session.scalar(locked) is not None
    if not found:
        raise StaleAttempt(job_id, attempt)


def renew_lease(*, session: Session, job_id: str, attempt: int, lease_s: float) -> bool:
    """The running attempt's heartbeat: stamp it and push its lease out. False when the
    attempt is not the job's running one any more (it must stop)."""
    now = utcnow()
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.attempt == attempt, Job.status == "running")
        .values(heartbeat_at=now, lease_expires_at=now + timedelta(seconds=lease_s))
        .execution_options(synchronize_session=False)
    )
    return _rowcount(result) == 1


@dataclass(frozen=True)
class Released:
    """A running attempt taken back: the job is ``queued`` again or, out of attempts,
    finished (``failed``, or ``cancelled`` when a cancel was pending)."""

    job_id: str
    attempt: int
    status: JobStatus
    queue: str


def _release(session: Session, job: Job, reason: str, *, counted: bool) -> Released | None:
    """Requeue one locked running job, or finish it when its attempts are used up."""
    used = job.attempt - job.preemptions - (0 if counted else 1)
    status: JobStatus
    values: dict[str, Any] = {
        "lease_expires_at": None,
        "enqueued_at": None,
        "worker_pid": None,
    }
    if job.cancel_requested:
        status = "cancelled"
        values.update(finished_at=utcnow())
    elif used >= job.max_attempts:
        status = "failed"
        values.update(
            finished_at=utcnow(),
            error=f"{reason}; that was attempt {job.attempt}, the last of "
            f"{job.max_attempts}: giving up (resubmit the job to try again)",
        )
    else:
        status = "queued"
        values.update(error=f"{reason}; requeued for attempt {job.attempt + 1}")
    if not counted:
        values.update(preemptions=Job.preemptions + 1)
    result = session.execute(
        update(Job)
        .where(Job.id == job.id, Job.attempt == job.attempt, Job.status == "running")
        .values(status=status, **values)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        return None
    return Released(job_id=job.id, attempt=job.attempt, status=status, queue=job.queue)


def _locked_running(session: Session, *conditions: ColumnElement[bool]) -> list[Job]:
    stmt = (
        select(Job)
        .where(Job.status == "running", *conditions)
        .with_for_update(skip_locked=True)
        .execution_options(populate_existing=True)
    )
    return list(session.scalars(stmt))


def expire_leases(*, session: Session, now: datetime) -> list[Released]:
    """Requeue (or, after their last attempt, fail) running jobs whose lease expired."""
    released = []
    for job in _locked_running(session, Job.lease_expires_at < now):
        lost = job.lease_expires_at or now
        reason = (
            f"worker lost: {job.worker or 'its worker'} stopped renewing the lease at "
            f"{lost.isoformat(timespec='seconds')} (killed, paused or cut off)"
        )
        if (outcome := _release(session, job, reason, counted=True)) is not None:
            released.append(outcome)
    return released


def release_attempt(
    *, session: Session, job_id: str, attempt: int, reason: str, counted: bool = True
) -> Released | None:
    """Take back one running attempt now (its process died, or it stopped gracefully:
    ``counted=False`` does not use up an attempt). None if it is not running any more."""
    jobs = _locked_running(session, Job.id == job_id, Job.attempt == attempt)
    return _release(session, jobs[0], reason, counted=counted) if jobs else None


@dataclass(frozen=True)
class RunningAttempt:
    job_id: str
    attempt: int
    worker_id: str | None
    worker_pid: int | None


def list_running_attempts(*, session: Session, worker_ids: Sequence[str]) -> list[RunningAttempt]:
    """The running jobs claimed by these worker processes."""
    if not worker_ids:
        return []
    rows = session.execute(
        select(Job.id, Job.attempt, Job.worker_id, Job.worker_pid).where(
            Job.status == "running", Job.worker_id.in_(worker_ids)
        )
    ).all()
    return [RunningAttempt(*row) for row in rows]


def record_checkpoint(*, session: Session, job_id: str, name: str) -> str | None:
    """Point the job at its newest checkpoint (inside a guarded transaction); returns the
    checkpoint it replaces."""
    previous = session.scalar(select(Job.checkpoint).where(Job.id == job_id))
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(checkpoint=name)
        .execution_options(synchronize_session=False)
    )
    return previous


# --- worker processes -------------------------------------------------------------------


def beat_worker(*, session: Session, worker_id: str, hostname: str, pid: int, queues: str) -> None:
    """Insert or refresh a live worker process's row."""
    now = utcnow()
    result = session.execute(
        update(WorkerNode)
        .where(WorkerNode.id == worker_id)
        .values(heartbeat_at=now)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) == 0:
        session.add(
            WorkerNode(
                id=worker_id,
                hostname=hostname,
                pid=pid,
                queues=queues,
                started_at=now,
                heartbeat_at=now,
            )
        )
        session.flush()


def forget_workers(*, session: Session, worker_ids: Sequence[str]) -> None:
    if worker_ids:
        session.execute(delete(WorkerNode).where(WorkerNode.id.in_(worker_ids)))


def list_workers(*, session: Session, hostname: str | None = None) -> Sequence[WorkerNode]:
    stmt = select(WorkerNode)
    if hostname is not None:
        stmt = stmt.where(WorkerNode.hostname == hostname)
    return session.scalars(stmt.order_by(WorkerNode.started_at)).all()


def count_live_workers(*, session: Session, beat_after: datetime) -> int:
    stmt = select(func.count()).where(WorkerNode.heartbeat_at >= beat_after)
    return int(session.scalar(stmt) or 0)


def update_progress(*, session: Session, job_id: str, epoch: int, step: int) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(epoch=int(epoch), step=int(step))
        .execution_options(synchronize_session=False)
    )


def set_findings(*, session: Session, job_id: str, findings: Sequence[Mapping[str, Any]]) -> None:
    """The diagnosis in brief on the job row, for its reads (the worker keeps it current)."""
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(findings=[json_safe(dict(f)) for f in findings])
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
    stored = json_safe(dict(result)) if result is not None else None
    outcome = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status.not_in(FINISHED_STATUSES))
        .values(status=status, result=stored, error=error, finished_at=utcnow())
        .execution_options(synchronize_session="fetch")
    )
    if _rowcount(outcome) != 1:
        return False
    if stored is not None:
        owner = session.scalars(select(Job.owner).where(Job.id == job_id)).one()
        _write_fields(session, job_id=job_id, owner=owner, document=stored, prefix=RESULT_FIELD)
    return True


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


def get_job(*, session: Session, job_id: str, owner: str | None) -> Job | None:
    """The job, if ``owner`` owns it (None: whoever does)."""
    job = session.get(Job, job_id)
    if job is None or (owner is not None and job.owner != owner):
        return None
    return job


# What a job read shows (``JobRead``): no idempotency keys, leases or worker pids.
JOB_READ_COLUMNS = (
    Job.id,
    Job.owner,
    Job.name,
    Job.tags,
    Job.status,
    Job.spec,
    Job.epoch,
    Job.epochs,
    Job.step,
    Job.total_steps,
    Job.result,
    Job.error,
    Job.created_at,
    Job.started_at,
    Job.finished_at,
    Job.heartbeat_at,
    Job.worker,
    Job.device,
    Job.queue,
    Job.cancel_requested,
    Job.attempt,
    Job.max_attempts,
    Job.parent_id,
    Job.findings,
)


def _job_read_statement(*, owned: bool) -> Select[Any]:
    # The table's own columns (no ORM entity to load rows into) and bound parameters: the
    # statement is built and its cache key computed once, not per read. Building
    # select(24 columns) and keying it cost more than the query itself on SQLite.
    table = Job.__table__
    stmt = select(*(table.c[column.key] for column in JOB_READ_COLUMNS))
    stmt = stmt.where(table.c.id == bindparam("job_id"))
    return stmt.where(table.c.owner == bindparam("owner")) if owned else stmt


_READ_ANY_JOB = _job_read_statement(owned=False)
_READ_OWN_JOB = _job_read_statement(owned=True)


def read_job(*, connection: Connection, job_id: str, owner: str | None) -> Row[Any] | None:
    """The columns of a job read (``JOB_READ_COLUMNS``, by their names), if ``owner`` owns
    the job (None: whoever does): one narrow SELECT on a bare connection, no session and
    no ORM object, for status polling."""
    if owner is None:
        return connection.execute(_READ_ANY_JOB, {"job_id": job_id}).one_or_none()
    params = {"job_id": job_id, "owner": owner}
    return connection.execute(_READ_OWN_JOB, params).one_or_none()


def get_jobs(*, session: Session, job_ids: Sequence[str], owner: str | None) -> Sequence[Job]:
    """The jobs among ``job_ids`` that exist and ``owner`` owns (None: whoever does), in
    no particular order."""
    stmt = select(Job).where(Job.id.in_(job_ids))
    if owner is not None:
        stmt = stmt.where(Job.owner == owner)
    return session.scalars(stmt).all()


def get_job_by_idempotency_key(*, session: Session, owner: str, key: str) -> Job | None:
    stmt = select(Job).where(Job.owner == owner, Job.idempotency_key == key)
    return session.scalars(stmt).one_or_none()


def lock_owner(*, session: Session, owner: str) -> None:
    """Serialize one owner's quota checks until the transaction ends.

    PostgreSQL: a transaction-scoped advisory lock on the owner. SQLite has one writer at
    a time: the check's transaction writes the new rows before it commits, which holds
    the database's write lock, so nothing to do here.
    """
    if session.get_bind().dialect.name == "postgresql":
        session.execute(text("SELECT pg_advisory_xact_lock(hashtext(:owner))"), {"owner": owner})


def count_active_jobs(*, session: Session, owner: str) -> int:
    stmt = select(func.count()).where(Job.owner == owner, Job.status.in_(sorted(ACTIVE_STATUSES)))
    return int(session.scalar(stmt) or 0)


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
class FieldRef:
    """A scalar field of a job's spec or result document, and how it compares."""

    document: Literal["spec", "result"]
    path: SpecPath
    kind: FieldKind


@dataclass(frozen=True)
class FieldFilter:
    """``field op value``; ``value`` None (with = or != only): the field is null or absent."""

    field: FieldRef
    op: FilterOp
    value: str | int | float | bool | None


@dataclass(frozen=True)
class SortKey:
    """Order by a field (None: by creation time), then by id; absent values go last."""

    field: FieldRef | None
    descending: bool


_SQL_OPS: dict[FilterOp, Callable[[Any, Any], Any]] = {
    "=": operator.eq,
    "!=": operator.ne,
    "<": operator.lt,
    "<=": operator.le,
    ">": operator.gt,
    ">=": operator.ge,
}
_RANGE_OPS: frozenset[FilterOp] = frozenset({"<", "<=", ">", ">="})
_JSONPATH_OPS: dict[FilterOp, str] = {
    "=": "==",
    "!=": "!=",
    "<": "<",
    "<=": "<=",
    ">": ">",
    ">=": ">=",
}
_SQLITE_TYPES: dict[FieldKind, tuple[str, ...]] = {
    "number": ("integer", "real"),
    "string": ("text",),
    "boolean": ("true", "false"),
}
_PG_TYPES: dict[FieldKind, str] = {"number": "number", "string": "string", "boolean": "boolean"}


def _document(ref: FieldRef) -> Any:
    return Job.spec if ref.document == "spec" else Job.result


def _json_path(path: SpecPath) -> str:
    # SQLite's JSON path and PostgreSQL's jsonpath: $."a"."b". The parts are field names
    # checked against the spec schema or the known result fields.
    return "$" + "".join(f'."{part}"' for part in path)


def _field_condition(field_filter: FieldFilter, dialect: str) -> ColumnElement[bool]:
    """Values of another JSON type never match (a NaN stored as "NaN" is no number)."""
    ref, op, value = field_filter.field, field_filter.op, field_filter.value
    document = _document(ref)
    if value is None:
        present = document[ref.path].as_string()
        return cast("ColumnElement[bool]", present.is_(None) if op == "=" else present.is_not(None))
    if dialect == "postgresql":
        # One jsonpath predicate: strictly typed, false where the path is absent, and
        # served by the GIN (jsonb_path_ops) index when it is an equality.
        predicate = f"{_json_path(ref.path)} {_JSONPATH_OPS[op]} {json.dumps(value)}"
        return cast(
            "ColumnElement[bool]", document.op("@@")(sql_cast(literal(predicate), JSONPATH))
        )
    return _sqlite_condition(func.json_extract(document, _json_path(ref.path)), ref.kind, op, value)


def _sqlite_condition(
    extracted: Any, kind: FieldKind, op: FilterOp, value: str | int | float | bool
) -> ColumnElement[bool]:
    """One JSON_EXTRACT per row (each call parses the document). It yields 1/0 for JSON
    booleans, numbers for numbers, text for strings; SQLite orders every number below
    every text, and '' is the smallest text, so ``x BETWEEN v AND ''`` holds exactly for
    the numbers from v up (a NaN stored as "NaN" is text: no number matches it)."""
    if kind == "boolean":
        # The fields of boolean kind hold only booleans: != true is = false.
        truth = bool(value) if op == "=" else not value
        return cast("ColumnElement[bool]", extracted == int(truth))
    if kind == "string" or op in ("=", "<", "<="):
        # A text never equals a number nor sorts below one: no type check needed.
        return cast("ColumnElement[bool]", _SQL_OPS[op](extracted, value))
    assert isinstance(value, int | float)
    above = value if op == ">=" else math.nextafter(float(value), math.inf)
    from_above = extracted.between(above, literal(""))
    if op == "!=":
        return or_(extracted < value, from_above)
    return cast("ColumnElement[bool]", from_above)


def _sort_expression(ref: FieldRef, dialect: str) -> Any:
    """The field's value where it has the field's JSON type, else NULL."""
    document = _document(ref)
    if dialect == "postgresql":
        element = document[ref.path]
        typed = func.jsonb_typeof(element) == _PG_TYPES[ref.kind]
        value = {
            "number": element.as_float,
            "string": element.as_string,
            "boolean": element.as_boolean,
        }[ref.kind]()
        return case((typed, value))
    path = _json_path(ref.path)
    typed = func.json_type(document, path).in_(_SQLITE_TYPES[ref.kind])
    return case((typed, func.json_extract(document, path)))


def sort_value(job: Job, ref: FieldRef) -> str | int | float | bool | None:
    """The sort key of ``job`` as ``_sort_expression`` computes it (for a cursor)."""
    document = job.spec if ref.document == "spec" else job.result
    value = value_at(document, ref.path, None)
    if ref.kind == "number":
        ok = isinstance(value, int | float) and not isinstance(value, bool)
    elif ref.kind == "string":
        ok = isinstance(value, str)
    else:
        ok = isinstance(value, bool)
    return value if ok else None


# A range filter whose matches in the field index are fewer than this is selective: the
# jobs are then fetched by id. With more, matches are dense enough (>= 2.5% of 20,000
# jobs) that walking the jobs in page order meets a page of them soon.
SELECTIVE_MATCHES = 500


def _field_name(ref: FieldRef) -> str:
    """The field's ``job_field.path``: ``train.lr``, ``result.val_acc``."""
    prefix = RESULT_FIELD if ref.document == "result" else ""
    return prefix + ".".join(ref.path)


def _field_column(ref: FieldRef) -> Any:
    """The ``job_field`` column of the field's values; None where none is kept (booleans)."""
    return {"number": JobField.number, "string": JobField.string}.get(ref.kind)


def _selective_matches(session: Session, owner: str, field_filter: FieldFilter) -> list[str] | None:
    """The ids of the jobs a range filter on a number matches, read from the field index,
    when they are fewer than SELECTIVE_MATCHES; else None. Counted first: most ranges
    are not selective, and their ids are not worth sending."""
    column = JobField.number
    matches = (
        select(JobField.job_id)
        .where(
            JobField.owner == owner,
            JobField.path == _field_name(field_filter.field),
            column.is_not(None),
            _SQL_OPS[field_filter.op](column, field_filter.value),
        )
        .limit(SELECTIVE_MATCHES)
    )
    counted = session.scalar(select(func.count()).select_from(matches.subquery()))
    if counted is None or counted >= SELECTIVE_MATCHES:
        return None
    return list(session.scalars(matches))


def _selected_ids(session: Session, owner: str, field_filter: FieldFilter) -> list[str] | None:
    """The few jobs a range filter on a number matches (``_selective_matches``), or None
    where the filter is no such range, or it matches too many to list."""
    if field_filter.op not in _RANGE_OPS or field_filter.field.kind != "number":
        return None
    return _selective_matches(session, owner, field_filter)


def _filter_conditions(
    session: Session, owner: str | None, filters: Sequence[FieldFilter], dialect: str
) -> list[ColumnElement[bool]]:
    """For a page in creation order: a range filter on a number that the field index
    finds selective becomes a list of ids; the others read the job's document
    (equalities through its GIN index, ranges while walking the jobs in page order)."""
    conditions: list[ColumnElement[bool]] = []
    for field_filter in filters:
        ids = _selected_ids(session, owner, field_filter) if owner else None
        if ids is not None:
            conditions.append(Job.id.in_(ids))
        else:
            conditions.append(_field_condition(field_filter, dialect))
    return conditions


def _has_field_value(field_filter: FieldFilter, job_id: Any) -> ColumnElement[bool] | None:
    """The filter as a look-up of the job's ``job_field`` row (its primary key), or None
    where that row cannot tell (booleans, nulls)."""
    column_name = {"number": "number", "string": "string"}.get(field_filter.field.kind)
    if column_name is None or field_filter.value is None:
        return None
    row = aliased(JobField)
    column = getattr(row, column_name)
    return exists().where(
        row.job_id == job_id,
        row.path == _field_name(field_filter.field),
        column.is_not(None),
        _SQL_OPS[field_filter.op](column, field_filter.value),
    )


def _filter_on_job(field_filter: FieldFilter, job_id: Any, dialect: str) -> ColumnElement[bool]:
    looked_up = _has_field_value(field_filter, job_id)
    return looked_up if looked_up is not None else _field_condition(field_filter, dialect)


def _ids_by_field(
    session: Session,
    *,
    owner: str,
    job_conditions: Sequence[ColumnElement[bool]],
    filters: Sequence[FieldFilter],
    path: str,
    column: Any,
    descending: bool,
    after: Position | None,
    limit: int,
    dialect: str,
) -> list[str]:
    """A page of job ids in the order of a field (its ``job_field`` path and value
    column), from the field index: the jobs with the field by (value, id), then those
    without it by id. Filters on numbers and strings look up each candidate's
    ``job_field`` row, so that the walk in index order stops after a page (a filter on
    the document would be guessed selective by the planner, which then joins every
    matching job and sorts)."""
    selected = [_selected_ids(session, owner, field_filter) for field_filter in filters]
    ids: list[str] = []
    if after is None or after.key is not None:
        valued = select(JobField.job_id).where(
            JobField.owner == owner, JobField.path == path, column.is_not(None)
        )
        document_conditions = list(job_conditions)
        for field_filter, selected_ids in zip(filters, selected, strict=True):
            looked_up = _has_field_value(field_filter, JobField.job_id)
            if selected_ids is not None:
                valued = valued.where(JobField.job_id.in_(selected_ids))
            elif looked_up is not None:
                valued = valued.where(looked_up)
            else:
                document_conditions.append(_field_condition(field_filter, dialect))
        if document_conditions:
            valued = valued.join(Job, Job.id == JobField.job_id).where(*document_conditions)
        key = tuple_(column, JobField.job_id)
        if after is not None:
            beyond = (after.key, after.id)
            valued = valued.where(key < beyond if descending else key > beyond)
        order = (column.desc(), JobField.job_id.desc()) if descending else (column, JobField.job_id)
        ids = list(session.scalars(valued.order_by(*order).limit(limit)))
    if len(ids) < limit:
        with_field = select(JobField.job_id).where(
            JobField.owner == owner, JobField.path == path, column.is_not(None)
        )
        matched = [
            Job.id.in_(selected_ids)
            if selected_ids is not None
            else _filter_on_job(field_filter, Job.id, dialect)
            for field_filter, selected_ids in zip(filters, selected, strict=True)
        ]
        missing = select(Job.id).where(
            Job.owner == owner, *job_conditions, *matched, Job.id.not_in(with_field)
        )
        if after is not None and after.key is None:
            missing = missing.where(Job.id < after.id if descending else Job.id > after.id)
        # The ids with the field are read once from the field index (a hash on
        # PostgreSQL, a temporary index on SQLite); OFFSET 0 keeps the planner from
        # walking the jobs by id instead and looking up each one (every job, when few
        # lack the field): the owner's jobs are filtered, then what is left is sorted.
        without = missing.offset(0).subquery()
        by_id = without.c.id.desc() if descending else without.c.id.asc()
        tail = select(without.c.id).order_by(by_id).limit(limit - len(ids))
        ids += session.scalars(tail)
    return ids


def list_jobs(
    *,
    session: Session,
    owner: str | None,
    statuses: Sequence[JobStatus] = (),
    tag: str | None = None,
    name: str | None = None,
    filters: Sequence[FieldFilter] = (),
    sweep_id: str | None = None,
    parent_id: str | None = None,
    sort: SortKey | None = None,
    newest_first: bool = True,
    after: Position | None = None,
    limit: int = 50,
) -> Sequence[Job]:
    """Keyset pagination on (sort key, id), the sort key by default ``created_at``
    (``newest_first``); ``after`` is the last row of the previous page. ``owner`` None
    lists every owner's jobs (an admin's view).

    One owner's sorts on a number or string field walk ``job_field`` (indexed by owner,
    field and value), their filters on numbers and strings looking up its rows; in
    creation order, a range filter on a number that matches few jobs is read from it.
    Equalities in creation order, booleans, nulls and an admin's view read the JSONB
    documents. Both answer the same (tests/service/test_search_api.py compares them)."""
    dialect = session.get_bind().dialect.name
    conditions: list[ColumnElement[bool]] = []
    if statuses:
        conditions.append(Job.status.in_(statuses))
    if tag is not None:
        conditions.append(Job.id.in_(select(JobTag.job_id).where(JobTag.tag == tag)))
    if name is not None:
        conditions.append(Job.name == name)
    if sweep_id is not None:
        conditions.append(Job.sweep_id == sweep_id)
    if parent_id is not None:
        conditions.append(Job.parent_id == parent_id)
    sort = sort or SortKey(field=None, descending=newest_first)
    column = _field_column(sort.field) if sort.field is not None else None
    if owner is not None and sort.field is not None and column is not None:
        ids = _ids_by_field(
            session,
            owner=owner,
            job_conditions=conditions,
            filters=filters,
            path=_field_name(sort.field),
            column=column,
            descending=sort.descending,
            after=after,
            limit=limit,
            dialect=dialect,
        )
        found = {job.id: job for job in session.scalars(select(Job).where(Job.id.in_(ids)))}
        return [found[job_id] for job_id in ids]
    if owner is not None:
        conditions.append(Job.owner == owner)
    conditions += _filter_conditions(session, owner, filters, dialect)
    stmt = select(Job).where(*conditions)
    if sort.field is None:
        key: Any = Job.created_at
        if after is not None:
            stmt = stmt.where(
                keyset.after(key=key, row_id=Job.id, position=after, descending=sort.descending)
            )
        order = keyset.order(key=key, row_id=Job.id, descending=sort.descending)
        return session.scalars(stmt.order_by(*order).limit(limit)).all()
    key = _sort_expression(sort.field, dialect)
    if after is not None:
        stmt = stmt.where(
            keyset.after_nulls_last(
                key=key, row_id=Job.id, position=after, descending=sort.descending
            )
        )
    order = keyset.order_nulls_last(key=key, row_id=Job.id, descending=sort.descending)
    # The sort runs over every matching job: sort narrow (id, key) rows, then load
    # the page's jobs (a job row is ~3 kB with its spec).
    page_ids = stmt.with_only_columns(Job.id).order_by(*order).limit(limit)
    stmt = select(Job).where(Job.id.in_(page_ids.scalar_subquery()))
    return session.scalars(stmt.order_by(*order).limit(limit)).all()


def delete_job(*, session: Session, job_id: str) -> None:
    """Delete a job's row (its tags and other rows go with it: ON DELETE CASCADE)."""
    session.execute(delete(Job).where(Job.id == job_id))
