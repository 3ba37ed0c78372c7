"""Queries of what a run records: its layer plan, epoch metrics, per-layer statistics,
gradient histograms and loss-landscape slice.

Layer statistics are written in bulk (binary COPY on PostgreSQL) with, beside them, a
rollup (per layer, min/max/last of each run of ROLLUP_ROWS rows) and per-job facts
(``stat_job``). A read that would fetch more raw rows than ``RAW_READ_ROWS`` reads the
rollup instead, so its cost does not grow with the job.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

import numpy as np
import orjson
import psycopg
from sqlalchemy import (
    ColumnElement,
    Integer,
    Row,
    Select,
    Table,
    case,
    cast,
    delete,
    func,
    insert,
    literal_column,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.orm import Session
from sqlalchemy.orm.util import identity_key

from service.db.base import utcnow
from service.db.models import (
    LAYER_STAT_COLUMNS,
    ROLLUP_ROWS,
    EpochMetric,
    Job,
    Landscape,
    Layer,
    LayerHistogram,
    LayerStat,
    StatJob,
    layer_stat_rollup,
)
from service.kit import rollup
from service.kit.jsonnum import json_safe

EPOCH_METRIC_COLUMNS: tuple[str, ...] = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "lr",
    "seconds",
)
# What a caller writes per (layer, step): layer_index, step, epoch, then the statistics.
StatRow = tuple[Any, ...]
# The columns of a stored row and their PostgreSQL types, for binary COPY (psycopg cannot
# guess a type from None).
LAYER_STAT_ROW_COLUMNS: tuple[str, ...] = (
    "job_key",
    "layer_index",
    "step",
    "epoch",
    *LAYER_STAT_COLUMNS,
)
LAYER_STAT_ROW_TYPES: tuple[str, ...] = (
    "int4",
    "int2",
    "int4",
    "int2",
    *("float4",) * len(LAYER_STAT_COLUMNS),
)
ROLLUP_STAT_COLUMNS: tuple[str, ...] = tuple(
    f"{name}{suffix}" for name in LAYER_STAT_COLUMNS for suffix in ("", "_min", "_max")
)
ROLLUP_ROW_COLUMNS: tuple[str, ...] = (
    "job_key",
    "layer_index",
    "step",
    "first_step",
    "epoch",
    "rows",
    *ROLLUP_STAT_COLUMNS,
)
ROLLUP_ROW_TYPES: tuple[str, ...] = (
    "int4",
    "int2",
    "int4",
    "int4",
    "int2",
    "int2",
    *("float4",) * len(ROLLUP_STAT_COLUMNS),
)
# The engine marks a layer without a counted activation with NaN in these: the worker
# stores them as NULL (absent). A NaN anywhere else is a real NaN and stays one.
ABSENT_WHEN_NAN: tuple[str, ...] = (
    "act_mean",
    "act_std",
    "act_saturation",
    "preact_mean",
    "preact_std",
    "act_dead_frac",
)
_NONFINITE_INDEXES = [LAYER_STAT_COLUMNS.index("nan_count"), LAYER_STAT_COLUMNS.index("inf_count")]
_LAYER_STAT_TABLE: Table = LayerStat.__table__  # type: ignore[assignment]
# Raw rows a read may fetch before it reads the rollup instead (some 50 ms of fetching).
RAW_READ_ROWS = 50_000
_NO_INTS = np.zeros(0, dtype=np.int64)
# NULL flags packed per int4 (its sign bit left alone).
_MASK_BITS = 31
# Rows of a binary COPY packed and sent at a time (~0.3 MiB).
COPY_CHUNK_ROWS = 4_096


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
    records those again, so every (layer, step) and every epoch stays once. A rollup
    segment that straddles ``step`` is recomputed from the raw rows it keeps."""
    session.execute(
        delete(LayerHistogram).where(LayerHistogram.job_id == job_id, LayerHistogram.step > step)
    )
    session.execute(
        delete(EpochMetric).where(EpochMetric.job_id == job_id, EpochMetric.epoch > epoch)
    )
    facts = _stat_job(session, job_id)
    if facts is None:
        return
    key, r = facts.key, layer_stat_rollup.c
    session.execute(delete(LayerStat).where(LayerStat.job_key == key, LayerStat.step > step))
    straddling = session.execute(
        select(r.layer_index, r.first_step).where(
            r.job_key == key, r.step > step, r.first_step <= step
        )
    ).all()
    session.execute(delete(layer_stat_rollup).where(r.job_key == key, r.step > step))
    if straddling:
        starts = {int(layer): int(first) for layer, first in straddling}
        kept = [
            row
            for row in session.execute(
                select(LayerStat.layer_index, LayerStat.step, LayerStat.epoch, *_stat_columns())
                .where(
                    LayerStat.job_key == key,
                    LayerStat.layer_index.in_(sorted(starts)),
                    LayerStat.step.between(min(starts.values()), step),
                )
                .order_by(LayerStat.layer_index, LayerStat.step)
            ).all()
            if row[1] >= starts[int(row[0])]
        ]
        if kept:
            runs = _raw_runs(kept)
            _write_rollup(session, key, runs.reduce(rollup.segment_starts(runs.layer, ROLLUP_ROWS)))
    # Rare (a resume): counting the job's rows once is fine here.
    facts.rows = session.scalar(select(func.count()).where(LayerStat.job_key == key)) or 0
    facts.last_step = session.scalar(select(func.max(r.step)).where(r.job_key == key))
    if facts.last_step is None:
        facts.first_step = None
    if facts.first_nonfinite_step is not None and facts.first_nonfinite_step > step:
        facts.first_nonfinite_step = None
    session.flush()


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
    """Write rows (layer_index, step, epoch, *LAYER_STAT_COLUMNS values; None: absent)."""
    if not rows:
        return 0
    ints = np.array([row[:3] for row in rows], dtype=np.int64).reshape(len(rows), 3)
    values, absent = rollup.from_cells([row[3:] for row in rows], len(LAYER_STAT_COLUMNS))
    layer, step, epoch, values, absent = rollup.sort_rows(
        ints[:, 0], ints[:, 1], ints[:, 2], values, absent
    )
    return _ingest(session, job_id, layer, step, epoch, rollup.fit_single(values), absent)


