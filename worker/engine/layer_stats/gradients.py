"""Gradient and weight statistics: two interchangeable paths to the same layer totals.

* ``PerParameterGradients`` (CPUs, big float32 parameters): every statistic of a gradient
  right after the pass that brings it into cache, one parameter at a time, into
  preallocated slots (``torch.sum(..., out=slot)``); one shared scratch for the |g| bits.
* ``MatrixGradients`` (small parameters, bf16/fp16 gradients, histograms, GPUs): one
  ``_foreach_copy_`` of every gradient into a float32 ``(rows, ROW)`` matrix (casting
  bf16/fp16), then each statistic is ONE row-wise reduction over it (few kernels).

Both fold their per-parameter or per-row numbers into ``LayerTotals`` in float64 with
``index_add_`` and leave the weights before the step in the ``WeightSnapshot``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal

import torch

from worker.engine.layer_stats.layout import ROW, FlatLayout, StatTable
from worker.engine.layer_stats.reductions import ABS_MASK, INF_BITS

GradientPath = Literal["per_parameter", "matrix"]

# Per-parameter statistics (one kernel per parameter per statistic, on data still in
# cache) beat row-wise reductions over the flat matrix (a few kernels, on data that has
# left the cache) on a CPU when parameters average at least this many elements.
PER_PARAM_MIN_NUMEL = 8192


def choose_gradient_path(
    requested: GradientPath | Literal["auto"],
    *,
    device: torch.device,
    sizes: Sequence[int],
    histogram_bins: int,
) -> GradientPath:
    """``"auto"``: per parameter on a CPU when parameters average PER_PARAM_MIN_NUMEL
    elements or more and no histograms are asked for (they read the matrix); else the
    matrix."""
    if requested == "auto":
        big = sum(sizes) >= PER_PARAM_MIN_NUMEL * len(sizes)
        return "per_parameter" if device.type == "cpu" and histogram_bins == 0 and big else "matrix"
    if requested == "per_parameter" and histogram_bins > 0:
        raise ValueError("gradient histograms need the matrix gradient path")
    return requested


@dataclass(frozen=True)
class LayerTotals:
    """One step's per-layer totals of gradients and weights: (L,) float64 tensors,
    except ``abs_max_bits``."""

    grad_sum: torch.Tensor  # Σ g
    grad_sumsq: torch.Tensor  # Σ g²
    weight_sumsq: torch.Tensor  # Σ w², weights before the step
    nonzero: torch.Tensor  # gradient entries that are not ±0 (NaN is not zero)
    abs_max_bits: torch.Tensor  # int32: float32 bits of max |g| (NaN above Inf)
    # ±Inf and NaN gradient entries; None when not counted because there are none (on
    # a CPU, see count_nonfinite).
    inf: torch.Tensor | None
    nan: torch.Tensor | None


def write_gradient_columns(
    table: StatTable, steps: Sequence[LayerTotals], numel: torch.Tensor
) -> None:
    """The gradient and weight columns of the table (all but update_ratio), from each
    step's totals, in one batched pass. ``numel``: (L,) float64 elements per layer."""
    column = table.column
    grad_sum = torch.stack([t.grad_sum for t in steps])
    grad_sumsq = torch.stack([t.grad_sumsq for t in steps])
    torch.sqrt(grad_sumsq, out=column["grad_norm"])
    mean = torch.div(grad_sum, numel, out=column["grad_mean"])
    # Population std, sqrt(E[g²] - E[g]²), from float64 totals.
    var = torch.addcmul(grad_sumsq / numel, mean, mean, value=-1.0, out=column["grad_std"])
    var.clamp_min_(0.0).sqrt_()
    abs_max_bits = torch.stack([t.abs_max_bits for t in steps])
    column["grad_abs_max"].copy_(abs_max_bits.view(torch.float32))
    nonzero = torch.stack([t.nonzero for t in steps])
    torch.div(numel - nonzero, numel, out=column["grad_zero_frac"])
    torch.sqrt(torch.stack([t.weight_sumsq for t in steps]), out=column["weight_norm"])
    none = torch.zeros_like(grad_sum[0])  # not counted: there were none
    infs = [none if t.inf is None else t.inf for t in steps]
    nans = [none if t.nan is None else t.nan for t in steps]
    column["inf_count"].copy_(torch.stack(infs))
    column["nan_count"].copy_(torch.stack(nans))


