"""Where the collector keeps its numbers: the flat parameter layout, and the table of
statistics a flush fills, column by column, by name."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import torch
from torch import nn

from worker.engine.events import STAT_NAMES, LayerInfo
from worker.engine.layer_stats.reductions import SaturationKind

# Elements per row of the flat statistics matrix: long enough for efficient row
# reductions, short enough that padding every layer to whole rows wastes little.
ROW = 512


class Layer(Protocol):
    """What the collector needs of ``worker.engine.models.TrackedLayer``."""

    @property
    def info(self) -> LayerInfo: ...
    @property
    def module(self) -> nn.Module: ...
    @property
    def activation_module(self) -> nn.Module | None: ...
    @property
    def saturation(self) -> SaturationKind: ...


class StatTable:
    """The statistics of ``steps`` telemetry steps: a float64 ``(steps, L,
    len(STAT_NAMES))`` tensor on the device, filled in place (``column[name]`` is
    statistic ``name``'s ``(steps, L)`` view) and copied to the host in one piece."""

    def __init__(self, steps: int, n_layers: int, device: torch.device) -> None:
        shape = (steps, n_layers, len(STAT_NAMES))
        self.values = torch.empty(shape, dtype=torch.float64, device=device)
        self.column = dict(zip(STAT_NAMES, self.values.unbind(2), strict=True))


@dataclass(frozen=True)
class FlatLayout:
    """Every layer's parameters (weight and bias together) in a fixed region of a flat
    buffer, padded to whole rows of ROW elements, so the buffer is a ``(rows, ROW)``
    matrix whose every row belongs to one layer. The padding stays zero, which no
    statistic counts (sums, norms, max |g|, non-zero counts)."""

    params: list[torch.Tensor]  # every tracked parameter, layer by layer
    rows: int
    row_owner: torch.Tensor  # (rows,) int64: the layer of each row
    param_owner: torch.Tensor  # (params,) int64: the layer of each parameter
    numel: torch.Tensor  # (L,) float64: real (unpadded) elements per layer
    valid: torch.Tensor | None  # (rows, ROW) bool: not padding (histograms only)
    offsets: list[int]  # element offset of each parameter in the flat buffer

    def views(self, matrix: torch.Tensor) -> list[torch.Tensor]:
        """Each parameter's region of a ``(rows, ROW)`` matrix, shaped like it."""
        flat = matrix.view(-1)
        return [
            flat[off : off + p.numel()].view(p.shape)
            for p, off in zip(self.params, self.offsets, strict=True)
        ]


def plan_layout(layers: Sequence[Layer], device: torch.device, *, need_valid: bool) -> FlatLayout:
    params: list[torch.Tensor] = []
    offsets: list[int] = []
    owners: list[int] = []
    param_owners: list[int] = []
    numel: list[int] = []
    cursor = 0
    for index, layer in enumerate(layers):
        start = cursor
        for p in layer.module.parameters(recurse=False):
            if p.requires_grad:
                params.append(p)
                offsets.append(cursor)
                param_owners.append(index)
                cursor += p.numel()
        n = cursor - start
        if n == 0:
            raise ValueError(f"layer {layer.info.name!r} has no trainable parameters")
        numel.append(n)
        rows = -(-n // ROW)
        owners.extend([index] * rows)
        cursor = start + rows * ROW
    valid = None
    if need_valid:
        flat = torch.zeros(cursor, dtype=torch.bool)
        for t, off in zip(params, offsets, strict=True):
            flat[off : off + t.numel()] = True
        valid = flat.view(-1, ROW).to(device)
    return FlatLayout(
        params=params,
        rows=len(owners),
        row_owner=torch.tensor(owners, dtype=torch.int64, device=device),
        param_owner=torch.tensor(param_owners, dtype=torch.int64, device=device),
        numel=torch.tensor(numel, dtype=torch.float64, device=device),
        valid=valid,
        offsets=offsets,
    )


__all__ = ["ROW", "FlatLayout", "Layer", "StatTable", "plan_layout"]
