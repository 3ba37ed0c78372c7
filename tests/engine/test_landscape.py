"""Loss-landscape slices: exact restore, filter normalization, summaries, and the lesson."""

from __future__ import annotations

import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from torch import nn
from torch.nn import functional

from service.specs import ExperimentSpec
from worker.engine.landscape import (
    filter_normalized_direction,
    local_minima,
    loss_slice,
    roughness,
    sharpness,
)
from worker.engine.loop import train


def _model_and_batch() -> tuple[nn.Module, torch.Tensor, torch.Tensor]:
    torch.manual_seed(0)
    model = nn.Sequential(
        nn.Linear(6, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Dropout(0.5), nn.Linear(16, 3)
    )
    x, y = torch.randn(64, 6), torch.randint(0, 3, (64,))
    model.train()
    model(x)  # give batch norm non-trivial running statistics
    return model, x, y


def test_weights_buffers_and_train_mode_are_restored_bit_exactly() -> None:
    model, x, y = _model_and_batch()
    before = {k: v.clone() for k, v in model.state_dict().items()}
    loss_slice(model, x, y, points=7, span=2.0, dims=2, seed=3)
    assert model.training
    after = model.state_dict()
    for name, value in before.items():
        assert torch.equal(after[name], value), name


def test_loss_at_alpha_zero_is_the_models_eval_loss() -> None:
    model, x, y = _model_and_batch()
    model.eval()
    with torch.no_grad():
        expected = functional.cross_entropy(model(x), y).item()
    model.train()
    curve = loss_slice(model, x, y, points=5, span=1.0, seed=1)
    assert curve.alphas == [-1.0, -0.5, 0.0, 0.5, 1.0]
    assert isinstance(curve.losses[2], float)
    assert curve.losses[2] == pytest.approx(expected, rel=1e-6)
    grid = loss_slice(model, x, y, points=5, span=1.0, dims=2, seed=1)
    centre = grid.losses[2]
    assert isinstance(centre, list)
    assert centre[2] == pytest.approx(expected, rel=1e-6)


def test_filter_normalization_matches_each_rows_norm_and_zeroes_biases() -> None:
    conv, linear = nn.Conv1d(3, 8, 5), nn.Linear(10, 4)
    params = [conv.weight, conv.bias, linear.weight, linear.bias]
    direction = filter_normalized_direction(
        [p for p in params if p is not None], generator=torch.Generator().manual_seed(0)
    )
    for p, d in zip(params, direction, strict=True):
        assert p is not None and d.shape == p.shape
        if p.dim() < 2:
            assert torch.count_nonzero(d) == 0
            continue
        d_rows = d.flatten(1).norm(dim=1)
        p_rows = p.detach().flatten(1).norm(dim=1)
        torch.testing.assert_close(d_rows, p_rows)
        assert not torch.allclose(
            d / d_rows.view(-1, *[1] * (d.dim() - 1)), p / p_rows.view(-1, *[1] * (p.dim() - 1))
        )


def test_two_dimensional_slice_is_a_points_by_points_grid() -> None:
    model, x, y = _model_and_batch()
    grid = loss_slice(model, x, y, points=6, span=0.5, dims=2, seed=0)
    losses = np.asarray(grid.losses)
    assert grid.dims == 2 and losses.shape == (6, 6) and len(grid.alphas) == 6
    assert np.isfinite(losses).all() and grid.examples == 64
    assert math.isfinite(grid.roughness) and math.isfinite(grid.sharpness)


def test_same_seed_same_slice() -> None:
    model, x, y = _model_and_batch()
    first = loss_slice(model, x, y, points=5, seed=7)
    assert loss_slice(model, x, y, points=5, seed=7) == first
    assert loss_slice(model, x, y, points=5, seed=8).losses != first.losses


def test_summaries_of_a_parabola_and_of_a_wiggle() -> None:
    alphas = np.linspace(-1.0, 1.0, 21)
    bowl = 3.0 * alphas**2 + 1.0
    assert roughness(bowl) == pytest.approx(2 * (2 / 20) ** 2)  # any parabola: 0.02
    assert sharpness(bowl, alphas, 1.0) == pytest.approx(3.0 * 0.1**2)
    assert local_minima(bowl) == 1
    wiggle = bowl + 0.5 * np.cos(20 * alphas)
    assert roughness(wiggle) > 10 * roughness(bowl)
    assert local_minima(wiggle) > 1
    assert roughness(np.full(21, 2.3)) == 0.0


def test_non_finite_losses_are_left_out_of_the_summaries() -> None:
    alphas = np.linspace(-1.0, 1.0, 11)
    curve = alphas**2
    curve[0] = curve[-1] = np.nan
    assert math.isfinite(roughness(curve)) and math.isfinite(sharpness(curve, alphas, 1.0))
    assert local_minima(curve) == 1
    assert math.isnan(roughness(np.full(11, np.nan)))
    grid = np.add.outer(alphas**2, alphas**2)
    grid[0, :] = np.nan
    assert math.isfinite(roughness(grid)) and local_minima(grid) == 1


def test_a_diverging_point_is_stored_as_nan_not_raised() -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Linear(4, 2))
    with torch.no_grad():
        for p in model.parameters():
            if p.dim() == 2:
                p.fill_(1e30)  # any step along the direction overflows the logits
    x, y = torch.ones(8, 4), torch.zeros(8, dtype=torch.long)
    result = loss_slice(model, x, y, points=5, span=1.0)
    assert any(isinstance(v, float) and math.isnan(v) for v in result.losses)


