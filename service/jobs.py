"""Job use cases: submit (commit, then enqueue), read, list, cancel.

Mutating use cases commit themselves: a job must be durable before its id is sent to the
broker, and a response must never report a state that was then rolled back.
"""

from __future__ import annotations

import hashlib
import json
import logging
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import Engine
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import admission, checkpoints, queue, quotas, search
from service.config import Settings
from service.db.models import Job
from service.db.repository import datasets as dataset_queries
from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from service.errors import (
    CheckpointNotFound,
    IdempotencyConflict,
    IllegalStateChange,
    JobNotFound,
    SpecInvalid,
)
from service.keys import Principal
from service.kit import pagination
from service.specs import ExperimentSpec, SpecIssue, check_spec
from service.vocabulary import JobStatus

logger = logging.getLogger(__name__)

# Query parameters of GET /v1/jobs that are not spec-field filters.
LIST_PARAMS: frozenset[str] = frozenset(
    {"status", "tag", "name", "sort", "limit", "cursor", "sweep_id", "parent_id", search.WHERE}
)


# --- submit and cancel ----------------------------------------------------------------


def request_hash(spec: ExperimentSpec) -> str:
    """Hash of the normalized spec: bodies that differ only in defaults are the same."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate_spec(
    *, session: Session, settings: Settings, spec: ExperimentSpec, principal: Principal
) -> None:
    """Cross-field rules, operator limits, admission control (what the job would cost)
    and the existence of an uploaded dataset that the caller may use."""
    uploaded_ndim: int | None = None
    issues: list[SpecIssue] = []
    shape: admission.DataShape | None = None
    if spec.data.is_uploaded:
        dataset = dataset_queries.get_dataset(
            session=session, dataset_id=spec.data.dataset, owner=principal.scope
        )
        if dataset is None:
            msg = f"no uploaded dataset with id {spec.data.dataset!r} (POST /v1/datasets first)"
            issues.append(SpecIssue(("data", "dataset"), msg))
        else:
            uploaded_ndim = len(dataset.x_shape)
            shape = admission.uploaded_data_shape(
                spec, x_shape=dataset.x_shape, num_classes=dataset.num_classes
            )
    else:
        shape = admission.builtin_data_shape(spec)
    issues.extend(check_spec(spec, settings.spec_limits, uploaded_ndim=uploaded_ndim))
    if shape is not None:
        cost = admission.estimate(spec, shape, flops_per_second=settings.assumed_flops_per_s)
        issues.extend(admission.check(cost, admission.limits_for(spec, settings.admission_limits)))
    if issues:
        raise SpecInvalid(issues, spec.model_dump(mode="json"))


def _replay(job: Job, body_hash: str, key: str) -> Job:
    if job.request_hash != body_hash:
        raise IdempotencyConflict(key)
    return job


def submit_job(
    *,
    session: Session,
    settings: Settings,
    principal: Principal,
    spec: ExperimentSpec,
    idempotency_key: str | None = None,
    parent_id: str | None = None,
) -> tuple[Job, bool]:
    """Store and enqueue a job of ``principal``. Returns (job, created); created is False
    on a replay. Idempotency keys are per principal. ``parent_id``: the job it retries."""
    body_hash = request_hash(spec)
    owner = principal.id
    if idempotency_key is not None:
        existing = job_queries.get_job_by_idempotency_key(
            session=session, owner=owner, key=idempotency_key
        )
        if existing is not None:
            return _replay(existing, body_hash, idempotency_key), False
    validate_spec(session=session, settings=settings, spec=spec, principal=principal)
    try:
        quotas.check_active_jobs(
            session=session, owner=owner, adding=1, limit=settings.max_active_jobs
        )
        job = job_queries.create_job(
            session=session,
            owner=owner,
            spec=spec,
            queue=queue.queue_for(spec.train.device),
            idempotency_key=idempotency_key,
            request_hash=body_hash,
            max_attempts=settings.max_attempts,
            parent_id=parent_id,
        )
        session.commit()
    except IntegrityError:
        # A concurrent request with the same key won the race: answer as a replay.
        session.rollback()
        if idempotency_key is None:
            raise
        existing = job_queries.get_job_by_idempotency_key(
            session=session, owner=owner, key=idempotency_key
        )
        if existing is None:
            raise
        return _replay(existing, body_hash, idempotency_key), False
    enqueue_jobs(session=session, settings=settings, jobs=[job])
    return job, True


def enqueue_jobs(*, session: Session, settings: Settings, jobs: Sequence[Job]) -> None:
    """Send committed jobs to the broker, each within a short deadline.

    A broker that is down or frozen fails no job and no request: the jobs it did not
    take stay ``queued``, marked as never sent, and a worker's reconciler sends them
    once the broker answers again. After the first failure the rest are not even tried
    (each would wait its own timeout).
    """
    sent: list[str] = []
    for job in jobs:
        try:
            queue.enqueue_training(settings, job_id=job.id, queue=job.queue)
        except Exception:  # any broker error or timeout
            logger.warning(
                "could not send job %s to the broker (%d of %d sent); a worker's "
                "reconciler sends it later",
                job.id,
                len(sent),
                len(jobs),
                exc_info=True,
            )
            break
        sent.append(job.id)
    if sent:
        job_queries.mark_enqueued(session=session, job_ids=sent, sent=True)
        session.commit()


def final_weights(*, settings: Settings, job: Job) -> Path:
    """The file of a job's final weights (safetensors); 404 when it has none."""
    path = checkpoints.final_weights_path(settings.resolved_checkpoint_dir, job.id)
    if job.status != "succeeded" or not path.is_file():
        raise CheckpointNotFound(job.id, job.status)
    return path


