"""Schemas of the diagnosis: findings, most severe first."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.vocabulary import JobStatus


class FindingRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    code: str = Field(
        description="Causes: lr_too_low, lr_too_high, over_regularized, poor_initialization, "
        "degradation, underfitting, overfitting, saturation, dead_units; symptoms: "
        "vanishing_gradient, exploding_gradient, divergence, not_learning (a symptom names "
        "its cause in caused_by).",
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
        description="The fix as spec changes: dotted paths (e.g. model.init) and their new "
        "values; the job's spec with them applied still validates.",
        examples=[{"model.activation": "relu", "model.init": "kaiming"}],
    )
    caused_by: str | None = Field(
        None,
        description="For a symptom, the code of the finding that explains it (listed "
        "before it); null for a cause.",
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
