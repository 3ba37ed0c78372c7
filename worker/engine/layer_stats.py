"""Per-layer gradient, weight and activation statistics, computed on the device.

The training loop calls, on a telemetry step::

    with collector.activation_capture():   # forward hooks armed for this forward only
        loss = loss_fn(model(x), y)
    loss.backward()
    collector.capture_gradients(step=step, epoch=epoch)   # unscaled grads, weights before
    optimizer.step()
    collector.capture_update()             # weights after -> update_ratio; row complete

and, every few telemetry steps, ``collector.flush()``: the one place that copies the
pending rows to the host.

How it stays cheap (see bench/README.md for the figures). A naive version launches one
small kernel per parameter per statistic and allocates a temporary the size of every
gradient (large allocations are fresh mmaps on the CPU: page faults each time). Here:

* Every layer's parameters (weight and bias together) get a fixed region of a flat,
  preallocated float32 buffer, padded to a whole number of rows of ``ROW`` elements, so
  the buffer is a ``(rows, ROW)`` matrix and each row belongs to exactly one layer.
* A telemetry step copies all gradients into that matrix with one ``_foreach_copy_``
  (which also casts bf16/fp16 to float32), then each statistic is ONE row-wise reduction
  over the whole matrix, and ``index_add_`` folds rows into layers (in float64). The
  padding is zero, which no statistic counts (sums, norms, max |g|, non-zero counts).
* Weights are snapshotted into a second matrix the same way; after ``optimizer.step()``
  ``_foreach_sub_`` turns the snapshot into ``w_before - w_after`` in place.

Conventions: ``grad_std`` is the population std (divides by n, i.e. ``correction=0``),
computed as ``sqrt(E[g²] - E[g]²)`` from float64 layer totals; ``act_std`` and
``preact_std`` are population stds too. ``inf_count`` counts ±Inf, ``nan_count`` NaN; a
layer with a NaN gradient has NaN ``grad_norm``/``grad_mean``/``grad_std``/``grad_abs_max``
and its row is kept. ``grad_zero_frac`` counts exact zeros (NaN is not zero).
"""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import numpy as np
import torch
from torch import nn

from worker.engine.events import (
    ACT_STATS,
    GRAD_STATS,
    STAT_NAMES,
    Histogram,
    LayerInfo,
    LayerStatsBatch,
)

# Elements per row of the flat statistics matrix: long enough for efficient row
# reductions, short enough that padding every layer to whole rows wastes little.
ROW = 512
SATURATION_EPS = 1e-2
N_GRAD = len(GRAD_STATS)
N_ACT = len(ACT_STATS)
N_STATS = len(STAT_NAMES)
_COL = {name: i for i, name in enumerate(STAT_NAMES)}

SaturationKind = Literal["sigmoid", "tanh", "relu", "none"]

_ABS_MASK = 0x7FFFFFFF  # float32 bits without the sign: ordered like |x|, NaN above Inf
_INF_BITS = 0x7F800000


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


# --- pure statistic functions -----------------------------------------------------------


def saturated_count(y: torch.Tensor, kind: SaturationKind) -> torch.Tensor:
    """Number of activations at a bound: sigmoid within 1e-2 of 0 or 1, tanh within 1e-2
    of ±1, ReLU exactly 0; NaN for activations with no bound worth counting."""
    if kind == "none":
        return torch.full((), math.nan, device=y.device)
    if kind == "relu":
        return y.numel() - nonzero_count(y)
    if kind == "sigmoid":
        at_bound = (y <= SATURATION_EPS) | (y >= 1.0 - SATURATION_EPS)
    else:
        at_bound = y.abs() >= 1.0 - SATURATION_EPS
    return at_bound.sum(dtype=torch.int32)


def nonzero_count(y: torch.Tensor) -> torch.Tensor:
    """Entries of a float32 tensor that are not ±0 (NaN counts as non-zero), as int32.

    Equal to torch.count_nonzero, which is ~8x slower on CPUs: clearing the sign bit
    leaves 0 only for ±0, and clamping the bits at 1 turns the count into a sum."""
    bits = torch.bitwise_and(y.contiguous().view(torch.int32), _ABS_MASK)
    return bits.clamp_(max=1).sum(dtype=torch.int32)


def activation_moments(y: torch.Tensor, kind: SaturationKind | None = None) -> torch.Tensor:
    """(mean, mean of squares[, saturated fraction]) of an activation tensor, float32.

    Moments rather than torch.std_mean: its Welford reduction is ~10x slower on CPUs, and
    :func:`mean_std` turns moments into a std for all layers at once."""
    y = y.detach().float()
    n = max(y.numel(), 1)
    parts = [y.mean(), torch.linalg.vector_norm(y).square() / n]
    if kind is not None:
        parts.append(saturated_count(y, kind) / n)
    return torch.stack(parts)


