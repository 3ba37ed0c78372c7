"""Sweep use cases: expand a grid of spec-field values into jobs, and read the results.

A sweep is a base ExperimentSpec and a grid ``{"model.activation": ["sigmoid", "relu"],
"model.norm": ["none", "batch"]}``; each point of the grid's cartesian product is the base
with those fields set, submitted as one job (with ``seeds``, one job per point and seed,
and the read gives each point's mean and spread over its seeds). Every point is
validated before anything is stored, the sweep and all its jobs are committed in one
transaction, and only then are the jobs enqueued (a worker must never receive an id that
is not in the database).
"""

from __future__ import annotations

import itertools
import json
import logging
import math
import statistics
import uuid
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, replace
from datetime import datetime
from typing import Any

from pydantic import ValidationError
from sqlalchemy.orm import Session

from service import diagnosis, jobs, queue, quotas
from service.config import Settings
from service.db.models import Job, Sweep
from service.db.repository import jobs as job_queries
from service.db.repository import sweeps as sweep_queries
from service.errors import ErrorItem, InvalidRequest, SpecInvalid, SweepNotFound
from service.keys import Principal
from service.kit import pagination, specpath
from service.specs import ExperimentSpec
from service.vocabulary import JobStatus

logger = logging.getLogger(__name__)

SWEEP_TAG_PREFIX = "sweep:"
SEED_FIELD = "train.seed"
# The result figures a sweep read summarizes per grid point, over its seeds.
RESULT_METRICS: tuple[str, ...] = (
    "train_loss",
    "train_acc",
    "val_loss",
    "val_acc",
    "best_val_loss",
)
NAME_MAX = 200  # Job.name and ExperimentSpec.name
MAX_BASE_TAGS = 31  # ExperimentSpec allows 32 tags; the sweep adds one
LIST_SORT = "-created_at"

Point = dict[str, Any]


# --- grid validation ------------------------------------------------------------------


def _grid_loc(key: str, index: int) -> tuple[str | int, ...]:
    return ("body", "grid", key, index)


def _check_seeds(grid: Mapping[str, Sequence[Any]], seeds: Sequence[int] | None) -> None:
    if seeds is None:
        return
    items: list[ErrorItem] = []
    if SEED_FIELD in grid:
        msg = f"give the seeds once: in seeds or as the grid field {SEED_FIELD}, not both"
        items.append(ErrorItem(("body", "grid", SEED_FIELD), msg, grid[SEED_FIELD]))
    for index, seed in enumerate(seeds):
        if seed in seeds[:index]:
            items.append(ErrorItem(("body", "seeds", index), f"duplicate seed {seed}", seed))
    if items:
        raise InvalidRequest(items)


def _check_shape(
    grid: Mapping[str, Sequence[Any]], max_points: int, seeds: Sequence[int] | None = None
) -> None:
    """Keys are scalar spec fields, value lists are non-empty, the product is small."""
    items: list[ErrorItem] = []
    if not grid:
        items.append(ErrorItem(("body", "grid"), "give at least one field to vary", {}))
    for key, values in grid.items():
        if key == "name":
            msg = "name is not a grid field: each job is named after its sweep and point"
            items.append(ErrorItem(("body", "grid", key), msg, key))
        elif not specpath.is_scalar_field(specpath.parse(key)):
            msg = (
                f"unknown grid field {key!r}: use the dotted name of a scalar field of the "
                "experiment spec, e.g. model.activation, train.lr, data.augment.noise"
            )
            items.append(ErrorItem(("body", "grid", key), msg, key))
        elif not isinstance(values, list) or not values:
            items.append(
                ErrorItem(("body", "grid", key), "give a non-empty list of values", values)
            )
    if items:
        raise InvalidRequest(items)
    runs = len(seeds) if seeds else 1
    size = math.prod(len(values) for values in grid.values()) * runs
    if size > max_points:
        sizes = " x ".join(str(len(v)) for v in grid.values())
        msg = f"the grid has {sizes} = {size} points; a sweep may have at most {max_points}"
        if seeds:
            msg = (
                f"the grid has {sizes} points x {runs} seeds = {size} runs; a sweep may have "
                f"at most {max_points} (max_sweep_points counts every point once per seed)"
            )
        raise InvalidRequest.single(("body", "grid"), msg, {k: len(v) for k, v in grid.items()})


