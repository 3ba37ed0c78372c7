from __future__ import annotations

from pathlib import Path
from typing import Any

import mnist1d.data
import numpy as np
import pytest
import torch

from service.specs import BUILTIN_DATASETS, FIXED_SPLITS, SYNTHETIC_DATASETS, DataSpec
from worker.engine.data import (
    TensorData,
    iterate_batches,
    load_dataset,
    make_spirals,
    mnist1d_pools,
    steps_per_epoch,
)

UPLOADED = "ds_0123456789ab"


def load(dataset: str, seed: int = 0, **kw: Any) -> TensorData:
    return load_dataset(DataSpec(dataset=dataset, **kw), seed=seed)


def same(a: TensorData, b: TensorData) -> bool:
    return all(
        torch.equal(getattr(a, f), getattr(b, f)) for f in ("x_train", "y_train", "x_val", "y_val")
    )


def check_tensors(data: TensorData) -> None:
    for x, y in ((data.x_train, data.y_train), (data.x_val, data.y_val)):
        assert x.dtype == torch.float32 and y.dtype == torch.int64
        assert x.device.type == "cpu" and y.device.type == "cpu"
        assert x.shape == (len(y), *data.input_shape)
        assert int(y.min()) >= 0 and int(y.max()) < data.num_classes


# --- mnist1d ------------------------------------------------------------------------------


def test_mnist1d_is_the_official_split(mnist1d_cache: Path) -> None:
    data = load_dataset(DataSpec(dataset="mnist1d"), seed=0, cache_dir=mnist1d_cache)
    check_tensors(data)
    assert data.layout == "seq" and data.input_shape == (1, 40) and data.num_classes == 10
    assert len(data.y_train) == 4000 and len(data.y_val) == 1000
    assert set(data.y_train.tolist()) == set(range(10))
    # Already about zero-mean and unit-std: kept as generated.
    assert abs(data.x_train.mean().item()) < 0.05
    assert data.x_train.std().item() == pytest.approx(1.0, abs=0.05)


def test_mnist1d_cache_is_written_and_reused(
    mnist1d_cache: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    (cached,) = mnist1d_cache.glob("mnist1d-*.npz")
    assert cached.stat().st_size > 0

    def no_generation(args: object) -> None:
        raise AssertionError("regenerated despite the cache")

    monkeypatch.setattr(mnist1d.data, "make_dataset", no_generation)
    (x, y), (x_test, y_test) = mnist1d_pools(mnist1d_cache)
    assert x.shape == (4000, 40) and x_test.shape == (1000, 40)
    assert y.shape == (4000,) and y_test.shape == (1000,)


def test_mnist1d_subsets_are_seeded(mnist1d_cache: Path) -> None:
    def subset(seed: int, train_size: int = 100) -> TensorData:
        spec = DataSpec(dataset="mnist1d", train_size=train_size, val_size=50)
        return load_dataset(spec, seed=seed, cache_dir=mnist1d_cache)

    a = subset(1)
    assert len(a.y_train) == 100 and len(a.y_val) == 50
    assert same(a, subset(1))
    assert not torch.equal(a.x_train, subset(2).x_train)
    # The validation subset does not depend on train_size.
    assert torch.equal(a.x_val, subset(1, train_size=300).x_val)


def test_mnist1d_oversize_request_is_refused(mnist1d_cache: Path) -> None:
    spec = DataSpec(dataset="mnist1d", train_size=5000)
    with pytest.raises(ValueError, match="train_size 5000 exceeds the 4000 examples of mnist1d"):
        load_dataset(spec, seed=0, cache_dir=mnist1d_cache)


# --- digits ---------------------------------------------------------------------------------


def test_digits_are_unit_range_images_split_80_20() -> None:
    data = load("digits")
    check_tensors(data)
    assert data.layout == "image" and data.input_shape == (1, 8, 8) and data.num_classes == 10
    assert (len(data.y_train), len(data.y_val)) == (1437, 360)
    assert data.x_train.min().item() == 0.0 and data.x_train.max().item() == 1.0
    # The pools are fixed: only the subsets depend on the seed.
    assert same(data, load("digits", seed=5))


def test_digits_oversize_val_is_refused() -> None:
    with pytest.raises(ValueError, match="val_size 361 exceeds the 360 examples of digits"):
        load("digits", val_size=361)


# --- synthetic ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("dataset", "classes"), [("spirals", 3), ("moons", 2), ("circles", 2), ("blobs", 3)]
)
def test_synthetic_tables_are_standardized_and_seeded(dataset: str, classes: int) -> None:
    data = load(dataset, seed=3)
    check_tensors(data)
    assert data.layout == "table" and data.input_shape == (2,) and data.num_classes == classes
    assert (len(data.y_train), len(data.y_val)) == (2000, 1000)
    torch.testing.assert_close(data.x_train.mean(0), torch.zeros(2), atol=1e-5, rtol=0)
    torch.testing.assert_close(data.x_train.std(0), torch.ones(2), atol=1e-3, rtol=0)
    assert same(data, load(dataset, seed=3))
    assert not torch.equal(data.x_train, load(dataset, seed=4).x_train)


