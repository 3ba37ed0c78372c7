"""/v1/jobs/{id}/diagnosis: what went wrong in training, and what to change."""

from __future__ import annotations

from fastapi import APIRouter

from service import diagnosis
from service.api.deps import JobDep, SessionDep
from service.api.schemas.common import error_responses
from service.api.schemas.diagnosis import Diagnosis, FindingRead

router = APIRouter(prefix="/jobs", tags=["diagnosis"])


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
    findings = diagnosis.diagnose_job(session=session, job=job)
    return Diagnosis(
        job_id=job.id,
        status=job.status,
        findings=[FindingRead.model_validate(f) for f in findings],
    )