def _normalize_values(
    base: dict[str, Any], grid: Mapping[str, Sequence[Any]]
) -> dict[str, list[Any]]:
    """Each value validated in place of the base's (field types and bounds), as stored JSON.

    Errors point at the value in the grid: ``["body", "grid", "model.depth", 1]``.
    Equal values after validation (``0.1`` and ``"0.1"``) would run the same job twice.
    """
    items: list[ErrorItem] = []
    normalized: dict[str, list[Any]] = {}
    for key, values in grid.items():
        path = specpath.parse(key)
        seen: list[Any] = []
        for index, value in enumerate(values):
            try:
                spec = ExperimentSpec.model_validate(specpath.with_values(base, {key: value}))
            except ValidationError as exc:
                error = next((e for e in exc.errors() if tuple(e["loc"]) == path), None)
                if error is None:  # the base itself is invalid (e.g. one tag too many)
                    raise _base_errors(exc) from exc
                items.append(ErrorItem(_grid_loc(key, index), f"{key}: {error['msg']}", value))
                continue
            clean = specpath.value_at(spec.model_dump(mode="json"), path)
            if clean in seen:
                msg = f"duplicate value for {key}: same as an earlier one ({_format_value(clean)})"
                items.append(ErrorItem(_grid_loc(key, index), msg, value))
            seen.append(clean)
        normalized[key] = seen
    if items:
        raise InvalidRequest(items)
    return normalized


def _base_errors(exc: ValidationError) -> InvalidRequest:
    return InvalidRequest(
        [
            ErrorItem(("body", "base", *map(str, e["loc"])), str(e["msg"]), e.get("input"))
            for e in exc.errors()
        ]
    )


def _format_value(value: Any) -> str:
    return value if isinstance(value, str) else json.dumps(value)


def point_label(point: Mapping[str, Any]) -> str:
    """``model.activation=relu,train.lr=0.1``: the point in a job's name."""
    return ",".join(f"{key}={_format_value(value)}" for key, value in point.items())


def grid_points(grid: Mapping[str, Sequence[Any]]) -> list[Point]:
    """The cartesian product in grid order: the last field varies fastest."""
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*grid.values())]


def _point_key(point: Mapping[str, Any]) -> str:
    return json.dumps(point, sort_keys=True, separators=(",", ":"))


@dataclass(frozen=True)
class PlannedJob:
    point: Point
    spec: ExperimentSpec


def _job_name(sweep_name: str, point: Mapping[str, Any], seed: int | None = None) -> str:
    label = point_label(point) + (f",seed={seed}" if seed is not None else "")
    name = f"{sweep_name} {label}".strip()
    return name[:NAME_MAX]  # the point itself is stored whole in job.grid_point


def plan_sweep(
    *,
    session: Session,
    settings: Settings,
    principal: Principal,
    sweep_id: str,
    name: str,
    base: ExperimentSpec,
    grid: Mapping[str, Sequence[Any]],
    seeds: Sequence[int] | None = None,
) -> tuple[dict[str, list[Any]], list[PlannedJob]]:
    """Validate the grid and every point's spec (once per seed); nothing is written.
    Raises a 422 error."""
    _check_shape(grid, settings.max_sweep_points, seeds)
    _check_seeds(grid, seeds)
    if len(base.tags) >= MAX_BASE_TAGS + 1:
        msg = f"a sweep adds the tag {SWEEP_TAG_PREFIX}<id>: give at most {MAX_BASE_TAGS} tags"
        raise InvalidRequest.single(("body", "base", "tags"), msg, list(base.tags))
    document = base.model_dump(mode="json")
    document["tags"] = [*base.tags, f"{SWEEP_TAG_PREFIX}{sweep_id}"]
    normalized = _normalize_values(document, grid)
    planned: list[PlannedJob] = []
    for point in grid_points(normalized):
        runs: Sequence[int | None] = seeds or [None]
        for seed in runs:
            seeded = {SEED_FIELD: seed} if seed is not None else {}
            point_doc = specpath.with_values(document, {**point, **seeded})
            point_doc["name"] = _job_name(name, point, seed)
            try:
                spec = ExperimentSpec.model_validate(point_doc)
            except ValidationError as exc:
                raise _base_errors(exc) from exc
            _validate_point(
                session=session,
                settings=settings,
                principal=principal,
                spec=spec,
                point=point,
                grid=normalized,
            )
            planned.append(PlannedJob(point=point, spec=spec))
    return normalized, planned


