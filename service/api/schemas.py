"""API schemas (what the HTTP contract shows), separate from ORM models and specs.

Non-finite floats (NaN, ±Infinity) are not valid JSON: they are written as the strings
"NaN", "Infinity" and "-Infinity" (JavaScript's ``Number()`` reads them back). On SQLite
a stored NaN comes back as null.
"""

from __future__ import annotations

import math
from datetime import datetime
from typing import Annotated, Any, Generic, Literal, TypeVar

from fastapi.openapi.models import Example
from pydantic import BaseModel, ConfigDict, Field, PlainSerializer

from service.specs import EXAMPLE_SPEC

T = TypeVar("T")

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]


def json_number(value: float | None) -> float | str | None:
    if value is None or math.isfinite(value):
        return value
    return "NaN" if math.isnan(value) else ("Infinity" if value > 0 else "-Infinity")


JsonFloat = Annotated[
    float | None,
    PlainSerializer(json_number, return_type=float | str | None, when_used="always"),
]


class ErrorBody(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="A message, or FastAPI's list of {type, loc, msg, input} for 422."
    )


ERROR_DESCRIPTIONS: dict[int, str] = {
    401: "Missing API key (X-API-Key)",
    403: "Invalid API key",
    404: "Unknown id",
    409: "Illegal state change or idempotency conflict",
    413: "Body too large",
    422: "Validation error",
    503: "Broker or database unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each typed error it can raise."""
    return {
        code: {"description": ERROR_DESCRIPTIONS[code], "model": ErrorBody}
        for code in codes
        if code != 422  # FastAPI documents its own 422 schema
    }


class Progress(BaseModel):
    epoch: int
    epochs: int
    step: int
    total_steps: int
    fraction: float = Field(ge=0.0, le=1.0)


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    tags: list[str]
    status: JobStatus
    spec: dict[str, Any]
    progress: Progress
    result: dict[str, Any] | None
    error: str | None
    created_at: datetime
    started_at: datetime | None
    finished_at: datetime | None
    heartbeat_at: datetime | None = Field(
        description="Last sign of life from the worker training it (running jobs)."
    )
    worker: str | None
    device: str | None
    queue: str
    cancel_requested: bool


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )


class EpochMetricRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    epoch: int
    train_loss: JsonFloat
    train_acc: JsonFloat
    val_loss: JsonFloat
    val_acc: JsonFloat
    lr: JsonFloat
    seconds: JsonFloat


class LayerRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    index: int = Field(description="0 is the layer nearest the input.")
    name: str = Field(description="Module path.")
    kind: str
    params: int
    shape: list[int]
    activation: str | None


class GradientSeries(BaseModel):
    layer_index: int
    name: str
    kind: str
    points: list[dict[str, int | float | str | None]] = Field(
        description="Each point: step, epoch and the requested statistics."
    )


class Gradients(BaseModel):
    job_id: str
    stats: list[str]
    series: list[GradientSeries]


class HistogramRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    layer_index: int
    step: int
    lo: JsonFloat
    hi: JsonFloat
    counts: list[int]


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


class Diagnosis(BaseModel):
    job_id: str
    status: JobStatus
    findings: list[FindingRead] = Field(
        description="Most severe first; empty while the job has no statistics."
    )


class LandscapeRead(BaseModel):
    """A loss-landscape slice (Li et al. 2018): loss along filter-normalized directions."""

    job_id: str
    dims: Literal[1, 2]
    alphas: list[float] = Field(description="Step along each direction, in filter-norm units.")
    losses: list[JsonFloat] | list[list[JsonFloat]] = Field(
        description="1-D: loss at each alpha; 2-D: losses[i][j] at (alphas[i], alphas[j]). "
        'A non-finite loss (far from the minimum) is "NaN".'
    )
    roughness: JsonFloat = Field(
        description="Mean |second difference| over the loss range: ~2·(2/(points-1))² for a "
        "parabola (0.02 at 21 points), larger when the slice wiggles; 0 when flat."
    )
    sharpness: JsonFloat = Field(
        description="Mean of loss(±0.1·span) - loss(0): how fast the loss rises next to the "
        "trained weights."
    )
    local_minima: int = Field(description="Interior points lower than all axis neighbours.")
    examples: int = Field(description="Training examples the loss is evaluated on.")


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    name: str
    n_examples: int
    x_shape: list[int]
    num_classes: int
    layout: str
    size_bytes: int
    created_at: datetime


class Health(BaseModel):
    status: Literal["ok", "unavailable"]
    checks: dict[str, str] = Field(default_factory=dict)


def _variant(name: str, tags: list[str], **parts: dict[str, Any]) -> dict[str, Any]:
    spec: dict[str, Any] = {
        key: dict(value) if isinstance(value, dict) else value
        for key, value in EXAMPLE_SPEC.items()
    }
    spec["name"], spec["tags"] = name, tags
    for part, changes in parts.items():
        spec[part] = {**spec[part], **changes}
    return spec


SPEC_EXAMPLES: dict[str, Example] = {
    "vanishing": {
        "summary": "Vanishing gradients: 20 sigmoid layers",
        "value": EXAMPLE_SPEC,
    },
    "relu_batchnorm": {
        "summary": "Fix: ReLU, He init and batch norm at the same depth",
        "value": _variant(
            "relu-bn-depth-20",
            ["vanishing", "fix"],
            model={"activation": "relu", "norm": "batch", "init": "kaiming"},
        ),
    },
    "residual": {
        "summary": "Residual network: 34 layers in blocks of two",
        "value": _variant(
            "residual-depth-34",
            ["degradation"],
            model={"depth": 34, "width": 64, "activation": "relu", "skip": True},
        ),
    },
    "residual_landscape": {
        "summary": "Residual network with a loss-landscape slice (compare skip: false)",
        "value": _variant(
            "residual-landscape-depth-24",
            ["degradation", "landscape"],
            model={"depth": 24, "width": 64, "activation": "relu", "norm": "batch", "skip": True},
            train={"epochs": 3},
            telemetry={"landscape": {"points": 21, "span": 1.0, "dims": 1, "max_examples": 1024}},
        ),
    },
    "overfitting_dropout": {
        "summary": "Overfitting: a big model on 256 examples, with dropout",
        "value": _variant(
            "overfit-dropout",
            ["overfitting"],
            data={"train_size": 256},
            model={"depth": 4, "width": 512, "activation": "relu", "dropout": 0.3},
            train={"epochs": 20, "optimizer": "adam", "lr": 0.001},
        ),
    },
}


def job_read(job: Any) -> JobRead:
    """JobRead from a ``service.db.models.Job`` (progress is derived)."""
    if job.status == "succeeded":
        fraction = 1.0  # also when early stopping ended it before total_steps
    elif job.total_steps:
        fraction = min(1.0, job.step / job.total_steps)
    else:
        fraction = 0.0
    progress = Progress(
        epoch=job.epoch,
        epochs=job.epochs,
        step=job.step,
        total_steps=job.total_steps,
        fraction=fraction,
    )
    return JobRead.model_validate({**_job_columns(job), "progress": progress})


def _job_columns(job: Any) -> dict[str, Any]:
    names = set(JobRead.model_fields) - {"progress"}
    return {name: getattr(job, name) for name in names}
