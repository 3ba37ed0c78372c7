"""The telemetry collector: per-layer statistics of telemetry steps, one host copy per flush."""

from __future__ import annotations

import contextlib
import math
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from typing import Literal

import numpy as np
import torch

from worker.engine.events import STAT_NAMES, Histogram, LayerStatsBatch
from worker.engine.layer_stats.activations import (
    ActivationPath,
    ActivationRecorder,
    ActivationSlots,
    InHookActivations,
    RawActivations,
    StashedActivations,
    choose_activation_path,
    write_activation_columns,
)
from worker.engine.layer_stats.gradients import (
    GradientPath,
    LayerTotals,
    MatrixGradients,
    PerParameterGradients,
    WeightSnapshot,
    choose_gradient_path,
    write_gradient_columns,
)
from worker.engine.layer_stats.histograms import GradientHistograms
from worker.engine.layer_stats.layout import Layer, StatTable, plan_layout

N_STATS = len(STAT_NAMES)


@dataclass
class _PendingStep:
    """A captured step's device numbers, turned into statistics at the flush."""

    step: int
    epoch: int
    totals: LayerTotals
    histograms: torch.Tensor | None
    update: torch.Tensor | None = None  # (L,) ‖w_after - w_before‖, once captured
    activations: RawActivations | None = None