def _tiny_spec(**telemetry: Any) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "data": {"dataset": "moons", "train_size": 200, "val_size": 50},
            "model": {"depth": 2, "width": 16},
            "train": {"epochs": 2, "batch_size": 50},
            "telemetry": {"every_n_steps": 0, **telemetry},
        }
    )


def test_train_reports_the_slice_only_when_asked() -> None:
    assert train(_tiny_spec()).landscape is None
    result = train(_tiny_spec(landscape={"points": 9, "span": 0.5, "max_examples": 64}))
    assert result.landscape is not None
    assert set(result.landscape) == {
        "dims",
        "alphas",
        "losses",
        "roughness",
        "sharpness",
        "local_minima",
        "examples",
    }
    assert result.landscape["examples"] == 64 and len(result.landscape["losses"]) == 9


def test_a_cancelled_run_gets_no_slice() -> None:
    spec = _tiny_spec(landscape={"points": 5})
    assert train(spec, should_stop=lambda: True).landscape is None


# --- the lesson: a deep plain net's slice is sharper and rougher than its residual twin's --


def _slice_of(cache_dir: Path, *, skip: bool, seed: int) -> dict[str, Any]:
    # Batch norm as in the paper's ResNet-56 vs -noshort: without it a default-init plain
    # ReLU net at this depth never leaves the ln(10) plateau and its slice is flat.
    spec = ExperimentSpec.model_validate(
        {
            "data": {"dataset": "mnist1d", "train_size": 1000},
            "model": {"depth": 24, "width": 64, "norm": "batch", "skip": skip},
            "train": {"epochs": 3, "seed": seed},
            "telemetry": {"every_n_steps": 0, "landscape": {"points": 21, "max_examples": 512}},
        }
    )
    landscape = train(spec, cache_dir=cache_dir).landscape
    assert landscape is not None
    return landscape


# Measured on seeds 0-19 (torch 2.13, numpy 2.4): sharpness 1.9-14 vs 0.001-0.004, at
# least 550x on every seed; roughness 0.024-0.035 vs 0.018-0.025 (a parabola: 0.020),
# plain rougher on every seed but only by 1.12-1.74x, so one seed's roughness ratio is
# noise (the former per-seed 1.15 bound failed seeds 1 and 10). The ratio of the medians
# over five seeds was >= 1.22 for each of the 15504 choices of 5 seeds among those 20.
LESSON_SEEDS = range(5)


def test_deep_plain_net_has_a_sharper_rougher_slice_than_its_residual_twin(
    mnist1d_cache: Path,
) -> None:
    plain = [_slice_of(mnist1d_cache, skip=False, seed=seed) for seed in LESSON_SEEDS]
    residual = [_slice_of(mnist1d_cache, skip=True, seed=seed) for seed in LESSON_SEEDS]
    for p, r in zip(plain, residual, strict=True):
        assert p["sharpness"] > 100 * max(r["sharpness"], 1e-6)
    rougher = [p["roughness"] > r["roughness"] for p, r in zip(plain, residual, strict=True)]
    assert sum(rougher) >= 4, rougher
    plain_roughness = float(np.median([p["roughness"] for p in plain]))
    residual_roughness = float(np.median([r["roughness"] for r in residual]))
    assert plain_roughness > 1.15 * residual_roughness
