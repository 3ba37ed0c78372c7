"""Schemas of /v1/compare: one quantity of several jobs on a shared x axis."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas.common import JsonFloat
from service.vocabulary import JobStatus


class ComparedSeriesRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    job_id: str
    name: str = Field(description="The job's name.")
    status: JobStatus
    layer_index: int | None = Field(
        description="The layer compared in this job (null: epoch metrics, or not recorded)."
    )
    layer_name: str | None = Field(description="Its module path in this job.")
    values: list[JsonFloat] = Field(
        description="One value per entry of `x`; null where this job has none."
    )


class Comparison(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    axis: Literal["step", "epoch"] = Field(
        description="What `x` counts: training steps (layer statistics) or epochs (metrics)."
    )
    quantity: str = Field(description="The statistic or epoch metric compared.")
    layer: str | None = Field(description="The layer as asked (index or name).")
    x: list[int] = Field(description="The union of the jobs' steps (or epochs), ascending.")
    series: list[ComparedSeriesRead] = Field(description="One per job, in the order asked.")
