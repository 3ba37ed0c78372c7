from __future__ import annotations

from typing import Any

import pytest
import torch

from service.specs import AugmentSpec
from worker.engine.augment import augment_batch
from worker.engine.data import Layout

SHAPES: dict[Layout, tuple[int, ...]] = {"table": (3,), "seq": (1, 20), "image": (1, 8, 8)}
ALL_ON: dict[Layout, dict[str, Any]] = {
    "table": {"scale": 0.3, "noise": 0.1},
    "seq": {"shift": 3, "scale": 0.3, "noise": 0.1},
    "image": {"shift": 2, "scale": 0.3, "noise": 0.1, "flip": True},
}


def gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def augment(x: torch.Tensor, layout: Layout, seed: int = 0, **kw: Any) -> torch.Tensor:
    return augment_batch(x, AugmentSpec(**kw), layout=layout, generator=gen(seed))


def batch(layout: Layout, n: int = 16) -> torch.Tensor:
    return torch.randn(n, *SHAPES[layout], generator=gen(99))


@pytest.mark.parametrize("layout", ["table", "seq", "image"])
def test_returns_a_new_tensor_and_leaves_the_input_alone(layout: Layout) -> None:
    x = batch(layout)
    before = x.clone()
    out = augment(x, layout, **ALL_ON[layout])
    assert out.shape == x.shape and out.dtype == x.dtype
    assert torch.equal(x, before)
    assert out.data_ptr() != x.data_ptr()
    assert not torch.equal(out, x)


@pytest.mark.parametrize("layout", ["table", "seq", "image"])
def test_zero_parameters_give_an_identical_copy(layout: Layout) -> None:
    x = batch(layout)
    out = augment(x, layout)
    assert torch.equal(out, x) and out.data_ptr() != x.data_ptr()


@pytest.mark.parametrize("layout", ["table", "seq", "image"])
def test_same_generator_seed_gives_the_same_output(layout: Layout) -> None:
    x = batch(layout)
    assert torch.equal(augment(x, layout, **ALL_ON[layout]), augment(x, layout, **ALL_ON[layout]))
    assert not torch.equal(
        augment(x, layout, seed=1, **ALL_ON[layout]), augment(x, layout, seed=2, **ALL_ON[layout])
    )


def test_without_generator_uses_the_global_rng() -> None:
    x = batch("seq")
    spec = AugmentSpec(shift=2, noise=0.5)
    torch.manual_seed(5)
    a = augment_batch(x, spec, layout="seq")
    torch.manual_seed(5)
    assert torch.equal(a, augment_batch(x, spec, layout="seq"))


@pytest.mark.parametrize(
    ("layout", "kw", "message"),
    [
        ("seq", {"flip": True}, "flip needs 2-D images"),
        ("table", {"flip": True}, "flip needs 2-D images"),
        ("table", {"shift": 1}, "shift needs signals or images"),
    ],
)
def test_unsupported_augmentations_are_refused(
    layout: Layout, kw: dict[str, Any], message: str
) -> None:
    with pytest.raises(ValueError, match=message):
        augment(batch(layout), layout, **kw)


# --- shift -------------------------------------------------------------------------------------


def test_shift_moves_a_spike_by_at_most_shift_and_uses_every_offset() -> None:
    n, length, at, shift = 400, 20, 10, 3
    x = torch.zeros(n, 1, length)
    x[:, 0, at] = 1.0
    out = augment(x, "seq", shift=shift)
    assert torch.equal(out.sum(-1), torch.ones(n, 1))  # moved whole, never blurred or lost
    offsets = out[:, 0].argmax(-1) - at
    assert set(offsets.tolist()) == set(range(-shift, shift + 1))


def test_shift_fills_with_zeros_instead_of_wrapping() -> None:
    n, length, shift = 200, 12, 4
    x = torch.arange(1, length + 1, dtype=torch.float32).repeat(n, 1, 1)
    out = augment(x, "seq", shift=shift)[:, 0]
    for row in out:  # fine in a test: the code under test has no loop
        k = int((row == 0).sum())
        assert k <= shift
        zeros = torch.zeros(k)
        right = torch.cat([zeros, torch.arange(1.0, length - k + 1)])
        left = torch.cat([torch.arange(k + 1.0, length + 1), zeros])
        assert torch.equal(row, right) or torch.equal(row, left)


def test_image_shift_moves_a_pixel_within_the_box() -> None:
    n, size, shift = 300, 9, 2
    x = torch.zeros(n, 1, size, size)
    x[:, 0, 4, 4] = 1.0
    out = augment(x, "image", shift=shift)
    assert torch.equal(out.sum((-1, -2)), torch.ones(n, 1))
    flat = out.view(n, -1).argmax(-1)
    rows, cols = flat // size - 4, flat % size - 4
    assert rows.abs().max() <= shift and cols.abs().max() <= shift
    assert set(rows.tolist()) == set(cols.tolist()) == set(range(-shift, shift + 1))
    assert not torch.equal(rows, cols)  # the two axes are drawn independently


# --- scale, noise, flip -------------------------------------------------------------------------


@pytest.mark.parametrize("layout", ["table", "seq"])
def test_scale_multiplies_each_sample_by_one_factor(layout: Layout) -> None:
    x = batch(layout, n=200).abs() + 0.1
    out = augment(x, layout, scale=0.25)
    ratio = (out / x).flatten(1)
    torch.testing.assert_close(ratio, ratio[:, :1].expand_as(ratio))
    assert ratio.min() >= 0.75 and ratio.max() <= 1.25
    assert ratio.std() > 0.05


def test_zoom_keeps_the_centre_and_changes_the_extent() -> None:
    n, size = 200, 8
    x = torch.zeros(n, 1, size, size)
    x[:, :, 2:6, 2:6] = 1.0  # a centred square
    out = augment(x, "image", scale=0.5)
    assert out.shape == x.shape
    torch.testing.assert_close(out[:, 0, 3:5, 3:5], torch.ones(n, 2, 2))
    mass = out.sum((-1, -2)).squeeze(1)
    assert mass.min() < 16 * 0.8 and mass.max() > 16 * 1.2


def test_noise_has_the_requested_std() -> None:
    x = torch.zeros(100, 1, 100)
    out = augment(x, "seq", noise=0.3)
    assert out.std().item() == pytest.approx(0.3, rel=0.03)
    assert abs(out.mean().item()) < 0.01


def test_flip_mirrors_about_half_the_images() -> None:
    n = 400
    x = torch.randn(n, 1, 5, 6, generator=gen(3))
    out = augment(x, "image", flip=True)
    same = (out == x).flatten(1).all(1)
    mirrored = (out == x.flip(-1)).flatten(1).all(1)
    assert torch.all(same ^ mirrored)
    assert 0.4 < mirrored.float().mean().item() < 0.6
