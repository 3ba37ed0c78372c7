"""train(): event contract, reproducibility, stopping rules, penalties and precision.

Every test trains a tiny MLP on a hand-made TensorData for a few dozen steps, so the
whole file runs in seconds on one CPU thread.
"""

from __future__ import annotations

import copy
import math
from typing import Any, TypeVar

import numpy as np
import pytest
import torch
from torch.nn import functional

from service.specs import ExperimentSpec
from worker.engine.data import Layout, TensorData
from worker.engine.events import (
    STAT_NAMES,
    EpochEnd,
    Event,
    LayerStatsBatch,
    RunStarted,
    StepProgress,
    TrainResult,
)
from worker.engine.loop import Trainer, resolve_device, train

COL = {name: i for i, name in enumerate(STAT_NAMES)}


def toy_data(
    n: int = 240, n_val: int = 120, features: int = 16, layout: Layout = "table", seed: int = 0
) -> TensorData:
    """Labels from a fixed random linear map of the inputs: learnable, 3 classes."""
    g = torch.Generator().manual_seed(seed)
    shape: tuple[int, ...] = (features,) if layout == "table" else (1, features)
    x = torch.randn(n + n_val, *shape, generator=g)
    y = (x.flatten(1) @ torch.randn(features, 3, generator=g)).argmax(dim=1)
    return TensorData(x[:n], y[:n], x[n:], y[n:], shape, 3, layout)


def make_spec(**overrides: Any) -> ExperimentSpec:
    spec: dict[str, Any] = {
        "data": {"dataset": "blobs"},
        "model": {"depth": 2, "width": 16, "activation": "relu"},
        "train": {"epochs": 2, "batch_size": 32, "lr": 0.1, "seed": 0},
        "telemetry": {"every_n_steps": 4},
    }
    for path, value in overrides.items():
        section, key = path.split("__")
        spec.setdefault(section, {})[key] = value
    return ExperimentSpec.model_validate(spec)


def run(
    spec: ExperimentSpec, data: TensorData | None = None, **kw: Any
) -> tuple[TrainResult, list[Event]]:
    events: list[Event] = []
    result = train(spec, on_event=events.append, data=data or toy_data(), **kw)
    return result, events


T = TypeVar("T")


def of_type(events: list[Event], kind: type[T]) -> list[T]:
    return [e for e in events if isinstance(e, kind)]


def stats_steps(events: list[Event]) -> list[int]:
    return [int(s) for b in of_type(events, LayerStatsBatch) for s in b.steps]


def last_weight_norm(events: list[Event]) -> float:
    batch = of_type(events, LayerStatsBatch)[-1]
    return float(np.sqrt((batch.values[-1, :, COL["weight_norm"]] ** 2).sum()))


# --- the event contract ------------------------------------------------------------------