def _validate_point(
    *,
    session: Session,
    settings: Settings,
    principal: Principal,
    spec: ExperimentSpec,
    point: Point,
    grid: Mapping[str, list[Any]],
) -> None:
    """Cross-field rules and operator limits (``jobs.validate_spec``) for one point.

    An issue at a field the grid sets is located at that value in the grid; any other
    (a base field that this combination makes invalid) at the base, naming the point.
    """
    try:
        jobs.validate_spec(session=session, settings=settings, spec=spec, principal=principal)
    except SpecInvalid as exc:
        items: list[ErrorItem] = []
        where = f"(grid point {point_label(point)})"
        document = spec.model_dump(mode="json")
        for issue in exc.issues:
            key = specpath.dotted(issue.loc)
            if key in point:
                loc = _grid_loc(key, grid[key].index(point[key]))
                items.append(ErrorItem(loc, f"{issue.msg} {where}", point[key]))
            else:
                value = specpath.value_at(document, issue.loc, None)
                items.append(ErrorItem(("body", "base", *issue.loc), f"{issue.msg} {where}", value))
        raise InvalidRequest(items) from exc


# --- create ---------------------------------------------------------------------------


def create_sweep(
    *,
    session: Session,
    settings: Settings,
    principal: Principal,
    base: ExperimentSpec,
    grid: Mapping[str, Sequence[Any]],
    name: str = "",
    seeds: Sequence[int] | None = None,
) -> tuple[Sweep, list[Job]]:
    """Validate every point, store the sweep and its jobs in one transaction, then enqueue.

    Any invalid point rejects the whole sweep with a 422 before anything is written. If
    the broker fails part-way, the jobs not sent stay queued and a worker's reconciler
    sends them later: no job is failed, or left behind, because the broker was away.
    """
    sweep_id = uuid.uuid4().hex
    name = (name or base.name or f"sweep-{sweep_id[:8]}")[:NAME_MAX]
    normalized, planned = plan_sweep(
        session=session,
        settings=settings,
        principal=principal,
        sweep_id=sweep_id,
        name=name,
        base=base,
        grid=grid,
        seeds=seeds,
    )
    quotas.check_active_jobs(
        session=session, owner=principal.id, adding=len(planned), limit=settings.max_active_jobs
    )
    sweep = sweep_queries.create_sweep(
        session=session,
        owner=principal.id,
        sweep_id=sweep_id,
        name=name,
        base=base.model_dump(mode="json"),
        grid=normalized,
        seeds=seeds,
    )
    created = [
        job_queries.create_job(
            session=session,
            owner=principal.id,
            spec=item.spec,
            queue=queue.queue_for(item.spec.train.device),
            sweep_id=sweep.id,
            grid_point=item.point,
            max_attempts=settings.max_attempts,
        )
        for item in planned
    ]
    session.commit()
    jobs.enqueue_jobs(session=session, settings=settings, jobs=created)
    return sweep, created


# --- read -----------------------------------------------------------------------------


def get_sweep(*, session: Session, sweep_id: str, principal: Principal) -> Sweep:
    """The sweep, if ``principal`` may see it; another owner's sweep is as unknown (404)."""
    sweep = sweep_queries.get_sweep(session=session, sweep_id=sweep_id, owner=principal.scope)
    if sweep is None:
        raise SweepNotFound(sweep_id)
    return sweep


@dataclass(frozen=True)
class SweepRow:
    """One job of a grid point (one per seed): the diagnosis once the job has finished."""

    job: Job
    point: Point
    findings: list[diagnosis.Finding]
    seed: int | None = None


@dataclass(frozen=True)
class Spread:
    """One result figure over a point's seeds (the succeeded runs with a finite value)."""

    n: int
    mean: float
    std: float | None  # sample standard deviation; None from a single run
    min: float
    max: float


@dataclass(frozen=True)
class PointSummary:
    point: Point
    job_ids: list[str]
    seeds: list[int | None]
    metrics: dict[str, Spread]


@dataclass(frozen=True)
class SweepDetail:
    sweep: Sweep
    jobs: list[Job]  # in grid order
    rows: list[SweepRow]
    points: list[PointSummary]


def _seed_of(job: Job) -> int | None:
    seed = specpath.value_at(job.spec, specpath.parse(SEED_FIELD), None)
    return seed if isinstance(seed, int) else None


def jobs_in_grid_order(sweep: Sweep, sweep_jobs: Sequence[Job]) -> list[Job]:
    """Jobs in the order of the grid's product, each point's in the order of the sweep's
    seeds (creation order is not reliable)."""
    order = {_point_key(p): i for i, p in enumerate(grid_points(sweep.grid))}
    seed_order = {seed: i for i, seed in enumerate(sweep.seeds or [])}
    last = len(order)

    def rank(job: Job) -> tuple[int, int, str]:
        point = job.grid_point
        where = order.get(_point_key(point), last) if point is not None else last
        seed = _seed_of(job)
        return (where, seed_order.get(seed, 0) if seed is not None else 0, job.id)

    return sorted(sweep_jobs, key=rank)


