"""Every database query of trainlab. Keyword-only arguments; nothing here commits.

The caller owns the transaction: the API's session dependency commits at the end of a
use case, the worker commits after each batch of writes.
"""

from __future__ import annotations

import math
import numbers
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, cast

from sqlalchemy import (
    ColumnElement,
    CursorResult,
    Row,
    and_,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
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
    Sweep,
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
    if isinstance(value, bool) or value is None or isinstance(value, str):
        return value
    if isinstance(value, numbers.Integral):  # numpy integers are not JSON serializable
        return int(value)
    if isinstance(value, numbers.Real):
        value = float(value)
        if math.isfinite(value):
            return value
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


def get_job(*, session: Session, job_id: str) -> Job | None:
    return session.get(Job, job_id)


def get_job_by_idempotency_key(*, session: Session, key: str) -> Job | None:
    return session.scalars(select(Job).where(Job.idempotency_key == key)).one_or_none()


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


def record_heartbeat(*, session: Session, job_id: str) -> None:
    session.execute(
        update(Job)
        .where(Job.id == job_id, Job.status == "running")
        .values(heartbeat_at=utcnow())
        .execution_options(synchronize_session=False)
    )


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


# --- sweeps ---------------------------------------------------------------------------


def create_sweep(
    *,
    session: Session,
    sweep_id: str,
    name: str,
    base: Mapping[str, Any],
    grid: Mapping[str, Sequence[Any]],
) -> Sweep:
    """The sweep row; its jobs are added with ``create_job(..., sweep_id=...)``."""
    sweep = Sweep(
        id=sweep_id,
        name=name,
        base=dict(base),
        grid={key: list(values) for key, values in grid.items()},
        created_at=utcnow(),
    )
    session.add(sweep)
    session.flush()
    return sweep


def get_sweep(*, session: Session, sweep_id: str) -> Sweep | None:
    return session.get(Sweep, sweep_id)


def list_sweeps(
    *, session: Session, after: JobCursor | None = None, limit: int = 50
) -> Sequence[Sweep]:
    """Newest first, keyset pagination on (created_at, id) like ``list_jobs``."""
    stmt = select(Sweep)
    if after is not None:
        stmt = stmt.where(
            or_(
                Sweep.created_at < after.created_at,
                and_(Sweep.created_at == after.created_at, Sweep.id < after.job_id),
            )
        )
    order = (Sweep.created_at.desc(), Sweep.id.desc())
    return session.scalars(stmt.order_by(*order).limit(limit)).all()


def jobs_of_sweep(*, session: Session, sweep_id: str) -> Sequence[Job]:
    """All jobs of one sweep in one query (at most the sweep's grid size)."""
    stmt = select(Job).where(Job.sweep_id == sweep_id).order_by(Job.created_at, Job.id)
    return session.scalars(stmt).all()


def count_sweep_jobs_by_status(
    *, session: Session, sweep_ids: Sequence[str]
) -> dict[str, dict[str, int]]:
    """{sweep_id: {status: n}} for many sweeps in one grouped query (no N+1 in lists)."""
    counts: dict[str, dict[str, int]] = {
        sweep_id: dict.fromkeys(JOB_STATUSES, 0) for sweep_id in sweep_ids
    }
    if not sweep_ids:
        return counts
    rows = session.execute(
        select(Job.sweep_id, Job.status, func.count())
        .where(Job.sweep_id.in_(sweep_ids))
        .group_by(Job.sweep_id, Job.status)
    ).all()
    for sweep_id, status, n in rows:
        counts[str(sweep_id)][str(status)] = int(n)
    return counts


# --- datasets -------------------------------------------------------------------------


def get_dataset_content(*, session: Session, dataset_id: str) -> bytes | None:
    return session.scalar(select(Dataset.content).where(Dataset.id == dataset_id))


def list_datasets(*, session: Session, limit: int = 200) -> Sequence[Dataset]:
    return session.scalars(
        select(Dataset).order_by(Dataset.created_at.desc(), Dataset.id.desc()).limit(limit)
    ).all()


def get_dataset(*, session: Session, dataset_id: str) -> Dataset | None:
    return session.get(Dataset, dataset_id)


def create_dataset(
    *,
    session: Session,
    name: str,
    n_examples: int,
    x_shape: Sequence[int],
    num_classes: int,
    layout: str,
    content: bytes,
) -> Dataset:
    dataset = Dataset(
        id="ds_" + uuid.uuid4().hex[:12],
        name=name,
        created_at=utcnow(),
        n_examples=n_examples,
        x_shape=list(x_shape),
        num_classes=num_classes,
        layout=layout,
        size_bytes=len(content),
        content=content,
    )
    session.add(dataset)
    session.flush()
    return dataset


# --- jobs: read side ------------------------------------------------------------------


@dataclass(frozen=True)
class SpecFilter:
    """``path`` inside the stored spec equals ``value`` (None: the field is null)."""

    path: tuple[str, ...]
    value: str | int | float | bool | None


@dataclass(frozen=True)
class JobCursor:
    created_at: datetime
    job_id: str


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
    statuses: Sequence[str] = (),
    tag: str | None = None,
    name: str | None = None,
    spec_filters: Sequence[SpecFilter] = (),
    newest_first: bool = True,
    after: JobCursor | None = None,
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
        if newest_first:
            stmt = stmt.where(
                or_(
                    Job.created_at < after.created_at,
                    and_(Job.created_at == after.created_at, Job.id < after.job_id),
                )
            )
        else:
            stmt = stmt.where(
                or_(
                    Job.created_at > after.created_at,
                    and_(Job.created_at == after.created_at, Job.id > after.job_id),
                )
            )
    order = (Job.created_at.desc(), Job.id.desc()) if newest_first else (Job.created_at, Job.id)
    return session.scalars(stmt.order_by(*order).limit(limit)).all()


def list_epoch_metrics(*, session: Session, job_id: str) -> Sequence[EpochMetric]:
    return session.scalars(
        select(EpochMetric).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)
    ).all()


