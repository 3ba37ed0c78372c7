"""Loss-landscape slices after Li et al. 2018, "Visualizing the Loss Landscape of Neural Nets".

``loss_slice(model, x, y, ...)`` evaluates the loss at ``θ + alpha·d`` (1-D) or at
``θ + alpha·d₁ + beta·d₂`` (2-D), alpha and beta in ``linspace(-span, span, points)``,
and restores ``θ`` bit-exactly afterwards.

Directions are random Gaussian with *filter-wise normalization* (the paper's Sec. 4):
every row of a weight (an output unit of a linear layer, an output channel of a conv) is
rescaled to the norm of the same row of the trained weight, so ``alpha = 1`` is a step as
large as the weights themselves in every filter, whatever the layer's scale. Parameters
with fewer than two dimensions (biases, norm gains and shifts) get a zero direction, as
in the paper. Batch-norm running statistics are buffers and stay as trained.

The loss is the mean cross-entropy over a fixed evaluation batch, in eval mode, without
gradients. Each point's loss stays on the device; the whole curve or grid comes to the
host in one copy. A non-finite loss (a diverging point far from the minimum) is stored
as NaN and ignored by the summaries.

Summaries of the slice (for 2-D, of the grid's rows and columns together):

* ``roughness``: mean |second difference| of the loss divided by the loss range over
  the slice. Scale-free: any parabola sampled at ``points`` points scores
  ``2·(2/(points-1))²`` (0.02 at 21 points) whatever its curvature, while a curve that
  wiggles between its ends scores far more. 0 for a flat slice. A weak figure for convex
  slices: their second differences sum to the change of slope, so they score at most
  ``2/(points-2)``, and between slices that are both convex it tells where the curvature
  sits (spread evenly: a parabola; piled at the ends: an exponential wall), not wiggles.
* ``sharpness``: mean of ``loss(±0.1·span) - loss(0)`` (1-D: along the direction; 2-D:
  along both axes), interpolated when those alphas are not grid points. Absolute, in
  loss units: how fast the loss rises next to the trained weights.
* ``local_minima``: interior points strictly lower than their neighbours (2 in 1-D, 4 in
  2-D). A convex slice has at most one.

What the degradation lesson shows (tests/engine/test_landscape.py, MNIST-1D, depth 24,
width 64, batch norm, 3 epochs, seeds 0-19): the plain net's slice is at least 550x
sharper than its residual twin's, and rougher on every seed, by 1.1-1.7x (median 1.4x):
its loss rises by four orders of magnitude within the span, in exponential walls, where
the residual net's slice is close to a parabola. Neither is wiggly at this depth (both
are convex but for one grid point in 40 slices), so the roughness gap is asserted on the
median of five seeds, the sharpness gap on every seed. Without batch norm, a
default-init plain ReLU net that deep never leaves the ln(10) plateau, and its slice is
*flat* (sharpness ~0): it trains worse, but its slice is not rougher by these measures.
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass
from typing import Any, Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional

EVAL_CHUNK = 4096  # examples per forward pass: no gradients, so big chunks
SHARPNESS_FRACTION = 0.1  # sharpness compares loss(±0.1·span) with loss(0)


@dataclass(frozen=True)
class LandscapeSlice:
    dims: int
    alphas: list[float]
    losses: list[float] | list[list[float]]  # 2-D: losses[i][j] at (alphas[i], alphas[j])
    roughness: float
    sharpness: float
    local_minima: int
    examples: int

    def as_dict(self) -> dict[str, Any]:
        return asdict(self)


def filter_normalized_direction(
    params: Sequence[torch.Tensor], *, generator: torch.Generator
) -> list[torch.Tensor]:
    """A Gaussian direction whose every row has the norm of that row of its parameter.

    Rows are along dimension 0 (output units, output channels); parameters with fewer
    than two dimensions get zeros. Drawn on the CPU, so a seed gives the same direction
    on every device.
    """
    direction = []
    for p in params:
        if p.dim() < 2:
            direction.append(torch.zeros_like(p))
            continue
        d = torch.randn(p.shape, generator=generator, dtype=torch.float32).to(p.device, p.dtype)
        rows, p_rows = d.view(d.shape[0], -1), p.detach().reshape(p.shape[0], -1)
        scale = p_rows.norm(dim=1) / rows.norm(dim=1).clamp_min(1e-12)
        rows.mul_(scale.unsqueeze(1))
        direction.append(d)
    return direction


@contextlib.contextmanager
def _restored(model: nn.Module, params: list[nn.Parameter]) -> Iterator[list[torch.Tensor]]:
    """Yields copies of ``params``; puts them back exactly and restores the train mode."""
    was_training = model.training
    saved = [p.detach().clone() for p in params]
    try:
        yield saved
    finally:
        with torch.no_grad():
            torch._foreach_copy_([p.data for p in params], saved)
        model.train(was_training)


def _mean_loss(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    autocast: contextlib.AbstractContextManager[Any],
) -> torch.Tensor:
    total = torch.zeros((), dtype=torch.float64, device=y.device)
    for start in range(0, len(y), EVAL_CHUNK):
        xb, yb = x[start : start + EVAL_CHUNK], y[start : start + EVAL_CHUNK]
        with autocast:
            logits = model(xb)
        total += functional.cross_entropy(logits.float(), yb, reduction="sum").double()
    return total / max(len(y), 1)


def loss_slice(
    model: nn.Module,
    x: torch.Tensor,
    y: torch.Tensor,
    *,
    points: int = 21,
    span: float = 1.0,
    dims: Literal[1, 2] = 1,
    seed: int = 0,
    autocast: contextlib.AbstractContextManager[Any] | None = None,
) -> LandscapeSlice:
    """The loss along one (``dims=1``) or two (``dims=2``) filter-normalized directions.

    ``x``, ``y`` is the evaluation batch, already on the model's device. The model's
    parameters and train/eval mode are exactly as before when this returns or raises.
    """
    if points < 2 or span <= 0 or dims not in (1, 2):
        raise ValueError(f"need points >= 2, span > 0, dims 1 or 2 (got {points}, {span}, {dims})")
    ctx = autocast if autocast is not None else contextlib.nullcontext()
    params = [p for p in model.parameters() if p.dim() >= 2]  # the rest has zero direction
    alphas = np.linspace(-span, span, points)
    generator = torch.Generator().manual_seed(seed)
    directions = [filter_normalized_direction(params, generator=generator) for _ in range(dims)]
    grid = [(a,) for a in alphas] if dims == 1 else [(a, b) for a in alphas for b in alphas]
    losses = torch.empty(len(grid), dtype=torch.float64, device=y.device)
    with _restored(model, list(params)) as theta, torch.no_grad():
        model.eval()
        weights = [p.data for p in params]
        for i, coords in enumerate(grid):
            torch._foreach_copy_(weights, theta)
            for coord, direction in zip(coords, directions, strict=True):
                torch._foreach_add_(weights, direction, alpha=float(coord))
            losses[i] = _mean_loss(model, x, y, ctx)
    values = losses.cpu().numpy()  # host-device sync point: the whole slice in one copy
    values[~np.isfinite(values)] = np.nan
    curve = values if dims == 1 else values.reshape(points, points)
    return LandscapeSlice(
        dims=dims,
        alphas=[float(a) for a in alphas],
        losses=curve.tolist(),
        roughness=roughness(curve),
        sharpness=sharpness(curve, alphas, span),
        local_minima=local_minima(curve),
        examples=len(y),
    )


def _curves(losses: np.ndarray) -> list[np.ndarray]:
    """1-D: the curve; 2-D: every row and every column of the grid."""
    if losses.ndim == 1:
        return [losses]
    return [*losses, *losses.T]


def roughness(losses: np.ndarray) -> float:
    """Mean |second difference| over the loss range; NaN points are left out."""
    finite = losses[np.isfinite(losses)]
    if finite.size < 3:
        return math.nan
    spread = float(finite.max() - finite.min())
    second = np.concatenate([np.abs(np.diff(c, n=2)) for c in _curves(losses)])
    second = second[np.isfinite(second)]
    if second.size == 0:
        return math.nan
    if spread == 0.0:
        return 0.0
    return float(second.mean() / spread)


def sharpness(losses: np.ndarray, alphas: np.ndarray, span: float) -> float:
    """Mean of loss(±0.1·span) - loss(0) along the axes through the centre."""
    if losses.ndim == 1:
        axes = [losses]
    else:
        mid = np.interp(0.0, alphas, np.arange(len(alphas)))
        rows = np.arange(losses.shape[0])
        # The grid's centre row and column, interpolated when 0 is not a grid alpha.
        centre_row = np.array([np.interp(mid, rows, col) for col in losses.T])
        centre_col = np.array([np.interp(mid, rows, row) for row in losses])
        axes = [centre_row, centre_col]
    h = SHARPNESS_FRACTION * span
    rises = [
        float(np.interp(a, alphas, curve)) - float(np.interp(0.0, alphas, curve))
        for curve in axes
        for a in (-h, h)
    ]
    finite = [r for r in rises if math.isfinite(r)]
    return float(np.mean(finite)) if finite else math.nan


def local_minima(losses: np.ndarray) -> int:
    """Interior points strictly below every axis neighbour (NaN compares false)."""
    if losses.ndim == 1:
        c = losses[1:-1]
        return int(np.sum((c < losses[:-2]) & (c < losses[2:])))
    c = losses[1:-1, 1:-1]
    below = (
        (c < losses[:-2, 1:-1])
        & (c < losses[2:, 1:-1])
        & (c < losses[1:-1, :-2])
        & (c < losses[1:-1, 2:])
    )
    return int(np.sum(below))


__all__ = ["LandscapeSlice", "filter_normalized_direction", "loss_slice"]