def spread(values: Sequence[float]) -> Spread | None:
    if not values:
        return None
    std = statistics.stdev(values) if len(values) > 1 else None
    return Spread(len(values), statistics.fmean(values), std, min(values), max(values))


def summarize_points(rows: Sequence[SweepRow]) -> list[PointSummary]:
    """Per grid point, in grid order: each result figure's mean and spread over the
    point's seeds, from the jobs that succeeded (a failed seed is not averaged in)."""
    groups: dict[str, list[SweepRow]] = {}
    for row in rows:
        groups.setdefault(_point_key(row.point), []).append(row)
    summaries: list[PointSummary] = []
    for members in groups.values():
        metrics: dict[str, Spread] = {}
        for name in RESULT_METRICS:
            values = [
                float(value)
                for row in members
                if row.job.status == "succeeded"
                and isinstance(value := (row.job.result or {}).get(name), int | float)
                and math.isfinite(value)
            ]
            if (summary := spread(values)) is not None:
                metrics[name] = summary
        summaries.append(
            PointSummary(
                point=members[0].point,
                job_ids=[row.job.id for row in members],
                seeds=[row.seed for row in members],
                metrics=metrics,
            )
        )
    return summaries


def sweep_detail(*, session: Session, sweep: Sweep) -> SweepDetail:
    """The sweep's jobs and one row per grid point. Only finished jobs are diagnosed: a
    sweep has at most ``max_sweep_points`` jobs and each diagnosis is a few bounded
    queries."""
    ordered = jobs_in_grid_order(
        sweep, sweep_queries.jobs_of_sweep(session=session, sweep_id=sweep.id)
    )
    rows = [
        SweepRow(
            job=job,
            point=dict(job.grid_point or {}),
            findings=diagnosis.diagnose_job(session=session, job=job) if job.is_finished else [],
            seed=_seed_of(job) if sweep.seeds else None,
        )
        for job in ordered
    ]
    rows = _with_twin_findings(rows)
    return SweepDetail(sweep=sweep, jobs=ordered, rows=rows, points=summarize_points(rows))


def _sweep_run(row: SweepRow) -> diagnosis.SweepRun:
    model = (row.job.spec or {}).get("model") or {}
    loss = (row.job.result or {}).get("train_loss")
    return diagnosis.SweepRun(
        job_id=row.job.id,
        point=row.point,
        seed=_seed_of(row.job),
        depth=int(model.get("depth") or 0),
        skip=bool(model.get("skip")),
        train_loss=float(loss) if isinstance(loss, int | float) else None,
    )


def _with_twin_findings(rows: list[SweepRow]) -> list[SweepRow]:
    """Rows with what only the sweep shows: a plain net degraded against its residual or
    shallower twin (a cause: it ranks first, unless the job's own diagnosis has it)."""
    runs = [_sweep_run(row) for row in rows if row.job.status == "succeeded"]
    degraded = diagnosis.sweep_degradation(runs)
    return [
        replace(row, findings=[degraded[row.job.id], *row.findings])
        if row.job.id in degraded and all(f.code != "degradation" for f in row.findings)
        else row
        for row in rows
    ]


@dataclass(frozen=True)
class SweepPage:
    items: Sequence[Sweep]
    counts: Mapping[str, Mapping[JobStatus, int]]  # sweep id -> job status -> count
    next_cursor: str | None


def _position(sweep: Sweep) -> pagination.Position:
    return pagination.Position(key=sweep.created_at, id=sweep.id)


def list_sweeps(
    *, session: Session, principal: Principal, limit: int, cursor: str | None
) -> SweepPage:
    """Newest first; two queries whatever the page size (sweeps, then job counts)."""
    after = pagination.decode_cursor(cursor, sort=LIST_SORT, key_type=datetime) if cursor else None
    rows = sweep_queries.list_sweeps(
        session=session, owner=principal.scope, after=after, limit=limit + 1
    )
    page = pagination.page_of(rows, limit=limit, sort=LIST_SORT, position_of=_position)
    counts = sweep_queries.count_sweep_jobs_by_status(
        session=session, sweep_ids=[s.id for s in page.items]
    )
    return SweepPage(items=page.items, counts=counts, next_cursor=page.next_cursor)