def test_synthetic_sizes_and_noise_are_honoured() -> None:
    data = load("moons", train_size=30, val_size=7)
    assert (len(data.y_train), len(data.y_val)) == (30, 7)
    assert not torch.equal(load("moons", noise=0.0).x_train, load("moons").x_train)


def test_spirals_have_balanced_classes_on_three_arms() -> None:
    x, y = make_spirals(3000, noise=0.0, rng=np.random.default_rng(0))
    assert np.bincount(y).tolist() == [1000, 1000, 1000]
    r = np.hypot(x[:, 0], x[:, 1])
    assert r.max() <= 1.0
    # Without noise each point lies exactly on its arm: angle 4r + 2πk/3 (mod 2π).
    theta = np.arctan2(x[:, 0], x[:, 1])
    offset = np.angle(np.exp(1j * (theta - 4 * r - 2 * np.pi * y / 3)))
    assert np.abs(offset).max() < 1e-9


# --- uploaded -------------------------------------------------------------------------------


def uploaded(x_shape: tuple[int, ...], seed: int = 0, classes: int = 4, **kw: Any) -> TensorData:
    rng = np.random.default_rng(123)
    x = rng.standard_normal(x_shape)
    y = np.arange(x_shape[0]) % classes
    return load_dataset(DataSpec(dataset=UPLOADED, **kw), seed=seed, arrays=(x, y))


def test_uploaded_vectors_are_signals_with_a_fifth_for_validation() -> None:
    data = uploaded((50, 12))
    check_tensors(data)
    assert data.layout == "seq" and data.input_shape == (1, 12) and data.num_classes == 4
    assert (len(data.y_train), len(data.y_val)) == (40, 10)


def test_uploaded_images_keep_their_values() -> None:
    data = uploaded((20, 5, 6))
    check_tensors(data)
    assert data.layout == "image" and data.input_shape == (1, 5, 6)
    rng = np.random.default_rng(123)
    x = torch.from_numpy(rng.standard_normal((20, 5, 6)).astype(np.float32))
    kept = torch.cat([data.x_train, data.x_val]).squeeze(1)
    assert sorted(kept.sum((1, 2)).tolist()) == pytest.approx(sorted(x.sum((1, 2)).tolist()))


def test_uploaded_split_is_seeded_and_sized() -> None:
    data = uploaded((50, 3), seed=1, train_size=15, val_size=5)
    assert (len(data.y_train), len(data.y_val)) == (15, 5)
    assert same(data, uploaded((50, 3), seed=1, train_size=15, val_size=5))
    assert not torch.equal(data.x_train, uploaded((50, 3), seed=2, train_size=15).x_train)
    # Classes come from every label, not only those a small subset happens to draw.
    assert uploaded((50, 3), classes=7, train_size=2, val_size=1).num_classes == 7