def get_job(*, session: Session, job_id: str, principal: Principal) -> Job:
    """The job, if ``principal`` may see it; another owner's job is as unknown (404)."""
    job = job_queries.get_job(session=session, job_id=job_id, owner=principal.scope)
    if job is None:
        raise JobNotFound(job_id)
    return job


def read_job(*, engine: Engine, job_id: str, principal: Principal) -> dict[str, Any]:
    """The columns a job read shows, for status polling: one narrow SELECT on a pooled
    connection of ``engine`` (``session.reading_engine``: outside any transaction, one
    round trip on PostgreSQL); another owner's job is a 404."""
    with engine.connect() as connection:
        row = job_queries.read_job(connection=connection, job_id=job_id, owner=principal.scope)
    if row is None:
        raise JobNotFound(job_id)
    return dict(row._mapping)


def cancel_job(*, session: Session, job: Job) -> Job:
    """queued -> cancelled now; running -> flagged, the worker stops within one step."""
    if job.is_finished:
        raise IllegalStateChange(
            f"job {job.id} already finished ({job.status}); "
            "only queued or running jobs can be cancelled"
        )
    changed = job_queries.cancel_queued_job(session=session, job_id=job.id) or (
        job_queries.request_cancel(session=session, job_id=job.id)
    )
    session.commit()
    session.refresh(job)
    if not changed and job.is_finished and job.status != "cancelled":
        raise IllegalStateChange(f"job {job.id} finished ({job.status}) before it was cancelled")
    return job


def progress_fraction(job: Job) -> float:
    """How far a job got, in [0, 1]; a succeeded job is at 1 even if it stopped early."""
    return progress_of(status=job.status, step=job.step, total_steps=job.total_steps)


def progress_of(*, status: JobStatus, step: int, total_steps: int) -> float:
    if status == "succeeded":
        return 1.0  # also when early stopping ended it before total_steps
    if total_steps:
        return min(1.0, step / total_steps)
    return 0.0


def job_counts(*, session: Session) -> Mapping[JobStatus, int]:
    return job_queries.count_jobs_by_status(session=session)


def queue_depths(*, session: Session) -> Mapping[str, int]:
    return job_queries.count_queued_by_queue(session=session)


@dataclass(frozen=True)
class RunTime:
    status: JobStatus
    seconds: float
    steps: int


def recent_run_times(*, session: Session, limit: int) -> list[RunTime]:
    """Wall time and steps of the newest ``limit`` jobs that ran to an end."""
    return [
        RunTime(status, max(0.0, (finished - started).total_seconds()), steps)
        for status, started, finished, steps in job_queries.list_recent_run_times(
            session=session, limit=limit
        )
    ]


# --- listing --------------------------------------------------------------------------


def list_jobs(
    *,
    session: Session,
    principal: Principal,
    statuses: Sequence[JobStatus],
    tag: str | None,
    name: str | None,
    sort: str,
    limit: int,
    cursor: str | None,
    params: Sequence[tuple[str, str]],
    sweep_id: str | None = None,
    parent_id: str | None = None,
) -> pagination.Page[Job]:
    """A page of jobs; ``params`` are all query parameters (the filters on spec and
    result fields among them, see ``service.search``)."""
    sort_key = search.parse_sort(sort)
    filters = search.parse_filters(params, reserved=LIST_PARAMS)
    key_types = search.cursor_key_types(sort_key)
    after = pagination.decode_cursor(cursor, sort=sort, key_type=key_types) if cursor else None
    rows = job_queries.list_jobs(
        session=session,
        owner=principal.scope,
        statuses=statuses,
        tag=tag,
        name=name,
        filters=filters,
        sweep_id=sweep_id,
        parent_id=parent_id,
        sort=sort_key,
        after=after,
        limit=limit + 1,
    )

    def position(job: Job) -> pagination.Position:
        if sort_key.field is None:
            return pagination.Position(key=job.created_at, id=job.id)
        return pagination.Position(key=job_queries.sort_value(job, sort_key.field), id=job.id)

    return pagination.page_of(rows, limit=limit, sort=sort, position_of=position)


def delete_job(*, session: Session, settings: Settings, job: Job) -> None:
    """Remove a finished job: its row, everything it recorded (statistics, rollup,
    histograms, metrics, landscape) and its checkpoint files. A queued or running job is
    a 409: cancel it first (deleting under a live worker would race its writes)."""
    if not job.is_finished:
        raise IllegalStateChange(
            f"job {job.id} is {job.status}; cancel it first, then delete it once it stopped"
        )
    telemetry_queries.delete_telemetry(session=session, job_id=job.id)
    job_queries.delete_job(session=session, job_id=job.id)
    session.commit()
    # After the commit: a failed commit must not leave a job without its weights.
    checkpoints.remove_job_files(settings.resolved_checkpoint_dir, job.id)