def add_layer_stat_block(
    *,
    session: Session,
    job_id: str,
    steps: np.ndarray,
    epochs: np.ndarray,
    values: np.ndarray,
    absent: np.ndarray | None = None,
) -> int:
    """Write every layer at every step of a block: ``values[i, j, k]`` is statistic
    ``LAYER_STAT_COLUMNS[k]`` of layer ``j`` at ``steps[i]`` (a NaN stays a NaN; ``absent``
    marks what is stored as NULL). The worker's path: arrays in, no dict per row."""
    n_steps, n_layers, width = values.shape
    if n_steps * n_layers == 0:
        return 0
    if width != len(LAYER_STAT_COLUMNS):
        raise ValueError(f"expected {len(LAYER_STAT_COLUMNS)} statistics, got {width}")
    # Long form in (layer, step) order: each layer's rows together, as reads want them.
    long_values = values.astype(np.float64, copy=False).transpose(1, 0, 2).reshape(-1, width)
    long_absent = (
        np.zeros(long_values.shape, dtype=bool)
        if absent is None
        else absent.transpose(1, 0, 2).reshape(-1, width)
    )
    layer = np.repeat(np.arange(n_layers, dtype=np.int64), n_steps)
    step = np.tile(steps.astype(np.int64), n_layers)
    epoch = np.tile(epochs.astype(np.int64), n_layers)
    if n_steps > 1 and not bool(np.all(np.diff(steps) > 0)):
        layer, step, epoch, long_values, long_absent = rollup.sort_rows(
            layer, step, epoch, long_values, long_absent
        )
    fitted = rollup.fit_single(long_values)
    return _ingest(session, job_id, layer, step, epoch, fitted, long_absent)


def _stat_job(session: Session, job_id: str) -> StatJob | None:
    return session.scalar(select(StatJob).where(StatJob.job_id == job_id))


