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
  preallocated buffer, padded to a whole number of rows of ``ROW`` elements, so the
  buffer is a ``(rows, ROW)`` matrix and each row belongs to exactly one layer. The
  padding is zero, which no statistic counts (sums, norms, max |g|, non-zero counts).
* Gradients, on a CPU with big float32 parameters (>= PER_PARAM_MIN_NUMEL elements on
  average): one parameter at a time, ``|g|`` is written as float bits with the sign
  cleared (``g.view(int32) & 0x7fffffff``) into a shared scratch, and while the gradient
  is still in cache its sum and norm, the max of the bits (= the bits of max |g|, NaN
  above Inf) and, after clamping the bits at 1, their sum (= the non-zero count) go into
  preallocated slots (``torch.sum(..., out=slot)``). Otherwise (small parameters,
  bf16/fp16, histograms, GPUs): one ``_foreach_copy_`` into a float32 ``(rows, ROW)``
  matrix (casting bf16/fp16), and each statistic is ONE row-wise reduction over it.
  Either way ``index_add_`` folds parameters or rows into layers in float64.
* Weights are snapshotted into a second matrix (per parameter with the norm, or one
  ``_foreach_copy_``); after ``optimizer.step()`` ``_foreach_sub_`` turns the snapshot
  into ``w_before - w_after`` in place.
* Activations: on a CPU each hook reduces its tensor as it is produced (sum and norm
  into slots, plus the saturated count of the output; the pre-hook runs before the
  module, so an in-place activation needs no copy). On a GPU, hooks only stash the
  tensors and each group of same-sized ones is stacked and reduced at once (fewer
  kernel launches). One vectorized pass per step turns the slots into means and stds.

Conventions: ``grad_std`` is the population std (divides by n, i.e. ``correction=0``),
computed as ``sqrt(E[g²] - E[g]²)`` from float64 layer totals; ``act_std`` and
``preact_std`` are population stds too. ``inf_count`` counts ±Inf, ``nan_count`` NaN; a
layer with a NaN gradient has NaN ``grad_norm``/``grad_mean``/``grad_std``/``grad_abs_max``
and its row is kept. ``grad_zero_frac`` counts exact zeros (NaN is not zero). On a CPU,
NaN/Inf are counted only when some max |g| is non-finite (reading that flag costs
nothing there; NaN/Inf are rare); on a GPU they are always counted (no host sync).
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
_LOW_PRECISION = (torch.bfloat16, torch.float16)


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


def saturated_count(
    y: torch.Tensor, kind: SaturationKind, scratch: torch.Tensor | None = None
) -> torch.Tensor:
    """Number of activations at a bound: sigmoid within 1e-2 of 0 or 1, tanh within 1e-2
    of ±1, ReLU exactly 0; NaN for activations with no bound worth counting.

    ``scratch``: optional int32 tensor of at least ``y.numel()`` elements, overwritten."""
    if kind == "none":
        return torch.full((), math.nan, device=y.device)
    if kind == "relu":
        return y.numel() - nonzero_count(y, scratch)
    if kind == "sigmoid":
        at_bound = (y <= SATURATION_EPS) | (y >= 1.0 - SATURATION_EPS)
    else:
        at_bound = y.abs() >= 1.0 - SATURATION_EPS
    return at_bound.sum(dtype=torch.int32)


def nonzero_count(y: torch.Tensor, scratch: torch.Tensor | None = None) -> torch.Tensor:
    """Entries of a tensor that are not ±0 (NaN counts as non-zero), as int32.

    Equal to torch.count_nonzero, which is ~8x slower on CPUs for float32: clearing the
    sign bit leaves 0 only for ±0, and clamping the bits at 1 turns the count into a sum.
    ``scratch``: optional int32 tensor of at least ``y.numel()`` elements, overwritten
    (fresh activation-sized temporaries cost page faults on CPUs)."""
    if y.dtype != torch.float32:
        return torch.count_nonzero(y).to(torch.int32)
    out = None if scratch is None else scratch.view(-1)[: y.numel()].view(y.shape)
    bits = torch.bitwise_and(y.view(torch.int32), _ABS_MASK, out=out)
    return bits.clamp_(max=1).sum(dtype=torch.int32)


