"""What a finished run leaves in job.result: its figures and a landscape summary, no grid."""

from __future__ import annotations

import math

from worker.engine.events import TrainResult
from worker.tasks import result_summary


def _result(landscape: dict[str, object] | None) -> TrainResult:
    return TrainResult(
        train_loss=0.5,
        train_acc=0.9,
        val_loss=0.6,
        val_acc=0.8,
        best_val_loss=0.55,
        best_epoch=2,
        epochs_run=3,
        steps=30,
        stopped_early=False,
        cancelled=False,
        diverged=False,
        seconds=1.5,
        device="cpu",
        landscape=landscape,
    )


def test_the_result_keeps_a_summary_of_the_landscape_not_its_grid() -> None:
    grid = {
        "dims": 2,
        "alphas": [-1.0, 0.0, 1.0],
        "losses": [[3.0, 2.0, 3.0], [2.0, 1.0, 2.0], [3.0, 2.0, math.nan]],
        "roughness": 0.1,
        "sharpness": 0.2,
        "local_minima": 1,
        "examples": 64,
    }
    summary = result_summary(_result(grid), layer_stat_rows=42)
    assert summary["landscape"] == {
        "dims": 2,
        "points": 3,
        "roughness": 0.1,
        "sharpness": 0.2,
        "local_minima": 1,
    }
    assert summary["layer_stat_rows"] == 42 and summary["val_acc"] == 0.8


def test_a_run_without_a_landscape_has_none_in_its_result() -> None:
    assert "landscape" not in result_summary(_result(None), layer_stat_rows=0)
