"""Telemetry use cases: what a job recorded, read back for the API.

Epoch metrics, the layer table, per-layer statistic series (downsampled keeping each
bucket's last value, min and max),
gradient histograms and the loss-landscape slice.
"""

from __future__ import annotations

import itertools
import math
import re
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from service.config import Settings
from service.db.base import utcnow
from service.db.models import LAYER_STAT_COLUMNS, EpochMetric, Job, Landscape, Layer, LayerHistogram
from service.db.repository import telemetry as telemetry_queries
from service.errors import InvalidRequest, LandscapeNotAvailable
from service.kit.jsonnum import json_number, nonfinite_name

LAYER_INDEX = re.compile(r"[0-9]{1,9}")
DEFAULT_HISTOGRAM_ROWS = 1_000
MAX_HISTOGRAM_ROWS = 10_000
# Points (series x max_points) one /gradients answer may carry, whatever the job's size.
MAX_SERIES_POINTS = 250_000


def epoch_metrics(*, session: Session, job: Job) -> Sequence[EpochMetric]:
    return telemetry_queries.list_epoch_metrics(session=session, job_id=job.id)


def layers(*, session: Session, job: Job) -> Sequence[Layer]:
    return telemetry_queries.list_layers(session=session, job_id=job.id)


def resolve_layers(layers: Sequence[Layer], wanted: Sequence[str]) -> list[int] | None:
    """``layer`` query values, each an index or a module name; None means all layers."""
    if not wanted:
        return None
    by_name = {layer.name: layer.index for layer in layers}
    indexes = {layer.index for layer in layers}
    resolved: list[int] = []
    for value in wanted:
        # ASCII digits only, and few: str.isdigit() accepts "²", which int() refuses, and
        # int() refuses more than 4300 digits; either was a 500.
        if LAYER_INDEX.fullmatch(value) and int(value) in indexes:
            resolved.append(int(value))
        elif value in by_name:
            resolved.append(by_name[value])
        else:
            msg = f"unknown layer {value!r}: give a layer index or name from /layers"
            raise InvalidRequest.single(("query", "layer"), msg, value)
    return resolved


def resolve_stats(wanted: Sequence[str]) -> list[str]:
    if not wanted:
        return list(LAYER_STAT_COLUMNS)
    for value in wanted:
        if value not in LAYER_STAT_COLUMNS:
            msg = f"unknown statistic {value!r}: use one of {', '.join(LAYER_STAT_COLUMNS)}"
            raise InvalidRequest.single(("query", "stat"), msg, value)
    return list(dict.fromkeys(wanted))


@dataclass(frozen=True)
class Series:
    layer_index: int
    name: str
    kind: str
    points: list[dict[str, Any]]


def _point_value(value: Any) -> Any:
    return json_number(value) if isinstance(value, float) else value


def _is_nonfinite(value: Any) -> bool:
    return isinstance(value, float) and not math.isfinite(value)


def _checked_query(
    session: Session, job: Job, layer: Sequence[str], stat: Sequence[str], max_points: int
) -> tuple[Sequence[Layer], list[str], list[int] | None]:
    """(the layer table, statistic names, layer indexes or None for all) of a valid ask."""
    plan = telemetry_queries.list_layers(session=session, job_id=job.id)
    stats = resolve_stats(stat)
    indexes = resolve_layers(plan, layer)
    layers_asked = len(indexes) if indexes is not None else len(plan)
    if layers_asked * max_points > MAX_SERIES_POINTS:
        msg = (
            f"{layers_asked} layers x max_points {max_points} is more than "
            f"{MAX_SERIES_POINTS} points: ask for fewer layers or fewer points"
        )
        raise InvalidRequest.single(("query", "max_points"), msg, max_points)
    return plan, stats, indexes


def _point_keys(stats: Sequence[str]) -> tuple[str, ...]:
    """The names of a point's values, in the order of a stored point's cells."""
    return (
        "step",
        "epoch",
        *stats,
        *(f"{name}_min" for name in stats),
        *(f"{name}_max" for name in stats),
    )


