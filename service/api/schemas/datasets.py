"""Schemas of /v1/datasets."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, ConfigDict

from service.vocabulary import DataLayout


class DatasetRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    id: str
    owner: str
    name: str
    n_examples: int
    x_shape: list[int]
    num_classes: int
    layout: DataLayout
    size_bytes: int
    created_at: datetime
