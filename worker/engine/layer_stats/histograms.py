"""Per-layer gradient histograms, from the matrix path's signed gradients."""

from __future__ import annotations

import torch

from worker.engine.layer_stats.layout import FlatLayout


class GradientHistograms:
    """``bins`` equal-width bins over each layer's [min, max] gradient, on the device.

    histc needs its range as Python floats (a host sync per layer), so the bin of every
    element is computed on the device and counted with one ``scatter_add_``."""

    def __init__(self, layout: FlatLayout, *, bins: int, n_layers: int) -> None:
        if layout.valid is None:
            raise ValueError("histograms need a layout planned with need_valid=True")
        self.layout, self.bins, self.n_layers = layout, bins, n_layers
        self._scratch: torch.Tensor | None = None

    def counts(self, signed: torch.Tensor) -> torch.Tensor:
        """(L·bins counts, L lo, L hi) of the ``(rows, ROW)`` gradients, float64, flat."""
        layout, bins, n_layers, x = self.layout, self.bins, self.n_layers, signed
        assert layout.valid is not None
        if self._scratch is None:
            self._scratch = torch.empty_like(x)
        owner = layout.row_owner
        big = torch.finfo(torch.float32).max
        # Padding must not widen [lo, hi]: replace it by ±inf-like sentinels.
        padding = ~layout.valid
        self._scratch.copy_(x).masked_fill_(padding, big)
        lo = torch.full((n_layers,), big, device=x.device)
        lo.scatter_reduce_(0, owner, self._scratch.amin(dim=1), reduce="amin")
        self._scratch.copy_(x).masked_fill_(padding, -big)
        hi = torch.full((n_layers,), -big, device=x.device)
        hi.scatter_reduce_(0, owner, self._scratch.amax(dim=1), reduce="amax")
        width = hi - lo
        width = torch.where(width > 0, width, 1.0)  # constant gradient: all in bin 0
        t = self._scratch
        torch.sub(x, lo[owner].unsqueeze(1), out=t)
        t.mul_((bins / width)[owner].unsqueeze(1)).floor_().clamp_(0, bins - 1)
        t.add_((owner * bins).unsqueeze(1))
        # Padding and non-finite values go to one extra bin that is dropped.
        t.masked_fill_(padding | ~torch.isfinite(t), n_layers * bins)
        index = t.long().flatten()
        counts = torch.zeros(n_layers * bins + 1, dtype=torch.int64, device=x.device)
        counts.scatter_add_(0, index, torch.ones_like(index))
        return torch.cat((counts[:-1].double(), lo.double(), hi.double()))


__all__ = ["GradientHistograms"]