def _empty_series(
    plan: Sequence[Layer], indexes: Sequence[int] | None
) -> dict[int, tuple[str, str]]:
    """(name, kind) of each layer asked for, by index: every one gets a series."""
    wanted = set(indexes) if indexes is not None else {info.index for info in plan}
    return {info.index: (info.name, info.kind) for info in plan if info.index in wanted}


def gradient_series(
    *,
    session: Session,
    job: Job,
    layer: Sequence[str],
    stat: Sequence[str],
    from_step: int | None,
    to_step: int | None,
    max_points: int,
) -> tuple[list[str], list[Series]]:
    """(statistic names, one series per layer); each series at most ``max_points`` long."""
    plan, stats, indexes = _checked_query(session, job, layer, stat, max_points)
    rows = telemetry_queries.list_layer_stat_points(
        session=session,
        job_id=job.id,
        stats=stats,
        layer_indexes=indexes,
        from_step=from_step,
        to_step=to_step,
        max_points=max_points,
    )
    series = {
        index: Series(index, name, kind, [])
        for index, (name, kind) in _empty_series(plan, indexes).items()
    }
    keys = _point_keys(stats)
    for row in rows:
        index, cells = row[0], row[1:]
        if index not in series:  # statistics without a layer row (plan not saved)
            series[index] = Series(index, str(index), "unknown", [])
        # Tens of thousands of points: one dict per point, and a value-by-value pass only
        # for the rare point with a non-finite value.
        if any(map(_is_nonfinite, cells)):
            cells = tuple(map(_point_value, cells))
        point = dict(zip(keys, cells, strict=True))
        series[index].points.append(point)
    return stats, [series[i] for i in sorted(series)]


@dataclass(frozen=True)
class ColumnSeries:
    """One layer's series as columns: ``columns[key][i]`` is point i's value of ``key``
    (the keys of a point: step, epoch, each statistic, its ``_min`` and ``_max``)."""

    layer_index: int
    name: str
    kind: str
    columns: dict[str, np.ndarray | list[Any]]


def json_column(values: np.ndarray, absent: np.ndarray) -> np.ndarray | list[Any]:
    """A float column as JSON carries it. All finite and present: the array itself, which
    orjson writes without a Python object per value (a float32, PostgreSQL's REAL, as its
    shortest decimal). Otherwise a list of the array's numpy scalars (written alike)
    with the absent values None and the non-finite ones spelled as
    ``service.kit.jsonnum`` says (orjson would write a NaN as null)."""
    finite = np.isfinite(values)
    if finite.all() and not absent.any():
        return np.ascontiguousarray(values)
    cells = np.empty(values.shape, dtype=object)
    cells[:] = list(values)  # numpy scalars: cells[:] = values would widen a float32
    cells[np.isnan(values)] = nonfinite_name(math.nan)
    cells[np.isposinf(values)] = nonfinite_name(math.inf)
    cells[np.isneginf(values)] = nonfinite_name(-math.inf)
    cells[absent] = None
    listed: list[Any] = cells.tolist()
    return listed


def gradient_columns(
    *,
    session: Session,
    job: Job,
    layer: Sequence[str],
    stat: Sequence[str],
    from_step: int | None,
    to_step: int | None,
    max_points: int,
) -> tuple[list[str], list[ColumnSeries]]:
    """``gradient_series`` as columns, built from arrays: no Python object per point."""
    plan, stats, indexes = _checked_query(session, job, layer, stat, max_points)
    points = telemetry_queries.list_layer_stat_runs(
        session=session,
        job_id=job.id,
        stats=stats,
        layer_indexes=indexes,
        from_step=from_step,
        to_step=to_step,
        max_points=max_points,
    )
    keys = _point_keys(stats)
    empty: dict[str, np.ndarray | list[Any]] = {key: [] for key in keys}
    series = {
        index: ColumnSeries(index, name, kind, dict(empty))
        for index, (name, kind) in _empty_series(plan, indexes).items()
    }
    if points is not None:
        # One row per statistic column, so that a layer's slice of it is contiguous.
        values = np.concatenate((points.last, points.low, points.high), axis=1).T.copy()
        absent = np.concatenate(
            (points.last_absent, points.low_absent, points.high_absent), axis=1
        ).T.copy()
        first = np.flatnonzero(np.concatenate(([True], np.diff(points.layer) != 0)))
        bounds = [*first.tolist(), len(points)]
        # Which (column, layer) slices hold a NaN, an inf or a NULL: found for all at once,
        # so that only those are written value by value.
        special = np.add.reduceat(absent | ~np.isfinite(values), first, axis=1) > 0
        for at, (start, end) in enumerate(itertools.pairwise(bounds)):
            index = int(points.layer[start])
            known = series.get(index)
            name, kind = (known.name, known.kind) if known else (str(index), "unknown")
            columns: dict[str, np.ndarray | list[Any]] = {
                "step": np.ascontiguousarray(points.step[start:end]),
                "epoch": np.ascontiguousarray(points.epoch[start:end]),
            }
            for k, key in enumerate(keys[2:]):
                columns[key] = (
                    json_column(values[k, start:end], absent[k, start:end])
                    if special[k, at]
                    else values[k, start:end]
                )
            series[index] = ColumnSeries(index, name, kind, columns)
    return stats, [series[i] for i in sorted(series)]