def _ingest(
    session: Session,
    job_id: str,
    layer: np.ndarray,
    step: np.ndarray,
    epoch: np.ndarray,
    values: np.ndarray,
    absent: np.ndarray,
) -> int:
    """Raw rows, their rollup segments and the job's facts, in the caller's transaction,
    at the database's bulk speed: binary COPY on PostgreSQL, one prepared statement run
    over all rows (``executemany``) on SQLite.

    The caller's transaction is the fence: a worker opens it with ``guard_attempt``, so a
    stale attempt's COPY never runs (the guard raises first) and a requeue waits for it.
    """
    key = _add_facts(session, job_id, layer, step, values, absent)
    n = int(step.shape[0])
    keys = np.full(n, key, dtype=np.int64)
    _bulk_write(
        session,
        _LAYER_STAT_TABLE,
        LAYER_STAT_ROW_COLUMNS,
        LAYER_STAT_ROW_TYPES,
        [keys, layer, step, epoch, *values.T],
        np.concatenate((np.zeros((n, 4), dtype=bool), absent), axis=1),
    )
    runs = rollup.Runs.of_raw(layer, step, epoch, values, absent)
    _write_rollup(session, key, runs.reduce(rollup.segment_starts(layer, ROLLUP_ROWS)))
    return n


def _write_rollup(session: Session, key: int, runs: rollup.Runs) -> None:
    n, width = runs.last.shape
    values = np.stack((runs.last, runs.low, runs.high), axis=2).reshape(n, 3 * width)
    absent = np.stack((runs.last_absent, runs.low_absent, runs.high_absent), axis=2)
    ints = [np.full(n, key), runs.layer, runs.step, runs.first_step, runs.epoch, runs.count]
    _bulk_write(
        session,
        layer_stat_rollup,
        ROLLUP_ROW_COLUMNS,
        ROLLUP_ROW_TYPES,
        [*ints, *values.T],
        np.concatenate((np.zeros((n, 6), dtype=bool), absent.reshape(n, 3 * width)), axis=1),
    )


def _lesser(old: Any, new: Any) -> ColumnElement[Any]:
    """The smaller of two nullable integers, NULL only when both are: PostgreSQL's LEAST
    skips a NULL, SQLite's min() returns it; a CASE reads the same on both."""
    return case((new.is_(None), old), (old.is_(None), new), (new < old, new), else_=old)


def _greater(old: Any, new: Any) -> ColumnElement[Any]:
    return case((new.is_(None), old), (old.is_(None), new), (new > old, new), else_=old)


@functools.cache
def _facts_upsert(dialect: str) -> Any:
    """The facts' upsert in ``dialect`` (its values bound at execution), built once:
    building its CASE expressions for every batch cost more than running it."""
    # The two databases trainlab runs on; both spell the upsert the same way.
    upsert = (postgresql.insert if dialect == "postgresql" else sqlite.insert)(StatJob)
    known, new = StatJob.__table__.c, upsert.excluded
    return upsert.on_conflict_do_update(
        index_elements=[known.job_id],
        set_={
            "rows": known.rows + new.rows,
            "first_step": _lesser(known.first_step, new.first_step),
            "last_step": _greater(known.last_step, new.last_step),
            "max_layer_index": _greater(known.max_layer_index, new.max_layer_index),
            "first_nonfinite_step": _lesser(known.first_nonfinite_step, new.first_nonfinite_step),
        },
    ).returning(known.key)


def _add_facts(
    session: Session,
    job_id: str,
    layer: np.ndarray,
    step: np.ndarray,
    values: np.ndarray,
    absent: np.ndarray,
) -> int:
    """Create or update the job's ``stat_job`` row with what these rows add (count, first
    and last step, top layer, first non-finite step); its key.

    One statement (an upsert returning the key) instead of a lookup, then an UPDATE when
    the session flushes: the ingest's round trips are its overhead beside the COPY."""
    counts = np.where(absent[:, _NONFINITE_INDEXES], 0.0, values[:, _NONFINITE_INDEXES])
    nonfinite = (counts > 0).any(axis=1)
    added = {
        "job_id": job_id,
        "rows": int(step.shape[0]),
        "first_step": int(step.min()),
        "last_step": int(step.max()),
        "max_layer_index": int(layer.max()),
        "first_nonfinite_step": int(step[nonfinite].min()) if nonfinite.any() else None,
    }
    stmt = _facts_upsert(session.get_bind().dialect.name)
    key = int(session.execute(stmt, added).scalar_one())
    # A StatJob this session already loaded would show the old facts: reload it on use.
    loaded = session.identity_map.get(identity_key(StatJob, key))
    if loaded is not None:
        session.expire(loaded)
    return key


