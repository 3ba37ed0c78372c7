"""Activation statistics: two interchangeable paths into the same per-layer slots.

* ``InHookActivations`` (CPUs): each forward hook reduces its tensor at once, while it is
  still in cache: a sum and a norm written into preallocated slots
  (``torch.sum(out=...)``), plus the live outputs per unit; no copy, nothing stashed. The
  pre-hook runs before the module, so an in-place activation needs no clone.
* ``StashedActivations`` (GPUs, where a step is bound by kernel launches): hooks only
  stash the tensors; after the forward, every group of same-shaped ones is stacked and
  reduced at once.

Both fill ``ActivationSlots``; each step's numbers are kept as they are
(``ActivationSlots.take_step``), and at the flush ``write_activation_columns`` turns
those of every pending step into the activation statistics in one batched pass.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Literal, Protocol

import torch
from torch import nn
from torch.nn import functional

from worker.engine.events import ACT_STATS
from worker.engine.layer_stats.layout import Layer, StatTable
from worker.engine.layer_stats.reductions import (
    SaturationKind,
    live_per_unit_,
    sum_and_norm_,
    unit_view,
)

ActivationPath = Literal["in_hook", "stash"]

# Marks the unit columns of ActivationSlots.live that no layer's hook wrote this step
# (layers narrower than the widest one, unbounded activations, hooks that did not run).
_NO_UNIT = -1


def choose_activation_path(
    requested: ActivationPath | Literal["auto"], *, device: torch.device
) -> ActivationPath:
    """``"auto"``: reduce in the hooks on a CPU, stash and group elsewhere."""
    if requested == "auto":
        return "in_hook" if device.type == "cpu" else "stash"
    return requested


class PreHook(Protocol):
    def __call__(self, module: nn.Module, args: tuple[torch.Tensor, ...]) -> None: ...


class PostHook(Protocol):
    def __call__(
        self, module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor
    ) -> None: ...


# Which tensor of an activation module: its output (post) or its input (pre).
POST, PRE = 0, 1
# What is kept of it: the sum and the L2 norm of its entries.
_SUM, _NORM = 0, 1


class ActivationSlots:
    """One step's raw activation numbers per layer, as the hooks leave them.

    Per layer: the sum and L2 norm of the activation (POST) and of its input (PRE), as
    float32 0-d slots (NaN until written); the live outputs of each unit (int32, see
    ``live_per_unit_``), for layers with a bounded activation; and, on the host, the
    element counts and the number of units."""

    def __init__(self, layers: Sequence[Layer], device: torch.device) -> None:
        n_layers = len(layers)
        self.device = device
        self.bounded = [layer.saturation != "none" for layer in layers]
        # [POST or PRE, _SUM or _NORM, layer]
        self._totals = torch.full((2, 2, n_layers), math.nan, device=device)
        self.sum, self.norm = self._totals.unbind(1)  # (2, L): [POST or PRE, layer]
        # Per layer, per POST/PRE: the 0-d slots a hook writes (built once: indexing
        # costs a little on every hook call).
        self.sum_slots = [list(pair.unbind()) for pair in self.sum.unbind(1)]
        self.norm_slots = [list(pair.unbind()) for pair in self.norm.unbind(1)]
        # (L, widest layer's units); grows when a hook meets a wider layer.
        self.live = torch.full((n_layers, 0), _NO_UNIT, dtype=torch.int32, device=device)
        self._live_rows: dict[tuple[int, int], torch.Tensor] = {}
        self.n = ([1] * n_layers, [1] * n_layers)  # elements of POST and PRE, per layer
        self.units = [0] * n_layers  # 0: no live counts written this step
        self.recorded = False  # activation_capture() ran since the last take_step()
        self._size_cache: dict[tuple[int, ...], _Sizes] = {}

    def live_row(self, index: int, units: int) -> torch.Tensor:
        """Layer ``index``'s first ``units`` live-count slots, an int32 (1, units) view
        (cached: slicing costs a little on every hook call)."""
        self._fit(units)
        row = self._live_rows.get((index, units))
        if row is None:
            row = self._live_rows[(index, units)] = self.live[index : index + 1, :units]
        self.units[index] = units
        return row

    def set_live(self, indices: list[int], rows: torch.Tensor, live: torch.Tensor) -> None:
        """The live counts ``live`` ((len(indices), units) int32) of layers ``indices``
        (``rows``: the same indices as a device tensor)."""
        units = live.shape[1]
        self._fit(units)
        self.live[rows, :units] = live
        for index in indices:
            self.units[index] = units

    def _fit(self, units: int) -> None:
        if units <= self.live.shape[1]:
            return
        wider = torch.full(
            (self.live.shape[0], units), _NO_UNIT, dtype=torch.int32, device=self.device
        )
        wider[:, : self.live.shape[1]] = self.live
        self.live = wider
        self._live_rows.clear()

    def take_step(self) -> RawActivations | None:
        """This step's numbers, and the slots reset for the next step; None when the step
        recorded no activations (no activation_capture())."""
        if not self.recorded:
            return None
        raw = RawActivations(self._totals.clone(), self.live.clone(), self._sizes())
        self._totals.fill_(math.nan)
        self.live.fill_(_NO_UNIT)
        self.units = [0] * len(self.units)
        self.recorded = False
        return raw

    def _sizes(self) -> _Sizes:
        # Cached: each size is a host-to-device copy, and sizes rarely change.
        key = (*self.n[POST], *self.n[PRE], *self.units)
        cached = self._size_cache.get(key)
        if cached is None:
            f64, device = torch.float64, self.device
            counted = [b and u > 0 for b, u in zip(self.bounded, self.units, strict=True)]
            post = self.n[POST]
            outputs = [n if c else math.nan for n, c in zip(post, counted, strict=True)]
            units = [u if c else math.nan for u, c in zip(self.units, counted, strict=True)]
            cached = self._size_cache[key] = _Sizes(
                elements=torch.tensor(self.n, dtype=f64, device=device),
                bounded_outputs=torch.tensor(outputs, dtype=f64, device=device),
                bounded_units=torch.tensor(units, dtype=f64, device=device),
            )
        return cached


@dataclass(frozen=True)
class _Sizes:
    """One step's sizes, float64 on the device: ``elements[POST or PRE]`` per layer, and
    the outputs and units of each layer with a bounded activation (NaN for the rest)."""

    elements: torch.Tensor  # (2, L)
    bounded_outputs: torch.Tensor  # (L,)
    bounded_units: torch.Tensor  # (L,)


@dataclass(frozen=True)
class RawActivations:
    """What one step's hooks left in the ActivationSlots, kept until the flush."""

    totals: torch.Tensor  # float32 (2, 2, L): [POST or PRE, _SUM or _NORM, layer]
    live: torch.Tensor  # int32 (L, units): live outputs per unit, _NO_UNIT where none
    sizes: _Sizes


