"""/v1/jobs/{id}/retry-with: run a job again with a changed spec, linked to it."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Body, Response, status

from service import retry
from service.api.deps import IdempotencyKeyDep, JobDep, PrincipalDep, SessionDep, SettingsDep
from service.api.schemas.common import error_responses
from service.api.schemas.jobs import JobRead, job_read
from service.api.schemas.retry import RETRY_EXAMPLES, RetryWith

router = APIRouter(prefix="/jobs", tags=["jobs"])


@router.post(
    "/{job_id}/retry-with",
    status_code=status.HTTP_201_CREATED,
    response_model=JobRead,
    responses={
        200: {
            "description": "Replay of an earlier request with the same Idempotency-Key",
            "model": JobRead,
        },
        **error_responses(404, 408, 409, 413, 422, 429, 503),
    },
    summary="Try the fix: run a job again with a changed spec",
    description="Submits the job's spec with `patch` applied (dotted paths of scalar spec "
    'fields), or with the diagnosis\' suggested patches (`{"apply": "suggested"}`), as a '
    "new job whose `parent_id` is this one. It is validated and admitted like "
    'POST /v1/jobs: a 422 names the patch entry (`["body", "patch", "model.depth"]`); '
    "a 422 at `apply` when no finding suggests a change. The job may be in any status.",
)
def retry_with(
    job: JobDep,
    body: Annotated[RetryWith, Body(openapi_examples=RETRY_EXAMPLES)],
    response: Response,
    session: SessionDep,
    settings: SettingsDep,
    principal: PrincipalDep,
    idempotency_key: IdempotencyKeyDep = None,
) -> JobRead:
    created_job, created = retry.retry_with(
        session=session,
        settings=settings,
        principal=principal,
        job=job,
        patch=body.patch,
        apply=body.apply,
        idempotency_key=idempotency_key,
    )
    response.status_code = status.HTTP_201_CREATED if created else status.HTTP_200_OK
    response.headers["Location"] = f"/v1/jobs/{created_job.id}"
    return job_read(created_job)
