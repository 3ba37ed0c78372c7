"""/v1/jobs/{id}/...: what a job recorded: metrics, layers, statistics, histograms,
and its loss-landscape slice."""

from __future__ import annotations

from typing import Annotated

import orjson
from fastapi import APIRouter, Query, Response

from service import telemetry
from service.api.deps import JobDep, SessionDep
from service.api.schemas.common import error_responses
from service.api.schemas.telemetry import (
    GRADIENTS_EXAMPLE,
    GRADIENTS_POINTS_EXAMPLE,
    EpochMetricRead,
    GradientColumns,
    GradientFormat,
    Gradients,
    HistogramRead,
    LandscapeRead,
    LayerRead,
)

JSON = "application/json"

router = APIRouter(prefix="/jobs", tags=["telemetry"])

MAX_STEP = 2**31 - 1
FromStepQuery = Annotated[
    int | None, Query(ge=0, le=MAX_STEP, description="First training step. Default: the first.")
]
ToStepQuery = Annotated[
    int | None, Query(ge=0, le=MAX_STEP, description="Last training step. Default: the last.")
]
StepQuery = Annotated[
    int | None,
    Query(ge=0, le=MAX_STEP, description="Only this training step. Default: every step."),
]
LayerQuery = Annotated[
    list[str], Query(description="Layer index or name; repeat for several. Default: all.")
]


@router.get(
    "/{job_id}/metrics", response_model=list[EpochMetricRead], responses=error_responses(404)
)
def job_metrics(job: JobDep, session: SessionDep) -> list[EpochMetricRead]:
    rows = telemetry.epoch_metrics(session=session, job=job)
    return [EpochMetricRead.model_validate(row) for row in rows]


@router.get("/{job_id}/layers", response_model=list[LayerRead], responses=error_responses(404))
def job_layers(job: JobDep, session: SessionDep) -> list[LayerRead]:
    return [LayerRead.model_validate(row) for row in telemetry.layers(session=session, job=job)]


@router.get(
    "/{job_id}/gradients",
    response_model=Gradients | GradientColumns,
    responses={
        **error_responses(404, 422),
        200: {
            "content": {
                JSON: {
                    "examples": {
                        "points": {
                            "summary": "format=points (the default)",
                            "value": GRADIENTS_POINTS_EXAMPLE,
                        },
                        "columns": {"summary": "format=columns", "value": GRADIENTS_EXAMPLE},
                    }
                }
            }
        },
    },
    summary="Per-layer statistics over training steps",
    description="Each layer's series is downsampled to at most `max_points`: equal step "
    "buckets, each point its bucket's last step and values with `<stat>_min` and "
    "`<stat>_max` over the bucket (spikes, inf and NaN stay visible; a long job's buckets "
    "are read from the rollup written at ingest). Non-finite values are the strings "
    '"NaN", "Infinity", "-Infinity" (a NaN stored in SQLite reads back as null). '
    "`format=points` (the default): each series a list of point objects; "
    "`format=columns`: each series one array per key (`step`, `epoch`, `<stat>`, "
    "`<stat>_min`, `<stat>_max`), the same values in the same order, smaller and faster "
    "to build and parse for a chart.",
)
def job_gradients(
    job: JobDep,
    session: SessionDep,
    layer: LayerQuery = [],  # noqa: B006
    stat: Annotated[list[str], Query(description="Statistic names. Default: all.")] = [],  # noqa: B006
    from_step: FromStepQuery = None,
    to_step: ToStepQuery = None,
    max_points: Annotated[
        int, Query(ge=2, le=10_000, description="At most this many points per layer.")
    ] = 500,
    format: Annotated[
        GradientFormat,
        Query(description="points: a list of point objects per layer; columns: arrays."),
    ] = "points",
) -> Response:
    # Built as plain JSON, not validated again: a long job's answer holds 10^5 values,
    # whose per-value validation against the documented model cost more than the read;
    # and encoded by orjson, ~10x faster than the standard library's encoder on them (the
    # non-finite values are already the strings of service.kit.jsonnum).
    body = telemetry.gradients(
        session=session,
        job=job,
        layer=layer,
        stat=stat,
        from_step=from_step,
        to_step=to_step,
        max_points=max_points,
        as_columns=format == "columns",
    )
    return Response(orjson.dumps(body, option=orjson.OPT_SERIALIZE_NUMPY), media_type=JSON)


@router.get(
    "/{job_id}/histograms",
    response_model=list[HistogramRead],
    responses=error_responses(404, 422),
    summary="Per-layer gradient histograms",
    description="Rows in (layer, step) order, at most `limit` of them: narrow with `layer`, "
    "`step` or `from_step`/`to_step`, and page on with `from_step` past the last step seen.",
)
def job_histograms(
    job: JobDep,
    session: SessionDep,
    layer: LayerQuery = [],  # noqa: B006
    step: StepQuery = None,
    from_step: StepQuery = None,
    to_step: StepQuery = None,
    limit: Annotated[
        int, Query(ge=1, le=telemetry.MAX_HISTOGRAM_ROWS, description="Most rows returned.")
    ] = telemetry.DEFAULT_HISTOGRAM_ROWS,
) -> list[HistogramRead]:
    rows = telemetry.histograms(
        session=session,
        job=job,
        layer=layer,
        step=step,
        from_step=from_step,
        to_step=to_step,
        limit=limit,
    )
    return [HistogramRead.model_validate(row) for row in rows]


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
def job_landscape(job: JobDep, session: SessionDep) -> LandscapeRead:
    return LandscapeRead.model_validate(telemetry.landscape(session=session, job=job))