_MEAN_AND_STD = ((POST, "act_mean", "act_std"), (PRE, "preact_mean", "preact_std"))


def write_activation_columns(table: StatTable, steps: Sequence[RawActivations | None]) -> None:
    """The ACT_STATS columns of the table from each step's raw numbers (None: the step
    recorded no activations, all NaN), in one batched pass."""
    column = table.column
    recorded = [raw for raw in steps if raw is not None]
    if not recorded:
        for name in ACT_STATS:
            column[name].fill_(math.nan)
        return
    blank = _blank(recorded[0])
    raws = [blank if raw is None else raw for raw in steps]
    totals = torch.stack([raw.totals for raw in raws]).double()  # (k, 2, 2, L)
    elements = torch.stack([raw.sizes.elements for raw in raws])  # (k, 2, L)
    for which, mean_name, std_name in _MEAN_AND_STD:
        # Population mean and std, sqrt(E[x²] - E[x]²), from a sum and an L2 norm.
        n = elements[:, which]
        mean = torch.div(totals[:, which, _SUM], n, out=column[mean_name])
        mean_sq = totals[:, which, _NORM].square_().div_(n)
        var = torch.addcmul(mean_sq, mean, mean, value=-1.0, out=column[std_name])
        var.clamp_min_(0.0).sqrt_()
    width = max(raw.live.shape[1] for raw in raws)  # the live buffer may have grown
    live = torch.stack([_widen(raw.live, width) for raw in raws])  # (k, L, units)
    # Unit columns no hook wrote hold _NO_UNIT (< 0): neither live nor dead.
    live_outputs = live.clamp_min(0).sum(dim=2)  # int64, exact
    dead_units = (live == 0).sum(dim=2)
    # Over the sizes of bounded layers: NaN where a layer has no bounded activation.
    outputs = torch.stack([raw.sizes.bounded_outputs for raw in raws])
    units = torch.stack([raw.sizes.bounded_units for raw in raws])
    column["act_saturation"].copy_(1.0 - live_outputs / outputs)
    torch.div(dead_units, units, out=column["act_dead_frac"])


def _blank(like: RawActivations) -> RawActivations:
    """A stand-in for a step without activations: every statistic comes out NaN."""
    nan = torch.full_like(like.sizes.bounded_units, math.nan)
    sizes = _Sizes(torch.full_like(like.sizes.elements, math.nan), nan, nan)
    return RawActivations(torch.full_like(like.totals, math.nan), like.live[:, :0], sizes)


def _widen(live: torch.Tensor, width: int) -> torch.Tensor:
    if live.shape[1] == width:
        return live
    return functional.pad(live, (0, width - live.shape[1]), value=_NO_UNIT)