@pytest.mark.parametrize(
    ("kw", "message"),
    [
        ({"train_size": 41}, "train_size 41 exceeds the 40 uploaded examples"),
        ({"val_size": 50}, "leaves no training examples"),
    ],
)
def test_uploaded_oversize_request_is_refused(kw: dict[str, int], message: str) -> None:
    with pytest.raises(ValueError, match=message):
        uploaded((50, 3), **kw)


@pytest.mark.parametrize(
    ("x", "y", "message"),
    [
        (np.zeros((4,)), np.zeros(4, dtype=int), "x must have shape"),
        (np.zeros((4, 2, 2, 2)), np.zeros(4, dtype=int), "x must have shape"),
        (np.zeros((4, 2)), np.zeros(3, dtype=int), "y must have shape"),
        (np.zeros((4, 2)), np.array([0.5, 1, 0, 1]), "integer class labels"),
        (np.zeros((4, 2)), np.array([-1, 1, 0, 1]), "integer class labels"),
        (np.full((4, 2), np.nan), np.zeros(4, dtype=int), "NaN"),
    ],
)
def test_bad_uploaded_arrays_are_refused(x: np.ndarray, y: np.ndarray, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        load_dataset(DataSpec(dataset=UPLOADED), seed=0, arrays=(x, y))


def test_arrays_go_with_uploaded_datasets_only() -> None:
    with pytest.raises(ValueError, match="needs its arrays"):
        load_dataset(DataSpec(dataset=UPLOADED), seed=0)
    with pytest.raises(ValueError, match="built in"):
        load_dataset(DataSpec(dataset="moons"), seed=0, arrays=(np.zeros((4, 2)), np.zeros(4)))


# --- tensors and batches ----------------------------------------------------------------------


def test_to_moves_every_tensor() -> None:
    data = load("blobs", train_size=10, val_size=5)
    moved = data.to(torch.device("meta"))
    for f in ("x_train", "y_train", "x_val", "y_val"):
        assert getattr(moved, f).device.type == "meta"
        assert getattr(data, f).device.type == "cpu"
    assert (moved.input_shape, moved.num_classes, moved.layout) == (
        data.input_shape,
        data.num_classes,
        data.layout,
    )


def test_batches_cover_each_index_once_keeping_the_partial_one() -> None:
    g = torch.Generator().manual_seed(0)
    batches = list(iterate_batches(10, 4, generator=g, device=torch.device("cpu")))
    assert [len(b) for b in batches] == [4, 4, 2] and len(batches) == steps_per_epoch(10, 4)
    assert sorted(torch.cat(batches).tolist()) == list(range(10))
    assert batches[0].dtype == torch.int64
    assert torch.cat(batches).tolist() != list(range(10))


def test_batches_follow_the_generator() -> None:
    def order(seed: int) -> list[int]:
        g = torch.Generator().manual_seed(seed)
        return torch.cat(
            list(iterate_batches(50, 8, generator=g, device=torch.device("cpu")))
        ).tolist()

    assert order(1) == order(1)
    assert order(1) != order(2)


@pytest.mark.parametrize(("n", "batch", "steps"), [(10, 4, 3), (8, 4, 2), (1, 128, 1), (0, 4, 0)])
def test_steps_per_epoch_rounds_up(n: int, batch: int, steps: int) -> None:
    assert steps_per_epoch(n, batch) == steps


# --- the spec's table of split sizes ----------------------------------------------------------


@pytest.mark.parametrize("dataset", sorted(FIXED_SPLITS))
def test_fixed_splits_have_the_sizes_that_specs_checks(dataset: str, mnist1d_cache: Path) -> None:
    data = load_dataset(DataSpec(dataset=dataset), seed=0, cache_dir=mnist1d_cache)
    assert (len(data.y_train), len(data.y_val)) == FIXED_SPLITS[dataset]


def test_every_built_in_dataset_has_a_fixed_split_or_is_generated_at_any_size() -> None:
    assert set(BUILTIN_DATASETS) - set(FIXED_SPLITS) == SYNTHETIC_DATASETS