def _saturated_rows_(y: torch.Tensor, kind: SaturationKind) -> torch.Tensor:
    """:func:`saturated_count` of every row of a (layers, n) float32 matrix; may
    overwrite ``y``."""
    if kind == "none":
        return torch.full((y.shape[0],), math.nan, device=y.device)
    if kind == "relu":
        bits = y.view(torch.int32).bitwise_and_(_ABS_MASK).clamp_(max=1)
        return y.shape[1] - bits.sum(dim=1, dtype=torch.int32)
    if kind == "sigmoid":
        at_bound = (y <= SATURATION_EPS) | (y >= 1.0 - SATURATION_EPS)
    else:
        at_bound = y.abs() >= 1.0 - SATURATION_EPS
    return at_bound.sum(dim=1, dtype=torch.int32)


def mean_std(mean: torch.Tensor, mean_sq: torch.Tensor) -> torch.Tensor:
    """Population std from the first two moments, in float64."""
    mean, mean_sq = mean.double(), mean_sq.double()
    return (mean_sq - mean.square()).clamp_min(0.0).sqrt()


def row_reductions(x: torch.Tensor, bits: torch.Tensor) -> torch.Tensor:
    """Per-row sums of a (rows, ROW) float32 matrix, float64 (rows, 6):
    sum, sum of squares, max |x|, non-zero count, non-finite count, NaN count.

    ``bits`` is an int32 scratch of ``x``'s shape, overwritten (preallocated: fresh
    gradient-sized temporaries cost page faults on CPUs). Working on the float bits makes
    max |x| (NaN-propagating), the zero count and the NaN/Inf counts plain integer
    reductions, each several times faster on a CPU than count_nonzero or aminmax over a
    dimension."""
    total = x.sum(dim=1)
    sumsq = torch.linalg.vector_norm(x, dim=1).double().square()
    torch.bitwise_and(x.view(torch.int32), _ABS_MASK, out=bits)
    abs_max = bits.amax(dim=1).view(torch.float32)
    # On a CPU, reading a flag costs nothing (no device queue to drain) and NaN/Inf are
    # rare, so count them only when some row sum is not finite; on a GPU count always.
    if x.device.type != "cpu" or not bool(torch.isfinite(total).all()):
        nonfinite = (bits >= _INF_BITS).sum(dim=1)
        nan = (bits > _INF_BITS).sum(dim=1)
    else:
        nonfinite = nan = torch.zeros_like(total)
    nonzero = bits.clamp_(max=1).sum(dim=1, dtype=torch.int32)  # destroys bits
    return torch.stack(
        (
            total.double(),
            sumsq,
            abs_max.double(),
            nonzero.double(),
            nonfinite.double(),
            nan.double(),
        ),
        dim=1,
    )


def grad_columns(layer_sums: torch.Tensor, numel: torch.Tensor) -> torch.Tensor:
    """Float64 layer totals (L, 6), laid out as :func:`row_reductions` but with column 2
    already the layer's max, -> (L, 7): grad_norm, grad_mean, grad_std, grad_abs_max,
    grad_zero_frac, nan_count, inf_count."""
    total, sumsq, abs_max, nonzero, nonfinite, nan = layer_sums.unbind(dim=1)
    mean = total / numel
    var = (sumsq / numel - mean.square()).clamp_min(0.0)
    # max() over rows may hide a NaN row behind another row's number: restore it.
    abs_max = torch.where(nan > 0, math.nan, abs_max)
    zero_frac = (numel - nonzero) / numel
    return torch.stack(
        (sumsq.sqrt(), mean, var.sqrt(), abs_max, zero_frac, nan, nonfinite - nan), dim=1
    )


# --- the flat layout --------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    params: list[nn.Parameter]  # every tracked parameter, layer by layer
    rows: int
    row_owner: torch.Tensor  # (rows,) int64: the layer of each row
    numel: torch.Tensor  # (L,) float64: real (unpadded) elements per layer
    valid: torch.Tensor | None  # (rows, ROW) bool: not padding (histograms only)
    offsets: list[int]  # element offset of each parameter in the flat buffer