def sum_and_norm_(x: torch.Tensor, total: torch.Tensor, norm: torch.Tensor) -> None:
    """Write ``x.sum()`` and ``‖x‖₂`` into the float32 0-d tensors ``total`` and
    ``norm`` (any float dtype in, float32 accumulation; no temporaries)."""
    if x.dtype in _LOW_PRECISION:
        torch.sum(x, dim=None, dtype=torch.float32, out=total)
        torch.linalg.vector_norm(x, dtype=torch.float32, out=norm)
        return
    if x.dtype != torch.float32:
        x = x.float()
    torch.sum(x, dim=None, out=total)
    torch.linalg.vector_norm(x, out=norm)


# --- the flat layout --------------------------------------------------------------------


@dataclass(frozen=True)
class _Layout:
    params: list[torch.Tensor]  # every tracked parameter, layer by layer
    rows: int
    row_owner: torch.Tensor  # (rows,) int64: the layer of each row
    param_owner: torch.Tensor  # (params,) int64: the layer of each parameter
    numel: torch.Tensor  # (L,) float64: real (unpadded) elements per layer
    valid: torch.Tensor | None  # (rows, ROW) bool: not padding (histograms only)
    offsets: list[int]  # element offset of each parameter in the flat buffer


def _plan(layers: Sequence[Layer], device: torch.device, need_valid: bool) -> _Layout:
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
    return _Layout(
        params=params,
        rows=len(owners),
        row_owner=torch.tensor(owners, dtype=torch.int64, device=device),
        param_owner=torch.tensor(param_owners, dtype=torch.int64, device=device),
        numel=torch.tensor(numel, dtype=torch.float64, device=device),
        valid=valid,
        offsets=offsets,
    )


def _views(flat: torch.Tensor, layout: _Layout) -> list[torch.Tensor]:
    return [
        flat[off : off + p.numel()].view(p.shape)
        for p, off in zip(layout.params, layout.offsets, strict=True)
    ]


# Columns of a step's (L, N_STATS) row.
_G_NORM, _G_MEAN, _G_STD, _G_MAX, _G_ZERO = (_COL[n] for n in GRAD_STATS[:5])
_W_NORM, _UPDATE, _NAN, _INF = (_COL[n] for n in GRAD_STATS[5:])
_ACT0 = _COL["act_mean"]
assert STAT_NAMES[_ACT0:] == ("act_mean", "act_std", "act_saturation", "preact_mean", "preact_std")

# Per-parameter statistics (one kernel per parameter per statistic, on data still in
# cache) beat row-wise reductions over the flat matrix (a few kernels, on data that has
# left the cache) on a CPU when parameters average at least this many elements.
PER_PARAM_MIN_NUMEL = 8192

# Activation hooks stash tensors for one grouped reduction after the forward on GPUs
# (fewer kernel launches); on a CPU they reduce each tensor at once. True: stash on
# CPUs too (tests run the GPU path this way).
STASH_ACTIVATIONS_ON_CPU = False

# Layer totals: sum, sum of squares, weight sum of squares, non-zero count, max |g| bits,
# (inf, NaN) counts or None.
_Folded = tuple[
    torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor | None
]

