"""Datasets as whole tensors: the loop moves them to the device once and batches by index.

* ``mnist1d``: generated offline with the paper's exact arguments (never downloaded), the
  official 4000/1000 split, the test part used as the validation pool; already roughly
  zero-mean, unit-std, so kept as is. Layout "seq", shape (1, 40).
* ``digits``: scikit-learn's bundled 8x8 images scaled to [0, 1], split 80/20
  (stratified) with a *fixed* seed so that, like mnist1d, its pools are the same for
  every experiment. Layout "image", shape (1, 8, 8).
* Synthetic ``spirals`` (3 arms, see :func:`make_spirals`), ``moons``, ``circles``,
  ``blobs``: generated from the experiment seed, exactly train + val examples (default
  2000 + 1000), standardized with the training part's statistics. Layout "table".
* Uploaded arrays: x of shape (n, f) is a 1-D signal (1, f), (n, H, W) an image
  (1, H, W); y holds labels 0..C-1. A seeded shuffle picks the validation part (20 % by
  default) and the training subset from the rest. Values are kept as uploaded.

For the fixed pools, ``train_size`` / ``val_size`` draw seeded subsets: the same seed gives
identical data.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Literal

import numpy as np
import torch

from service.specs import DataSpec

Layout = Literal["table", "seq", "image"]

SYNTHETIC_TRAIN_SIZE = 2000
SYNTHETIC_VAL_SIZE = 1000
UPLOADED_VAL_FRACTION = 0.2
DIGITS_SPLIT_SEED = 0
DEFAULT_NOISE: dict[str, float] = {"spirals": 0.2, "moons": 0.2, "circles": 0.1, "blobs": 1.0}

Arrays = tuple[np.ndarray, np.ndarray]


@dataclass
class TensorData:
    x_train: torch.Tensor  # float32, (n, *input_shape)
    y_train: torch.Tensor  # int64, (n,)
    x_val: torch.Tensor
    y_val: torch.Tensor
    input_shape: tuple[int, ...]  # per sample: table (f,), seq (1, L), image (1, H, W)
    num_classes: int
    layout: Layout

    def to(self, device: torch.device) -> TensorData:
        return dataclasses.replace(
            self,
            x_train=self.x_train.to(device),
            y_train=self.y_train.to(device),
            x_val=self.x_val.to(device),
            y_val=self.y_val.to(device),
        )


def iterate_batches(
    n: int, batch_size: int, *, generator: torch.Generator, device: torch.device
) -> Iterator[torch.Tensor]:
    """Shuffled index batches covering 0..n-1 once; the last one may be partial."""
    perm = torch.randperm(n, generator=generator, device=generator.device).to(device)
    for start in range(0, n, batch_size):
        yield perm[start : start + batch_size]


def steps_per_epoch(n: int, batch_size: int) -> int:
    return math.ceil(n / batch_size)


def load_dataset(
    spec: DataSpec,
    *,
    seed: int,
    cache_dir: Path | None = None,
    arrays: Arrays | None = None,
) -> TensorData:
    """The train and validation tensors of ``spec`` on the CPU."""
    if spec.is_uploaded:
        if arrays is None:
            raise ValueError(f"uploaded dataset {spec.dataset!r} needs its arrays")
        return _uploaded(spec, arrays, seed)
    if arrays is not None:
        raise ValueError(f"{spec.dataset!r} is built in; arrays are for uploaded datasets")
    if spec.dataset == "mnist1d":
        (xt, yt), (xv, yv) = mnist1d_pools(cache_dir)
        train, val = _subset(spec, (xt, yt), (xv, yv), seed)
        return _tensors(train, val, layout="seq", num_classes=10)
    if spec.dataset == "digits":
        train, val = _subset(spec, *_digits_pools(), seed)
        return _tensors(train, val, layout="image", num_classes=10)
    return _synthetic(spec, seed)


# --- built-in pools ---------------------------------------------------------------------


def mnist1d_pools(cache_dir: Path | None) -> tuple[Arrays, Arrays]:
    """((x_train, y_train), (x_test, y_test)) of MNIST-1D, from the cache when present."""
    import mnist1d.data  # slow import (~2 s): only when this dataset is asked for

    args = mnist1d.data.get_dataset_args()
    key = {k: v for k, v in vars(args).items() if k != "url"}
    digest = hashlib.sha256(json.dumps(key, sort_keys=True).encode()).hexdigest()[:16]
    path = cache_dir / f"mnist1d-{digest}.npz" if cache_dir is not None else None
    if path is not None and path.exists():
        with np.load(path) as f:
            return (f["x"], f["y"]), (f["x_test"], f["y_test"])
    # make_dataset, not get_dataset: the latter downloads with no timeout.
    data = mnist1d.data.make_dataset(args)
    pools = (data["x"], data["y"]), (data["x_test"], data["y_test"])
    if path is not None:
        _save_atomically(path, pools)
    return pools


def _save_atomically(path: Path, pools: tuple[Arrays, Arrays]) -> None:
    # Two workers may generate at once; a rename never leaves a half-written cache file.
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f"{path.stem}.{os.getpid()}.tmp.npz")
    (x, y), (x_test, y_test) = pools
    np.savez(tmp, x=x, y=y, x_test=x_test, y_test=y_test)
    tmp.replace(path)


def _digits_pools() -> tuple[Arrays, Arrays]:
    from sklearn.datasets import load_digits
    from sklearn.model_selection import train_test_split

    digits = load_digits()
    x = digits.images.astype(np.float32) / 16.0
    y = digits.target.astype(np.int64)
    xt, xv, yt, yv = train_test_split(
        x, y, test_size=0.2, stratify=y, random_state=DIGITS_SPLIT_SEED
    )
    return (xt, yt), (xv, yv)


def _subset(spec: DataSpec, train: Arrays, val: Arrays, seed: int) -> tuple[Arrays, Arrays]:
    """Seeded subsets of fixed pools; all of a pool when its size is not given."""
    # One stream per pool: the validation subset of a seed does not change with
    # train_size, so runs that vary only the training size share a validation set.
    train_rng, val_rng = (np.random.default_rng(s) for s in np.random.SeedSequence(seed).spawn(2))
    return (
        _take(train, spec.train_size, train_rng, f"train_size {spec.train_size}", spec.dataset),
        _take(val, spec.val_size, val_rng, f"val_size {spec.val_size}", spec.dataset),
    )


def _take(
    pool: Arrays, size: int | None, rng: np.random.Generator, what: str, dataset: str
) -> Arrays:
    x, y = pool
    if size is None:
        return x, y
    if size > len(x):
        raise ValueError(f"{what} exceeds the {len(x)} examples of {dataset}")
    idx = rng.permutation(len(x))[:size]
    return x[idx], y[idx]


# --- synthetic --------------------------------------------------------------------------


def make_spirals(n: int, *, noise: float, rng: np.random.Generator, arms: int = 3) -> Arrays:
    """The CS231n spiral, with evenly spaced arms: class k lies on angle 4r + 2πk/arms.

    The radius r is uniform in [0, 1] and the angle gets Gaussian noise of std ``noise``
    radians, so points near the centre mix and the outer arms stay apart.
    """
    y = np.arange(n) % arms
    r = rng.uniform(0.0, 1.0, n)
    theta = 4.0 * r + 2.0 * np.pi * y / arms + noise * rng.standard_normal(n)
    x = np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1)
    order = rng.permutation(n)
    return x[order], y[order]


def _make_synthetic(name: str, n: int, noise: float, seed: int) -> Arrays:
    from sklearn import datasets

    if name == "spirals":
        return make_spirals(n, noise=noise, rng=np.random.default_rng(seed))
    if name == "moons":
        x, y = datasets.make_moons(n, noise=noise, random_state=seed)
    elif name == "circles":
        x, y = datasets.make_circles(n, noise=noise, factor=0.5, random_state=seed)
    elif name == "blobs":
        x, y = datasets.make_blobs(n, centers=3, n_features=2, cluster_std=noise, random_state=seed)
    else:
        raise ValueError(f"unknown synthetic dataset {name!r}")
    return x, y


def _synthetic(spec: DataSpec, seed: int) -> TensorData:
    n_train = spec.train_size or SYNTHETIC_TRAIN_SIZE
    n_val = spec.val_size or SYNTHETIC_VAL_SIZE
    noise = DEFAULT_NOISE[spec.dataset] if spec.noise is None else spec.noise
    x, y = _make_synthetic(spec.dataset, n_train + n_val, noise, seed)
    xt, xv = x[:n_train], x[n_train:]
    # Train statistics only: validation must not leak into the preprocessing.
    mean, std = xt.mean(axis=0), xt.std(axis=0)
    std = np.where(std > 0, std, 1.0)
    train = ((xt - mean) / std, y[:n_train])
    val = ((xv - mean) / std, y[n_train:])
    return _tensors(train, val, layout="table", num_classes=int(y.max()) + 1)


# --- uploaded ---------------------------------------------------------------------------


def _uploaded(spec: DataSpec, arrays: Arrays, seed: int) -> TensorData:
    x, y = _check_uploaded(*arrays)
    n = len(x)
    n_val = spec.val_size or max(1, round(UPLOADED_VAL_FRACTION * n))
    if n_val >= n:
        raise ValueError(f"val_size {n_val} leaves no training examples of the {n} uploaded")
    n_rest = n - n_val
    n_train = spec.train_size or n_rest
    if n_train > n_rest:
        raise ValueError(
            f"train_size {n_train} exceeds the {n_rest} uploaded examples left after "
            f"the {n_val} for validation"
        )
    order = np.random.default_rng(seed).permutation(n)
    val_idx, train_idx = order[:n_val], order[n_val : n_val + n_train]
    layout: Layout = "seq" if x.ndim == 2 else "image"
    # Classes from all labels: a small subset may miss the highest one.
    train, val = (x[train_idx], y[train_idx]), (x[val_idx], y[val_idx])
    return _tensors(train, val, layout=layout, num_classes=int(y.max()) + 1)


def _check_uploaded(x: np.ndarray, y: np.ndarray) -> Arrays:
    if x.ndim not in (2, 3):
        raise ValueError(f"x must have shape (n, features) or (n, H, W); got {x.shape}")
    if y.ndim != 1 or len(y) != len(x):
        raise ValueError(f"y must have shape ({len(x)},); got {y.shape}")
    if len(x) < 2:
        raise ValueError("an uploaded dataset needs at least 2 examples")
    if not np.issubdtype(y.dtype, np.integer) or y.min() < 0:
        raise ValueError("y must hold integer class labels 0..C-1")
    x = np.asarray(x, dtype=np.float32)
    if not np.isfinite(x).all():
        raise ValueError("x contains NaN or infinite values")
    return x, y.astype(np.int64)


# --- tensors ----------------------------------------------------------------------------


def _tensors(train: Arrays, val: Arrays, *, layout: Layout, num_classes: int) -> TensorData:
    """float32/int64 CPU tensors; signals and images get their channel axis here."""
    xt, xv = _with_channel(train[0], layout), _with_channel(val[0], layout)
    yt, yv = train[1].astype(np.int64), val[1].astype(np.int64)
    return TensorData(
        x_train=torch.from_numpy(xt),
        y_train=torch.from_numpy(yt),
        x_val=torch.from_numpy(xv),
        y_val=torch.from_numpy(yv),
        input_shape=tuple(xt.shape[1:]),
        num_classes=num_classes,
        layout=layout,
    )


def _with_channel(x: np.ndarray, layout: Layout) -> np.ndarray:
    x = np.ascontiguousarray(x, dtype=np.float32)
    return x if layout == "table" else x[:, None]
