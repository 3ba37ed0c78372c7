"""The lessons trainlab exists to teach, reproduced by train() on MNIST-1D in seconds.

Each test asserts what the recorded statistics must show (docs/DESIGN.md's lesson table),
on CPU and over several seeds, with margins wide enough to be seed-robust.
"""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.specs import ExperimentSpec
from worker.engine.events import STAT_NAMES, EpochEnd, Event, LayerStatsBatch, RunStarted
from worker.engine.loop import train

GRAD_NORM = STAT_NAMES.index("grad_norm")
SEEDS = (0, 1, 2)


def mnist1d_spec(**overrides: Any) -> ExperimentSpec:
    spec: dict[str, Any] = {
        "data": {"dataset": "mnist1d"},
        "model": {},
        "train": {},
        "telemetry": {"every_n_steps": 0},
    }
    for path, value in overrides.items():
        section, key = path.split("__")
        spec[section][key] = value
    return ExperimentSpec.model_validate(spec)


def run(spec: ExperimentSpec, cache_dir: Path) -> list[Event]:
    events: list[Event] = []
    train(spec, on_event=events.append, cache_dir=cache_dir)
    return events


def first_to_last_hidden_ratio(events: list[Event]) -> float:
    """Median over telemetry steps of grad_norm(last hidden linear) / grad_norm(first)."""
    started = events[0]
    assert isinstance(started, RunStarted)
    linear = [layer.index for layer in started.layers if layer.kind == "linear"]
    values = np.concatenate([e.values for e in events if isinstance(e, LayerStatsBatch)])
    grad = values[:, :, GRAD_NORM]
    return float(np.median(grad[:, linear[-1]] / grad[:, linear[0]]))


def gradient_ratio(cache_dir: Path, seed: int, **model: Any) -> float:
    spec = mnist1d_spec(
        data__train_size=512,
        **{f"model__{k}": v for k, v in model.items()},
        model__depth=10,
        model__width=64,
        train__epochs=1,
        train__seed=seed,
        telemetry__every_n_steps=1,
    )
    return first_to_last_hidden_ratio(run(spec, cache_dir))


@pytest.mark.parametrize("seed", SEEDS)
def test_deep_sigmoid_mlp_gradient_vanishes_towards_the_input(
    mnist1d_cache: Path, seed: int
) -> None:
    ratio = gradient_ratio(mnist1d_cache, seed, activation="sigmoid")
    assert ratio > 100.0  # in practice ~1e6 at depth 10


@pytest.mark.parametrize("seed", SEEDS)
def test_relu_with_batch_norm_closes_the_gradient_gap(mnist1d_cache: Path, seed: int) -> None:
    sigmoid = gradient_ratio(mnist1d_cache, seed, activation="sigmoid")
    fixed = gradient_ratio(mnist1d_cache, seed, activation="relu", norm="batch", init="kaiming")
    # Batch norm gradients grow slightly towards the input (~4x at depth 10, ~25x at 20).
    assert 0.1 < fixed < 10.0
    assert sigmoid / max(fixed, 1 / fixed) > 1e4


@pytest.mark.parametrize("seed", SEEDS)
def test_relu_with_he_init_keeps_gradients_level(mnist1d_cache: Path, seed: int) -> None:
    ratio = gradient_ratio(mnist1d_cache, seed, activation="relu", init="kaiming")
    assert 0.2 < ratio < 5.0


# --- overfitting and its remedies ---------------------------------------------------------

OVERFIT: dict[str, Any] = {
    "data__train_size": 200,
    "model__depth": 3,
    "model__width": 256,
    "train__epochs": 40,
    "train__batch_size": 32,
    "train__optimizer": "adam",
    "train__lr": 1e-3,
}
REMEDIES: dict[str, dict[str, Any]] = {
    "smaller model": {"model__depth": 1, "model__width": 32},
    "augmentation": {"data__augment": {"shift": 3, "noise": 0.3}},
    "dropout": {"model__dropout": 0.5},
    "dropconnect": {"model__dropconnect": 0.5},
    "l2": {"train__l2": 0.01},
}


@cache
def loss_gaps(cache_dir: Path, remedy: str | None) -> np.ndarray:
    """(seeds, epochs) of val_loss - train_loss for the big model, with one remedy."""
    rows = []
    for seed in SEEDS:
        overrides = {**OVERFIT, **(REMEDIES[remedy] if remedy else {}), "train__seed": seed}
        spec = mnist1d_spec(**overrides)
        ends = [e for e in run(spec, cache_dir) if isinstance(e, EpochEnd)]
        rows.append([e.val_loss - e.train_loss for e in ends])
    return np.asarray(rows)


@pytest.mark.slow
def test_big_model_on_small_train_set_overfits_more_and_more(mnist1d_cache: Path) -> None:
    gaps = loss_gaps(mnist1d_cache, None)
    assert (gaps[:, -1] > gaps[:, 4] + 1.0).all()  # grows across epochs, every seed
    assert gaps[:, -1].mean() > 2.0


@pytest.mark.slow
@pytest.mark.parametrize("remedy", list(REMEDIES))
def test_each_remedy_shrinks_the_overfitting_gap(mnist1d_cache: Path, remedy: str) -> None:
    big = loss_gaps(mnist1d_cache, None)[:, -1].mean()
    remedied = loss_gaps(mnist1d_cache, remedy)[:, -1].mean()
    assert remedied < 0.8 * big, f"{remedy}: gap {remedied:.2f} vs {big:.2f} without"


# --- degradation --------------------------------------------------------------------------


@pytest.mark.slow
@pytest.mark.parametrize("seed", SEEDS[:2])
def test_deep_plain_net_trains_worse_than_its_residual_twin(mnist1d_cache: Path, seed: int) -> None:
    def final_train_loss(skip: bool) -> float:
        spec = mnist1d_spec(
            data__train_size=1000,
            model__depth=24,
            model__width=64,
            model__skip=skip,
            train__epochs=3,
            train__seed=seed,
        )
        ends = [e for e in run(spec, mnist1d_cache) if isinstance(e, EpochEnd)]
        return ends[-1].train_loss

    plain, residual = final_train_loss(False), final_train_loss(True)
    assert residual < plain - 0.3  # plain is stuck near ln(10) = 2.30