def gradients(
    *,
    session: Session,
    job: Job,
    layer: Sequence[str],
    stat: Sequence[str],
    from_step: int | None,
    to_step: int | None,
    max_points: int,
    as_columns: bool,
) -> dict[str, Any]:
    """The ``/gradients`` answer as plain data for orjson (numpy arrays included; the
    non-finite values already spelled as ``service.kit.jsonnum`` says): each series as
    point objects, or ``as_columns`` as one array per key."""
    query: dict[str, Any] = {
        "session": session,
        "job": job,
        "layer": layer,
        "stat": stat,
        "from_step": from_step,
        "to_step": to_step,
        "max_points": max_points,
    }
    if as_columns:
        stats, columns = gradient_columns(**query)
        return {
            "job_id": job.id,
            "stats": stats,
            "format": "columns",
            "series": [
                {"layer_index": s.layer_index, "name": s.name, "kind": s.kind, "columns": s.columns}
                for s in columns
            ],
        }
    stats, series = gradient_series(**query)
    return {
        "job_id": job.id,
        "stats": stats,
        "series": [
            {"layer_index": s.layer_index, "name": s.name, "kind": s.kind, "points": s.points}
            for s in series
        ],
    }


def histograms(
    *,
    session: Session,
    job: Job,
    layer: Sequence[str],
    step: int | None,
    from_step: int | None = None,
    to_step: int | None = None,
    limit: int = DEFAULT_HISTOGRAM_ROWS,
) -> Sequence[LayerHistogram]:
    """At most ``limit`` rows (each up to 512 counts): a long job's histograms are read
    in pieces, never in one unbounded answer."""
    plan = telemetry_queries.list_layers(session=session, job_id=job.id)
    return telemetry_queries.list_histograms(
        session=session,
        job_id=job.id,
        layer_indexes=resolve_layers(plan, layer),
        step=step,
        from_step=from_step,
        to_step=to_step,
        limit=limit,
    )


def landscape(*, session: Session, job: Job) -> Landscape:
    found = telemetry_queries.get_landscape(session=session, job_id=job.id)
    if found is None:
        raise LandscapeNotAvailable(job.id, job.status)
    return found


def prune_raw_stats(*, session: Session, settings: Settings) -> int:
    """Apply ``raw_stats_retention_days``: drop the raw rows of jobs finished before the
    cutoff, keeping their rollup. Returns rows dropped (0 with retention unset)."""
    if settings.raw_stats_retention_days is None:
        return 0
    return prune_raw_stats_older_than(session=session, days=settings.raw_stats_retention_days)


def prune_raw_stats_older_than(*, session: Session, days: float) -> int:
    """Drop the raw rows of jobs finished more than ``days`` ago, keeping their rollup
    (``trainlab prune``, and the reconciler's retention). Returns rows dropped."""
    cutoff = utcnow() - timedelta(days=days)
    dropped = telemetry_queries.prune_raw_stats(session=session, finished_before=cutoff)
    session.commit()
    return dropped
