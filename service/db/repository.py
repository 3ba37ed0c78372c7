"""Every database query of trainlab. Keyword-only arguments; nothing here commits.

The caller owns the transaction: the API's session dependency commits at the end of a
use case, the worker commits after each batch of writes.
"""

from __future__ import annotations

import math
import uuid
from collections.abc import Mapping, Sequence
from typing import Any, cast

from sqlalchemy import CursorResult, delete, func, insert, select, update
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.models import (
    FINISHED_STATUSES,
    JOB_STATUSES,
    LAYER_STAT_COLUMNS,
    Dataset,
    EpochMetric,
    Job,
    JobTag,
    Layer,
    LayerHistogram,
    LayerStat,
)
from service.specs import ExperimentSpec

EPOCH_METRIC_COLUMNS: tuple[str, ...] = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "seconds",
)


def _rowcount(result: Any) -> int:
    return int(cast("CursorResult[Any]", result).rowcount)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def json_safe(value: Any) -> Any:
    """Replace NaN/±Infinity (not valid JSON, refused by PostgreSQL) by strings."""
    if isinstance(value, float) and not math.isfinite(value):
        return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")
    if isinstance(value, Mapping):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, list | tuple):
        return [json_safe(v) for v in value]
    return value


# --- jobs: write side -----------------------------------------------------------------


def create_job(
    *,
    session: Session,
    spec: ExperimentSpec,
    queue: str,
    idempotency_key: str | None = None,
    request_hash: str | None = None,
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
    )
    session.add(job)
    session.flush()
    if spec.tags:
        session.execute(
            insert(JobTag), [{"job_id": job.id, "tag": tag} for tag in dict.fromkeys(spec.tags)]
        )
    return job


def get_job(*, session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def get_job_by_idempotency_key(*, session: Session, key: str) -> Job | None:
    return session.scalars(select(Job).where(Job.idempotency_key == key)).one_or_none()


def claim_job(*, session: Session, job_id: str, worker: str) -> Job | None:
    """Atomically move a queued job to running; None when it was not queued."""
    result = session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "queued", Job.cancel_requested.is_(False))
        .values(status="running", started_at=utcnow(), worker=worker)
        .execution_options(synchronize_session=False)
    )
    if _rowcount(result) != 1:
        return None
    return session.get(Job, job_id, populate_existing=True)


def save_run_plan(
    *,
    session: Session,
    job_id: str,
    layers: Sequence[Mapping[str, Any]],
    total_steps: int,
    epochs: int,
    device: str,
) -> None:
    # Delete first so that re-running a plan (a retried task) cannot collide on the key.
    session.execute(delete(Layer).where(Layer.job_id == job_id))
    rows = [
        {
            "job_id": job_id,
            "index": int(layer["index"]),
            "name": str(layer["name"]),
            "kind": str(layer["kind"]),
            "params": int(layer["params"]),
            "shape": [int(d) for d in layer["shape"]],
            "activation": layer.get("activation"),
        }
        for layer in layers
    ]
    if rows:
        session.execute(insert(Layer), rows)
    _update_job(
        session=session,
        job_id=job_id,
        values={"total_steps": int(total_steps), "epochs": int(epochs), "device": device},
    )


def _update_job(*, session: Session, job_id: str, values: Mapping[str, Any]) -> int:
    result = session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(**values)
        .execution_options(synchronize_session="fetch")
    )
    return _rowcount(result)


def update_progress(*, session: Session, job_id: str, epoch: int, step: int) -> None:
    _update_job(session=session, job_id=job_id, values={"epoch": int(epoch), "step": int(step)})


def add_epoch_metric(*, session: Session, job_id: str, metric: Mapping[str, float | int]) -> None:
    row: dict[str, Any] = {"job_id": job_id, "epoch": int(metric["epoch"])}
    row.update({name: _float_or_none(metric.get(name)) for name in EPOCH_METRIC_COLUMNS})
    session.execute(insert(EpochMetric), [row])


def add_layer_stats(*, session: Session, job_id: str, rows: Sequence[Mapping[str, Any]]) -> int:
    """Bulk insert; unknown keys are ignored, missing statistics stored as NULL."""
    if not rows:
        return 0
    clean = [
        {
            "job_id": job_id,
            "layer_index": int(row["layer_index"]),
            "step": int(row["step"]),
            "epoch": int(row["epoch"]),
            **{name: _float_or_none(row.get(name)) for name in LAYER_STAT_COLUMNS},
        }
        for row in rows
    ]
    session.execute(insert(LayerStat), clean)
    return len(clean)


def add_histograms(*, session: Session, job_id: str, rows: Sequence[Mapping[str, Any]]) -> int:
    if not rows:
        return 0
    clean = [
        {
            "job_id": job_id,
            "layer_index": int(row["layer_index"]),
            "step": int(row["step"]),
            "lo": float(row["lo"]),
            "hi": float(row["hi"]),
            "counts": [int(c) for c in row["counts"]],
        }
        for row in rows
    ]
    session.execute(insert(LayerHistogram), clean)
    return len(clean)


def finish_job(
    *,
    session: Session,
    job_id: str,
    status: str,
    result: Mapping[str, Any] | None = None,
    error: str | None = None,
) -> None:
    """Record the outcome; a job that already finished keeps its first outcome."""
    if status not in FINISHED_STATUSES:
        raise ValueError(f"not a final status: {status!r}")
    session.execute(
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


def count_jobs_by_status(*, session: Session) -> dict[str, int]:
    rows = session.execute(select(Job.status, func.count()).group_by(Job.status)).all()
    counts = dict.fromkeys(JOB_STATUSES, 0)
    counts.update({status: int(n) for status, n in rows})
    return counts


# --- datasets -------------------------------------------------------------------------


def get_dataset_content(*, session: Session, dataset_id: str) -> bytes | None:
    return session.scalar(select(Dataset.content).where(Dataset.id == dataset_id))
