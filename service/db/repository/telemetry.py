"""Queries of what a run records: its layer plan, epoch metrics, per-layer statistics,
gradient histograms and loss-landscape slice."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

import psycopg
from sqlalchemy import ColumnElement, Connection, Row, delete, func, insert, or_, select, update
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.models import (
    LAYER_STAT_COLUMNS,
    EpochMetric,
    Job,
    Landscape,
    Layer,
    LayerHistogram,
    LayerStat,
)
from service.kit.jsonnum import json_safe

EPOCH_METRIC_COLUMNS: tuple[str, ...] = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "seconds",
)

# What a worker writes per (layer, step): layer_index, step, epoch, then the statistics.
StatRow = tuple[Any, ...]
LAYER_STAT_ROW_COLUMNS: tuple[str, ...] = (
    "job_id",
    "layer_index",
    "step",
    "epoch",
    *LAYER_STAT_COLUMNS,
)
# PostgreSQL types of those columns, for binary COPY (psycopg cannot guess them from None).
LAYER_STAT_ROW_TYPES: tuple[str, ...] = (
    "varchar",
    "int4",
    "int4",
    "int4",
    *("float8",) * len(LAYER_STAT_COLUMNS),
)


def _float_or_none(value: Any) -> float | None:
    return None if value is None else float(value)


def _check_stats(stats: Sequence[str]) -> None:
    unknown = set(stats) - set(LAYER_STAT_COLUMNS)
    if unknown:
        raise ValueError(f"unknown statistics: {sorted(unknown)}")


# --- write side (the worker's recorder) --------------------------------------------------


def save_run_plan(
    *,
    session: Session,
    job_id: str,
    layers: Sequence[Mapping[str, Any]],
    total_steps: int,
    epochs: int,
    device: str,
) -> None:
    """The layer table of a run and its step counts, written when training starts."""
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
    session.execute(
        update(Job)
        .where(Job.id == job_id)
        .values(total_steps=int(total_steps), epochs=int(epochs), device=device)
        .execution_options(synchronize_session=False)
    )


def discard_after(*, session: Session, job_id: str, step: int, epoch: int) -> None:
    """Delete what a run recorded after a checkpoint (layer statistics and histograms
    after ``step``, epoch metrics after ``epoch``), before a resumed attempt writes: it
    records those again, so every (layer, step) and every epoch stays once."""
    session.execute(delete(LayerStat).where(LayerStat.job_id == job_id, LayerStat.step > step))
    session.execute(
        delete(LayerHistogram).where(LayerHistogram.job_id == job_id, LayerHistogram.step > step)
    )
    session.execute(
        delete(EpochMetric).where(EpochMetric.job_id == job_id, EpochMetric.epoch > epoch)
    )


def add_epoch_metric(*, session: Session, job_id: str, metric: Mapping[str, float | int]) -> None:
    row: dict[str, Any] = {"job_id": job_id, "epoch": int(metric["epoch"])}
    row.update({name: _float_or_none(metric.get(name)) for name in EPOCH_METRIC_COLUMNS})
    session.execute(insert(EpochMetric), [row])


def add_layer_stats(*, session: Session, job_id: str, rows: Sequence[Mapping[str, Any]]) -> int:
    """Bulk insert; unknown keys are ignored, missing statistics stored as NULL."""
    return add_layer_stat_rows(
        session=session,
        job_id=job_id,
        rows=[
            (
                int(row["layer_index"]),
                int(row["step"]),
                int(row["epoch"]),
                *(_float_or_none(row.get(name)) for name in LAYER_STAT_COLUMNS),
            )
            for row in rows
        ],
    )


def add_layer_stat_rows(*, session: Session, job_id: str, rows: Sequence[StatRow]) -> int:
    """Write rows (layer_index, step, epoch, *LAYER_STAT_COLUMNS values) in the session's
    transaction, at the database's bulk speed: binary COPY on PostgreSQL, one prepared
    statement run over all rows (``executemany``) on SQLite.

    The caller's transaction is the fence: a worker opens it with ``guard_attempt``, so a
    stale attempt's COPY never runs (the guard raises first) and a requeue waits for it.
    """
    if not rows:
        return 0
    connection = session.connection()
    dialect = connection.dialect.name
    if dialect == "postgresql":
        _copy_rows(connection, job_id, rows)
    elif dialect == "sqlite":
        marks = ", ".join("?" * len(LAYER_STAT_ROW_COLUMNS))
        connection.exec_driver_sql(
            f"INSERT INTO layer_stat ({', '.join(LAYER_STAT_ROW_COLUMNS)}) VALUES ({marks})",
            [(job_id, *row) for row in rows],
        )
    else:  # any other database SQLAlchemy speaks: a multi-row INSERT
        names = LAYER_STAT_ROW_COLUMNS[1:]
        values = [{"job_id": job_id, **dict(zip(names, row, strict=True))} for row in rows]
        session.execute(insert(LayerStat), values)
    return len(rows)


def _copy_rows(connection: Connection, job_id: str, rows: Sequence[StatRow]) -> None:
    raw = connection.connection.dbapi_connection
    assert isinstance(raw, psycopg.Connection), "PostgreSQL is reached through psycopg 3"
    columns = ", ".join(LAYER_STAT_ROW_COLUMNS)
    with (
        raw.cursor() as cursor,
        cursor.copy(f"COPY layer_stat ({columns}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.set_types(LAYER_STAT_ROW_TYPES)
        write = copy.write_row
        for row in rows:
            write((job_id, *row))


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


def save_landscape(*, session: Session, job_id: str, grid: Mapping[str, Any]) -> None:
    """Store a slice as ``worker.engine.landscape.LandscapeSlice.as_dict()`` gives it."""
    session.execute(delete(Landscape).where(Landscape.job_id == job_id))
    session.add(
        Landscape(
            job_id=job_id,
            dims=int(grid["dims"]),
            alphas=[float(a) for a in grid["alphas"]],
            losses=json_safe(grid["losses"]),
            roughness=_float_or_none(grid.get("roughness")),
            sharpness=_float_or_none(grid.get("sharpness")),
            local_minima=int(grid["local_minima"]),
            examples=int(grid["examples"]),
            created_at=utcnow(),
        )
    )
    session.flush()


# --- read side --------------------------------------------------------------------------


def list_epoch_metrics(
    *, session: Session, job_id: str, after_epoch: int | None = None
) -> Sequence[EpochMetric]:
    stmt = select(EpochMetric).where(EpochMetric.job_id == job_id)
    if after_epoch is not None:
        stmt = stmt.where(EpochMetric.epoch > after_epoch)
    return session.scalars(stmt.order_by(EpochMetric.epoch)).all()


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
    _check_stats(stats)
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
    # ceil((n-1)/(m-1)) in integers. `//`, never `/`: SQLAlchemy renders `/` between
    # integers as true division on PostgreSQL, which would make the stride fractional.
    stride = (n - 2) // (max_points - 1) + 1
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
    _check_stats(stats)
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
    from_step: int | None = None,
    to_step: int | None = None,
    limit: int,
) -> Sequence[LayerHistogram]:
    stmt = select(LayerHistogram).where(LayerHistogram.job_id == job_id)
    if layer_indexes is not None:
        stmt = stmt.where(LayerHistogram.layer_index.in_(layer_indexes))
    if step is not None:
        stmt = stmt.where(LayerHistogram.step == step)
    if from_step is not None:
        stmt = stmt.where(LayerHistogram.step >= from_step)
    if to_step is not None:
        stmt = stmt.where(LayerHistogram.step <= to_step)
    order = (LayerHistogram.layer_index, LayerHistogram.step)
    return session.scalars(stmt.order_by(*order).limit(limit)).all()


def get_landscape(*, session: Session, job_id: str) -> Landscape | None:
    return session.get(Landscape, job_id)


# --- compare: one statistic across jobs -------------------------------------------------


def compare_layer_stat(
    *,
    session: Session,
    job_ids: Sequence[str],
    stat: str,
    layer_index: int | None = None,
    layer_name: str | None = None,
    max_points: int = 500,
) -> list[tuple[str, int, str, int, float | None]]:
    """Rows (job_id, layer_index, layer_name, step, value) of one statistic of one layer
    in each job, in one query. The layer is picked by index or by module name (each job's
    own row of the layer table), each job's series strided in SQL as in list_layer_stats."""
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    _check_stats([stat])
    layer_match = Layer.index == layer_index if layer_name is None else Layer.name == layer_name
    inner = (
        select(
            LayerStat.job_id,
            LayerStat.layer_index,
            Layer.name.label("layer_name"),
            LayerStat.step,
            getattr(LayerStat, stat).label("value"),
            func.row_number()
            .over(partition_by=LayerStat.job_id, order_by=LayerStat.step)
            .label("rn"),
            func.count().over(partition_by=LayerStat.job_id).label("n"),
        )
        .join(Layer, (Layer.job_id == LayerStat.job_id) & (Layer.index == LayerStat.layer_index))
        .where(LayerStat.job_id.in_(job_ids), layer_match)
        .subquery()
    )
    rn, n = inner.c.rn, inner.c.n
    stride = (n - 2) // (max_points - 1) + 1  # `//`: see list_layer_stats
    keep = or_(n <= max_points, (rn - 1) % stride == 0, rn == n)
    stmt = (
        select(inner.c.job_id, inner.c.layer_index, inner.c.layer_name, inner.c.step, inner.c.value)
        .where(keep)
        .order_by(inner.c.job_id, inner.c.step)
    )
    return [tuple(row) for row in session.execute(stmt).all()]


def compare_epoch_metric(
    *, session: Session, job_ids: Sequence[str], metric: str
) -> list[tuple[str, int, float | None]]:
    """Rows (job_id, epoch, value) of one epoch metric of each job, in one query."""
    if metric not in EPOCH_METRIC_COLUMNS:
        raise ValueError(f"unknown epoch metric: {metric}")
    column = getattr(EpochMetric, metric)
    stmt = (
        select(EpochMetric.job_id, EpochMetric.epoch, column)
        .where(EpochMetric.job_id.in_(job_ids))
        .order_by(EpochMetric.job_id, EpochMetric.epoch)
    )
    return [tuple(row) for row in session.execute(stmt).all()]
