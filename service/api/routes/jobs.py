"""/v1/jobs: submit, list, read, cancel and delete jobs."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Query, Request, Response, status
from fastapi.responses import FileResponse

from service import jobs
from service.api import conditional
from service.api.deps import (
    DatabaseReadsDep,
    IdempotencyKeyDep,
    IfNoneMatchDep,
    JobDep,
    JobIdPath,
    PrincipalDep,
    SessionDep,
    SettingsDep,
)
from service.api.schemas.common import Page, error_responses
from service.api.schemas.jobs import SPEC_EXAMPLES, JobRead, job_read, job_read_of_columns
from service.specs import ExperimentSpec
from service.vocabulary import JobStatus

router = APIRouter(prefix="/jobs", tags=["jobs"])
NOT_MODIFIED = {"description": "Not modified: the `If-None-Match` ETag is still current"}


@router.post(
    "",
    status_code=status.HTTP_201_CREATED,
    response_model=JobRead,
    responses={
        200: {
            "description": "Replay of an earlier request with the same Idempotency-Key",
            "model": JobRead,
        },
        **error_responses(408, 409, 413, 422, 429, 503),
    },
    summary="Submit an experiment",
    description="The spec is validated, then admitted only if what it would cost stays "
    "within the server's limits (parameters, activation memory of a batch, telemetry rows, "
    "dataset size, estimated run time): a 422 names the field and the numbers. A key may "
    "have at most `max_active_jobs` queued or running jobs (429 past it).",
)
def submit_job(
    spec: Annotated[ExperimentSpec, Body(openapi_examples=SPEC_EXAMPLES)],
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> JobRead:
    job, created = jobs.submit_job(
        session=session,
        settings=settings,
        principal=principal,
        spec=spec,
        idempotency_key=idempotency_key,
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/v1/jobs/{job.id}"
    return job_read(job)


@router.get(
    "",
    response_model=Page[JobRead],
    responses={304: NOT_MODIFIED, **error_responses(422)},
    summary="List jobs",
    description="A key sees its own jobs (an admin key every owner's). "
    "Filters combine with AND. Any other query parameter is a field of the "
    "experiment spec by its dotted name, e.g. `model.activation=sigmoid`, `train.lr=0.05`, "
    "`model.skip=true`, `data.train_size=null`. Comparisons go in `where` (repeat for "
    "several): `where=train.lr>=0.01`, `where=result.val_acc>0.9`, `where=model.depth!=20`; "
    "operators `= != < <= > >=` (`<`, `>` and their `=` forms for numbers only), fields of the "
    "spec by dotted name or `result.` and a result field (val_acc, val_loss, train_acc, "
    "train_loss, best_val_loss, best_epoch, epochs_run, steps, diverged, ...). The query "
    "string may also spell them directly: `?train.lr>=0.01`. A job that lacks the field "
    "(no result yet) matches only `=null`.",
)
def list_jobs(
    request: Request,
    session: SessionDep,
    principal: PrincipalDep,
    status: Annotated[
        list[JobStatus],
        Query(description="Only jobs in these statuses; repeat for several. Default: all."),
    ] = [],  # noqa: B006
    tag: Annotated[
        str | None, Query(max_length=64, description="Only jobs with this tag. Default: any.")
    ] = None,
    name: Annotated[
        str | None, Query(max_length=200, description="Only jobs with this exact name.")
    ] = None,
    sort: Annotated[
        str,
        Query(
            max_length=200,
            description="Order by `created_at`, a spec field (`train.lr`) or a result field "
            "(`result.val_acc`); '-' first for descending. Jobs without the field come last.",
        ),
    ] = "-created_at",
    sweep_id: Annotated[
        str | None, Query(max_length=64, description="Only the jobs of this sweep.")
    ] = None,
    parent_id: Annotated[
        str | None,
        Query(max_length=64, description="Only the retries of this job (POST .../retry-with)."),
    ] = None,
    # Read with the other filters from the query parameters; declared for the docs.
    where: Annotated[
        list[str],
        Query(
            max_length=300,
            description="Filters `field op value`, e.g. `result.val_acc>0.9`; repeat for "
            "several (AND).",
        ),
    ] = [],  # noqa: B006
    limit: Annotated[int, Query(ge=1, le=200, description="Jobs per page.")] = 50,
    cursor: Annotated[
        str | None,
        Query(max_length=500, description="`next_cursor` of the previous page. Default: first."),
    ] = None,
    if_none_match: IfNoneMatchDep = None,
) -> Response:
    page = jobs.list_jobs(
        session=session,
        principal=principal,
        statuses=status,
        tag=tag,
        name=name,
        sort=sort,
        limit=limit,
        cursor=cursor,
        params=list(request.query_params.multi_items()),
        sweep_id=sweep_id,
        parent_id=parent_id,
    )
    body = Page[JobRead](items=[job_read(j) for j in page.items], next_cursor=page.next_cursor)
    return conditional.json_response(body, if_none_match)


@router.get(
    "/{job_id}",
    response_model=JobRead,
    responses={304: NOT_MODIFIED, **error_responses(404, 422)},
    summary="Read a job",
    description="The answer carries an `ETag`; send it back in `If-None-Match` to get a "
    "304 with no body while the job has not changed (cheap status polling).",
)
async def get_job(
    job_id: JobIdPath,
    principal: PrincipalDep,
    reads: DatabaseReadsDep,
    if_none_match: IfNoneMatchDep = None,
) -> Response:
    # One hand-off to a worker thread for the whole read (the database call).
    columns = await reads.run(
        jobs.read_job, engine=reads.engine, job_id=job_id, principal=principal
    )
    return conditional.json_response(job_read_of_columns(columns), if_none_match)


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


@router.delete(
    "/{job_id}",
    status_code=status.HTTP_204_NO_CONTENT,
    response_class=Response,
    responses=error_responses(404, 409, 422),
    summary="Delete a job",
    description="Removes a finished job with everything it recorded (statistics, "
    "histograms, metrics, landscape) and its checkpoints. A queued or running job is a 409: "
    "cancel it first. Another key's job is a 404.",
)
def delete_job(job: JobDep, session: SessionDep, settings: SettingsDep) -> Response:
    jobs.delete_job(session=session, settings=settings, job=job)
    return Response(status_code=status.HTTP_204_NO_CONTENT)


@router.get(
    "/{job_id}/checkpoint",
    response_class=FileResponse,
    responses={
        200: {
            "content": {
                "application/octet-stream": {"schema": {"type": "string", "format": "binary"}}
            },
            "description": "The final weights (the model's state dict) as a safetensors file",
        },
        **error_responses(404, 422),
    },
    summary="Download the final weights",
    description="Kept for a job that succeeded with `train.checkpoint_every > 0`. Load with "
    "`safetensors.torch.load_file(path)` and `model.load_state_dict(...)`.",
)
def get_checkpoint(job: JobDep, settings: SettingsDep) -> FileResponse:
    path = jobs.final_weights(settings=settings, job=job)
    return FileResponse(
        path, media_type="application/octet-stream", filename=f"{job.id}.safetensors"
    )
