"""Compare use case: one statistic (or epoch metric) of several jobs, aligned on step
(or epoch), for overlays in the dashboard, ``trainlab compare`` and sweep plots."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

from sqlalchemy.orm import Session

from service.db.models import LAYER_STAT_COLUMNS
from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from service.db.repository.telemetry import EPOCH_METRIC_COLUMNS
from service.errors import InvalidRequest, JobNotFound
from service.keys import Principal
from service.kit.jsonnum import json_number
from service.telemetry import LAYER_INDEX

MAX_COMPARE_JOBS = 20
LAYER_STATS = LAYER_STAT_COLUMNS
EPOCH_METRICS = EPOCH_METRIC_COLUMNS
JOBS_LOC = ("query", "jobs")


@dataclass(frozen=True)
class ComparedSeries:
    job_id: str
    name: str
    status: str
    layer_index: int | None
    layer_name: str | None
    values: list[float | str | None]  # aligned on Comparison.x; None where not recorded


@dataclass(frozen=True)
class Comparison:
    axis: Literal["step", "epoch"]
    quantity: str  # the statistic or metric compared
    layer: str | None  # as asked (index or name); None for epoch metrics
    x: list[int]
    series: list[ComparedSeries]


def parse_job_ids(raw: str) -> list[str]:
    """``a,b,c`` -> unique ids in order, 1..MAX_COMPARE_JOBS of them, or a 422."""
    ids = list(dict.fromkeys(part.strip() for part in raw.split(",") if part.strip()))
    if not ids or len(ids) > MAX_COMPARE_JOBS:
        msg = f"give 1 to {MAX_COMPARE_JOBS} comma-separated job ids (got {len(ids)})"
        raise InvalidRequest.single(JOBS_LOC, msg, raw)
    return ids


def _check_quantity(stat: str | None, metric: str | None) -> None:
    if (stat is None) == (metric is None):
        msg = "give exactly one of stat (a layer statistic) or metric (an epoch metric)"
        raise InvalidRequest.single(("query", "stat"), msg, {"stat": stat, "metric": metric})
    if stat is not None and stat not in LAYER_STAT_COLUMNS:
        msg = f"unknown statistic {stat!r}: use one of {', '.join(LAYER_STAT_COLUMNS)}"
        raise InvalidRequest.single(("query", "stat"), msg, stat)
    if metric is not None and metric not in EPOCH_METRIC_COLUMNS:
        msg = f"unknown metric {metric!r}: use one of {', '.join(EPOCH_METRIC_COLUMNS)}"
        raise InvalidRequest.single(("query", "metric"), msg, metric)


def _aligned(
    x: list[int], points: dict[str, dict[int, float | None]], job_id: str
) -> list[float | str | None]:
    by_x = points.get(job_id, {})
    return [json_number(by_x.get(i)) for i in x]


def compare_jobs(
    *,
    session: Session,
    principal: Principal,
    job_ids: Sequence[str],
    stat: str | None = None,
    metric: str | None = None,
    layer: str = "0",
    max_points: int = 500,
) -> Comparison:
    """The series of each job in the order asked, on the union of their steps (epochs).

    ``layer`` is a layer index or a module name, looked up in each job's own layer table.
    Unknown job ids, and those of another owner, are a 404; a job that has not recorded the
    layer has all None values.
    """
    _check_quantity(stat, metric)
    jobs = job_queries.get_jobs(session=session, job_ids=job_ids, owner=principal.scope)
    found = {job.id: job for job in jobs}
    missing = [job_id for job_id in job_ids if job_id not in found]
    if missing:
        raise JobNotFound(missing[0])
    points: dict[str, dict[int, float | None]] = {}
    layer_of: dict[str, tuple[int, str]] = {}
    if stat is not None:
        by_index = LAYER_INDEX.fullmatch(layer) is not None
        rows = telemetry_queries.compare_layer_stat(
            session=session,
            job_ids=list(job_ids),
            stat=stat,
            layer_index=int(layer) if by_index else None,
            layer_name=None if by_index else layer,
            max_points=max_points,
        )
        for job_id, layer_index, layer_name, step, value in rows:
            points.setdefault(job_id, {})[int(step)] = value
            layer_of[job_id] = (int(layer_index), str(layer_name))
    else:
        assert metric is not None
        for job_id, epoch, value in telemetry_queries.compare_epoch_metric(
            session=session, job_ids=list(job_ids), metric=metric
        ):
            points.setdefault(job_id, {})[int(epoch)] = value
    x = sorted({i for by_x in points.values() for i in by_x})
    series = [
        ComparedSeries(
            job_id=job_id,
            name=found[job_id].name,
            status=found[job_id].status,
            layer_index=layer_of[job_id][0] if job_id in layer_of else None,
            layer_name=layer_of[job_id][1] if job_id in layer_of else None,
            values=_aligned(x, points, job_id),
        )
        for job_id in job_ids
    ]
    return Comparison(
        axis="step" if stat is not None else "epoch",
        quantity=stat or metric or "",
        layer=layer if stat is not None else None,
        x=x,
        series=series,
    )
