"""What the engine reports while it trains. It reports; it does not store.

``train(spec, on_event=...)`` calls back with these plain objects; the worker's
recorder turns them into bulk database writes. Nothing here knows about Celery or SQL.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from service.vocabulary import LayerKind

# Columns of LayerStatsBatch.values, in order; consumers address them by name, and the
# tuple is only ever extended (appended to), never reordered. Activation columns are NaN
# where a layer has no activation or activations are not recorded; act_saturation and
# act_dead_frac are NaN too where the activation has no bound (leaky ReLU, GELU, ...).
GRAD_STATS: tuple[str, ...] = (
    "grad_norm",
    "grad_mean",
    "grad_std",
    "grad_abs_max",
    "grad_zero_frac",
    "weight_norm",
    "update_ratio",
    "nan_count",
    "inf_count",
)
ACT_STATS: tuple[str, ...] = (
    "act_mean",
    "act_std",
    "act_saturation",
    "preact_mean",
    "preact_std",
    "act_dead_frac",
)
STAT_NAMES: tuple[str, ...] = GRAD_STATS + ACT_STATS


@dataclass(frozen=True)
class LayerInfo:
    """One trainable layer. ``index`` 0 is the layer nearest the input."""

    index: int
    name: str  # module path, e.g. "hidden.3.linear"
    kind: LayerKind
    params: int
    shape: tuple[int, ...]  # weight shape
    activation: str | None  # activation applied to this layer's output, if any


@dataclass(frozen=True)
class RunStarted:
    layers: list[LayerInfo]
    device: str
    precision: str
    torch_threads: int
    total_steps: int
    steps_per_epoch: int
    param_count: int
    # A resumed attempt: what its checkpoint covered (0, 0 for a fresh start). Anything
    # recorded after these is recorded again from here on.
    resumed_step: int = 0
    resumed_epochs: int = 0


@dataclass(frozen=True)
class StepProgress:
    """Sent after every optimizer step (cheap: no tensor is read)."""

    epoch: int  # 1-based
    step: int  # global, 1-based
    total_steps: int


@dataclass(frozen=True)
class Histogram:
    layer_index: int
    step: int
    lo: float
    hi: float
    counts: list[int]


@dataclass(frozen=True)
class LayerStatsBatch:
    """Statistics of several telemetry steps, copied from the device in one transfer.

    ``values[i, j, k]`` is statistic ``STAT_NAMES[k]`` of layer ``j`` at ``steps[i]``.
    """

    steps: np.ndarray  # int64, shape (n_steps,)
    epochs: np.ndarray  # int64, shape (n_steps,)
    values: np.ndarray  # float64, shape (n_steps, n_layers, len(STAT_NAMES))
    histograms: list[Histogram] = field(default_factory=list)


@dataclass(frozen=True)
class EpochEnd:
    epoch: int  # 1-based
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    lr: float
    seconds: float  # wall time of this epoch's training steps


@dataclass(frozen=True)
class TrainResult:
    train_loss: float
    train_acc: float
    val_loss: float
    val_acc: float
    best_val_loss: float
    best_epoch: int
    epochs_run: int
    steps: int
    stopped_early: bool
    cancelled: bool
    diverged: bool
    seconds: float
    device: str
    # Loss-landscape slice (telemetry.landscape): dims, alphas, losses, roughness,
    # sharpness, local_minima, examples. None when not asked for or not trained to the end.
    landscape: dict[str, Any] | None = None
    # Stopped at a step boundary by should_suspend, after its checkpoint (graceful stop).
    suspended: bool = False
    # Stopped by its run-time limit.
    timed_out: bool = False
    resumed_from_step: int | None = None
    # The final weights as a safetensors file, when checkpoints are on and the run ended.
    weights: bytes | None = field(default=None, repr=False)


Event = RunStarted | StepProgress | LayerStatsBatch | EpochEnd
EventSink = Callable[[Event], None]
StopCheck = Callable[[], bool]
# Receives a TrainState (worker.engine.checkpoint); typed loosely to keep this module
# free of torch.
CheckpointSink = Callable[[Any], None]
