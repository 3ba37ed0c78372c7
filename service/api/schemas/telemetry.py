"""Schemas of a job's telemetry: epoch metrics, layers, statistic series, histograms,
and the loss-landscape slice."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field

from service.api.schemas.common import JsonFloat
from service.vocabulary import LayerKind


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
    kind: LayerKind
    params: int
    shape: list[int]
    activation: str | None


class GradientSeries(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    layer_index: int
    name: str
    kind: LayerKind | str = Field(description='The layer kind ("unknown" without a layer row).')
    points: list[dict[str, int | float | str | None]] = Field(
        description="Each point: step, epoch and the requested statistics; a long series "
        "is cut into step buckets and a point is a bucket's last step, epoch and values, with "
        "`<stat>_min` and `<stat>_max` over the bucket (so a spike, an inf or a NaN is never "
        "averaged away; NaN counts as the largest value). A point that is one stored row has "
        "min = max = value."
    )


class Gradients(BaseModel):
    """``format=points`` (the default)."""

    job_id: str
    stats: list[str]
    series: list[GradientSeries]


GradientFormat = Literal["points", "columns"]


class GradientColumnSeries(BaseModel):
    layer_index: int
    name: str
    kind: LayerKind | str = Field(description='The layer kind ("unknown" without a layer row).')
    columns: dict[str, list[int | float | str | None]] = Field(
        description="One array per key of a point (`step`, `epoch`, each statistic, its "
        "`_min` and `_max`), all of the series' length: `columns[key][i]` is what point i "
        "of `format=points` holds under `key`. Non-finite values are spelled as there."
    )


class GradientColumns(BaseModel):
    """``format=columns``: the same series, one array per key."""

    job_id: str
    stats: list[str]
    format: Literal["columns"]
    series: list[GradientColumnSeries]


GRADIENTS_POINTS_EXAMPLE: dict[str, Any] = {
    "job_id": "4a6a60d1b011443c9d5aaa64b2c85300",
    "stats": ["grad_norm"],
    "series": [
        {
            "layer_index": 0,
            "name": "hidden.0.linear",
            "kind": "linear",
            "points": [
                {
                    "step": 19,
                    "epoch": 0,
                    "grad_norm": 0.051,
                    "grad_norm_min": 0.012,
                    "grad_norm_max": 0.31,
                },
                {
                    "step": 39,
                    "epoch": 0,
                    "grad_norm": "NaN",
                    "grad_norm_min": 0.02,
                    "grad_norm_max": "NaN",
                },
            ],
        }
    ],
}
GRADIENTS_EXAMPLE: dict[str, Any] = {
    "job_id": "4a6a60d1b011443c9d5aaa64b2c85300",
    "stats": ["grad_norm"],
    "format": "columns",
    "series": [
        {
            "layer_index": 0,
            "name": "hidden.0.linear",
            "kind": "linear",
            "columns": {
                "step": [19, 39],
                "epoch": [0, 0],
                "grad_norm": [0.051, "NaN"],
                "grad_norm_min": [0.012, 0.02],
                "grad_norm_max": [0.31, "NaN"],
            },
        }
    ],
}


class HistogramRead(BaseModel):
    model_config = ConfigDict(from_attributes=True)

    layer_index: int
    step: int
    lo: JsonFloat
    hi: JsonFloat
    counts: list[int]


class LandscapeRead(BaseModel):
    """A loss-landscape slice (Li et al. 2018): loss along filter-normalized directions."""

    model_config = ConfigDict(from_attributes=True)

    job_id: str
    dims: int = Field(ge=1, le=2, description="1: a curve; 2: a grid.")
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
