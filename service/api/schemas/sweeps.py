"""Schemas of /v1/sweeps: the request body, the sweep with its jobs, one row per point."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from dataclasses import asdict
from datetime import datetime
from typing import Annotated, Any

from fastapi.openapi.models import Example
from pydantic import BaseModel, ConfigDict, Field

from service import sweeps
from service.api.schemas.diagnosis import FindingBrief
from service.api.schemas.jobs import JobRead, job_read
from service.db.models import Job, Sweep
from service.diagnosis import Finding
from service.specs import EXAMPLE_SPEC, ExperimentSpec
from service.vocabulary import JobStatus

# Any, not a union of JSON scalars: each value is validated against its spec field, which
# gives one located message ("model.depth: Input should be a valid integer").
GridValues = Annotated[list[Any], Field(min_length=1)]

GRID_DESCRIPTION = (
    "Spec fields to vary, by dotted name (`model.activation`, `train.lr`, "
    "`data.augment.noise`), each with the values to try. One job per point of the "
    "cartesian product, at most `max_sweep_points` (an operator setting, default 64)."
)


class SweepCreate(BaseModel):
    model_config = ConfigDict(extra="forbid", strict=True)

    name: str = Field(
        "",
        max_length=200,
        description="Default: the base spec's name. Each job is named "
        "`<name> model.activation=relu,model.norm=batch`.",
    )
    base: ExperimentSpec = Field(
        default_factory=ExperimentSpec,
        description="The spec every point starts from; its tags plus `sweep:<id>` tag each job.",
    )
    grid: dict[Annotated[str, Field(max_length=100)], GridValues] = Field(
        min_length=1, description=GRID_DESCRIPTION
    )
    seeds: list[Annotated[int, Field(ge=0, le=2**31 - 1)]] | None = Field(
        None,
        min_length=1,
        max_length=64,
        description="Run every grid point once per seed (`train.seed`): the read then "
        "gives each point's mean and spread over them. `max_sweep_points` counts points "
        "x seeds. Default: one run per point, with the base's seed.",
        examples=[[0, 1, 2]],
    )


class SweepRead(BaseModel):
    id: str
    owner: str
    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]] = Field(description="The grid as validated (values normalized).")
    created_at: datetime
    seeds: list[int] | None = Field(
        None, description="The seeds each grid point runs with (null: one run per point)."
    )
    jobs: list[JobRead] = Field(
        description="One job per grid point (per point and seed with seeds), in grid order."
    )


class SweepFinding(FindingBrief):
    suggested_spec_patch: dict[str, Any] = Field(
        default_factory=dict,
        description="Spec changes that address it (POST /v1/jobs/{id}/retry-with "
        '`{"apply": "suggested"}` runs them).',
    )


class SpreadRead(BaseModel):
    n: int = Field(description="Succeeded runs with a finite value.")
    mean: float
    std: float | None = Field(description="Sample standard deviation; null from one run.")
    min: float
    max: float


class PointRead(BaseModel):
    point: dict[str, Any] = Field(description="This point's value of each grid field.")
    job_ids: list[str] = Field(description="Its jobs, one per seed, in the order of seeds.")
    seeds: list[int | None]
    metrics: dict[str, SpreadRead] = Field(
        description="train_loss, train_acc, val_loss, val_acc and best_val_loss over the "
        "point's succeeded runs; a figure no run has yet is absent."
    )


class SweepRowRead(BaseModel):
    job_id: str
    name: str
    point: dict[str, Any] = Field(description="This point's value of each grid field.")
    seed: int | None = Field(None, description="This run's train.seed, in a sweep with seeds.")
    status: JobStatus
    result: dict[str, Any] | None = Field(
        description="The job's result (train_loss, train_acc, val_loss, val_acc, ...) "
        "once it has finished."
    )
    error: str | None
    findings: list[SweepFinding] = Field(
        description="The diagnosis of a finished job with each finding's suggested patch "
        "(GET /v1/jobs/{id}/diagnosis has the evidence), most severe first; empty until "
        "the job finishes."
    )


class SweepDetail(SweepRead):
    rows: list[SweepRowRead] = Field(
        description="One row per job (grid point, and seed), in grid order."
    )
    points: list[PointRead] = Field(
        description="One entry per grid point, in grid order: the mean and spread of its "
        "result figures over its seeds."
    )


class SweepSummary(BaseModel):
    id: str
    owner: str
    name: str
    base: dict[str, Any]
    grid: dict[str, list[Any]]
    created_at: datetime
    points: int = Field(description="Number of jobs in the sweep.")
    status_counts: dict[JobStatus, int] = Field(description="Jobs of the sweep by status.")


def sweep_read(sweep: Sweep, jobs: Sequence[Job]) -> SweepRead:
    return SweepRead(
        id=sweep.id,
        owner=sweep.owner,
        name=sweep.name,
        base=sweep.base,
        grid=sweep.grid,
        created_at=sweep.created_at,
        seeds=sweep.seeds,
        jobs=[job_read(job) for job in jobs],
    )


def _brief(finding: Finding) -> SweepFinding:
    return SweepFinding(
        code=finding.code,
        severity=finding.severity,
        summary=finding.summary,
        suggested_spec_patch=finding.suggested_spec_patch,
    )


def _row_read(row: sweeps.SweepRow) -> SweepRowRead:
    job = row.job
    return SweepRowRead.model_validate(
        {
            "job_id": job.id,
            "name": job.name,
            "point": row.point,
            "seed": row.seed,
            "status": job.status,
            "result": job.result,
            "error": job.error,
            "findings": [_brief(f) for f in row.findings],
        }
    )


def sweep_detail(detail: sweeps.SweepDetail) -> SweepDetail:
    return SweepDetail(
        **dict(sweep_read(detail.sweep, detail.jobs)),
        rows=[_row_read(row) for row in detail.rows],
        points=[
            PointRead(
                point=p.point,
                job_ids=p.job_ids,
                seeds=p.seeds,
                metrics={name: SpreadRead(**asdict(s)) for name, s in p.metrics.items()},
            )
            for p in detail.points
        ],
    )


def sweep_summary(sweep: Sweep, counts: Mapping[JobStatus, int]) -> SweepSummary:
    return SweepSummary(
        id=sweep.id,
        owner=sweep.owner,
        name=sweep.name,
        base=sweep.base,
        grid=sweep.grid,
        created_at=sweep.created_at,
        points=sum(counts.values()),
        status_counts=dict(counts),
    )


def _example_base() -> dict[str, Any]:
    base = copy.deepcopy(EXAMPLE_SPEC)
    base["name"] = "depth-20"
    return base


SWEEP_EXAMPLES: dict[str, Example] = {
    "activation_x_norm": {
        "summary": "20-layer MLP on MNIST-1D: sigmoid vs ReLU, with and without batch norm",
        "value": {
            "name": "activation-x-norm",
            "base": _example_base(),
            "grid": {"model.activation": ["sigmoid", "relu"], "model.norm": ["none", "batch"]},
        },
    },
}