def _bulk_write(
    session: Session,
    table: Table,
    names: Sequence[str],
    types: Sequence[str],
    columns: Sequence[np.ndarray],
    absent: np.ndarray,
) -> None:
    """Rows given as whole columns (``absent`` marks NULLs), in the session's transaction.

    PostgreSQL: one binary COPY whose records numpy packs (no Python object per value),
    sent in chunks of ``COPY_CHUNK_ROWS``; SQLite: one prepared INSERT run over all rows
    (``executemany``)."""
    if absent.shape[0] == 0:
        return
    connection = session.connection()
    dialect = connection.dialect.name
    listed = ", ".join(names)
    if dialect == "postgresql":
        raw = connection.connection.dbapi_connection
        assert isinstance(raw, psycopg.Connection), "PostgreSQL is reached through psycopg 3"
        sql = f"COPY {table.name} ({listed}) FROM STDIN (FORMAT BINARY)"
        with raw.cursor() as cursor, cursor.copy(sql) as copy:
            copy.write(rollup.COPY_SIGNATURE)
            # In chunks: the server stores one while the next is packed.
            for first in range(0, absent.shape[0], COPY_CHUNK_ROWS):
                rows = slice(first, first + COPY_CHUNK_ROWS)
                copy.write(rollup.binary_copy_rows([c[rows] for c in columns], types, absent[rows]))
            copy.write(rollup.COPY_TRAILER)
        return
    cells = np.empty(absent.shape, dtype=object)
    for i, column in enumerate(columns):
        cells[:, i] = column.tolist()
    cells[absent] = None
    rows = [tuple(row) for row in cells.tolist()]
    if dialect == "sqlite":
        marks = ", ".join("?" * len(names))
        connection.exec_driver_sql(f"INSERT INTO {table.name} ({listed}) VALUES ({marks})", rows)
    else:  # any other database SQLAlchemy speaks: a multi-row INSERT
        session.execute(insert(table), [dict(zip(names, row, strict=True)) for row in rows])


def _stat_columns() -> list[Any]:
    return [getattr(LayerStat, name) for name in LAYER_STAT_COLUMNS]


def _raw_runs(rows: Sequence[Sequence[Any]]) -> rollup.Runs:
    """Runs of raw rows (layer_index, step, epoch, *all statistics), in (layer, step) order."""
    ints = np.array([row[:3] for row in rows], dtype=np.int64).reshape(len(rows), 3)
    values, absent = rollup.from_cells([row[3:] for row in rows], len(rows[0]) - 3)
    return rollup.Runs.of_raw(ints[:, 0], ints[:, 1], ints[:, 2], values, absent)


def delete_telemetry(*, session: Session, job_id: str) -> int:
    """Delete everything a job recorded (statistics, rollup, histograms, metrics, layer
    plan, landscape); returns the statistic rows deleted."""
    facts = _stat_job(session, job_id)
    deleted = 0
    if facts is not None:
        result = session.execute(delete(LayerStat).where(LayerStat.job_key == facts.key))
        deleted = int(getattr(result, "rowcount", 0) or 0)
        r = layer_stat_rollup.c
        session.execute(delete(layer_stat_rollup).where(r.job_key == facts.key))
        session.execute(delete(StatJob).where(StatJob.key == facts.key))
    for model in (LayerHistogram, EpochMetric, Layer, Landscape):
        session.execute(delete(model).where(model.job_id == job_id))
    return deleted


