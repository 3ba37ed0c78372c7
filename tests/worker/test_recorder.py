"""The recorder's row building: every (step, layer) becomes one row, NaN and inf kept."""

from __future__ import annotations

import math

import numpy as np

from service.db.models import LAYER_STAT_COLUMNS
from worker.engine.events import STAT_NAMES, EpochEnd, Histogram, LayerStatsBatch, RunStarted
from worker.recorder import histogram_rows, join_stat_batches, layer_stat_rows


def _batch(n_steps: int, n_layers: int) -> LayerStatsBatch:
    values = np.arange(n_steps * n_layers * len(STAT_NAMES), dtype=np.float64).reshape(
        n_steps, n_layers, len(STAT_NAMES)
    )
    values[0, 0, 0] = np.nan
    values[0, 1, 0] = np.inf
    return LayerStatsBatch(
        steps=np.array([10, 20][:n_steps]),
        epochs=np.array([1, 2][:n_steps]),
        values=values,
        histograms=[Histogram(layer_index=1, step=10, lo=-1.0, hi=1.0, counts=[1, 2, 3])],
    )


def test_rows_cover_every_step_and_layer() -> None:
    rows = layer_stat_rows(_batch(2, 3))
    assert len(rows) == 6
    assert {(r["step"], r["layer_index"]) for r in rows} == {
        (s, j) for s in (10, 20) for j in range(3)
    }
    assert rows[-1]["epoch"] == 2
    assert rows[4][STAT_NAMES[2]] == float(1 * 3 * len(STAT_NAMES) + 1 * len(STAT_NAMES) + 2)


def test_nan_and_inf_are_kept() -> None:
    rows = layer_stat_rows(_batch(1, 2))
    assert math.isnan(rows[0]["grad_norm"])
    assert math.isinf(rows[1]["grad_norm"])


def test_histograms_become_rows() -> None:
    assert histogram_rows(_batch(1, 2)) == [
        {"layer_index": 1, "step": 10, "lo": -1.0, "hi": 1.0, "counts": [1, 2, 3]}
    ]


def test_database_has_a_column_for_every_statistic() -> None:
    assert set(LAYER_STAT_COLUMNS) == set(STAT_NAMES)


def _steps(first: int, n_steps: int, n_layers: int = 3) -> LayerStatsBatch:
    steps = np.arange(first, first + n_steps)
    values = np.random.default_rng(first).normal(size=(n_steps, n_layers, len(STAT_NAMES)))
    return LayerStatsBatch(steps=steps, epochs=steps // 10, values=values)


def test_batches_waiting_together_are_joined_in_order() -> None:
    a, b, c = _steps(0, 4), _steps(4, 4), _steps(8, 2)
    epoch = EpochEnd(1, 1.0, 0.5, 1.0, 0.5, 0.1, 1.0)
    joined = join_stat_batches([a, epoch, b, c], max_rows=100)
    block = next(e for e in joined if isinstance(e, LayerStatsBatch))
    assert epoch in joined and len(joined) == 2
    assert block.steps.tolist() == list(range(10))
    assert np.array_equal(block.values, np.concatenate([a.values, b.values, c.values]))
    assert block.epochs.tolist() == (np.arange(10) // 10).tolist()


def test_a_block_stays_within_its_rows_and_never_spans_a_restart() -> None:
    batches = [_steps(4 * i, 4) for i in range(5)]  # 12 rows each
    joined = join_stat_batches(batches, max_rows=30)
    sizes = [e.steps.size for e in joined if isinstance(e, LayerStatsBatch)]
    assert sizes == [8, 8, 4]
    restart = RunStarted([], "cpu", "fp32", 1, 32, 8, 10, resumed_step=3)
    joined = join_stat_batches([batches[0], restart, batches[1]], max_rows=100)
    assert joined == [batches[0], restart, batches[1]]
    other_model = _steps(8, 4, n_layers=5)
    assert join_stat_batches([batches[0], other_model]) == [batches[0], other_model]
    big = _steps(0, 40)  # one batch over the limit is written whole
    assert join_stat_batches([big], max_rows=30) == [big]
