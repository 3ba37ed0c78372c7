"""Schemas of /v1/jobs: the job as clients see it, and the example bodies of a submit."""

from __future__ import annotations

import copy
from collections.abc import Mapping
from datetime import datetime
from typing import Any

from fastapi.openapi.models import Example
from pydantic import BaseModel, ConfigDict, Field

from service import jobs
from service.api.schemas.diagnosis import FindingBrief
from service.db.models import Job
from service.specs import EXAMPLE_SPEC
from service.vocabulary import JobStatus


class Progress(BaseModel):
    epoch: int
    epochs: int
    step: int
    total_steps: int
    fraction: float = Field(ge=0.0, le=1.0)


class JobRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    owner: str = Field(description="The principal whose API key submitted it.")
    name: str
    tags: list[str]
    status: JobStatus
    spec: dict[str, Any]
    progress: Progress
    result: dict[str, Any] | None = Field(
        description="Final figures once finished: train_loss, train_acc, val_loss, val_acc, "
        "best_val_loss, best_epoch, epochs_run, steps, ... and, when the spec asked for a "
        "loss-landscape slice, its summary (the grid is at /v1/jobs/{id}/landscape)."
    )
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
    attempt: int = Field(
        description="Runs started so far (0 while never claimed). A job whose worker was "
        "lost runs again as the next attempt, from its last checkpoint."
    )
    max_attempts: int = Field(
        description="Runs a job gets before a lost worker fails it; graceful stops "
        "(a worker's shutdown) do not use one up."
    )
    parent_id: str | None = Field(
        None,
        description="The job this one retries with a changed spec "
        "(POST /v1/jobs/{id}/retry-with); null for a job submitted as it is.",
    )
    findings: list[FindingBrief] = Field(
        default_factory=list,
        description="The diagnosis in brief, most severe first: recomputed after every "
        "epoch while the job runs and once more when it ends (GET /v1/jobs/{id}/diagnosis "
        "has the evidence and the suggested patches). Empty before the first epoch.",
    )


_PROGRESS_COLUMNS = ("epoch", "epochs", "step", "total_steps")
_JOB_COLUMNS = tuple(sorted(set(JobRead.model_fields) - {"progress"}))


def job_read(job: Job) -> JobRead:
    """JobRead from a stored job (progress is derived)."""
    names = (*_JOB_COLUMNS, *_PROGRESS_COLUMNS)
    return job_read_of_columns({name: getattr(job, name) for name in names})


def job_read_of_columns(columns: Mapping[str, Any]) -> JobRead:
    """JobRead from the columns of a job read (``jobs.read_job``)."""
    progress = Progress(
        **{name: columns[name] for name in _PROGRESS_COLUMNS},
        fraction=jobs.progress_of(
            status=columns["status"], step=columns["step"], total_steps=columns["total_steps"]
        ),
    )
    fields = {name: columns[name] for name in _JOB_COLUMNS}
    fields["findings"] = fields["findings"] or []  # NULL until the first epoch's diagnosis
    return JobRead.model_validate({**fields, "progress": progress})


def _variant(name: str, tags: list[str], **parts: dict[str, Any]) -> dict[str, Any]:
    spec = copy.deepcopy(EXAMPLE_SPEC)
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
