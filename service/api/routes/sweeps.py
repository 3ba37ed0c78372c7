"""/v1/sweeps: one job per point of a grid of spec-field values, and the results side by side."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Response, status

from service import sweeps
from service.api.deps import PrincipalDep, SessionDep, SettingsDep, SweepDep
from service.api.schemas.common import Page, error_responses
from service.api.schemas.sweeps import (
    SWEEP_EXAMPLES,
    SweepCreate,
    SweepDetail,
    SweepRead,
    SweepSummary,
    sweep_detail,
    sweep_read,
    sweep_summary,
)

router = APIRouter(prefix="/sweeps", tags=["sweeps"])


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=SweepRead,
    responses=error_responses(408, 413, 422, 429, 503),
    summary="Submit a sweep: one job per grid point",
    description="Every point (the base spec with the grid's values set) is validated like "
    "a job body before anything is stored; an invalid value is a 422 located in the grid "
    '(`["body", "grid", "model.depth", 1]`). At most `max_sweep_points` points (an '
    "operator setting, default 64). "
    "The sweep and its jobs are committed together, then each job is queued.",
)
def create_sweep(
    body: Annotated[SweepCreate, Body(openapi_examples=SWEEP_EXAMPLES)],
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
) -> SweepRead:
    sweep, jobs = sweeps.create_sweep(
        session=session,
        settings=settings,
        principal=principal,
        base=body.base,
        grid=body.grid,
        name=body.name,
        seeds=body.seeds,
    )
    response.headers["Location"] = f"/v1/sweeps/{sweep.id}"
    return sweep_read(sweep, jobs)


@router.get(
    "",
    response_model=Page[SweepSummary],
    responses=error_responses(422),
    summary="List sweeps, newest first",
)
def list_sweeps(
    session: SessionDep,
    principal: PrincipalDep,
    limit: Annotated[int, Query(ge=1, le=200, description="Sweeps per page.")] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=500, description="`next_cursor` of the previous page. Default: first."),
    ] = None,
) -> Page[SweepSummary]:
    page = sweeps.list_sweeps(session=session, principal=principal, limit=limit, cursor=cursor)
    return Page[SweepSummary](
        items=[sweep_summary(s, page.counts[s.id]) for s in page.items],
        next_cursor=page.next_cursor,
    )


@router.get(
    "/{sweep_id}",
    response_model=SweepDetail,
    responses=error_responses(404, 422),
    summary="A sweep's jobs and one row per grid point",
    description="Each row: the point, its job's status and result, and the diagnosis "
    "findings (code, severity) once the job has finished.",
)
def get_sweep_detail(sweep: SweepDep, session: SessionDep) -> SweepDetail:
    return sweep_detail(sweeps.sweep_detail(session=session, sweep=sweep))
