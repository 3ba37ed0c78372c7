"""/v1/compare: one statistic (or epoch metric) of several jobs, aligned."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from service import compare
from service.api.deps import PrincipalDep, SessionDep
from service.api.schemas.common import error_responses
from service.api.schemas.compare import Comparison

router = APIRouter(tags=["compare"])


@router.get(
    "/compare",
    response_model=Comparison,
    responses=error_responses(404, 422),
    summary="Overlay several jobs: one statistic aligned on step, or a metric on epoch",
    description="`stat` with `layer` reads that layer statistic of each job on the union of "
    "their telemetry steps; `metric` reads an epoch metric on the union of their epochs. "
    "Give exactly one of the two. Example: `?jobs=a,b&stat=grad_norm&layer=0` shows whether "
    "the first layer's gradient vanished in a but not in b.",
)
def compare_jobs(
    session: SessionDep,
    principal: PrincipalDep,
    jobs: Annotated[
        str,
        Query(
            max_length=2000,
            description=f"Comma-separated job ids, 1 to {compare.MAX_COMPARE_JOBS}.",
        ),
    ],
    stat: Annotated[
        str | None,
        Query(description=f"A layer statistic: {', '.join(compare.LAYER_STATS)}. Default: none."),
    ] = None,
    metric: Annotated[
        str | None,
        Query(description=f"An epoch metric: {', '.join(compare.EPOCH_METRICS)}. Default: none."),
    ] = None,
    layer: Annotated[
        str,
        Query(
            max_length=300,
            description="With `stat`: the layer, by index (0 = nearest the input) or module "
            "name, looked up in each job's layer table.",
        ),
    ] = "0",
    max_points: Annotated[
        int,
        Query(ge=2, le=10_000, description="At most this many points per job (uniform stride)."),
    ] = 500,
) -> Comparison:
    result = compare.compare_jobs(
        session=session,
        principal=principal,
        job_ids=compare.parse_job_ids(jobs),
        stat=stat,
        metric=metric,
        layer=layer,
        max_points=max_points,
    )
    return Comparison.model_validate(result)
