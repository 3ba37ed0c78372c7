"""DropConnect (Wan et al., 2013): drop *weights*, not activations.

Each training forward samples one Bernoulli(1-p) mask over the weight tensor and scales
the kept weights by 1/(1-p), so the expected effective weight equals the full weight and
evaluation needs no rescaling. The mask is shared by the whole batch: a mask per sample
(as in the paper) would need a weight copy per sample, too costly for what it teaches.
Only the weight is masked; the bias is kept whole.

``weight`` stays the module's ``nn.Parameter``, so optimizers, L1/L2 penalties and the
layer statistics see the real weight, and its gradient is non-zero only where the mask
kept an entry.
"""

from __future__ import annotations

from typing import Any

import torch
from torch import nn
from torch.nn import functional


def drop_weight(weight: torch.Tensor, p: float) -> torch.Tensor:
    """``weight`` with entries zeroed with probability ``p``, the rest scaled by 1/(1-p)."""
    keep = torch.rand_like(weight) >= p
    return weight * keep / (1.0 - p)


class _DropConnect:
    """Mixin state: the drop probability, checked once."""

    p: float

    def _set_p(self, p: float) -> None:
        if not 0.0 <= p < 1.0:
            raise ValueError(f"dropconnect probability must be in [0, 1), got {p}")
        self.p = p

    def _effective(self, weight: torch.Tensor, training: bool) -> torch.Tensor:
        if training and self.p > 0.0:
            return drop_weight(weight, self.p)
        return weight


class DropConnectLinear(_DropConnect, nn.Linear):
    def __init__(self, in_features: int, out_features: int, *, p: float, **kwargs: Any) -> None:
        super().__init__(in_features, out_features, **kwargs)
        self._set_p(p)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        return functional.linear(input, self._effective(self.weight, self.training), self.bias)

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"


class _DropConnectConv(_DropConnect, nn.modules.conv._ConvNd):
    """The forward shared by the 1-D and 2-D DropConnect convolutions."""

    def __init__(self, in_channels: int, out_channels: int, *, p: float, **kwargs: Any) -> None:
        super().__init__(in_channels, out_channels, **kwargs)
        self._set_p(p)

    def forward(self, input: torch.Tensor) -> torch.Tensor:
        out: torch.Tensor = self._conv_forward(
            input, self._effective(self.weight, self.training), self.bias
        )
        return out

    def extra_repr(self) -> str:
        return f"{super().extra_repr()}, p={self.p}"  # type: ignore[no-untyped-call]


class DropConnectConv1d(_DropConnectConv, nn.Conv1d):
    pass


class DropConnectConv2d(_DropConnectConv, nn.Conv2d):
    pass
