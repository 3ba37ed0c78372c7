"""/v1/jobs: submit, read, list, cancel, and the telemetry of one job."""

from __future__ import annotations

from typing import Annotated, Literal

from fastapi import APIRouter, Body, Query, Request, Response, status

from service import jobs
from service.api.deps import IdempotencyKeyDep, JobDep, SessionDep, SettingsDep
from service.api.schemas import (
    SPEC_EXAMPLES,
    Diagnosis,
    EpochMetricRead,
    FindingRead,
    Gradients,
    GradientSeries,
    HistogramRead,
    JobRead,
    JobStatus,
    LandscapeRead,
    LayerRead,
    Page,
    error_responses,
    job_read,
)
from service.db import repository
from service.errors import LandscapeNotAvailable
from service.specs import ExperimentSpec

router = APIRouter(prefix="/jobs", tags=["jobs"])

MAX_STEP = 2**31 - 1
StepQuery = Annotated[int | None, Query(ge=0, le=MAX_STEP)]
LayerQuery = Annotated[
    list[str], Query(description="Layer index or name; repeat for several. Default: all.")
]


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobRead,
    responses={
        200: {"description": "Replay of an earlier request with the same Idempotency-Key"},
        **error_responses(409, 413, 422, 503),
    },
    summary="Submit an experiment",
)
def submit_job(
    spec: Annotated[ExperimentSpec, Body(openapi_examples=SPEC_EXAMPLES)],
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> JobRead:
    job, created = jobs.submit_job(
        session=session, settings=settings, spec=spec, idempotency_key=idempotency_key
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_read(job)


@router.get(
    "",
    response_model=Page[JobRead],
    responses=error_responses(422),
    summary="List jobs",
    description="Filters combine with AND. Any other query parameter is a field of the "
    "experiment spec by its dotted name, e.g. `model.activation=sigmoid`, `train.lr=0.05`, "
    "`model.skip=true`, `data.train_size=null`.",
)
def list_jobs(
    request: Request,
    session: SessionDep,
    status: Annotated[list[JobStatus], Query(description="Repeat for several.")] = [],  # noqa: B006
    tag: Annotated[str | None, Query(max_length=64)] = None,
    name: Annotated[str | None, Query(max_length=200)] = None,
    sort: Literal["created_at", "-created_at"] = "-created_at",
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    cursor: Annotated[str | None, Query(max_length=500)] = None,
) -> Page[JobRead]:
    page = jobs.list_jobs(
        session=session,
        statuses=status,
        tag=tag,
        name=name,
        sort=sort,
        limit=limit,
        cursor=cursor,
        params=list(request.query_params.multi_items()),
    )
    return Page[JobRead](items=[job_read(j) for j in page.items], next_cursor=page.next_cursor)


@router.get("/{job_id}", response_model=JobRead, responses=error_responses(404, 422))
def get_job(job: JobDep) -> JobRead:
    return job_read(job)


@router.post(
    "/{job_id}/cancel",
    response_model=JobRead,
    responses=error_responses(404, 409, 422),
    summary="Cancel a job",
    description="A queued job is cancelled at once; a running job is flagged and its worker "
    "stops it within one training step. A finished job gives 409.",
)
def cancel_job(job: JobDep, session: SessionDep) -> JobRead:
    return job_read(jobs.cancel_job(session=session, job=job))


@router.get(
    "/{job_id}/metrics", response_model=list[EpochMetricRead], responses=error_responses(404)
)
def job_metrics(job: JobDep, session: SessionDep) -> list[EpochMetricRead]:
    rows = repository.list_epoch_metrics(session=session, job_id=job.id)
    return [EpochMetricRead.model_validate(row) for row in rows]


@router.get("/{job_id}/layers", response_model=list[LayerRead], responses=error_responses(404))
def job_layers(job: JobDep, session: SessionDep) -> list[LayerRead]:
    rows = repository.list_layers(session=session, job_id=job.id)
    return [LayerRead.model_validate(row) for row in rows]


@router.get(
    "/{job_id}/gradients",
    response_model=Gradients,
    responses=error_responses(404, 422),
    summary="Per-layer statistics over training steps",
    description="Each layer's series is downsampled to at most `max_points` by a uniform "
    "stride that keeps the first and last point. Non-finite values are the strings "
    '"NaN", "Infinity", "-Infinity" (a NaN stored in SQLite reads back as null).',
)
def job_gradients(
    job: JobDep,
    session: SessionDep,
    layer: LayerQuery = [],  # noqa: B006
    stat: Annotated[list[str], Query(description="Statistic names. Default: all.")] = [],  # noqa: B006
    from_step: StepQuery = None,
    to_step: StepQuery = None,
    max_points: Annotated[int, Query(ge=2, le=10_000)] = 500,
) -> Gradients:
    stats, series = jobs.gradient_series(
        session=session,
        job=job,
        layer=layer,
        stat=stat,
        from_step=from_step,
        to_step=to_step,
        max_points=max_points,
    )
    return Gradients(
        job_id=job.id,
        stats=stats,
        series=[GradientSeries.model_validate(s, from_attributes=True) for s in series],
    )


@router.get(
    "/{job_id}/histograms",
    response_model=list[HistogramRead],
    responses=error_responses(404, 422),
    summary="Per-layer gradient histograms",
)
def job_histograms(
    job: JobDep,
    session: SessionDep,
    layer: LayerQuery = [],  # noqa: B006
    step: StepQuery = None,
) -> list[HistogramRead]:
    rows = jobs.histograms(session=session, job=job, layer=layer, step=step)
    return [HistogramRead.model_validate(row) for row in rows]


@router.get(
    "/{job_id}/diagnosis",
    response_model=Diagnosis,
    responses=error_responses(404, 422),
    summary="What went wrong in training",
    description="Rules over the stored statistics, computed at request time: "
    "`vanishing_gradient`, `exploding_gradient`, `dead_units`, `saturation`, `overfitting`, "
    "`divergence`, `not_learning`. Gradient and activation rules judge the last half of "
    "the steps recorded so far, so a running job gets the findings so far and a queued "
    "one an empty list.",
)
def job_diagnosis(job: JobDep, session: SessionDep) -> Diagnosis:
    findings = jobs.diagnose_job(session=session, job=job)
    return Diagnosis(
        job_id=job.id,
        status=job.status,
        findings=[FindingRead.model_validate(f) for f in findings],
    )


@router.get(
    "/{job_id}/landscape",
    response_model=LandscapeRead,
    responses=error_responses(404, 422),
    summary="Loss-landscape slice of the trained model",
    description="The loss along one or two random filter-normalized directions through the "
    "trained weights (Li et al. 2018), computed by the worker when training ends if the spec "
    "sets `telemetry.landscape`. Compare a plain net with its `skip: true` twin. 404 while "
    "there is none (not asked for, not finished, cancelled or diverged).",
)
def job_landscape(job: JobDep) -> LandscapeRead:
    landscape = (job.result or {}).get("landscape")
    if not landscape:
        raise LandscapeNotAvailable(job.id, job.status)
    return LandscapeRead.model_validate({**landscape, "job_id": job.id})