def _plan(layers: Sequence[Layer], device: torch.device, need_valid: bool) -> _Layout:
    params: list[nn.Parameter] = []
    offsets: list[int] = []
    owners: list[int] = []
    numel: list[int] = []
    cursor = 0
    for index, layer in enumerate(layers):
        start = cursor
        for p in layer.module.parameters(recurse=False):
            if p.requires_grad:
                params.append(p)
                offsets.append(cursor)
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
        for p, off in zip(params, offsets, strict=True):
            flat[off : off + p.numel()] = True
        valid = flat.view(-1, ROW).to(device)
    return _Layout(
        params=params,
        rows=len(owners),
        row_owner=torch.tensor(owners, dtype=torch.int64, device=device),
        numel=torch.tensor(numel, dtype=torch.float64, device=device),
        valid=valid,
        offsets=offsets,
    )


def _views(flat: torch.Tensor, layout: _Layout) -> list[torch.Tensor]:
    return [
        flat[off : off + p.numel()].view(p.shape)
        for p, off in zip(layout.params, layout.offsets, strict=True)
    ]


# --- the collector ----------------------------------------------------------------------


class TelemetryCollector:
    """Collects one (L, len(STAT_NAMES)) row per telemetry step, on the device."""

    def __init__(
        self,
        layers: Sequence[Layer],
        *,
        activations: bool,
        histogram_bins: int = 0,
        flush_every: int = 32,
    ) -> None:
        if not layers:
            raise ValueError("no layers to track")
        first = next(iter(layers[0].module.parameters(recurse=False)))
        self.device = first.device
        self.layers = list(layers)
        self.n_layers = len(self.layers)
        self.activations = activations
        self.bins = histogram_bins
        self.flush_every = flush_every
        self._layout = _plan(self.layers, self.device, need_valid=histogram_bins > 0)
        shape = (self._layout.rows, ROW)
        self._grads = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self._weights = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self._scratch = torch.empty(shape, dtype=torch.float32, device=self.device)
        self._bits = torch.empty(shape, dtype=torch.int32, device=self.device)
        self._grad_views = _views(self._grads.view(-1), self._layout)
        self._weight_views = _views(self._weights.view(-1), self._layout)
        # Activation moments of the current step, NaN until a hook writes them: act mean,
        # act mean of squares, saturated fraction, preact mean, preact mean of squares.
        self._act = torch.full((self.n_layers, N_ACT), math.nan, device=self.device)
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._stash: dict[tuple[int, int], torch.Tensor] = {}  # (layer, 0 post / 1 pre)
        self._index_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._stack_cache: dict[tuple[int, int, str], torch.Tensor] = {}
        self._check_activation_modules()
        # Pending, finished rows (device tensors) and their host-side labels.
        self._rows: list[torch.Tensor] = []
        self._steps: list[int] = []
        self._epochs: list[int] = []
        # The step between capture_gradients and capture_update.
        self._open: tuple[torch.Tensor, torch.Tensor, torch.Tensor, int, int] | None = None

    def _check_activation_modules(self) -> None:
        seen: set[int] = set()
        for layer in self.layers:
            m = layer.activation_module
            if m is None:
                continue
            if id(m) in seen:
                # One hook call could not tell which layer it belongs to.
                raise ValueError(f"layer {layer.info.name!r} shares its activation module")
            seen.add(id(m))

    @property
    def pending(self) -> int:
        """Telemetry steps captured and not yet flushed (an open step counts)."""
        return len(self._rows) + (self._open is not None)

    # -- activations --

    @contextlib.contextmanager
    def activation_capture(self) -> Iterator[None]:
        """Record activation statistics during the forward pass run inside this block.

        Hooks are registered on entry and removed on exit rather than kept registered
        and disarmed: a module with any hook leaves PyTorch's fast call path, which costs
        every step, while registering 2·L hooks costs only on telemetry steps
        (bench/README.md has the measurement)."""
        if not self.activations:
            yield
            return
        try:
            for index, layer in enumerate(self.layers):
                m = layer.activation_module
                if m is None:
                    continue
                self._hooks.append(m.register_forward_pre_hook(self._pre_hook(index, m)))
                self._hooks.append(m.register_forward_hook(self._post_hook(index)))
            yield
        finally:
            self._remove_hooks()
            with torch.no_grad():
                self._reduce_activations()
            self._stash.clear()

    # Hooks only keep a reference (one step's activations, most of which autograd holds
    # anyway); the statistics are computed afterwards for all same-sized layers at once,
    # a few kernels instead of ~6 small kernels per hook (4x faster on the bench's MLP).

    def _pre_hook(self, index: int, module: nn.Module) -> _PreHook:
        inplace = bool(getattr(module, "inplace", False))

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach()
            # An in-place activation would overwrite the stashed input: copy it.
            self._stash[(index, 1)] = x.clone() if inplace else x

        return hook

    def _post_hook(self, index: int) -> _PostHook:
        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            self._stash[(index, 0)] = out.detach()

        return hook

    def _reduce_activations(self) -> None:
        groups: dict[tuple[int, int, SaturationKind], list[int]] = {}
        for (index, slot), t in self._stash.items():
            kind: SaturationKind = self.layers[index].saturation if slot == 0 else "none"
            groups.setdefault((slot, t.numel(), kind), []).append(index)
        for (slot, n, kind), indices in groups.items():
            stacked = self._stack_buffer((slot, n, kind), len(indices), n)
            for row, i in enumerate(indices):
                stacked[row].copy_(self._stash[(i, slot)].reshape(-1))  # casts bf16/fp16
            parts = [stacked.mean(dim=1), torch.linalg.vector_norm(stacked, dim=1).square() / n]
            if slot == 0:
                parts.append(_saturated_rows_(stacked, kind) / n)
            values = torch.stack(parts, dim=1)
            columns = slice(0, 3) if slot == 0 else slice(3, 5)
            self._act[self._index_tensor(indices), columns] = values

    def _stack_buffer(self, key: tuple[int, int, str], rows: int, n: int) -> torch.Tensor:
        # Reused across steps: fresh activation-sized buffers cost page faults on CPUs.
        buf = self._stack_cache.get(key)
        if buf is None or buf.shape != (rows, n):
            buf = self._stack_cache[key] = torch.empty(rows, max(n, 1), device=self.device)
        return buf

    def _index_tensor(self, indices: list[int]) -> torch.Tensor:
        # Cached: building it is a host-to-device copy, done once per layer group.
        key = tuple(indices)
        cached = self._index_cache.get(key)
        if cached is None:
            cached = self._index_cache[key] = torch.tensor(indices, device=self.device)
        return cached

    def _remove_hooks(self) -> None:
        for handle in self._hooks:
            handle.remove()
        self._hooks.clear()

    # -- gradients and updates --

    @torch.no_grad()
    def capture_gradients(self, *, step: int, epoch: int) -> None:
        """Gradient statistics and a weight snapshot; call after backward (and after
        ``GradScaler.unscale_``), before ``optimizer.step()``."""
        if self._open is not None:
            self._close_open(update_ratio=None)
        layout = self._layout
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in layout.params]
        torch._foreach_copy_(self._grad_views, grads)
        torch._foreach_copy_(self._weight_views, [p.detach() for p in layout.params])
        owner = layout.row_owner
        per_row = row_reductions(self._grads, self._bits)
        sums = torch.zeros((self.n_layers, 6), dtype=torch.float64, device=self.device)
        sums.index_add_(0, owner, per_row)
        # max |g| folds by max, not by sum.
        abs_max = torch.zeros(self.n_layers, dtype=torch.float64, device=self.device)
        abs_max.scatter_reduce_(0, owner, per_row[:, 2], reduce="amax")
        sums[:, 2] = abs_max
        grad = grad_columns(sums, layout.numel)
        w_sq = torch.zeros(self.n_layers, dtype=torch.float64, device=self.device)
        w_sq.index_add_(0, owner, torch.linalg.vector_norm(self._weights, dim=1).double().square())
        hist = self._histograms() if self.bins > 0 else torch.empty(0, device=self.device)
        self._open = (grad, w_sq.sqrt(), hist, step, epoch)

    @torch.no_grad()
    def capture_update(self) -> None:
        """``update_ratio = ‖w_after - w_before‖ / ‖w_before‖``; call after
        ``optimizer.step()``. Completes the step's row."""
        if self._open is None:
            raise RuntimeError("capture_update() without capture_gradients()")
        params = [p.detach() for p in self._layout.params]
        torch._foreach_sub_(self._weight_views, params)  # snapshot := w_before - w_after
        delta_sq = torch.zeros(self.n_layers, dtype=torch.float64, device=self.device)
        delta_sq.index_add_(
            0,
            self._layout.row_owner,
            torch.linalg.vector_norm(self._weights, dim=1).double().square(),
        )
        self._close_open(update_ratio=delta_sq.sqrt() / self._open[1])

    def _close_open(self, update_ratio: torch.Tensor | None) -> None:
        assert self._open is not None
        grad, w_norm, hist, step, epoch = self._open
        if update_ratio is None:  # the step's update was never captured
            update_ratio = torch.full_like(w_norm, math.nan)
        columns = (
            grad[:, :5],
            w_norm.unsqueeze(1),
            update_ratio.unsqueeze(1),
            grad[:, 5:7],
            self._activation_columns(),
        )
        row = torch.cat(columns, dim=1)  # (L, N_STATS), float64
        self._act.fill_(math.nan)  # a step without activation_capture() records none
        self._rows.append(torch.cat((row.flatten(), hist)))
        self._steps.append(step)
        self._epochs.append(epoch)
        self._open = None

    def _activation_columns(self) -> torch.Tensor:
        """(L, 5) float64: act_mean, act_std, act_saturation, preact_mean, preact_std."""
        act = self._act.double()
        post_std = mean_std(act[:, 0], act[:, 1])
        pre_std = mean_std(act[:, 3], act[:, 4])
        return torch.stack((act[:, 0], post_std, act[:, 2], act[:, 3], pre_std), dim=1)

    def _histograms(self) -> torch.Tensor:
        """(L·bins counts, L lo, L hi) of this step's gradient, float64, flattened.

        histc needs its range as Python floats (a host sync per layer), so the bin of
        every element is computed on the device and counted with one scatter_add_."""
        layout, bins, x = self._layout, self.bins, self._grads
        assert layout.valid is not None
        owner = layout.row_owner
        big = torch.finfo(torch.float32).max
        # Padding must not widen [lo, hi]: replace it by ±inf-like sentinels.
        padding = ~layout.valid
        self._scratch.copy_(x).masked_fill_(padding, big)
        lo = torch.full((self.n_layers,), big, device=self.device)
        lo.scatter_reduce_(0, owner, self._scratch.amin(dim=1), reduce="amin")
        self._scratch.copy_(x).masked_fill_(padding, -big)
        hi = torch.full((self.n_layers,), -big, device=self.device)
        hi.scatter_reduce_(0, owner, self._scratch.amax(dim=1), reduce="amax")
        width = hi - lo
        width = torch.where(width > 0, width, 1.0)  # constant gradient: all in bin 0
        t = self._scratch
        torch.sub(x, lo[owner].unsqueeze(1), out=t)
        t.mul_((bins / width)[owner].unsqueeze(1)).floor_().clamp_(0, bins - 1)
        t.add_((owner * bins).unsqueeze(1))
        # Padding and non-finite values go to one extra bin that is dropped.
        t.masked_fill_(padding | ~torch.isfinite(t), self.n_layers * bins)
        index = t.long().flatten()
        counts = torch.zeros(self.n_layers * bins + 1, dtype=torch.int64, device=self.device)
        counts.scatter_add_(0, index, torch.ones_like(index))
        return torch.cat((counts[:-1].double(), lo.double(), hi.double()))

    # -- host transfer --

    def flush(self) -> LayerStatsBatch | None:
        """All pending rows in ONE device-to-host copy; None when nothing is pending."""
        if self._open is not None:
            self._close_open(update_ratio=None)
        if not self._rows:
            return None
        packed = torch.stack(self._rows).cpu().numpy()  # host-device sync point
        steps, epochs = self._steps, self._epochs
        self._rows, self._steps, self._epochs = [], [], []
        n_layers, width = self.n_layers, self.n_layers * N_STATS
        values = packed[:, :width].reshape(len(steps), n_layers, N_STATS).astype(np.float64)
        histograms: list[Histogram] = []
        if self.bins > 0:
            nb = n_layers * self.bins
            for i, step in enumerate(steps):
                counts = packed[i, width : width + nb].reshape(n_layers, self.bins)
                lo = packed[i, width + nb : width + nb + n_layers]
                hi = packed[i, width + nb + n_layers : width + nb + 2 * n_layers]
                histograms.extend(
                    Histogram(j, step, float(lo[j]), float(hi[j]), counts[j].astype(int).tolist())
                    for j in range(n_layers)
                )
        return LayerStatsBatch(
            steps=np.asarray(steps, dtype=np.int64),
            epochs=np.asarray(epochs, dtype=np.int64),
            values=values,
            histograms=histograms,
        )

    def close(self) -> None:
        """Remove any hooks; pending rows are dropped (flush first to keep them)."""
        self._remove_hooks()
        self._rows.clear()
        self._open = None


class _PreHook(Protocol):
    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None: ...


class _PostHook(Protocol):
    def __call__(
        self, module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor
    ) -> None: ...


__all__ = [
    "ROW",
    "Layer",
    "TelemetryCollector",
    "activation_moments",
    "grad_columns",
    "mean_std",
    "row_reductions",
    "saturated_count",
]
