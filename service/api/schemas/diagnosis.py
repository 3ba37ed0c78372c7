"""Schemas of the diagnosis: findings, most severe first."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.vocabulary import JobStatus


class FindingRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    code: str = Field(
        description="vanishing_gradient, exploding_gradient, dead_units, saturation, "
        "overfitting, divergence or not_learning.",
        examples=["vanishing_gradient"],
    )
    severity: Literal["info", "warning", "critical"]
    layers: list[int] = Field(description="Layer indexes concerned (empty: the whole model).")
    summary: str = Field(description="One sentence for a person.")
    evidence: dict[str, float | int | str] = Field(
        description="The figures behind the finding, e.g. ratio, first_grad_norm, gap."
    )
    remedy: str = Field(description="Spec changes that address it.")
    suggested_spec_patch: dict[str, Any] = Field(
        default_factory=dict,
        description="The remedy as spec changes by dotted path, e.g. "
        '`{"model.activation": "relu", "model.init": "kaiming"}`; '
        'POST /v1/jobs/{id}/retry-with `{"apply": "suggested"}` runs the job again with them.',
        examples=[{"model.activation": "relu", "model.init": "kaiming"}],
    )


class FindingBrief(BaseModel):
    """A finding in a few words, as job reads and sweep rows carry it."""

    code: str = Field(examples=["vanishing_gradient"])
    severity: Literal["info", "warning", "critical"]
    summary: str


class Diagnosis(BaseModel):
    job_id: str
    status: JobStatus
    findings: list[FindingRead] = Field(
        description="Most severe first; empty while the job has no statistics."
    )