def count_nonfinite(abs_max_bits: torch.Tensor) -> bool:
    """Whether to count Inf and NaN this step, from the max |g| bits of every parameter
    or row. On a CPU reading them costs nothing (no device queue to drain) and NaN/Inf
    are rare, so only when some max |g| is Inf or NaN; on a GPU always (no sync)."""
    if abs_max_bits.device.type != "cpu":
        return True
    return int(abs_max_bits.max()) >= INF_BITS


def _fold(
    columns: dict[str, torch.Tensor], owner: torch.Tensor, n_layers: int, *, norms: Sequence[str]
) -> dict[str, torch.Tensor]:
    """Per-parameter or per-row columns summed into per-layer float64 totals (one
    ``index_add_``). The ``norms`` columns hold L2 norms: they are squared in float64
    first (a float32 square can overflow), so they fold into sums of squares. Integer
    columns must be exact in the stacked dtype (float32 below 2**24, or pass float64)."""
    names = list(columns)
    stacked = torch.stack(list(columns.values()), dim=1).double()
    for name in norms:
        stacked.select(1, names.index(name)).square_()
    sums = torch.zeros((n_layers, len(names)), dtype=torch.float64, device=stacked.device)
    sums.index_add_(0, owner, stacked)
    return dict(zip(names, sums.unbind(1), strict=True))


def _layer_abs_max(owner: torch.Tensor, bits: torch.Tensor, n_layers: int) -> torch.Tensor:
    # max |g| folds by max, on the bits, so a NaN cannot hide behind a number.
    out = torch.zeros(n_layers, dtype=torch.int32, device=bits.device)
    return out.scatter_reduce_(0, owner, bits, reduce="amax")


class WeightSnapshot:
    """The weights before ``optimizer.step()`` in a float32 ``(rows, ROW)`` matrix;
    after the step, ``update_norms()`` turns it into ``w_before - w_after`` in place."""

    def __init__(self, layout: FlatLayout, device: torch.device) -> None:
        self.layout = layout
        self.matrix = torch.zeros((layout.rows, ROW), device=device)
        self.views = layout.views(self.matrix)

    def take(self) -> None:
        torch._foreach_copy_(self.views, self.layout.params)

    def update_norms(self, n_layers: int) -> torch.Tensor:
        """(L,) float64 ``‖w_after - w_before‖`` per layer; call after the step."""
        torch._foreach_sub_(self.views, self.layout.params)  # w_before - w_after
        delta_sq = torch.linalg.vector_norm(self.matrix, dim=1).double().square_()
        delta = torch.zeros(n_layers, dtype=torch.float64, device=self.matrix.device)
        return delta.index_add_(0, self.layout.row_owner, delta_sq).sqrt_()


class PerParameterGradients:
    """Big float32 parameters on a CPU: each gradient's statistics while it is in cache.

    Per parameter: ``|g|`` as float bits with the sign cleared into a shared scratch; the
    sum and norm of ``g``; the max of the bits (= the bits of max |g|, NaN above Inf);
    after clamping the bits at 1, their sum (= the non-zero count); then the weight copy
    and its norm. Each goes into a preallocated slot (``torch.sum(..., out=slot)``)."""

    path: GradientPath = "per_parameter"

    def __init__(self, layout: FlatLayout, snapshot: WeightSnapshot, n_layers: int) -> None:
        self.layout, self.snapshot, self.n_layers = layout, snapshot, n_layers
        device = snapshot.matrix.device
        n_params = len(layout.params)
        floats = torch.zeros((n_params, 3), device=device)
        self._grad_sum, self._grad_norm, self._weight_norm = floats.unbind(1)
        ints = torch.zeros((n_params, 2), dtype=torch.int32, device=device)
        self._abs_max_bits, self._nonzero = ints.unbind(1)
        self._slots = list(
            zip(
                self._grad_sum.unbind(),
                self._grad_norm.unbind(),
                self._weight_norm.unbind(),
                self._abs_max_bits.unbind(),
                self._nonzero.unbind(),
                strict=True,
            )
        )
        largest = max(p.numel() for p in layout.params)
        self._bits = torch.empty(largest, dtype=torch.int32, device=device)

    @staticmethod
    def accepts(grads: Sequence[torch.Tensor]) -> bool:
        """The float bit tricks need float32; bf16/fp16 gradients take the matrix path."""
        return all(g.dtype == torch.float32 for g in grads)

    def totals(self, grads: Sequence[torch.Tensor]) -> LayerTotals:
        params, weights = self.layout.params, self.snapshot.views
        for g, p, w, slots in zip(grads, params, weights, self._slots, strict=True):
            grad_sum, grad_norm, weight_norm, abs_max_bits, nonzero = slots
            bits = self._bits[: g.numel()]
            torch.bitwise_and(g.view(torch.int32), ABS_MASK, out=bits.view(g.shape))
            torch.sum(g, dim=None, out=grad_sum)
            torch.linalg.vector_norm(g, out=grad_norm)
            torch.amax(bits, dim=0, out=abs_max_bits)
            torch.sum(bits.clamp_(max=1), dim=None, dtype=torch.int32, out=nonzero)
            w.copy_(p)
            torch.linalg.vector_norm(w, out=weight_norm)
        owner, n_layers = self.layout.param_owner, self.n_layers
        columns = {
            "grad_sum": self._grad_sum,
            "grad_sumsq": self._grad_norm,
            "weight_sumsq": self._weight_norm,
            "nonzero": self._nonzero.double(),  # a parameter may hold > 2**24 entries
        }
        if count_nonfinite(self._abs_max_bits):  # rare on a CPU
            columns["inf"] = torch.stack([g.isinf().sum() for g in grads])
            columns["nan"] = torch.stack([g.isnan().sum() for g in grads])
        folded = _fold(columns, owner, n_layers, norms=("grad_sumsq", "weight_sumsq"))
        return _totals(folded, _layer_abs_max(owner, self._abs_max_bits, n_layers))