def list_layers(*, session: Session, job_id: str) -> Sequence[Layer]:
    return session.scalars(select(Layer).where(Layer.job_id == job_id).order_by(Layer.index)).all()


def list_layer_stats(
    *,
    session: Session,
    job_id: str,
    stats: Sequence[str],
    layer_indexes: Sequence[int] | None = None,
    from_step: int | None = None,
    to_step: int | None = None,
    max_points: int = 500,
) -> Sequence[Row[Any]]:
    """Rows (layer_index, step, epoch, *stats), each layer's series strided in SQL.

    A series of n > max_points rows keeps every s-th row, s = ceil((n-1)/(max_points-1)),
    plus the last one, so it has at most ``max_points`` rows and keeps both ends.
    """
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    unknown = set(stats) - set(LAYER_STAT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown statistics: {sorted(unknown)}")
    conditions: list[ColumnElement[bool]] = [LayerStat.job_id == job_id]
    if layer_indexes is not None:
        conditions.append(LayerStat.layer_index.in_(layer_indexes))
    if from_step is not None:
        conditions.append(LayerStat.step >= from_step)
    if to_step is not None:
        conditions.append(LayerStat.step <= to_step)
    inner = (
        select(
            LayerStat.layer_index,
            LayerStat.step,
            LayerStat.epoch,
            *(getattr(LayerStat, name) for name in stats),
            func.row_number()
            .over(partition_by=LayerStat.layer_index, order_by=LayerStat.step)
            .label("rn"),
            func.count().over(partition_by=LayerStat.layer_index).label("n"),
        )
        .where(*conditions)
        .subquery()
    )
    rn, n = inner.c.rn, inner.c.n
    stride = (n - 2) / (max_points - 1) + 1  # integer division on both backends
    keep = or_(n <= max_points, (rn - 1) % stride == 0, rn == n)
    stmt = (
        select(inner.c.layer_index, inner.c.step, inner.c.epoch, *(inner.c[s] for s in stats))
        .where(keep)
        .order_by(inner.c.layer_index, inner.c.step)
    )
    return session.execute(stmt).all()


def list_late_layer_stats(
    *, session: Session, job_id: str, stats: Sequence[str], max_steps: int = 2000
) -> Sequence[Row[Any]]:
    """Rows (layer_index, step, *stats) of the last half of the job's telemetry steps.

    The window starts at the midpoint of the first and last recorded step. When it holds
    more than ``max_steps`` steps, every s-th step is kept counting back from the last,
    s = (n - 1) // max_steps + 1, so every layer has the same steps and the last one is
    always there. Bounded whatever the job's length: at most ``max_steps`` x layers rows.
    """
    if max_steps < 1:
        raise ValueError("max_steps must be at least 1")
    unknown = set(stats) - set(LAYER_STAT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown statistics: {sorted(unknown)}")
    midpoint = (
        select((func.min(LayerStat.step) + func.max(LayerStat.step)) // 2)
        .where(LayerStat.job_id == job_id)
        .scalar_subquery()
    )
    ranked = (
        select(
            LayerStat.layer_index,
            LayerStat.step,
            *(getattr(LayerStat, name) for name in stats),
            func.dense_rank().over(order_by=LayerStat.step.desc()).label("r"),
        )
        .where(LayerStat.job_id == job_id, LayerStat.step >= midpoint)
        .subquery()
    )
    counted = select(ranked, func.max(ranked.c.r).over().label("n")).subquery()
    stride = (counted.c.n - 1) // max_steps + 1
    stmt = (
        select(counted.c.layer_index, counted.c.step, *(counted.c[s] for s in stats))
        .where((counted.c.r - 1) % stride == 0)
        .order_by(counted.c.step, counted.c.layer_index)
    )
    return session.execute(stmt).all()


def first_nonfinite_step(*, session: Session, job_id: str) -> int | None:
    """The first step at which any layer counted a NaN or Inf in its gradients."""
    step = session.scalar(
        select(func.min(LayerStat.step)).where(
            LayerStat.job_id == job_id,
            or_(LayerStat.nan_count > 0, LayerStat.inf_count > 0),
        )
    )
    return None if step is None else int(step)


def list_histograms(
    *,
    session: Session,
    job_id: str,
    layer_indexes: Sequence[int] | None = None,
    step: int | None = None,
) -> Sequence[LayerHistogram]:
    stmt = select(LayerHistogram).where(LayerHistogram.job_id == job_id)
    if layer_indexes is not None:
        stmt = stmt.where(LayerHistogram.layer_index.in_(layer_indexes))
    if step is not None:
        stmt = stmt.where(LayerHistogram.step == step)
    order = (LayerHistogram.layer_index, LayerHistogram.step)
    return session.scalars(stmt.order_by(*order)).all()


def ping(*, session: Session) -> None:
    session.execute(select(1))
