"""The diagnosis rules (service.diagnosis.rules) on synthetic statistics."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from typing import Any

import numpy as np
import pytest

from service.diagnosis import rules as d

STEPS = 8


def mlp(depth: int = 5, activation: str | None = "sigmoid", classes: int = 10) -> list[d.LayerInfo]:
    hidden = [
        d.LayerInfo(i, f"hidden.{i}.linear", "linear", activation, (16, 16)) for i in range(depth)
    ]
    return [*hidden, d.LayerInfo(depth, "output", "output", None, (classes, 16))]


def stats_of(
    layers: Sequence[d.LayerInfo], *, first_nonfinite_step: int | None = None, **columns: Any
) -> d.LayerStats:
    """``columns[name]``: a (steps, layers) array, or one value per layer for every step."""
    values = {}
    for name, column in columns.items():
        array = np.asarray(column, dtype=np.float64)
        values[name] = np.tile(array, (STEPS, 1)) if array.ndim == 1 else array
    return d.LayerStats(
        steps=np.arange(10, 10 * (STEPS + 1), 10, dtype=np.int64),
        layer_indexes=tuple(layer.index for layer in layers),
        values=values,
        first_nonfinite_step=first_nonfinite_step,
    )


def geometric_norms(layers: Sequence[d.LayerInfo], ratio: float, last: float = 0.1) -> list[float]:
    """Norms from ``ratio * last`` at layer 0 to ``last`` at the last hidden layer."""
    depth = len(layers) - 1
    hidden = [last * ratio ** ((depth - 1 - i) / (depth - 1)) for i in range(depth)]
    return [*hidden, last]


def codes(findings: Sequence[d.Finding]) -> list[str]:
    return [f.code for f in findings]


# --- vanishing_gradient ----------------------------------------------------------------


@pytest.mark.parametrize(
    "ratio,severity", [(6e-17, "critical"), (3e-7, "critical"), (1e-4, "warning")]
)
def test_vanishing_gradient_flags_small_first_to_last_ratio(ratio: float, severity: str) -> None:
    layers = mlp()
    finding = d.vanishing_gradient(
        layers=layers, stats=stats_of(layers, grad_norm=geometric_norms(layers, ratio))
    )
    assert finding is not None
    assert finding.severity == severity
    assert 0 in finding.layers and 4 not in finding.layers
    assert finding.evidence["ratio"] == pytest.approx(ratio, rel=1e-3)
    assert finding.evidence["first_layer"] == 0 and finding.evidence["last_layer"] == 4
    assert finding.evidence["depth"] == 5
    assert "relu" in finding.remedy and "kaiming" in finding.remedy


@pytest.mark.parametrize("ratio", [0.5, 1e-2, 16.0, 100.0])
def test_healthy_ratios_are_neither_vanishing_nor_exploding(ratio: float) -> None:
    """ReLU + He init (~0.5) and batch norm (~16, growing towards the input) are fine."""
    layers = mlp(activation="relu")
    stats = stats_of(layers, grad_norm=geometric_norms(layers, ratio))
    assert d.vanishing_gradient(layers=layers, stats=stats) is None
    assert d.exploding_gradient(layers=layers, stats=stats) is None


def test_vanishing_remedy_follows_activation_and_spec() -> None:
    layers = mlp(activation="relu")
    stats = stats_of(layers, grad_norm=geometric_norms(layers, 3e-7))
    default = d.diagnose(
        layers=layers,
        stats=stats,
        metrics=[],
        job_status="running",
        result=None,
        spec={"model": {"init": "default", "norm": "none", "skip": False}},
    )[0]
    assert default.remedy == "use init kaiming (He init for ReLU-like units), or norm batch"
    tried = d.diagnose(
        layers=layers,
        stats=stats,
        metrics=[],
        job_status="running",
        result=None,
        spec={"model": {"init": "kaiming", "norm": "batch", "skip": False}},
    )[0]
    assert "kaiming" not in tried.remedy and "norm batch" not in tried.remedy
    deep = mlp(depth=20)
    deep_finding = d.vanishing_gradient(
        layers=deep, stats=stats_of(deep, grad_norm=geometric_norms(deep, 1e-10))
    )
    assert deep_finding is not None and "skip true" in deep_finding.remedy


def test_vanishing_skips_steps_with_nan_or_zero_last_norm() -> None:
    layers = mlp()
    norms = np.tile(geometric_norms(layers, 1e-8), (STEPS, 1))
    norms[:3, 0] = np.nan  # a NaN first-layer norm (SQLite: a NULL)
    norms[3, 4] = 0.0  # a last-layer norm of 0 says nothing about the ratio
    finding = d.vanishing_gradient(layers=layers, stats=stats_of(layers, grad_norm=norms))
    assert finding is not None
    assert finding.evidence["steps"] == STEPS - 4
    assert finding.evidence["ratio"] == pytest.approx(1e-8, rel=1e-3)


def test_all_nan_norms_give_no_gradient_finding() -> None:
    layers = mlp()
    stats = stats_of(layers, grad_norm=[math.nan] * len(layers))
    assert d.vanishing_gradient(layers=layers, stats=stats) is None
    assert d.exploding_gradient(layers=layers, stats=stats) is None


def test_first_layer_norm_of_zero_is_complete_vanishing() -> None:
    layers = mlp()
    finding = d.vanishing_gradient(
        layers=layers, stats=stats_of(layers, grad_norm=[0.0, 1e-3, 1e-2, 0.05, 0.1, 0.2])
    )
    assert finding is not None
    assert finding.severity == "critical"
    assert finding.evidence["ratio"] == 0.0


def test_output_layer_counts_when_there_is_one_hidden_layer() -> None:
    layers = mlp(depth=1)
    finding = d.vanishing_gradient(layers=layers, stats=stats_of(layers, grad_norm=[1e-9, 1.0]))
    assert finding is not None
    assert finding.evidence["last_layer"] == 1


def test_projection_and_norm_layers_are_not_first_or_last() -> None:
    layers = [
        d.LayerInfo(0, "proj", "projection", None, (16, 40)),
        d.LayerInfo(1, "l1", "linear", "relu", (16, 40)),
        d.LayerInfo(2, "bn1", "batchnorm", None, (16,)),
        d.LayerInfo(3, "l2", "linear", "relu", (16, 16)),
        d.LayerInfo(4, "output", "output", None, (10, 16)),
    ]
    stats = stats_of(layers, grad_norm=[1e-12, 0.5, 1e-12, 1.0, 1e-12])
    assert d.vanishing_gradient(layers=layers, stats=stats) is None


# --- exploding_gradient ----------------------------------------------------------------


def test_exploding_ratio_towards_the_input() -> None:
    layers = mlp(activation="relu")
    finding = d.exploding_gradient(
        layers=layers, stats=stats_of(layers, grad_norm=geometric_norms(layers, 1e4, last=0.01))
    )
    assert finding is not None
    assert finding.severity == "warning"
    assert finding.evidence["ratio"] == pytest.approx(1e4, rel=1e-3)
    assert 0 in finding.layers
    assert "grad_clip" in finding.remedy and "train.lr" in finding.remedy


def test_exploding_large_norm_is_critical_far_above_threshold() -> None:
    layers = mlp(activation="relu")
    big = d.exploding_gradient(layers=layers, stats=stats_of(layers, grad_norm=[1.0] * 5 + [5e3]))
    assert big is not None and big.severity == "warning" and big.layers == [5]
    huge = d.exploding_gradient(layers=layers, stats=stats_of(layers, grad_norm=[2e6] * 6))
    assert huge is not None and huge.severity == "critical"
    assert huge.evidence["max_grad_norm"] == 2e6


def test_high_update_ratio_means_learning_rate_too_high() -> None:
    layers = mlp(activation="relu")
    stats = stats_of(layers, grad_norm=[0.1] * 6, update_ratio=[0.01] * 5 + [0.5])
    finding = d.diagnose(
        layers=layers,
        stats=stats,
        metrics=[],
        job_status="running",
        result=None,
        spec={"train": {"lr": 0.05, "grad_clip": None}, "model": {"norm": "batch"}},
    )
    # Not exploding_gradient: the gradients are fine, the steps are too large.
    assert codes(finding) == ["lr_too_high"]
    assert finding[0].layers == [5]
    assert finding[0].evidence == {"max_update_ratio": 0.5}
    assert "learning rate" in finding[0].summary
    assert finding[0].remedy == "lower train.lr (e.g. 0.005) or set train.grad_clip 1.0"
    assert finding[0].suggested_spec_patch == {"train.lr": 0.005, "train.grad_clip": 1.0}


def test_update_ratio_of_norm_layers_is_ignored() -> None:
    layers = [
        d.LayerInfo(0, "l0", "linear", "relu", (16, 16)),
        d.LayerInfo(1, "bn", "batchnorm", None, (16,)),
        d.LayerInfo(2, "output", "output", None, (10, 16)),
    ]
    stats = stats_of(layers, grad_norm=[0.1, 0.1, 0.1], update_ratio=[0.001, 5.0, 0.001])
    assert d.exploding_gradient(layers=layers, stats=stats) is None


# --- dead_units and saturation ---------------------------------------------------------


def test_sparse_relu_outputs_are_not_dead_units() -> None:
    """Half the outputs of a ReLU layer are zero by construction, and a healthy 1-D CNN's
    can be 90% zero (sparsity): only units zero for the whole batch are dead."""
    layers = mlp(activation="relu")
    stats = stats_of(
        layers,
        act_saturation=[0.5, 0.6, 0.9, 0.95, 0.65, math.nan],
        act_dead_frac=[0.0, 0.05, 0.1, 0.2, 0.0, math.nan],
    )
    assert d.dead_units(layers=layers, stats=stats) is None


def test_dead_relu_layers_are_listed() -> None:
    layers = mlp(activation="relu")
    stats = stats_of(layers, act_dead_frac=[0.1, 0.6, 0.8, 0.2, 0.2, math.nan])
    finding = d.dead_units(layers=layers, stats=stats)
    assert finding is not None
    assert finding.severity == "warning"
    assert finding.layers == [1, 2]
    assert finding.evidence["worst_layer"] == 2
    assert finding.evidence["max_dead_fraction"] == 0.8
    assert "leaky_relu" in finding.remedy
    assert finding.suggested_spec_patch["model.activation"] == "leaky_relu"
    stats = stats_of(layers, act_dead_frac=[0.99] * 5 + [math.nan])
    critical = d.dead_units(layers=layers, stats=stats)
    assert critical is not None and critical.severity == "critical"


def test_dead_units_use_the_median_over_the_window() -> None:
    layers = mlp(depth=1, activation="relu")
    column = np.full((STEPS, 2), np.nan)
    column[:, 0] = 0.1
    column[:2, 0] = 1.0  # two bad steps out of eight
    assert d.dead_units(layers=layers, stats=stats_of(layers, act_dead_frac=column)) is None


def test_saturation_only_for_sigmoid_and_tanh() -> None:
    layers = mlp(activation="tanh")
    stats = stats_of(layers, act_saturation=[0.1, 0.7, 0.95, 0.1, 0.1, math.nan])
    finding = d.saturation(layers=layers, stats=stats)
    assert finding is not None
    assert finding.layers == [1, 2] and finding.severity == "critical"
    assert "norm batch" in finding.remedy
    relu = mlp(activation="relu")
    assert d.saturation(layers=relu, stats=stats_of(relu, act_saturation=[0.7] * 6)) is None
    assert d.dead_units(layers=layers, stats=stats) is None


# --- overfitting -----------------------------------------------------------------------


def epochs(train: Sequence[float | None], val: Sequence[float | None]) -> list[d.EpochRow]:
    return [
        d.EpochRow(epoch=i + 1, train_loss=t, train_acc=0.9, val_loss=v, val_acc=0.5)
        for i, (t, v) in enumerate(zip(train, val, strict=True))
    ]


def test_overfitting_when_gap_grows_after_best_epoch() -> None:
    metrics = epochs([2.0, 1.0, 0.3, 0.1, 0.05], [2.1, 1.5, 1.4, 2.5, 4.4])
    finding = d.overfitting(metrics=metrics)
    assert finding is not None
    assert finding.severity == "critical"
    assert finding.evidence["gap"] == pytest.approx(4.35)
    assert finding.evidence["best_epoch"] == 3
    assert finding.evidence["min_val_loss"] == 1.4
    assert finding.evidence["final_val_loss"] == 4.4
    assert finding.evidence["acc_gap"] == pytest.approx(0.4)
    for word in ("smaller model", "augment", "dropout", "l2", "early_stopping_patience"):
        assert word in finding.remedy


def test_moderate_growing_gap_is_a_warning() -> None:
    metrics = [
        d.EpochRow(epoch=m.epoch, train_loss=m.train_loss, val_loss=m.val_loss)
        for m in epochs([1.0, 0.5, 0.3], [1.1, 1.0, 1.2])
    ]  # no accuracies: the loss gap alone decides
    finding = d.overfitting(metrics=metrics)
    assert finding is not None and finding.severity == "warning"


def accuracy_epochs(rows: Sequence[tuple[float, float, float, float]]) -> list[d.EpochRow]:
    """(train_loss, train_acc, val_loss, val_acc) per epoch."""
    return [
        d.EpochRow(epoch=i + 1, train_loss=tl, train_acc=ta, val_loss=vl, val_acc=va)
        for i, (tl, ta, vl, va) in enumerate(rows)
    ]


def test_moderate_overfit_with_flat_validation_loss_is_found() -> None:
    """The issue's case: train 100%, validation 89%, validation loss flat ~0.34 against a
    train loss of 0.003. The loss gap is small and does not grow; the accuracy gap and the
    ratio of the losses say it overfits."""
    metrics = accuracy_epochs(
        [
            (1.2, 0.6, 0.9, 0.7),
            (0.4, 0.88, 0.45, 0.85),
            (0.1, 0.97, 0.35, 0.88),
            (0.02, 0.995, 0.34, 0.89),
            (0.003, 1.0, 0.34, 0.89),
        ]
    )
    finding = d.overfitting(metrics=metrics)
    assert finding is not None and finding.severity == "warning"
    assert finding.evidence["acc_gap"] == pytest.approx(0.11)
    assert finding.evidence["opened_epoch"] == 3
    assert finding.suggested_spec_patch["model.dropout"] == 0.3


@pytest.mark.parametrize(
    "final",
    [
        (0.015, 0.997, 0.136, 0.969),  # the benchmark's healthy MLP on digits
        (0.12, 0.97, 0.16, 0.95),  # a healthy 1-D CNN at 95%
        (0.49, 0.85, 0.54, 0.82),  # a healthy CNN on MNIST-1D, still improving
    ],
)
def test_healthy_runs_do_not_overfit(final: tuple[float, float, float, float]) -> None:
    metrics = accuracy_epochs([(2.0, 0.3, 1.9, 0.35), (0.8, 0.7, 0.75, 0.7), final])
    assert d.overfitting(metrics=metrics) is None


@pytest.mark.parametrize(
    "train,val",
    [
        ([1.0, 0.5, 0.3], [1.1, 0.7, 0.6]),  # gap 0.3: small
        ([2.0, 1.5, 1.0], [2.8, 2.3, 1.8]),  # gap 0.8, constant, val still falling
        ([1.0], [3.0]),  # one epoch says nothing about growth
        ([None, None, None], [3.0, 3.5, 4.0]),  # no finite training loss
    ],
)
def test_no_overfitting(train: list[float | None], val: list[float | None]) -> None:
    assert d.overfitting(metrics=epochs(train, val)) is None


def test_overfitting_ignores_non_finite_epochs() -> None:
    metrics = epochs([1.0, 0.5, math.nan, 0.1], [1.1, 1.0, 5.0, 1.5])
    finding = d.overfitting(metrics=metrics)
    assert finding is not None and finding.evidence["final_val_loss"] == 1.5


# --- divergence and not_learning -------------------------------------------------------


def test_divergence_from_nan_counts_losses_or_result() -> None:
    layers = mlp()
    by_stats = d.divergence(stats=stats_of(layers, first_nonfinite_step=120), metrics=[], result={})
    assert by_stats is not None and by_stats.severity == "critical"
    assert by_stats.evidence == {"first_nonfinite_step": 120}
    assert "120" in by_stats.summary
    by_loss = d.divergence(
        stats=d.LayerStats.empty(), metrics=epochs([1.0, None], [1.0, 2.0]), result=None
    )
    assert by_loss is not None and by_loss.evidence == {"first_nonfinite_epoch": 2}
    by_val = d.divergence(
        stats=d.LayerStats.empty(), metrics=epochs([1.0], [math.inf]), result=None
    )
    assert by_val is not None and by_val.evidence == {"first_nonfinite_epoch": 1}
    by_result = d.divergence(stats=d.LayerStats.empty(), metrics=[], result={"diverged": True})
    assert by_result is not None and by_result.evidence == {"diverged": "true"}
    assert d.divergence(stats=d.LayerStats.empty(), metrics=epochs([1.0], [1.0]), result={}) is None


def test_divergence_remedy_mentions_precision_only_for_half_precision() -> None:
    hints = d._Spec.parse({"train": {"lr": 0.1, "precision": "fp16", "grad_clip": None}})
    finding = d.divergence(
        stats=d.LayerStats.empty(), metrics=[], result={"diverged": True}, spec=hints
    )
    assert finding is not None
    assert "0.01" in finding.remedy and "grad_clip" in finding.remedy
    assert "precision fp32" in finding.remedy


def test_not_learning_near_chance_after_the_run() -> None:
    layers = mlp(classes=10)
    metrics = [d.EpochRow(epoch=2, train_loss=2.31, train_acc=0.1, val_loss=2.31, val_acc=0.1)]
    finding = d.not_learning(layers=layers, metrics=metrics, job_status="succeeded")
    assert finding is not None and finding.severity == "critical"  # at chance
    assert finding.evidence["chance_acc"] == 0.1
    assert d.not_learning(layers=layers, metrics=metrics, job_status="running") is None
    learned = [d.EpochRow(epoch=2, train_loss=0.5, train_acc=0.8)]
    assert d.not_learning(layers=layers, metrics=learned, job_status="succeeded") is None


# --- diagnose --------------------------------------------------------------------------


def test_no_statistics_no_findings() -> None:
    assert (
        d.diagnose(
            layers=[], stats=d.LayerStats.empty(), metrics=[], job_status="queued", result=None
        )
        == []
    )


def test_findings_sorted_by_severity_and_json_safe() -> None:
    layers = mlp(activation="relu")
    stats = stats_of(
        layers,
        grad_norm=geometric_norms(layers, 1e-4),
        act_dead_frac=[0.85] * 5 + [math.nan],
    )
    metrics = epochs([2.0, 1.0, 0.1], [2.1, 1.5, 4.0])
    findings = d.diagnose(
        layers=layers, stats=stats, metrics=metrics, job_status="succeeded", result=None
    )
    assert codes(findings) == ["overfitting", "vanishing_gradient", "dead_units"]
    assert [f.severity for f in findings] == ["critical", "warning", "warning"]
    for finding in findings:
        json.dumps(finding.evidence, allow_nan=False)
        assert finding.summary.endswith(".")


def test_layer_stats_from_rows_pivots_and_keeps_missing_as_nan() -> None:
    rows = [(1, 20, 0.5, None), (0, 10, 1.0, 0.1), (1, 10, 2.0, 0.2)]
    stats = d.LayerStats.from_rows(rows, names=["grad_norm", "update_ratio"])
    assert stats.steps.tolist() == [10, 20]
    assert stats.layer_indexes == (0, 1)
    assert stats.column("grad_norm", 1).tolist() == [2.0, 0.5]
    assert np.isnan(stats.column("grad_norm", 0)[1])
    assert np.isnan(stats.column("update_ratio", 1)[1])
    assert np.isnan(stats.column("act_saturation", 0)).all()


# --- degradation across a sweep ------------------------------------------------------------


def _run(job_id: str, loss: float, point: dict[str, Any], seed: int = 0) -> d.SweepRun:
    return d.SweepRun(
        job_id=job_id,
        point=point,
        seed=seed,
        depth=int(point.get("model.depth", 20)),
        skip=bool(point.get("model.skip", False)),
        train_loss=loss,
    )


def test_a_plain_net_worse_than_its_residual_twin_is_degraded() -> None:
    plain = _run("plain", 2.30, {"model.skip": False, "model.depth": 24})
    residual = _run("residual", 1.72, {"model.skip": True, "model.depth": 24})
    found = d.sweep_degradation([plain, residual])
    assert set(found) == {"plain"}
    finding = found["plain"]
    assert finding.code == "degradation" and finding.severity == "warning"
    assert finding.suggested_spec_patch == {"model.skip": True}
    assert finding.evidence["twin_job_id"] == "residual"


def test_a_deep_plain_net_worse_than_its_shallower_twin_is_degraded() -> None:
    deep = _run("deep", 2.0, {"model.depth": 30})
    shallow = _run("shallow", 0.9, {"model.depth": 8})
    found = d.sweep_degradation([deep, shallow])
    assert set(found) == {"deep"}
    assert found["deep"].suggested_spec_patch == {"model.depth": 8}


@pytest.mark.parametrize(
    "runs",
    [
        # twins within seed noise
        [_run("a", 1.80, {"model.skip": False}), _run("b", 1.72, {"model.skip": True})],
        # not twins: they differ in another field too
        [
            _run("a", 2.3, {"model.skip": False, "model.activation": "sigmoid"}),
            _run("b", 1.7, {"model.skip": True, "model.activation": "relu"}),
        ],
        # not twins: different seeds
        [
            _run("a", 2.3, {"model.skip": False}, seed=0),
            _run("b", 1.7, {"model.skip": True}, seed=1),
        ],
        # the deeper net is the better one
        [_run("a", 0.5, {"model.depth": 30}), _run("b", 1.0, {"model.depth": 8})],
    ],
)
def test_no_degradation_without_a_twin_that_trains_clearly_better(
    runs: list[d.SweepRun],
) -> None:
    assert d.sweep_degradation(runs) == {}