# Columns of the raw activation slots (float32, written by the hooks).
_POST_SUM, _POST_NORM, _PRE_SUM, _PRE_NORM = range(4)


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
        layout = self._layout = _plan(self.layers, self.device, need_valid=histogram_bins > 0)
        shape = (layout.rows, ROW)
        # |g| as float32 bits (sign cleared); then clamped to 0/1 for the non-zero count.
        self._bits = torch.zeros(shape, dtype=torch.int32, device=self.device)
        self._weights = torch.zeros(shape, dtype=torch.float32, device=self.device)
        self._weight_views = _views(self._weights.view(-1), layout)
        # Signed float32 gradients: only for bf16/fp16 gradients and histograms.
        self._grads: torch.Tensor | None = None
        self._grad_views: list[torch.Tensor] = []
        self._scratch: torch.Tensor | None = None  # histograms only
        # The per-parameter path (CPU, big parameters): each statistic written in place
        # (torch.sum(..., out=slot)): grad sum, grad norm, weight norm (float32) and
        # max |g| bits, non-zero count (int32), per parameter.
        sizes = [p.numel() for p in layout.params]
        self._per_param = self.device.type == "cpu" and histogram_bins == 0
        self._per_param &= sum(sizes) >= PER_PARAM_MIN_NUMEL * len(sizes)
        n_params = len(sizes) if self._per_param else 0
        self._param_f = torch.zeros((n_params, 3), device=self.device)
        self._param_i = torch.zeros((n_params, 2), dtype=torch.int32, device=self.device)
        self._pf_slots = [list(r.unbind()) for r in self._param_f.unbind()]
        self._pi_slots = [list(r.unbind()) for r in self._param_i.unbind()]
        self._param_scratch = torch.empty(
            max(sizes) if self._per_param else 0, dtype=torch.int32, device=self.device
        )
        # Activation slots of the current step, NaN until a hook writes them: post sum,
        # post norm, pre sum, pre norm (float32) and the post saturated or non-zero count
        # (float64), with the element counts (host ints) for the means.
        n_layers = self.n_layers
        self._act = torch.full((n_layers, 4), math.nan, device=self.device)
        self._act_slots = [list(row.unbind()) for row in self._act.unbind()]
        self._sat = torch.full((n_layers,), math.nan, dtype=torch.float64, device=self.device)
        self._sat_slots = list(self._sat.unbind())
        self._n_post = [1] * n_layers
        self._n_pre = [1] * n_layers
        self._act_recorded = False
        self._act_bits = torch.empty(0, dtype=torch.int32, device=self.device)
        # GPU: stash in the hooks, reduce per group after the forward (fewer launches).
        self._stash_activations = self.device.type != "cpu" or STASH_ACTIVATIONS_ON_CPU
        self._stash: dict[tuple[int, int], torch.Tensor] = {}  # (layer, 0 post / 1 pre)
        self._index_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._stack_cache: dict[tuple[int, int, str], torch.Tensor] = {}
        self._count_cache: dict[tuple[int, ...], tuple[torch.Tensor, torch.Tensor]] = {}
        # act_saturation = offset + count / (n·sign): ReLU hooks count non-zeros.
        relu = [layer.saturation == "relu" for layer in self.layers]
        self._sat_offset = torch.tensor(
            [1.0 if r else 0.0 for r in relu], dtype=torch.float64, device=self.device
        )
        self._sat_sign = [-1 if r else 1 for r in relu]
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._check_activation_modules()
        # Pending, finished rows (device tensors) and their host-side labels.
        self._rows: list[torch.Tensor] = []
        self._steps: list[int] = []
        self._epochs: list[int] = []
        # The step between capture_gradients and capture_update: its (L, N_STATS)
        # float64 row (update_ratio and activation columns not yet written).
        self._open: tuple[torch.Tensor, torch.Tensor | None, int, int] | None = None

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
                self._hooks.append(m.register_forward_hook(self._post_hook(index, layer)))
            self._act_recorded = True
            yield
        finally:
            self._remove_hooks()
            if self._stash:
                with torch.no_grad():
                    self._reduce_stash()

    # On a CPU each hook reduces its tensor at once, while it is still in cache: a sum and
    # a norm written into a preallocated slot (torch.sum(out=...)), no copy, nothing
    # stashed; the pre-hook runs before the module, so an in-place activation needs no
    # clone. On a GPU, where a step is bound by kernel launches, hooks only stash the
    # tensors and _reduce_stash() reduces every group of same-sized ones at once.

    def _pre_hook(self, index: int, module: nn.Module) -> _PreHook:
        total, norm = self._act_slots[index][_PRE_SUM], self._act_slots[index][_PRE_NORM]
        counts = self._n_pre
        inplace = bool(getattr(module, "inplace", False))

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach()
            counts[index] = max(x.numel(), 1)
            if self._stash_activations:
                # An in-place activation would overwrite the stashed input: copy it.
                self._stash[(index, 1)] = x.clone() if inplace else x
            else:
                sum_and_norm_(x, total, norm)

        return hook

    def _post_hook(self, index: int, layer: Layer) -> _PostHook:
        total, norm = self._act_slots[index][_POST_SUM], self._act_slots[index][_POST_NORM]
        sat = self._sat_slots[index]
        counts = self._n_post
        kind = layer.saturation

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            y = out.detach()
            counts[index] = max(y.numel(), 1)
            if self._stash_activations:
                self._stash[(index, 0)] = y
                return
            sum_and_norm_(y, total, norm)
            if kind == "relu":  # the non-zero count; _activation_columns turns it around
                sat.copy_(nonzero_count(y, self._act_scratch(y.numel())))
            elif kind != "none":
                sat.copy_(saturated_count(y, kind))

        return hook

    def _reduce_stash(self) -> None:
        """The stashed activations into the same slots as the CPU hooks: per group of
        same-sized tensors, one stacked buffer and a few row-wise kernels."""
        groups: dict[tuple[int, int, SaturationKind], list[int]] = {}
        for (index, slot), t in self._stash.items():
            kind: SaturationKind = self.layers[index].saturation if slot == 0 else "none"
            groups.setdefault((slot, t.numel(), kind), []).append(index)
        for (slot, n, kind), indices in groups.items():
            stacked = self._stack_buffer((slot, n, kind), len(indices), n)
            for row, i in enumerate(indices):
                stacked[row].copy_(self._stash[(i, slot)].reshape(-1))  # casts bf16/fp16
            rows = self._index_tensor(indices)
            total, norm = (_POST_SUM, _POST_NORM) if slot == 0 else (_PRE_SUM, _PRE_NORM)
            self._act[rows, total] = stacked.sum(dim=1)
            self._act[rows, norm] = torch.linalg.vector_norm(stacked, dim=1)
            if kind == "relu":  # non-zero counts, as the CPU hook writes them
                bits = stacked.view(torch.int32).bitwise_and_(_ABS_MASK).clamp_(max=1)
                self._sat[rows] = bits.sum(dim=1, dtype=torch.int32).double()
            elif kind == "sigmoid":
                at_bound = (stacked <= SATURATION_EPS) | (stacked >= 1.0 - SATURATION_EPS)
                self._sat[rows] = at_bound.sum(dim=1, dtype=torch.int32).double()
            elif kind == "tanh":
                at_bound = stacked.abs() >= 1.0 - SATURATION_EPS
                self._sat[rows] = at_bound.sum(dim=1, dtype=torch.int32).double()
        self._stash.clear()

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

    def _act_scratch(self, n: int) -> torch.Tensor:
        # Reused across hooks and steps: fresh activation-sized buffers cost page faults.
        if self._act_bits.numel() < n:
            self._act_bits = torch.empty(n, dtype=torch.int32, device=self.device)
        return self._act_bits

    def _activation_columns(self, out: torch.Tensor) -> None:
        """Write act_mean, act_std, act_saturation, preact_mean, preact_std ((L, 5)
        float64 view ``out``) from this step's slots, and reset the slots to NaN."""
        if not self._act_recorded:
            out.fill_(math.nan)  # a step without activation_capture() records none
            return
        n, n_signed = self._element_counts()
        m = self._act.double()  # (L, 4): post sum, post norm, pre sum, pre norm
        m[:, 1::2].square_()
        m.div_(n)  # -> post mean, post mean of squares, pre mean, pre mean of squares
        means, mean_sq = m[:, 0::2], m[:, 1::2]
        out[:, 0::3].copy_(means)  # act_mean, preact_mean
        std = torch.addcmul(mean_sq, means, means, value=-1.0, out=out[:, 1::3])
        std.clamp_min_(0.0).sqrt_()  # act_std, preact_std
        torch.addcdiv(self._sat_offset, self._sat, n_signed, out=out[:, 2])
        self._act.fill_(math.nan)
        self._sat.fill_(math.nan)
        self._act_recorded = False

    def _element_counts(self) -> tuple[torch.Tensor, torch.Tensor]:
        # Cached: building them is a host-to-device copy, and sizes rarely change.
        key = (*self._n_post, *self._n_pre)
        cached = self._count_cache.get(key)
        if cached is None:
            post, pre = self._n_post, self._n_pre
            n = [[a, a, b, b] for a, b in zip(post, pre, strict=True)]
            signed = [a * s for a, s in zip(post, self._sat_sign, strict=True)]
            f64 = torch.float64
            cached = self._count_cache[key] = (
                torch.tensor(n, dtype=f64, device=self.device),
                torch.tensor(signed, dtype=f64, device=self.device),
            )
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
            self._close_open(updated=False)
        params = self._layout.params
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        hist = None
        if self._per_param and all(g.dtype == torch.float32 for g in grads):
            folded = self._per_parameter_sums(grads)
        else:
            folded = self._matrix_sums(grads)
            hist = self._histograms() if self.bins > 0 else None
        self._open = (self._grad_row(*folded), hist, step, epoch)

    def _per_parameter_sums(self, grads: list[torch.Tensor]) -> _Folded:
        """Big float32 parameters on a CPU: every statistic of a gradient right after the
        pass that brings it into cache, into preallocated slots; one shared scratch."""
        layout, f64 = self._layout, torch.float64
        scratch = self._param_scratch
        for g, p, w, f, i in zip(
            grads, layout.params, self._weight_views, self._pf_slots, self._pi_slots, strict=True
        ):
            bits = scratch[: g.numel()]
            torch.bitwise_and(g.view(torch.int32), _ABS_MASK, out=bits.view(g.shape))
            torch.sum(g, dim=None, out=f[0])
            torch.linalg.vector_norm(g, out=f[1])
            torch.amax(bits, dim=0, out=i[0])
            torch.sum(bits.clamp_(max=1), dim=None, dtype=torch.int32, out=i[1])
            w.copy_(p)
            torch.linalg.vector_norm(w, out=f[2])
        owner, n_layers = layout.param_owner, self.n_layers
        per_param = self._param_f.double()  # (P, 3): sum, grad norm, weight norm
        per_param[:, 1:].square_()
        sums = torch.zeros((n_layers, 3), dtype=f64, device=self.device)
        sums.index_add_(0, owner, per_param)
        nonzero = torch.zeros(n_layers, dtype=f64, device=self.device)
        nonzero.index_add_(0, owner, self._param_i[:, 1].double())
        abs_max = torch.zeros(n_layers, dtype=torch.int32, device=self.device)
        abs_max.scatter_reduce_(0, owner, self._param_i[:, 0], reduce="amax")
        nonfinite = None
        if int(self._param_i[:, 0].max()) >= _INF_BITS:  # rare; CPU only: no sync cost
            counts = [torch.stack((g.isinf().sum(), g.isnan().sum())) for g in grads]
            nonfinite = torch.zeros((n_layers, 2), dtype=f64, device=self.device)
            nonfinite.index_add_(0, owner, torch.stack(counts).double())
        return sums[:, 0], sums[:, 1], sums[:, 2], nonzero, abs_max, nonfinite

    def _matrix_sums(self, grads: list[torch.Tensor]) -> _Folded:
        """Small parameters, bf16/fp16, histograms, GPUs: one foreach copy into the
        (rows, ROW) matrix, then each statistic is one row-wise reduction (few kernels)."""
        layout, n_layers, f64 = self._layout, self.n_layers, torch.float64
        owner, bits = layout.row_owner, self._bits
        signed = self._signed_grads()
        torch._foreach_copy_(self._grad_views, grads)  # casts bf16/fp16
        torch._foreach_copy_(self._weight_views, layout.params)
        columns = [
            signed.sum(dim=1),
            torch.linalg.vector_norm(signed, dim=1),
            torch.linalg.vector_norm(self._weights, dim=1),
        ]
        torch.bitwise_and(signed.view(torch.int32), _ABS_MASK, out=bits)
        row_max = bits.amax(dim=1)
        # On a CPU, reading a flag costs nothing (no device queue to drain) and NaN/Inf
        # are rare, so count them only when some max |g| is not finite; on a GPU always.
        count_nonfinite = self.device.type != "cpu" or int(row_max.max()) >= _INF_BITS
        if count_nonfinite:
            inf_or_nan = (bits >= _INF_BITS).sum(dim=1, dtype=torch.int32)
            nan = (bits > _INF_BITS).sum(dim=1, dtype=torch.int32)
            columns += [inf_or_nan - nan, nan]
        columns.append(bits.clamp_(max=1).sum(dim=1, dtype=torch.int32))  # non-zero count
        per_row = torch.stack(columns, dim=1).double()  # exact: counts <= ROW
        per_row[:, 1:3].square_()
        sums = torch.zeros((n_layers, len(columns)), dtype=f64, device=self.device)
        sums.index_add_(0, owner, per_row)
        # max |g| folds by max; on the bits, so a NaN row cannot hide behind a number.
        abs_max = torch.zeros(n_layers, dtype=torch.int32, device=self.device)
        abs_max.scatter_reduce_(0, owner, row_max, reduce="amax")
        nonfinite = sums[:, 3:5] if count_nonfinite else None
        return sums[:, 0], sums[:, 1], sums[:, 2], sums[:, -1], abs_max, nonfinite

    def _grad_row(
        self,
        total: torch.Tensor,
        sumsq: torch.Tensor,
        w_sumsq: torch.Tensor,
        nonzero: torch.Tensor,
        abs_max: torch.Tensor,
        nonfinite: torch.Tensor | None,
    ) -> torch.Tensor:
        """A step's (L, N_STATS) float64 row from float64 layer totals (abs_max: int32
        float bits; nonfinite: (L, 2) inf and NaN counts, None when there are none)."""
        numel = self._layout.numel
        row = torch.empty((self.n_layers, N_STATS), dtype=torch.float64, device=self.device)
        torch.sqrt(sumsq, out=row[:, _G_NORM])
        mean = torch.div(total, numel, out=row[:, _G_MEAN])
        var = torch.addcmul(sumsq / numel, mean, mean, value=-1.0, out=row[:, _G_STD])
        var.clamp_min_(0.0).sqrt_()
        row[:, _G_MAX].copy_(abs_max.view(torch.float32))
        torch.div(numel - nonzero, numel, out=row[:, _G_ZERO])
        torch.sqrt(w_sumsq, out=row[:, _W_NORM])
        if nonfinite is None:
            row[:, _NAN : _INF + 1].zero_()
        else:
            row[:, _NAN].copy_(nonfinite[:, 1])
            row[:, _INF].copy_(nonfinite[:, 0])
        return row

    def _signed_grads(self) -> torch.Tensor:
        if self._grads is None:
            self._grads = torch.zeros_like(self._weights)
            self._grad_views = _views(self._grads.view(-1), self._layout)
        return self._grads

    @torch.no_grad()
    def capture_update(self) -> None:
        """``update_ratio = ‖w_after - w_before‖ / ‖w_before‖``; call after
        ``optimizer.step()``. Completes the step's row."""
        if self._open is None:
            raise RuntimeError("capture_update() without capture_gradients()")
        row = self._open[0]
        torch._foreach_sub_(self._weight_views, self._layout.params)  # w_before - w_after
        delta_sq = torch.linalg.vector_norm(self._weights, dim=1).double().square_()
        delta = torch.zeros(self.n_layers, dtype=torch.float64, device=self.device)
        delta.index_add_(0, self._layout.row_owner, delta_sq).sqrt_()
        torch.div(delta, row[:, _W_NORM], out=row[:, _UPDATE])
        self._close_open(updated=True)

    def _close_open(self, *, updated: bool) -> None:
        assert self._open is not None
        row, hist, step, epoch = self._open
        if not updated:  # the step's update was never captured
            row[:, _UPDATE].fill_(math.nan)
        self._activation_columns(row[:, _ACT0:])
        flat = row.view(-1)
        self._rows.append(flat if hist is None else torch.cat((flat, hist)))
        self._steps.append(step)
        self._epochs.append(epoch)
        self._open = None

    def _histograms(self) -> torch.Tensor:
        """(L·bins counts, L lo, L hi) of this step's gradient, float64, flattened.

        histc needs its range as Python floats (a host sync per layer), so the bin of
        every element is computed on the device and counted with one scatter_add_."""
        layout, bins, x = self._layout, self.bins, self._signed_grads()
        assert layout.valid is not None
        if self._scratch is None:
            self._scratch = torch.empty_like(x)
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
            self._close_open(updated=False)
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
    "nonzero_count",
    "saturated_count",
    "sum_and_norm_",
]