class TelemetryCollector:
    """Collects per-layer statistics of telemetry steps on the device.

    Each step's reductions run at once, while the tensors are in cache; turning them
    into statistics waits for the flush, batched over every pending step, right before
    the one host copy. ``gradient_path`` and ``activation_path`` pick how the
    reductions run (the values are the same either way); ``"auto"`` picks what is
    fastest on the device: ``choose_gradient_path`` and ``choose_activation_path`` say
    how."""

    def __init__(
        self,
        layers: Sequence[Layer],
        *,
        activations: bool,
        histogram_bins: int = 0,
        flush_every: int = 32,
        gradient_path: GradientPath | Literal["auto"] = "auto",
        activation_path: ActivationPath | Literal["auto"] = "auto",
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
        self._check_activation_modules()
        layout = self._layout = plan_layout(self.layers, self.device, need_valid=histogram_bins > 0)
        self.gradient_path: GradientPath = choose_gradient_path(
            gradient_path,
            device=self.device,
            sizes=[p.numel() for p in layout.params],
            histogram_bins=histogram_bins,
        )
        self._snapshot = WeightSnapshot(layout, self.device)
        self._per_parameter: PerParameterGradients | None = None
        self._matrix: MatrixGradients | None = None
        if self.gradient_path == "per_parameter":
            self._per_parameter = PerParameterGradients(layout, self._snapshot, self.n_layers)
        else:
            self._matrix = MatrixGradients(layout, self._snapshot, self.n_layers)
        self._histograms: GradientHistograms | None = None
        if histogram_bins > 0:
            self._histograms = GradientHistograms(
                layout, bins=histogram_bins, n_layers=self.n_layers
            )
        self.activation_path: ActivationPath = choose_activation_path(
            activation_path, device=self.device
        )
        self._slots = ActivationSlots(self.layers, self.device)
        self._recorder: ActivationRecorder = (
            InHookActivations(self._slots)
            if self.activation_path == "in_hook"
            else StashedActivations(self._slots, self.layers)
        )
        self._hooks: list[torch.utils.hooks.RemovableHandle] = []
        self._pending: list[_PendingStep] = []
        self._open: _PendingStep | None = None  # from capture_gradients to capture_update

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
        return len(self._pending) + (self._open is not None)

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
        recorder = self._recorder
        try:
            for index, layer in enumerate(self.layers):
                m = layer.activation_module
                if m is None:
                    continue
                self._hooks.append(m.register_forward_pre_hook(recorder.pre_hook(index, m)))
                post = recorder.post_hook(index, layer.saturation)
                self._hooks.append(m.register_forward_hook(post))
            self._slots.recorded = True
            yield
        finally:
            self._remove_hooks()
            with torch.no_grad():
                recorder.finish_forward()

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
            self._close_open()  # the previous step's update was never captured
        params = self._layout.params
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        totals = self._gradient_totals(grads)
        histograms = None
        if self._histograms is not None:
            histograms = self._histograms.counts(self._matrix_path().signed)
        self._open = _PendingStep(step, epoch, totals, histograms)

    def _gradient_totals(self, grads: list[torch.Tensor]) -> LayerTotals:
        per_parameter = self._per_parameter
        if per_parameter is not None and per_parameter.accepts(grads):
            return per_parameter.totals(grads)
        return self._matrix_path().totals(grads)

    def _matrix_path(self) -> MatrixGradients:
        # Built on first use when the per-parameter path was chosen: it then serves only
        # bf16/fp16 gradients, which the per-parameter bit tricks cannot read.
        if self._matrix is None:
            self._matrix = MatrixGradients(self._layout, self._snapshot, self.n_layers)
        return self._matrix

    @torch.no_grad()
    def capture_update(self) -> None:
        """``update_ratio = ‖w_after - w_before‖ / ‖w_before‖``; call after
        ``optimizer.step()``. Completes the step."""
        if self._open is None:
            raise RuntimeError("capture_update() without capture_gradients()")
        self._open.update = self._snapshot.update_norms(self.n_layers)
        self._close_open()

    def _close_open(self) -> None:
        assert self._open is not None
        opened, self._open = self._open, None
        opened.activations = self._slots.take_step()
        self._pending.append(opened)

    # -- statistics and host transfer --

    @torch.no_grad()
    def flush(self) -> LayerStatsBatch | None:
        """Every pending step's statistics, in ONE device-to-host copy; None when
        nothing is pending. A step whose update was not captured gets NaN update_ratio."""
        if self._open is not None:
            self._close_open()
        if not self._pending:
            return None
        pending, self._pending = self._pending, []
        table = StatTable(len(pending), self.n_layers, self.device)
        write_gradient_columns(table, [p.totals for p in pending], self._layout.numel)
        no_update = torch.full((self.n_layers,), math.nan, dtype=torch.float64, device=self.device)
        delta = torch.stack([no_update if p.update is None else p.update for p in pending])
        column = table.column
        torch.div(delta, column["weight_norm"], out=column["update_ratio"])
        write_activation_columns(table, [p.activations for p in pending])
        packed = table.values.view(len(pending), -1)
        if self.bins > 0:
            histograms = [p.histograms for p in pending if p.histograms is not None]
            packed = torch.cat((packed, torch.stack(histograms)), dim=1)
        host = packed.cpu().numpy()  # host-device sync point: the flush's one copy
        steps = [p.step for p in pending]
        n_layers, width = self.n_layers, self.n_layers * N_STATS
        values = host[:, :width].reshape(len(steps), n_layers, N_STATS).astype(np.float64)
        histograms_out: list[Histogram] = []
        if self.bins > 0:
            nb = n_layers * self.bins
            for i, step in enumerate(steps):
                counts = host[i, width : width + nb].reshape(n_layers, self.bins)
                lo = host[i, width + nb : width + nb + n_layers]
                hi = host[i, width + nb + n_layers : width + nb + 2 * n_layers]
                histograms_out.extend(
                    Histogram(j, step, float(lo[j]), float(hi[j]), counts[j].astype(int).tolist())
                    for j in range(n_layers)
                )
        return LayerStatsBatch(
            steps=np.asarray(steps, dtype=np.int64),
            epochs=np.asarray([p.epoch for p in pending], dtype=np.int64),
            values=values,
            histograms=histograms_out,
        )

    def close(self) -> None:
        """Remove any hooks; pending steps are dropped (flush first to keep them)."""
        self._remove_hooks()
        self._pending.clear()
        self._open = None


__all__ = ["TelemetryCollector"]