class InHookActivations:
    """Each hook reduces its tensor as it is produced (CPUs: the data is in cache)."""

    path: ActivationPath = "in_hook"

    def __init__(self, slots: ActivationSlots) -> None:
        self.slots = slots
        # Reused across hooks and steps: fresh activation-sized buffers cost page faults.
        self._bits = torch.empty(0, dtype=torch.int32, device=slots.device)

    def pre_hook(self, index: int, module: nn.Module) -> PreHook:
        slots = self.slots
        total, norm = slots.sum_slots[index][PRE], slots.norm_slots[index][PRE]
        n = slots.n[PRE]

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach()
            n[index] = max(x.numel(), 1)
            sum_and_norm_(x, total, norm)

        return hook

    def post_hook(self, index: int, kind: SaturationKind) -> PostHook:
        slots = self.slots
        total, norm = slots.sum_slots[index][POST], slots.norm_slots[index][POST]
        n = slots.n[POST]

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            y = out.detach()
            n[index] = max(y.numel(), 1)
            sum_and_norm_(y, total, norm)
            if kind != "none" and y.numel() > 0:
                y = unit_view(y)
                live = slots.live_row(index, units=y.shape[2])
                live_per_unit_(y, kind, out=live, scratch=self._scratch(y.numel()))

        return hook

    def finish_forward(self) -> None:
        """Nothing left to do: every hook has reduced its tensor."""

    def _scratch(self, n: int) -> torch.Tensor:
        if self._bits.numel() < n:
            self._bits = torch.empty(n, dtype=torch.int32, device=self.slots.device)
        return self._bits


class StashedActivations:
    """Hooks stash their tensors; ``finish_forward`` reduces each group of same-shaped
    ones with one stacked buffer and a few row-wise kernels (GPUs: fewer launches)."""

    path: ActivationPath = "stash"

    def __init__(self, slots: ActivationSlots, layers: Sequence[Layer]) -> None:
        self.slots = slots
        self._kinds = [layer.saturation for layer in layers]
        self._stash: dict[tuple[int, int], torch.Tensor] = {}  # (layer, POST or PRE)
        self._index_cache: dict[tuple[int, ...], torch.Tensor] = {}
        self._stack_cache: dict[tuple[int, tuple[int, ...], str], torch.Tensor] = {}

    def pre_hook(self, index: int, module: nn.Module) -> PreHook:
        slots = self.slots
        inplace = bool(getattr(module, "inplace", False))

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...]) -> None:
            x = args[0].detach()
            slots.n[PRE][index] = max(x.numel(), 1)
            # An in-place activation would overwrite the stashed input: copy it.
            self._stash[(index, PRE)] = x.clone() if inplace else x

        return hook

    def post_hook(self, index: int, kind: SaturationKind) -> PostHook:
        slots = self.slots

        def hook(module: nn.Module, args: tuple[torch.Tensor, ...], out: torch.Tensor) -> None:
            y = out.detach()
            slots.n[POST][index] = max(y.numel(), 1)
            self._stash[(index, POST)] = y

        return hook

    def finish_forward(self) -> None:
        """The stashed tensors into the slots, per group of same-shaped tensors."""
        groups: dict[tuple[int, tuple[int, ...], SaturationKind], list[int]] = {}
        for (index, which), t in self._stash.items():
            kind: SaturationKind = self._kinds[index] if which == POST else "none"
            groups.setdefault((which, tuple(unit_view(t).shape), kind), []).append(index)
        slots = self.slots
        for (which, shape, kind), indices in groups.items():
            stacked = self._stack_buffer((which, shape, kind), len(indices))
            for row, i in enumerate(indices):
                stacked[row].copy_(self._stash[(i, which)].reshape(shape[1:]))  # casts bf16
            rows = self._index_tensor(indices)
            flat = stacked.view(len(indices), math.prod(shape))
            slots.sum[which, rows] = flat.sum(dim=1)
            slots.norm[which, rows] = torch.linalg.vector_norm(flat, dim=1)
            if kind != "none" and flat.numel() > 0:
                live = torch.empty((len(indices), shape[2]), dtype=torch.int32, device=slots.device)
                # The bits overwrite the stacked copies: their sums are taken already.
                live_per_unit_(stacked, kind, out=live, scratch=stacked.view(torch.int32))
                slots.set_live(indices, rows, live)
        self._stash.clear()

    def _stack_buffer(self, key: tuple[int, tuple[int, ...], str], rows: int) -> torch.Tensor:
        # (rows, batch, units, positions), reused across steps: fresh activation-sized
        # buffers cost page faults on CPUs.
        shape = (rows, *key[1][1:])
        buf = self._stack_cache.get(key)
        if buf is None or buf.shape != shape:
            buf = self._stack_cache[key] = torch.empty(shape, device=self.slots.device)
        return buf

    def _index_tensor(self, indices: list[int]) -> torch.Tensor:
        # Cached: building it is a host-to-device copy, done once per layer group.
        key = tuple(indices)
        cached = self._index_cache.get(key)
        if cached is None:
            cached = self._index_cache[key] = torch.tensor(indices, device=self.slots.device)
        return cached


ActivationRecorder = InHookActivations | StashedActivations

__all__ = [
    "ActivationPath",
    "ActivationRecorder",
    "ActivationSlots",
    "InHookActivations",
    "RawActivations",
    "StashedActivations",
    "choose_activation_path",
    "write_activation_columns",
]