def test_events_come_in_order_with_1_based_steps_and_stats_on_multiples() -> None:
    spec = make_spec(train__epochs=3, telemetry__every_n_steps=3)
    result, events = run(spec, flush_every=2)  # 240/32 -> 8 steps per epoch, 24 in all
    assert isinstance(events[0], RunStarted)
    started = events[0]
    assert (started.steps_per_epoch, started.total_steps) == (8, 24)
    assert started.torch_threads == torch.get_num_threads()
    assert [layer.index for layer in started.layers] == list(range(len(started.layers)))
    assert started.param_count == sum(layer.params for layer in started.layers)
    progress = of_type(events, StepProgress)
    assert [p.step for p in progress] == list(range(1, 25))
    assert [p.epoch for p in progress] == [1] * 8 + [2] * 8 + [3] * 8
    assert [e.epoch for e in of_type(events, EpochEnd)] == [1, 2, 3]
    assert stats_steps(events) == list(range(3, 25, 3))
    # Each batch is flushed before the epoch ends and holds only that epoch's steps.
    for batch in of_type(events, LayerStatsBatch):
        assert len(batch.steps) <= 2
        assert (batch.epochs == (batch.steps - 1) // 8 + 1).all()
        assert batch.values.shape[1:] == (len(started.layers), len(STAT_NAMES))
    # An epoch's EpochEnd comes after its last step and stats, before the next step.
    order = [(type(e).__name__, getattr(e, "step", getattr(e, "epoch", None))) for e in events]
    end_1 = order.index(("EpochEnd", 1))
    assert order.index(("StepProgress", 8)) < end_1 < order.index(("StepProgress", 9))
    last_stats_1 = max(
        i for i, e in enumerate(events) if isinstance(e, LayerStatsBatch) and 1 in e.epochs
    )
    assert last_stats_1 < end_1
    assert result.steps == 24 and result.epochs_run == 3
    assert not (result.cancelled or result.diverged or result.stopped_early)


def test_every_n_steps_zero_records_no_statistics() -> None:
    _, events = run(make_spec(telemetry__every_n_steps=0))
    assert of_type(events, LayerStatsBatch) == []
    assert len(of_type(events, StepProgress)) == 16


def test_every_step_telemetry_records_activations_and_histograms() -> None:
    spec = make_spec(train__epochs=1, telemetry__every_n_steps=1, telemetry__histogram_bins=5)
    _, events = run(spec)
    batches = of_type(events, LayerStatsBatch)
    assert stats_steps(events) == list(range(1, 9))
    values = np.concatenate([b.values for b in batches])
    hidden = [0, 1]  # two hidden linear layers carry ReLU activations; the output none
    assert np.isfinite(values[:, hidden, COL["act_mean"]]).all()
    assert np.isnan(values[:, 2, COL["act_mean"]]).all()
    assert np.isfinite(values[:, :, : COL["inf_count"] + 1]).all()
    assert sum(len(b.histograms) for b in batches) == 8 * 3


def test_same_seed_gives_identical_runs_and_another_seed_does_not() -> None:
    spec = make_spec(model__dropout=0.2, data__augment={"noise": 0.1}, telemetry__every_n_steps=2)
    a, ev_a = run(spec)
    b, ev_b = run(spec)
    c, _ = run(spec.model_copy(update={"train": spec.train.model_copy(update={"seed": 1})}))
    assert of_type(ev_a, EpochEnd)[-1].train_loss == of_type(ev_b, EpochEnd)[-1].train_loss
    for x, y in zip(of_type(ev_a, EpochEnd), of_type(ev_b, EpochEnd), strict=True):
        assert (x.train_loss, x.val_loss, x.train_acc) == (y.train_loss, y.val_loss, y.train_acc)
    stats_a, stats_b = of_type(ev_a, LayerStatsBatch), of_type(ev_b, LayerStatsBatch)
    for sa, sb in zip(stats_a, stats_b, strict=True):
        np.testing.assert_array_equal(sa.values, sb.values)
    assert a.val_loss == b.val_loss and c.train_loss != a.train_loss


# --- stopping ------------------------------------------------------------------------------


def test_cancel_stops_running_job_within_one_step() -> None:
    calls = 0

    def should_stop() -> bool:
        nonlocal calls
        calls += 1
        return calls >= 5

    result, events = run(make_spec(telemetry__every_n_steps=2), should_stop=should_stop)
    assert result.cancelled and result.steps == 5
    assert [p.step for p in of_type(events, StepProgress)] == [1, 2, 3, 4, 5]
    assert of_type(events, EpochEnd) == []
    assert stats_steps(events) == [2, 4]  # captured statistics are flushed, not lost
    assert math.isnan(result.train_loss) and result.epochs_run == 0


def test_early_stopping_after_patience_epochs_without_val_improvement() -> None:
    # An lr far below float32 resolution leaves every weight unchanged: val loss is flat.
    spec = make_spec(train__epochs=10, train__lr=1e-12, train__early_stopping_patience=2)
    result, events = run(spec)
    assert result.stopped_early and result.epochs_run == 3
    assert result.best_epoch == 1 and len(of_type(events, EpochEnd)) == 3
    assert result.best_val_loss == of_type(events, EpochEnd)[0].val_loss


def test_nan_loss_stops_run_as_diverged_and_keeps_nan_statistics() -> None:
    data = toy_data()
    data.x_train[3, 0] = math.inf  # any batch holding it makes the loss and weights NaN
    result, events = run(make_spec(train__epochs=3, telemetry__every_n_steps=1), data)
    assert result.diverged and result.epochs_run == 1
    assert not result.cancelled and math.isnan(result.train_loss)
    values = np.concatenate([b.values for b in of_type(events, LayerStatsBatch)])
    assert values.shape[0] == 8  # rows with NaN are kept
    assert (values[:, :, COL["nan_count"]] + values[:, :, COL["inf_count"]]).sum() > 0


# --- penalties -----------------------------------------------------------------------------


def _one_sgd_step(l1: float, l2: float) -> None:
    spec = make_spec(
        train__momentum=0.0, train__l1=l1, train__l2=l2, train__lr=0.5, telemetry__every_n_steps=0
    )
    data = toy_data()
    torch.manual_seed(0)
    trainer = Trainer(spec, input_shape=data.input_shape, num_classes=3, device=torch.device("cpu"))
    reference = copy.deepcopy(trainer.model)
    xb, yb = data.x_train[:32], data.y_train[:32]
    trainer.step(xb, yb, step=1, epoch=1)
    # The docs/DESIGN.md definition, through autograd: penalized loss, plain SGD update. This
    # model has no norm layers, so every weight (and no bias) is penalized.
    ref_weights = [p for n, p in reference.named_parameters() if n.endswith("weight")]
    assert len(ref_weights) == len(trainer.penalized) == 3
    loss = functional.cross_entropy(reference(xb), yb)
    loss = loss + (l2 / 2) * sum((w**2).sum() for w in ref_weights)
    loss = loss + l1 * sum(w.abs().sum() for w in ref_weights)
    torch.autograd.backward(loss)
    with torch.no_grad():
        for p in reference.parameters():
            assert p.grad is not None
            p.sub_(0.5 * p.grad)
    for (name, got), want in zip(
        trainer.model.named_parameters(), reference.parameters(), strict=True
    ):
        torch.testing.assert_close(got, want, rtol=1e-5, atol=1e-6, msg=name)


def test_l2_gradient_is_l2_times_weight_in_one_sgd_step() -> None:
    _one_sgd_step(l1=0.0, l2=0.1)


def test_l1_gradient_is_l1_times_sign_of_weight_in_one_sgd_step() -> None:
    _one_sgd_step(l1=0.01, l2=0.0)


@pytest.mark.parametrize("optimizer", ["sgd", "adam"])
def test_l1_and_l2_shrink_weight_norms(optimizer: str) -> None:
    base = {"train__epochs": 4, "train__optimizer": optimizer, "telemetry__every_n_steps": 8}
    if optimizer == "adam":
        base["train__lr"] = 0.01
    _, plain = run(make_spec(**base))
    _, l2 = run(make_spec(**base, train__l2=0.05))
    _, l1 = run(make_spec(**base, train__l1=0.005))
    assert last_weight_norm(l2) < 0.9 * last_weight_norm(plain)
    assert last_weight_norm(l1) < 0.9 * last_weight_norm(plain)


def test_biases_and_norm_parameters_are_not_penalized() -> None:
    spec = make_spec(model__norm="batch", model__depth=2)
    trainer = Trainer(spec, input_shape=(16,), num_classes=3, device=torch.device("cpu"))
    kinds = {id(layer.module.weight): layer.info.kind for layer in trainer.built.layers}
    assert sorted(kinds[id(w)] for w in trainer.penalized) == ["linear", "linear", "output"]


# --- optimizers, schedules, clipping --------------------------------------------------------


@pytest.mark.parametrize(
    ("schedule", "want"),
    [
        ({"schedule": "constant"}, [0.1, 0.1, 0.1, 0.1]),
        ({"schedule": "step", "step_size": 2, "gamma": 0.5}, [0.1, 0.1, 0.05, 0.05]),
        ({"schedule": "cosine"}, [0.1 * (1 + math.cos(math.pi * e / 4)) / 2 for e in range(4)]),
    ],
)
def test_lr_schedule_is_stepped_per_epoch_and_reported(
    schedule: dict[str, Any], want: list[float]
) -> None:
    overrides = {f"train__{k}": v for k, v in schedule.items()}
    _, events = run(make_spec(train__epochs=4, telemetry__every_n_steps=0, **overrides))
    assert [e.lr for e in of_type(events, EpochEnd)] == pytest.approx(want)


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_every_optimizer_learns_the_toy_task(optimizer: str) -> None:
    lr = 0.1 if optimizer == "sgd" else 0.01
    spec = make_spec(
        train__optimizer=optimizer,
        train__lr=lr,
        train__epochs=4,
        train__nesterov=optimizer == "sgd",
    )
    result, _ = run(spec)
    assert result.train_acc > 0.8 and result.val_acc > 0.6


def test_grad_clip_bounds_the_recorded_global_gradient_norm() -> None:
    spec = make_spec(train__grad_clip=0.01, telemetry__every_n_steps=1, train__epochs=1)
    _, events = run(spec)
    values = np.concatenate([b.values for b in of_type(events, LayerStatsBatch)])
    global_norm = np.sqrt((values[:, :, COL["grad_norm"]] ** 2).sum(axis=1))
    assert (global_norm <= 0.01 * (1 + 1e-4)).all()


# --- precision and devices ----------------------------------------------------------------


@pytest.mark.parametrize(("precision", "rtol"), [("bf16", 0.05), ("fp16", 0.01)])
def test_reduced_precision_statistics_match_fp32(precision: str, rtol: float) -> None:
    def first_row(p: str) -> np.ndarray:
        spec = make_spec(train__precision=p, train__epochs=1, telemetry__every_n_steps=1)
        _, events = run(spec)
        return np.asarray(of_type(events, LayerStatsBatch)[0].values[0], dtype=np.float64)

    fp32, low = first_row("fp32"), first_row(precision)
    for name in ("grad_norm", "weight_norm", "update_ratio", "act_std", "preact_std"):
        col = COL[name]
        finite = np.isfinite(fp32[:, col])
        np.testing.assert_allclose(low[finite, col], fp32[finite, col], rtol=rtol, err_msg=name)
    assert low[:, COL["nan_count"]].sum() == 0 and low[:, COL["inf_count"]].sum() == 0


def test_resolve_device_auto_takes_cuda_exactly_when_this_machine_has_it() -> None:
    expected = torch.device("cuda") if torch.cuda.is_available() else torch.device("cpu")
    assert resolve_device("auto") == expected
    assert resolve_device("cpu") == torch.device("cpu")


@pytest.mark.parametrize("has_cuda", [True, False])
def test_resolve_device_follows_cuda_availability(
    has_cuda: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Only the answer of is_available() is faked: torch.device("cuda") initialises nothing.
    monkeypatch.setattr(torch.cuda, "is_available", lambda: has_cuda)
    assert resolve_device("auto") == torch.device("cuda" if has_cuda else "cpu")
    assert resolve_device("cpu") == torch.device("cpu")
    if has_cuda:
        assert resolve_device("cuda") == torch.device("cuda")
    else:
        with pytest.raises(RuntimeError, match="no usable CUDA"):
            resolve_device("cuda")


# --- augmentation ---------------------------------------------------------------------------


def test_augmentation_never_touches_validation_data() -> None:
    data = toy_data(layout="seq")
    x_val, x_train = data.x_val.clone(), data.x_train.clone()
    # With no effective update, val loss depends only on the (unchanged) model and x_val.
    frozen = {"train__lr": 1e-12, "train__epochs": 1, "telemetry__every_n_steps": 0}
    plain, _ = run(make_spec(**frozen), data)
    noisy, _ = run(make_spec(**frozen, data__augment={"noise": 2.0, "shift": 3}), data)
    assert noisy.val_loss == plain.val_loss and noisy.val_acc == plain.val_acc
    assert noisy.train_loss != plain.train_loss  # the training batches were augmented
    torch.testing.assert_close(data.x_val, x_val, rtol=0, atol=0)
    torch.testing.assert_close(data.x_train, x_train, rtol=0, atol=0)