def prune_raw_stats(*, session: Session, finished_before: datetime) -> int:
    """Drop the raw per-step rows of jobs that finished before ``finished_before``,
    keeping their rollup (reads then come from it) and facts; returns rows dropped."""
    keys = session.scalars(
        select(StatJob.key)
        .join(Job, Job.id == StatJob.job_id)
        .where(Job.finished_at < finished_before, StatJob.raw_pruned_at.is_(None))
    ).all()
    dropped = 0
    for key in keys:
        result = session.execute(delete(LayerStat).where(LayerStat.job_key == key))
        dropped += int(getattr(result, "rowcount", 0) or 0)
        session.execute(update(StatJob).where(StatJob.key == key).values(raw_pruned_at=utcnow()))
    return dropped


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


def _layers_of(facts: StatJob, layer_indexes: Sequence[int] | None) -> list[int]:
    """The layers to read, listed: ``layer_index IN (...)`` lets the primary key serve
    each layer's step range (PostgreSQL has no skip scan over a leading column)."""
    if layer_indexes is not None:
        return sorted(set(layer_indexes))
    return list(range((facts.max_layer_index or 0) + 1))


def _estimated_rows(facts: StatJob, layers: int, lo: int, hi: int) -> float:
    first, last = facts.first_step or 0, facts.last_step or 0
    per_layer = facts.rows / ((facts.max_layer_index or 0) + 1)
    return layers * per_layer * (hi - lo + 1) / (last - first + 1)


def _fetch(session: Session, stmt: Select[Any]) -> list[tuple[Any, ...]]:
    """All rows of ``stmt`` as plain tuples from the driver's cursor: for reads of tens of
    thousands of rows, SQLAlchemy's per-row result processing would cost more than the
    query (the columns need no conversion: integers and floats)."""
    connection = session.connection()
    compiled = stmt.compile(dialect=connection.dialect, compile_kwargs={"render_postcompile": True})
    params = compiled.params
    order = compiled.positiontup
    arguments: Any = params if order is None else tuple(params[name] for name in order)
    cursor = connection.connection.cursor()
    try:
        cursor.execute(str(compiled), arguments)
        return [tuple(row) for row in cursor.fetchall()]
    finally:
        cursor.close()


@dataclass(frozen=True)
class _Columns:
    """Rows read as whole columns: integers, floats (NULL as 0) and where NULLs were."""

    ints: list[np.ndarray]  # int64 (n,) each
    values: np.ndarray  # (n, m): float32 from PostgreSQL's REAL, float64 from SQLite
    absent: np.ndarray  # bool (n, m)