class MatrixGradients:
    """Every gradient copied into a float32 ``(rows, ROW)`` matrix (casting bf16/fp16),
    then each statistic is one row-wise reduction: few kernel launches."""

    path: GradientPath = "matrix"

    def __init__(self, layout: FlatLayout, snapshot: WeightSnapshot, n_layers: int) -> None:
        self.layout, self.snapshot, self.n_layers = layout, snapshot, n_layers
        device = snapshot.matrix.device
        # Signed float32 gradients (histograms read them too); the padding stays zero.
        self.signed = torch.zeros((layout.rows, ROW), device=device)
        self._signed_views = layout.views(self.signed)
        # |g| as float32 bits (sign cleared); then clamped to 0/1 for the non-zero count.
        self._bits = torch.zeros((layout.rows, ROW), dtype=torch.int32, device=device)

    def totals(self, grads: Sequence[torch.Tensor]) -> LayerTotals:
        signed, weights = self.signed, self.snapshot.matrix
        torch._foreach_copy_(self._signed_views, list(grads))  # casts bf16/fp16
        self.snapshot.take()
        columns = {
            "grad_sum": signed.sum(dim=1),
            "grad_sumsq": torch.linalg.vector_norm(signed, dim=1),
            "weight_sumsq": torch.linalg.vector_norm(weights, dim=1),
        }
        bits = torch.bitwise_and(signed.view(torch.int32), ABS_MASK, out=self._bits)
        row_abs_max_bits = bits.amax(dim=1)
        # Per-row counts are at most ROW: exact in the float32 the columns stack in.
        if count_nonfinite(row_abs_max_bits):
            inf_or_nan = (bits >= INF_BITS).sum(dim=1, dtype=torch.int32)
            nan = (bits > INF_BITS).sum(dim=1, dtype=torch.int32)
            columns["inf"], columns["nan"] = inf_or_nan - nan, nan
        columns["nonzero"] = bits.clamp_(max=1).sum(dim=1, dtype=torch.int32)
        owner, n_layers = self.layout.row_owner, self.n_layers
        folded = _fold(columns, owner, n_layers, norms=("grad_sumsq", "weight_sumsq"))
        return _totals(folded, _layer_abs_max(owner, row_abs_max_bits, n_layers))


def _totals(folded: dict[str, torch.Tensor], abs_max_bits: torch.Tensor) -> LayerTotals:
    return LayerTotals(
        grad_sum=folded["grad_sum"],
        grad_sumsq=folded["grad_sumsq"],
        weight_sumsq=folded["weight_sumsq"],
        nonzero=folded["nonzero"],
        abs_max_bits=abs_max_bits,
        inf=folded.get("inf"),
        nan=folded.get("nan"),
    )


__all__ = [
    "PER_PARAM_MIN_NUMEL",
    "GradientPath",
    "LayerTotals",
    "MatrixGradients",
    "PerParameterGradients",
    "WeightSnapshot",
    "choose_gradient_path",
    "count_nonfinite",
    "write_gradient_columns",
]
