"""Checkpoints: a run stopped at any step boundary and resumed from its TrainState ends
exactly where the uninterrupted run ends, for every optimizer, schedule and precision."""

from __future__ import annotations

from typing import Any

import pytest
import torch
from safetensors.torch import load

from tests.engine.test_loop import make_spec, of_type, run
from worker.engine.checkpoint import TrainState
from worker.engine.events import EpochEnd, LayerStatsBatch, RunStarted

STEPS_PER_EPOCH = 8  # 240 examples, batches of 32


def _stop_at(step: int) -> Any:
    calls = [0]

    def suspend() -> bool:
        calls[0] += 1
        return calls[0] == step

    return suspend


@pytest.mark.parametrize(
    ("overrides", "stop"),
    [
        ({}, 11),  # mid-epoch 2
        ({}, 8),  # on an epoch's last step
        ({"train__optimizer": "adam", "train__schedule": "cosine"}, 13),
        ({"train__optimizer": "adamw", "model__dropout": 0.3, "model__dropconnect": 0.2}, 5),
        ({"train__precision": "fp16", "train__schedule": "step", "train__step_size": 1}, 19),
        ({"model__norm": "batch", "train__grad_clip": 0.5, "train__l2": 0.01}, 20),
    ],
)
@pytest.mark.filterwarnings(r"error:Detected call of `lr_scheduler\.step\(\)`")  # a false alarm
def test_a_resumed_run_ends_where_the_uninterrupted_one_does(
    overrides: dict[str, Any], stop: int
) -> None:
    spec = make_spec(train__epochs=3, **overrides)
    full, full_events = run(spec, on_checkpoint=lambda _: None)
    saved: list[TrainState] = []
    # Through the file format: what a worker writes and a new attempt reads.
    first, _ = run(
        spec,
        on_checkpoint=lambda s: saved.append(TrainState.from_bytes(s.to_bytes())),
        should_suspend=_stop_at(stop),
    )
    assert first.suspended and first.steps == stop and saved[-1].step == stop
    resumed, events = run(spec, resume=saved[-1], on_checkpoint=lambda _: None)

    assert resumed.steps == full.steps == 3 * STEPS_PER_EPOCH
    assert resumed.resumed_from_step == stop
    # A stop after an epoch's last step comes before that epoch's validation.
    epochs_done = (stop - 1) // STEPS_PER_EPOCH
    [started] = of_type(events, RunStarted)
    assert (started.resumed_step, started.resumed_epochs) == (stop, epochs_done)
    # The resumed attempt reports only what came after its checkpoint, the same values.
    after = [e for e in of_type(full_events, EpochEnd) if e.epoch > epochs_done]
    got = of_type(events, EpochEnd)
    assert [e.epoch for e in got] == [e.epoch for e in after]
    for a, b in zip(got, after, strict=True):
        assert a.train_loss == pytest.approx(b.train_loss, rel=1e-5)
        assert a.val_loss == pytest.approx(b.val_loss, rel=1e-5)
    steps = [int(s) for batch in of_type(events, LayerStatsBatch) for s in batch.steps]
    assert steps and min(steps) > stop
    assert full.weights is not None and resumed.weights is not None
    expected, got_weights = load(full.weights), load(resumed.weights)
    for name, tensor in expected.items():
        torch.testing.assert_close(got_weights[name], tensor, rtol=1e-5, atol=1e-6)


def test_a_checkpoint_is_one_file_of_tensors_and_json_without_pickle() -> None:
    saved: list[TrainState] = []
    run(make_spec(), on_checkpoint=saved.append)
    assert [s.epochs_done for s in saved] == [1, 2]  # checkpoint_every: 1
    data = saved[-1].to_bytes()
    assert b"pickle" not in data and b"\x80\x04\x95" not in data  # no pickle protocol 4
    state = TrainState.from_bytes(data)
    assert state.meta["counters"]["step"] == 2 * STEPS_PER_EPOCH
    assert set(state.tensors) >= {"rng.torch", "rng.shuffle", "rng.augment"}
    with pytest.raises(Exception):  # noqa: B017  (any safetensors/JSON error)
        TrainState.from_bytes(b"not a checkpoint")


def test_checkpoints_can_be_turned_off() -> None:
    saved: list[TrainState] = []
    result, _ = run(make_spec(train__checkpoint_every=0), on_checkpoint=saved.append)
    assert saved == [] and result.weights is None
