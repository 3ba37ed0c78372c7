"""The recorder's row building: every (step, layer) becomes one row, NaN and inf kept."""

from __future__ import annotations

import math

import numpy as np

from service.db.models import LAYER_STAT_COLUMNS
from worker.engine.events import STAT_NAMES, Histogram, LayerStatsBatch
from worker.recorder import histogram_rows, layer_stat_rows


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