def _read_columns(
    session: Session,
    ints: Sequence[ColumnElement[Any]],
    floats: Sequence[ColumnElement[Any]],
    where: Sequence[ColumnElement[bool]],
) -> _Columns:
    """The rows of a select as columns (integer columns, then float columns), in the
    order of the first two integer columns (layer, step).

    PostgreSQL: one row of one byte string per column (``string_agg`` of each value's
    binary form; a NULL is sent as NaN, and flagged in a bit mask), read by numpy: tens of
    thousands of rows without a Python object per value (the driver's rows cost ~2 us
    per value; a COPY's rows cost a message each). Sorted here, not by the server: with
    no ORDER BY it reads the heap in page order instead of sorting wide rows.
    Elsewhere: the driver's rows."""
    m = len(floats)
    if session.get_bind().dialect.name != "postgresql":
        rows = _fetch(session, select(*ints, *floats).where(*where).order_by(*ints[:2]))
        whole = np.array([row[: len(ints)] for row in rows], dtype=np.int64)
        values, absent = rollup.from_cells([row[len(ints) :] for row in rows], m)
        return _Columns(
            [whole[:, i].copy() for i in range(len(ints))] if rows else [_NO_INTS] * len(ints),
            values,
            absent,
        )
    # Which values are NULL, as bits of one integer per row for each 31 float columns:
    # an aggregate per column cost as much as the column itself.
    null_masks: list[ColumnElement[Any]] = [
        sum(
            (
                case((column.is_(None), literal_column(str(1 << bit))), else_=literal_column("0"))
                for bit, column in enumerate(chunk)
            ),
            start=literal_column("0"),
        )
        for chunk in (floats[i : i + _MASK_BITS] for i in range(0, m, _MASK_BITS))
    ]
    sends = [
        *(func.int4send(cast(column, Integer)) for column in ints),
        *(
            func.float4send(func.coalesce(column, literal_column("'NaN'::real")))
            for column in floats
        ),
        *(func.int4send(mask) for mask in null_masks),
    ]
    # Compiled once per shape (SQLAlchemy's statement cache), unlike _fetch's statements.
    packed = session.execute(
        select(*(func.string_agg(send, literal_column("''::bytea")) for send in sends)).where(
            *where
        )
    ).one()
    if packed[0] is None:  # no rows
        return _Columns([_NO_INTS] * len(ints), np.zeros((0, m)), np.zeros((0, m), dtype=bool))
    integers = [np.frombuffer(cells, dtype=">i4").astype(np.int64) for cells in packed[: len(ints)]]
    # float32, as stored (REAL): widened to float64 they would print as 0.0010000000474974513
    # where the driver read 0.001; orjson writes a float32 as its shortest decimal.
    values = np.stack(
        [np.frombuffer(cells, dtype=">f4") for cells in packed[len(ints) : len(ints) + m]], axis=1
    ).astype(np.float32)
    masks = [np.frombuffer(cells, dtype=">i4") for cells in packed[len(ints) + m :]]
    absent = np.stack(
        [(masks[i // _MASK_BITS] >> (i % _MASK_BITS)) & 1 == 1 for i in range(m)], axis=1
    )
    # Every aggregate of the one row saw the rows in one order: sort them all alike.
    order = np.lexsort((integers[1], integers[0]))
    if not bool(np.array_equal(order, np.arange(order.shape[0]))):
        integers = [column[order] for column in integers]
        values, absent = values[order], absent[order]
    return _Columns(integers, values, absent)


def _as_decimal_floats(values: np.ndarray) -> np.ndarray:
    """Python-ready float64 values: a float32 (PostgreSQL's REAL) becomes the float64 of
    its shortest decimal, as the driver read PostgreSQL's text output (0.001, not the
    widened 0.0010000000474974513). orjson writes those decimals and reads them back, in C;
    a non-finite value stays as it is."""
    if values.dtype != np.float32:
        return values
    out = values.astype(np.float64)
    finite = np.isfinite(values)
    if finite.any():
        decimals = orjson.dumps(values[finite], option=orjson.OPT_SERIALIZE_NUMPY)
        out[finite] = orjson.loads(decimals)
    return out


def list_layer_stat_points(
    *,
    session: Session,
    job_id: str,
    stats: Sequence[str],
    layer_indexes: Sequence[int] | None = None,
    from_step: int | None = None,
    to_step: int | None = None,
    max_points: int = 500,
) -> list[StatRow]:
    """Points (layer_index, step, epoch, *last, *min, *max) of each layer's series, in
    (layer, step) order, at most ``max_points`` per layer: ``list_layer_stat_runs`` as
    one tuple per point."""
    points = list_layer_stat_runs(
        session=session,
        job_id=job_id,
        stats=stats,
        layer_indexes=layer_indexes,
        from_step=from_step,
        to_step=to_step,
        max_points=max_points,
    )
    if points is None:
        return []
    values = _as_decimal_floats(np.concatenate((points.last, points.low, points.high), axis=1))
    absent = np.concatenate((points.last_absent, points.low_absent, points.high_absent), axis=1)
    return [
        (lx, sx, ex, *cells)
        for lx, sx, ex, cells in zip(
            points.layer.tolist(),
            points.step.tolist(),
            points.epoch.tolist(),
            rollup.with_none(values, absent),
            strict=True,
        )
    ]


def list_layer_stat_runs(
    *,
    session: Session,
    job_id: str,
    stats: Sequence[str],
    layer_indexes: Sequence[int] | None = None,
    from_step: int | None = None,
    to_step: int | None = None,
    max_points: int = 500,
) -> rollup.Runs | None:
    """Each layer's series as arrays, in (layer, step) order, at most ``max_points`` per
    layer (None: nothing recorded in the range); ``last``, ``low`` and ``high`` hold the
    statistics in ``stats`` order.

    A series longer than ``max_points`` is cut into equal step buckets; a point is a
    bucket's last step, epoch and values, and the min and max of each statistic over the
    bucket (a spike, an inf or a NaN stays visible). A short series comes back as stored
    (min = max = value). Reads at most ``RAW_READ_ROWS`` raw rows, else the rollup: the
    cost does not grow with the job.
    """
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    _check_stats(stats)
    facts = _stat_job(session, job_id)
    if facts is None or facts.first_step is None or facts.last_step is None:
        return None
    layers = _layers_of(facts, layer_indexes)
    lo = facts.first_step if from_step is None else max(from_step, facts.first_step)
    hi = facts.last_step if to_step is None else min(to_step, facts.last_step)
    if lo > hi or not layers:
        return None
    k = len(stats)
    raw = (
        facts.raw_pruned_at is None and _estimated_rows(facts, len(layers), lo, hi) <= RAW_READ_ROWS
    )
    table: Any = LayerStat.__table__.c if raw else layer_stat_rollup.c
    names = (
        stats if raw else [f"{name}{suffix}" for name in stats for suffix in ("", "_min", "_max")]
    )
    where = [table.job_key == facts.key, table.step.between(lo, hi)]
    if layer_indexes is not None or (lo, hi) != (facts.first_step, facts.last_step):
        # Each layer's step range from the primary key (no skip scan over layer_index).
        where.append(table.layer_index.in_(layers))
    read = _read_columns(
        session,
        [table.layer_index, table.step, table.epoch],
        [table[name] for name in names],
        where,
    )
    layer, step, epoch = read.ints
    if layer.shape[0] == 0:
        return None
    if raw:
        runs = rollup.Runs.of_raw(layer, step, epoch, read.values, read.absent)
        if int(np.unique(layer, return_counts=True)[1].max()) <= max_points:
            return runs
    else:
        values = read.values.reshape(-1, k, 3)
        absent = read.absent.reshape(-1, k, 3)
        runs = rollup.Runs(
            layer=layer,
            step=step,
            epoch=epoch,
            first_step=step,  # unused: a point is a bucket's last step
            count=np.ones_like(step),
            last=values[:, :, 0],
            low=values[:, :, 1],
            high=values[:, :, 2],
            last_absent=absent[:, :, 0],
            low_absent=absent[:, :, 1],
            high_absent=absent[:, :, 2],
        )
    width = math.ceil((hi - lo + 1) / max_points)
    return runs.reduce(rollup.bucket_starts(runs.layer, runs.step, lo, width))


def list_late_layer_stats(
    *, session: Session, job_id: str, stats: Sequence[str], max_steps: int = 2000
) -> Sequence[Row[Any]]:
    """Rows (layer_index, step, *stats) of the last half of the job's telemetry steps,
    ordered by step, then layer.

    The window starts at the midpoint of the first and last recorded step. When it holds
    more than ``max_steps`` steps, every s-th step is kept counting back from the last,
    s = (n - 1) // max_steps + 1, so every layer has the same steps and the last one is
    always there. When the window's raw rows pass ``RAW_READ_ROWS`` (or were pruned), it
    reads the rollup's segment ends instead (every ROLLUP_ROWS-th step, the last
    included). Bounded whatever the job's length.
    """
    window = _late_window(session, job_id, stats, max_steps)
    if window is None:
        return []
    facts, midpoint, table = window
    layers = _layers_of(facts, None)
    rows = session.execute(
        select(table.layer_index, table.step, *(table[name] for name in stats))
        .where(
            table.job_key == facts.key,
            table.layer_index.in_(layers),
            table.step >= midpoint,
        )
        .order_by(table.step, table.layer_index)
    ).all()
    steps = sorted({int(row[1]) for row in rows}, reverse=True)
    stride = (len(steps) - 1) // max_steps + 1
    if stride == 1:
        return rows
    kept = set(steps[::stride])
    return [row for row in rows if row[1] in kept]


def _late_window(
    session: Session, job_id: str, stats: Sequence[str], max_steps: int
) -> tuple[StatJob, int, Any] | None:
    """(the job's facts, the window's first step, the table to read: raw rows or rollup)
    of ``list_late_layer_stats``; None when nothing is recorded."""
    if max_steps < 1:
        raise ValueError("max_steps must be at least 1")
    _check_stats(stats)
    facts = _stat_job(session, job_id)
    if facts is None or facts.first_step is None or facts.last_step is None:
        return None
    midpoint = (facts.first_step + facts.last_step) // 2
    layers = (facts.max_layer_index or 0) + 1
    estimate = _estimated_rows(facts, layers, midpoint, facts.last_step)
    if facts.raw_pruned_at is None and estimate <= RAW_READ_ROWS:
        return facts, midpoint, LayerStat.__table__.c
    return facts, midpoint, layer_stat_rollup.c


@dataclass(frozen=True)
class StatWindow:
    """Statistics of a window of steps as arrays: ``values[i, k]`` is statistic k of
    layer ``layer[i]`` at ``step[i]`` (NaN where absent), rows in (layer, step) order;
    float32 from PostgreSQL (its REAL as stored), float64 from SQLite."""

    layer: np.ndarray  # int64 (n,)
    step: np.ndarray  # int64 (n,)
    values: np.ndarray  # float64 (n, k)


def late_layer_stat_window(
    *, session: Session, job_id: str, stats: Sequence[str], max_steps: int = 2000
) -> StatWindow:
    """``list_late_layer_stats`` as arrays: the same window, steps and stride, read
    without a Python object per value."""
    window = _late_window(session, job_id, stats, max_steps)
    if window is None:
        return StatWindow(_NO_INTS, _NO_INTS, np.zeros((0, len(stats))))
    facts, midpoint, table = window
    read = _read_columns(
        session,
        [table.layer_index, table.step],
        [table[name] for name in stats],
        [table.job_key == facts.key, table.step >= midpoint],
    )
    layer, step = read.ints
    values = np.where(read.absent, np.nan, read.values)
    steps = np.unique(step)[::-1]
    stride = (steps.shape[0] - 1) // max_steps + 1 if steps.shape[0] else 1
    if stride > 1:
        kept = np.isin(step, steps[::stride])
        layer, step, values = layer[kept], step[kept], values[kept]
    return StatWindow(layer, step, values)


def first_nonfinite_step(*, session: Session, job_id: str) -> int | None:
    """The first step at which any layer counted a NaN or Inf in its gradients: a fact
    kept at ingest, no scan."""
    facts = _stat_job(session, job_id)
    return None if facts is None else facts.first_nonfinite_step


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
    own row of the layer table); every series is strided in SQL alike (by the longest's
    length), so the steps line up."""
    if max_points < 2:
        raise ValueError("max_points must be at least 2")
    _check_stats([stat])
    layer_match = Layer.index == layer_index if layer_name is None else Layer.name == layer_name
    inner = (
        select(
            StatJob.job_id,
            LayerStat.layer_index,
            Layer.name.label("layer_name"),
            LayerStat.step,
            getattr(LayerStat, stat).label("value"),
            func.row_number()
            .over(partition_by=StatJob.job_id, order_by=LayerStat.step)
            .label("rn"),
            func.count().over(partition_by=StatJob.job_id).label("n"),
        )
        .join(StatJob, StatJob.key == LayerStat.job_key)
        .join(Layer, (Layer.job_id == StatJob.job_id) & (Layer.index == LayerStat.layer_index))
        .where(StatJob.job_id.in_(job_ids), layer_match)
        .subquery()
    )
    # One stride for every job, from the longest: strided by their own lengths, jobs of
    # different lengths would keep different steps and not line up on step.
    longest = select(*inner.c, func.max(inner.c.n).over().label("longest")).subquery()
    rn, n, n_max = longest.c.rn, longest.c.n, longest.c.longest
    # `//`, not `/`: SQLAlchemy renders `/` as true division on PostgreSQL.
    stride = (n_max - 2) // (max_points - 1) + 1
    keep = or_(n_max <= max_points, (rn - 1) % stride == 0, rn == n)
    stmt = (
        select(
            longest.c.job_id,
            longest.c.layer_index,
            longest.c.layer_name,
            longest.c.step,
            longest.c.value,
        )
        .where(keep)
        .order_by(longest.c.job_id, longest.c.step)
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
