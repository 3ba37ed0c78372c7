"""Training-time augmentation of whole batches, on the batch's device, without a loop.

Applied in this order, each with its own draw per sample:

* ``flip`` (images only): horizontal flip with probability 1/2.
* ``shift`` (signals and images): integer translation in [-shift, shift] along the signal,
  or independently along both image axes. Vacated positions are filled with zeros, not
  wrapped around: a circular roll would move the end of a signal next to its start, a
  pattern the data never has.
* ``scale``: amplitude factor U(1-scale, 1+scale) for signals and tables; for images a
  zoom by that factor about the centre (bilinear, zeros outside).
* ``noise``: Gaussian noise of std ``noise``.

Tables accept only scale and noise. The input is never modified; a new tensor comes back.
"""

from __future__ import annotations

import torch
from torch.nn import functional

from service.specs import AugmentSpec
from worker.engine.data import Layout


def augment_batch(
    x: torch.Tensor,
    spec: AugmentSpec,
    *,
    layout: Layout,
    generator: torch.Generator | None = None,
) -> torch.Tensor:
    """An augmented copy of ``x`` (N, *input_shape); ``generator`` must be on x's device."""
    _check(spec, layout)
    out = x.clone()
    if spec.flip:
        out = _flip(out, generator)
    if spec.shift > 0:
        out = _shift(out, spec.shift, layout, generator)
    if spec.scale > 0:
        out = (
            _zoom(out, spec.scale, generator)
            if layout == "image"
            else _amplify(out, spec.scale, generator)
        )
    if spec.noise > 0:
        noise = torch.randn(out.shape, generator=generator, device=out.device, dtype=out.dtype)
        out = out + spec.noise * noise
    return out


def _check(spec: AugmentSpec, layout: Layout) -> None:
    if spec.flip and layout != "image":
        raise ValueError(f"flip needs 2-D images; this data's layout is {layout!r}")
    if spec.shift and layout == "table":
        raise ValueError("shift needs signals or images; this data is a table of features")


def _uniform(
    n: int, lo: float, hi: float, like: torch.Tensor, generator: torch.Generator | None
) -> torch.Tensor:
    u = torch.rand(n, generator=generator, device=like.device, dtype=like.dtype)
    return lo + (hi - lo) * u


def _per_sample(values: torch.Tensor, x: torch.Tensor) -> torch.Tensor:
    """(N,) -> (N, 1, ..., 1), broadcastable against x."""
    return values.view(-1, *([1] * (x.dim() - 1)))


def _flip(x: torch.Tensor, generator: torch.Generator | None) -> torch.Tensor:
    flip = torch.rand(x.shape[0], generator=generator, device=x.device) < 0.5
    return torch.where(_per_sample(flip, x), x.flip(-1), x)


def _offsets(n: int, shift: int, x: torch.Tensor, g: torch.Generator | None) -> torch.Tensor:
    return torch.randint(-shift, shift + 1, (n,), generator=g, device=x.device)


def _shift(
    x: torch.Tensor, shift: int, layout: Layout, generator: torch.Generator | None
) -> torch.Tensor:
    """Zero-filled integer translation: pad by ``shift``, then gather a shifted window."""
    n = x.shape[0]
    x = _shift_axis(x, _offsets(n, shift, x, generator), shift, dim=-1)
    if layout == "image":
        x = _shift_axis(x, _offsets(n, shift, x, generator), shift, dim=-2)
    return x


def _shift_axis(x: torch.Tensor, offsets: torch.Tensor, shift: int, *, dim: int) -> torch.Tensor:
    """out[..., i, ...] = x[..., i - offset, ...] along ``dim``, zero where out of range."""
    size = x.shape[dim]
    pad = [0, 0] * (-dim - 1) + [shift, shift]  # F.pad lists the last dimension first
    padded = functional.pad(x, pad)
    positions = torch.arange(size, device=x.device)
    # Index into the padded axis: position i reads i - offset, moved by the padding.
    idx = positions.view(1, size) - offsets.view(-1, 1) + shift  # (N, size)
    shape = [x.shape[0]] + [1] * (x.dim() - 1)
    shape[dim] = size
    idx = idx.view(shape).expand(x.shape)
    return padded.gather(dim, idx)


def _amplify(x: torch.Tensor, scale: float, generator: torch.Generator | None) -> torch.Tensor:
    factor = _uniform(x.shape[0], 1.0 - scale, 1.0 + scale, x, generator)
    return x * _per_sample(factor, x)


def _zoom(x: torch.Tensor, scale: float, generator: torch.Generator | None) -> torch.Tensor:
    """Zoom each image by U(1-scale, 1+scale) about its centre."""
    n = x.shape[0]
    zoom = _uniform(n, 1.0 - scale, 1.0 + scale, x, generator)
    # affine_grid maps output to input coordinates: sampling at 1/zoom magnifies by zoom.
    theta = torch.zeros(n, 2, 3, device=x.device, dtype=x.dtype)
    theta[:, 0, 0] = theta[:, 1, 1] = 1.0 / zoom
    grid = functional.affine_grid(theta, list(x.shape), align_corners=False)
    return functional.grid_sample(x, grid, padding_mode="zeros", align_corners=False)
