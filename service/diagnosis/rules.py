"""The diagnosis rules: what went wrong in a training job, from its stored statistics.

Pure functions over plain arrays and dataclasses: no SQL, no FastAPI, no torch. The use
case (``service.diagnosis.diagnose_job``) loads the rows and calls :func:`diagnose`.

Causes (lr_too_low, lr_too_high, over_regularized, poor_initialization, degradation,
underfitting, overfitting, saturation, dead_units) rank before the symptoms they explain
(vanishing_gradient, exploding_gradient, divergence, not_learning): a symptom names its
cause in ``caused_by`` (:data:`CAUSES_OF`). Every finding carries the fix as a
``suggested_spec_patch`` of dotted spec paths. bench/diagnosis_benchmark.py measures the
rules on injected faults beside healthy twins; most thresholds below come from it.

Thresholds are named constants below, set from figures measured on MNIST-1D (README,
"the lessons as measured"): the first/last hidden-layer gradient-norm ratio of a
20-layer MLP is ~6e-17 with sigmoid, ~3e-7 with ReLU and PyTorch's default init, ~0.5
with ReLU + He init and ~16 with sigmoid + batch norm (batch norm makes gradients grow
towards the input, so ratios up to ~100 are healthy). A 3x256 MLP on 200 examples ends
40 epochs with val - train loss ~4.3; the usual remedies bring it to ~0.6-1.4.
"""

from __future__ import annotations

import math
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any, Literal

import numpy as np
import numpy.typing as npt

from service.kit.jsonnum import nonfinite_name
from service.vocabulary import HIDDEN_WEIGHT_KINDS

Severity = Literal["info", "warning", "critical"]
Evidence = dict[str, float | int | str]
FloatArray = npt.NDArray[np.float64]

SEVERITY_ORDER: dict[str, int] = {"critical": 0, "warning": 1, "info": 2}

WEIGHT_KINDS: frozenset[str] = frozenset(HIDDEN_WEIGHT_KINDS)
SIGMOID_LIKE: frozenset[str] = frozenset({"sigmoid", "tanh"})

# vanishing_gradient: median grad_norm(first weight layer) / grad_norm(last hidden one).
VANISHING_RATIO = 1e-3  # ReLU + He init: ~0.5; ReLU default init: ~3e-7
VANISHING_CRITICAL_RATIO = 1e-6  # sigmoid, depth 20: ~6e-17
# A layer is listed as "vanished" when its gradient norm is this far below the last one.
VANISHED_LAYER_RATIO = VANISHING_RATIO
# Depth (weight layers) from which "use skip: true" is suggested on top of the rest.
DEEP_NET_LAYERS = 16

# exploding_gradient.
EXPLODING_RATIO = 1e3  # batch norm alone gives ~16: never flag ratios up to ~100
EXPLODING_CRITICAL_RATIO = 1e6
EXPLODING_GRAD_NORM = 1e3  # any finite grad_norm above this in the window
EXPLODING_CRITICAL_GRAD_NORM = 1e6
# dead_units (plain ReLU only): act_dead_frac, the fraction of units that output 0 for
# every example of the telemetry batch. Not the fraction of zero outputs (act_saturation):
# a healthy ReLU layer outputs ~50% zeros by construction, sparsity rather than death.
# Measured by bench/diagnosis_benchmark.py: healthy twins 0.0-0.25 (kaiming init, MLP and
# CNN), learning rate 200x too high 1.0, L1/L2 far too strong 0.55-0.72.
DEAD_UNIT_FRACTION = 0.4
DEAD_UNIT_CRITICAL_FRACTION = 0.9

# saturation (sigmoid/tanh): act_saturation is the fraction of outputs within 1e-2 of a
# bound, act_dead_frac that of units pinned to a bound for the whole batch. Benchmark:
# tanh with init std 0.5 pins 97% of an MLP's units; a CNN's outputs sit 69% at a bound.
SATURATED_FRACTION = 0.5
SATURATED_UNIT_FRACTION = 0.5
SATURATED_CRITICAL_FRACTION = 0.9

# overfitting, as a practitioner judges it: validation accuracy below training accuracy
# by AUTOTRAINER's "test not well" gaps (0.07 above 90% training accuracy, 0.1 below),
# with validation loss several times the training loss and at least this far above it.
# Healthy twins of the benchmark: accuracy gaps <= 0.04; a moderate overfit (100% vs
# 89%, val loss 0.34 vs 0.003) has 0.11 and a loss ratio of ~100.
OVERFIT_ACC_GAP = 0.07
OVERFIT_ACC_GAP_LOW = 0.10
OVERFIT_LOSS_RATIO = 3.0
OVERFIT_MIN_LOSS_GAP = 0.2
OVERFIT_CRITICAL_ACC_GAP = 0.25
# A train_size below this is the first thing the overfitting patch changes (null: all).
SMALL_TRAIN_SET = 1000
# Without accuracies: final val_loss - train_loss, and it must be growing.
OVERFIT_GAP = 0.5
OVERFIT_CRITICAL_GAP = 2.0
OVERFIT_VAL_RISE = 0.10  # val loss this far above its minimum while train loss fell

# Fitting poorly: the better of final train/val accuracy below this. The benchmark's
# healthy twins end at 0.82-0.97; its underfit runs (one epoch, one batch per epoch)
# at 0.2-0.7.
UNDERFIT_ACC = 0.75
FEW_EPOCHS = 2  # this few epochs cannot show a plateau: the loss counts as still falling
# A run of at most FEW_EPOCHS or under FEW_STEPS optimizer steps (healthy twins: 230-320)
# that ends below CUT_SHORT_ACC was cut short (one batch per epoch: 10-12 steps, 0.7-0.87).
FEW_STEPS = 100
CUT_SHORT_ACC = 0.9
MIN_BATCH = 16
STILL_FALLING = 0.05  # relative fall of the train loss over the last epoch
UNDERFIT_EPOCH_FACTOR = 3
UNDERFIT_MIN_EPOCHS = 10  # the suggested epochs: 3x, and at least this (benchmark bases: 10-12)
TARGET_STEPS = 300  # optimizer steps the suggested batch size makes (healthy twins: 230-320)

# lr_too_low: the fastest weight layer's median update ratio ||dw||/||w|| below this.
# Healthy twins: 1e-3 to 2e-2 (SGD 0.05, Adam 3e-3); learning rate 1e-4x: ~1e-6.
LR_LOW_UPDATE_RATIO = 1e-4
HEALTHY_UPDATE_RATIO = 1e-3  # the target of the suggested learning rate
# lr_too_high: a median update ratio above UPDATE_RATIO_HIGH, a first-epoch loss this
# many times the loss of a uniform guess (benchmark: lr 200x gives 80x-1e31x; healthy
# <= 1.1x), a final loss this far above its minimum, or above a uniform guess.
UPDATE_RATIO_HIGH = 0.1  # median ||dw||/||w|| of a layer; healthy runs here: <= 0.03
LR_HIGH_LOSS_SPIKE = 10.0
# ... and from this spike the suggested lr is 100x lower, not 10x (Adam 200x too high:
# a first loss 80x that of a uniform guess, and 10x lower still stays at chance).
LR_BLOWUP_SPIKE = 30.0
LR_HIGH_LOSS_RISE = 3.0
LR_HIGH_ABOVE_CHANCE = 1.5

# over_regularized: the median weight norm of the late window over that of the first
# steps (benchmark: L2 0.5 or L1 0.05 give 0.02-0.04; healthy 0.9-1.2); dropout from
# HEAVY_DROPOUT that keeps the net at chance or its train accuracy this far below val.
WEIGHT_COLLAPSE_RATIO = 0.2
HEAVY_DROPOUT = 0.5
DROPOUT_TRAIN_VAL_GAP = 0.1

# poor_initialization: at the first telemetry steps some hidden layer's activation std
# below/above these (healthy twins 0.1-1; init std 1e-3: 1e-5-0; std 1.0: 4e4 or inf).
POOR_INIT_MIN_ACT_STD = 1e-2
POOR_INIT_MAX_ACT_STD = 1e2

# degradation: hidden weight layers from which a plain net stuck at chance is blamed on
# its depth (the lessons: 24 plain layers stay at ln(10), residual ones train).
DEGRADATION_DEPTH = 12
# Across a sweep: a plain net whose final train loss is this many times its residual or
# shallower twin's (same point otherwise, same seed). Degradation is a training-error
# effect (He et al. 2016); on MNIST-1D a plain 24-layer net ends at 2.30 against its
# residual twin's 1.72 (1.34x, bench/lessons.py), while twins that differ only by seed end
# within ~10% of each other.
DEGRADATION_TWIN_LOSS_RATIO = 1.25
DEGRADATION_TWIN_LOSS_GAP = 0.1

# not_learning: final train accuracy below this multiple of chance (1 / classes).
NOT_LEARNING_CHANCE_FACTOR = 1.5

# The statistics the rules read (the use case loads these columns).
DIAGNOSIS_STAT_NAMES: tuple[str, ...] = (
    "grad_norm",
    "grad_zero_frac",
    "weight_norm",
    "update_ratio",
    "act_mean",
    "act_std",
    "act_saturation",
    "preact_std",
    "act_dead_frac",
)
# The first steps, where poor initialisation shows before training repairs it: the
# telemetry steps up to this fraction of the run's steps (at least the first one).
EARLY_WINDOW_FRACTION = 0.05


def early_window_end(total_steps: int, every_n_steps: int = 1) -> int:
    """The last step of the early window of a run of ``total_steps`` steps that records
    every ``every_n_steps``: at least its first telemetry step."""
    return max(1, every_n_steps, int(total_steps * EARLY_WINDOW_FRACTION))


@dataclass(frozen=True)
class LayerInfo:
    """One row of the layer table (0 = nearest the input)."""

    index: int
    name: str
    kind: str
    activation: str | None = None
    shape: tuple[int, ...] = ()


@dataclass(frozen=True)
class EpochRow:
    """One row of the epoch metrics; None where nothing (or a NaN, on SQLite) is stored."""

    epoch: int
    train_loss: float | None = None
    train_acc: float | None = None
    val_loss: float | None = None
    val_acc: float | None = None


@dataclass(frozen=True)
class LayerStats:
    """The window of telemetry to judge: ``values[name][i, j]`` is statistic ``name`` of
    layer ``layer_indexes[j]`` at ``steps[i]`` (NaN where missing). The service passes
    the last half of the steps recorded so far.

    ``first_nonfinite_step`` is the first step, over the whole run, at which any layer
    counted a NaN or Inf in its gradients (None: none did).
    """

    steps: npt.NDArray[np.int64]
    layer_indexes: tuple[int, ...]
    values: Mapping[str, FloatArray]
    first_nonfinite_step: int | None = None

    @classmethod
    def empty(cls, *, first_nonfinite_step: int | None = None) -> LayerStats:
        return cls(np.zeros(0, dtype=np.int64), (), {}, first_nonfinite_step)

    @classmethod
    def from_rows(
        cls,
        rows: Iterable[Sequence[Any]],
        *,
        names: Sequence[str],
        first_nonfinite_step: int | None = None,
    ) -> LayerStats:
        """Pivot rows ``(layer_index, step, *values in names order)`` into matrices."""
        data = list(rows)
        if not data:
            return cls.empty(first_nonfinite_step=first_nonfinite_step)
        steps = sorted({int(r[1]) for r in data})
        layers = sorted({int(r[0]) for r in data})
        row_of = {s: i for i, s in enumerate(steps)}
        col_of = {j: i for i, j in enumerate(layers)}
        values = {n: np.full((len(steps), len(layers)), np.nan) for n in names}
        for r in data:
            i, j = row_of[int(r[1])], col_of[int(r[0])]
            for k, name in enumerate(names):
                v = r[2 + k]
                if v is not None:
                    values[name][i, j] = float(v)
        return cls(np.asarray(steps, dtype=np.int64), tuple(layers), values, first_nonfinite_step)

    @classmethod
    def from_columns(
        cls,
        layer: npt.NDArray[np.int64],
        step: npt.NDArray[np.int64],
        values: FloatArray,
        *,
        names: Sequence[str],
        first_nonfinite_step: int | None = None,
    ) -> LayerStats:
        """Pivot arrays (``values[i, k]``: statistic ``names[k]`` of ``layer[i]`` at
        ``step[i]``, NaN where missing) into matrices, as ``from_rows`` does rows."""
        if layer.shape[0] == 0:
            return cls.empty(first_nonfinite_step=first_nonfinite_step)
        steps, row = np.unique(step, return_inverse=True)
        layers, col = np.unique(layer, return_inverse=True)
        matrices: dict[str, FloatArray] = {}
        for k, name in enumerate(names):
            matrix = np.full((steps.shape[0], layers.shape[0]), np.nan)
            matrix[row, col] = values[:, k]
            matrices[name] = matrix
        indexes = tuple(int(i) for i in layers.tolist())
        return cls(steps.astype(np.int64), indexes, matrices, first_nonfinite_step)

    def column(self, name: str, layer_index: int) -> FloatArray:
        """The series of one statistic of one layer (all NaN when not recorded)."""
        matrix = self.values.get(name)
        if matrix is None or layer_index not in self.layer_indexes:
            return np.full(len(self.steps), np.nan)
        return matrix[:, self.layer_indexes.index(layer_index)]


@dataclass(frozen=True)
class Finding:
    code: str
    severity: Severity
    layers: list[int]
    summary: str
    evidence: Evidence
    remedy: str
    # The fix as spec changes: dotted paths into the ExperimentSpec ("model.init") and
    # their new values; applying it to the job's spec gives a spec that still validates.
    suggested_spec_patch: dict[str, Any] = field(default_factory=dict)
    # A symptom names the finding that explains it (its code); None for a cause.
    caused_by: str | None = None


@dataclass(frozen=True)
class _Spec:
    """The spec fields the rules and their remedies read (None: not stated)."""

    arch: str | None = None
    depth: int | None = None
    width: int | None = None
    activation: str | None = None
    init: str | None = None
    init_std: float | None = None
    norm: str | None = None
    skip: bool | None = None
    dropout: float = 0.0
    lr: float | None = None
    optimizer: str | None = None
    epochs: int | None = None
    batch_size: int | None = None
    l1: float = 0.0
    l2: float = 0.0
    grad_clip: float | None = None
    precision: str | None = None
    early_stopping_patience: int | None = None
    train_size: int | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> _Spec:
        if not spec:
            return cls()
        model = spec.get("model") or {}
        train = spec.get("train") or {}
        data = spec.get("data") or {}

        def number(section: Mapping[str, Any], key: str) -> float | None:
            value = section.get(key)
            if isinstance(value, bool) or not isinstance(value, int | float):
                return None
            return float(value)

        def integer(section: Mapping[str, Any], key: str) -> int | None:
            value = section.get(key)
            if isinstance(value, bool) or not isinstance(value, int):
                return None
            return value

        return cls(
            arch=model.get("arch"),
            depth=integer(model, "depth"),
            width=integer(model, "width"),
            activation=model.get("activation"),
            init=model.get("init"),
            init_std=number(model, "init_std"),
            norm=model.get("norm"),
            skip=model.get("skip"),
            dropout=number(model, "dropout") or 0.0,
            lr=number(train, "lr"),
            optimizer=train.get("optimizer"),
            epochs=integer(train, "epochs"),
            batch_size=integer(train, "batch_size"),
            l1=number(train, "l1") or 0.0,
            l2=number(train, "l2") or 0.0,
            grad_clip=number(train, "grad_clip"),
            precision=train.get("precision"),
            early_stopping_patience=integer(train, "early_stopping_patience"),
            train_size=integer(data, "train_size"),
        )

    @property
    def relu_like(self) -> bool:
        return self.activation not in SIGMOID_LIKE

    def good_init(self) -> str:
        """The init that keeps this activation's signal scale through depth."""
        return "kaiming" if self.relu_like else "xavier"


# --- helpers ---------------------------------------------------------------------------


def _num(value: float | int) -> float | int | str:
    """Evidence number: 4 significant digits; non-finite floats become JSON-safe strings."""
    if isinstance(value, int | np.integer) and not isinstance(value, bool):
        return int(value)
    x = float(value)
    if not math.isfinite(x):  # e.g. a ratio that overflowed: JSON has no Infinity
        return nonfinite_name(x)
    return float(f"{x:.4g}")


def _finite_median(values: FloatArray) -> float | None:
    finite = values[np.isfinite(values)]
    return float(np.median(finite)) if finite.size else None


def _finite(value: float | None) -> bool:
    return value is not None and math.isfinite(value)


def _weight_layers(layers: Sequence[LayerInfo]) -> list[LayerInfo]:
    hidden = [layer for layer in layers if layer.kind in WEIGHT_KINDS]
    if len(hidden) >= 2:
        return hidden
    return [layer for layer in layers if layer.kind in WEIGHT_KINDS | {"output"}]


def _fmt(x: float) -> str:
    return f"{x:.2g}"


# --- gradient flow ---------------------------------------------------------------------


def _norm_ratios(
    stats: LayerStats, first: int, last: int
) -> tuple[FloatArray, FloatArray, FloatArray]:
    """Per-step grad_norm of ``first`` and ``last`` and their ratio, on the usable steps.

    Steps where the last layer's norm is 0 or either norm is NaN/Inf say nothing about
    the ratio and are skipped. A first-layer norm of exactly 0 under a positive last one
    is kept (ratio 0): that is the gradient vanishing completely (underflow).
    """
    g_first, g_last = stats.column("grad_norm", first), stats.column("grad_norm", last)
    ok = np.isfinite(g_first) & np.isfinite(g_last) & (g_last > 0) & (g_first >= 0)
    return g_first[ok], g_last[ok], g_first[ok] / g_last[ok]


def _vanishing_remedy(activation: str | None, spec: _Spec, depth: int) -> str:
    options: list[str] = []
    if activation in SIGMOID_LIKE:
        options.append("use activation relu (or leaky_relu/gelu) with init kaiming")
    elif spec.init != "kaiming":
        options.append("use init kaiming (He init for ReLU-like units)")
    if spec.norm in (None, "none"):
        options.append("norm batch")
    if depth >= DEEP_NET_LAYERS and not spec.skip:
        options.append("skip true (residual blocks)")
    if not options:  # the usual fixes are in place already
        options.append("reduce model.depth" if spec.skip else "skip true (residual blocks)")
    return ", or ".join(options)


def _vanishing_patch(activation: str | None, spec: _Spec, depth: int) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    if activation in SIGMOID_LIKE:
        patch.update({"model.activation": "relu", "model.init": "kaiming"})
    elif spec.init != "kaiming":
        patch["model.init"] = "kaiming"
    if spec.norm in (None, "none"):
        patch["model.norm"] = "batch"
    if depth >= DEEP_NET_LAYERS and not spec.skip:
        patch["model.skip"] = True
    return patch or {"model.skip": True}


def vanishing_gradient(
    *, layers: Sequence[LayerInfo], stats: LayerStats, spec: _Spec | None = None
) -> Finding | None:
    spec = spec or _Spec()
    weights = _weight_layers(layers)
    if len(weights) < 2:
        return None
    first, last = weights[0], weights[-1]
    g_first, g_last, ratios = _norm_ratios(stats, first.index, last.index)
    if ratios.size == 0:
        return None
    ratio = float(np.median(ratios))
    if ratio >= VANISHING_RATIO:
        return None
    last_norm = float(np.median(g_last))
    vanished = [
        w.index
        for w in weights[:-1]
        if (m := _finite_median(stats.column("grad_norm", w.index))) is not None
        and m < VANISHED_LAYER_RATIO * last_norm
    ]
    if first.index not in vanished:  # the median of ratios and of norms can disagree
        vanished.insert(0, first.index)
    severity: Severity = "critical" if ratio < VANISHING_CRITICAL_RATIO else "warning"
    activation = first.activation or last.activation
    return Finding(
        code="vanishing_gradient",
        severity=severity,
        layers=vanished,
        summary=(
            f"Gradients vanish towards the input: the first layer's gradient norm is "
            f"{_fmt(ratio)} times the last hidden layer's, so the early layers barely learn."
        ),
        evidence={
            "ratio": _num(ratio),
            "first_grad_norm": _num(float(np.median(g_first))),
            "last_grad_norm": _num(last_norm),
            "first_layer": first.index,
            "last_layer": last.index,
            "depth": len(weights),
            "steps": int(ratios.size),
            "activation": activation or "none",
        },
        remedy=_vanishing_remedy(activation, spec, len(weights)),
        suggested_spec_patch=_vanishing_patch(activation, spec, len(weights)),
    )


def exploding_gradient(
    *, layers: Sequence[LayerInfo], stats: LayerStats, spec: _Spec | None = None
) -> Finding | None:
    spec = spec or _Spec()
    evidence: Evidence = {}
    flagged: set[int] = set()
    critical = False
    weights = _weight_layers(layers)
    if len(weights) >= 2:
        _, _, ratios = _norm_ratios(stats, weights[0].index, weights[-1].index)
        if ratios.size and (ratio := float(np.median(ratios))) > EXPLODING_RATIO:
            evidence["ratio"] = _num(ratio)
            flagged.add(weights[0].index)
            critical |= ratio > EXPLODING_CRITICAL_RATIO
    biggest = 0.0
    for layer in layers:
        norms = stats.column("grad_norm", layer.index)
        norms = norms[np.isfinite(norms)]  # NaN/Inf belong to the divergence rule
        if norms.size and (peak := float(norms.max())) > EXPLODING_GRAD_NORM:
            flagged.add(layer.index)
            biggest = max(biggest, peak)
    if biggest:
        evidence["max_grad_norm"] = _num(biggest)
        critical |= biggest > EXPLODING_CRITICAL_GRAD_NORM
    if not evidence:
        return None
    summary = (
        "Gradients explode: their norms are large or grow by orders of magnitude towards the input."
    )
    return Finding(
        code="exploding_gradient",
        severity="critical" if critical else "warning",
        layers=sorted(flagged),
        summary=summary,
        evidence=evidence,
        remedy=_lr_remedy(spec, extra="norm batch"),
        suggested_spec_patch=_lower_lr_patch(spec, norm=True),
    )


def _lr_remedy(spec: _Spec, *, extra: str | None = None, factor: float = 10.0) -> str:
    lower = (
        f"lower train.lr (e.g. {_round_lr(spec.lr / factor):g})"
        if spec.lr
        else f"lower train.lr (e.g. {factor:g}x)"
    )
    options = [lower]
    if spec.grad_clip is None:
        options.append("set train.grad_clip 1.0")
    if extra and not (extra == "norm batch" and spec.norm not in (None, "none")):
        options.append(extra)
    return ", ".join(options[:-1]) + (" or " if len(options) > 1 else "") + options[-1]


# --- spec patches ----------------------------------------------------------------------

LR_MAX = 10.0  # TrainSpec.lr's bound


def _round_lr(lr: float) -> float:
    """One significant digit, within the spec's bounds (0 < lr <= 10)."""
    return min(LR_MAX, max(1e-12, float(f"{lr:.1g}")))


def _lower_lr_patch(spec: _Spec, *, factor: float = 10.0, norm: bool = False) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    if spec.lr:
        patch["train.lr"] = _round_lr(spec.lr / factor)
    if spec.grad_clip is None:
        patch["train.grad_clip"] = 1.0
    if norm and spec.norm in (None, "none"):
        patch["model.norm"] = "batch"
    return patch


# --- activations -----------------------------------------------------------------------


def _bounded_layers(
    layers: Sequence[LayerInfo],
    stats: LayerStats,
    activations: frozenset[str],
    threshold: float,
    stat: str,
) -> list[tuple[int, float]]:
    """Layers with one of ``activations`` whose median ``stat`` exceeds ``threshold``."""
    found = []
    for layer in layers:
        if layer.activation not in activations:
            continue
        median = _finite_median(stats.column(stat, layer.index))
        if median is not None and median > threshold:
            found.append((layer.index, median))
    return found


def dead_units(
    *, layers: Sequence[LayerInfo], stats: LayerStats, spec: _Spec | None = None
) -> Finding | None:
    spec = spec or _Spec()
    dead = _bounded_layers(layers, stats, frozenset({"relu"}), DEAD_UNIT_FRACTION, "act_dead_frac")
    if not dead:
        return None
    worst_index, worst = max(dead, key=lambda item: item[1])
    relu_layers = sum(1 for layer in layers if layer.activation == "relu")
    options = ["use activation leaky_relu or elu", "lower train.lr"]
    if spec.init != "kaiming":
        options.append("init kaiming")
    patch: dict[str, Any] = {"model.activation": "leaky_relu"}
    if spec.init != "kaiming":
        patch["model.init"] = "kaiming"
    return Finding(
        code="dead_units",
        severity="critical" if worst > DEAD_UNIT_CRITICAL_FRACTION else "warning",
        layers=[i for i, _ in dead],
        summary=(
            f"ReLU units are dead: in {len(dead)} of {relu_layers} ReLU layers more than "
            f"{DEAD_UNIT_FRACTION:.0%} of the units output zero for every example of the "
            f"batch (up to {worst:.0%} in layer {worst_index}), so no gradient flows "
            "through them."
        ),
        evidence={
            "max_dead_fraction": _num(worst),
            "worst_layer": worst_index,
            "mean_dead_fraction": _num(float(np.mean([f for _, f in dead]))),
            "layers_flagged": len(dead),
            "relu_layers": relu_layers,
        },
        remedy=", ".join(options[:-1]) + " or " + options[-1],
        suggested_spec_patch=patch,
    )


def saturation(
    *, layers: Sequence[LayerInfo], stats: LayerStats, spec: _Spec | None = None
) -> Finding | None:
    spec = spec or _Spec()
    pinned = dict(
        _bounded_layers(layers, stats, SIGMOID_LIKE, SATURATED_UNIT_FRACTION, "act_dead_frac")
    )
    outputs = dict(
        _bounded_layers(layers, stats, SIGMOID_LIKE, SATURATED_FRACTION, "act_saturation")
    )
    flagged = sorted(set(pinned) | set(outputs))
    if not flagged:
        return None
    worst_index = max(flagged, key=lambda i: max(pinned.get(i, 0.0), outputs.get(i, 0.0)))
    worst = max(pinned.get(worst_index, 0.0), outputs.get(worst_index, 0.0))
    options = ["use activation relu (or gelu) with init kaiming"]
    if spec.norm in (None, "none"):
        options.insert(0, "use norm batch")
    evidence: Evidence = {
        "max_saturated_fraction": _num(worst),
        "worst_layer": worst_index,
        "layers_flagged": len(flagged),
    }
    if pinned:
        evidence["max_pinned_unit_fraction"] = _num(max(pinned.values()))
    patch: dict[str, Any] = {"model.activation": "relu", "model.init": "kaiming"}
    return Finding(
        code="saturation",
        severity="critical" if worst > SATURATED_CRITICAL_FRACTION else "warning",
        layers=flagged,
        summary=(
            f"Sigmoid/tanh units saturate: in {len(flagged)} layers more than "
            f"{SATURATED_FRACTION:.0%} of the outputs, or of the units for the whole batch, "
            f"sit at a bound (up to {worst:.0%} in layer {worst_index}), where their "
            "derivative is nearly zero."
        ),
        evidence=evidence,
        remedy=" or ".join(options),
        suggested_spec_patch=patch,
    )


# --- epoch metrics ---------------------------------------------------------------------


def _acc_gap_threshold(train_acc: float) -> float:
    # AUTOTRAINER's "test not well" feature (Zhang et al. 2021): a gap of 0.07 above 90%
    # training accuracy, 0.1 below it.
    return OVERFIT_ACC_GAP if train_acc > 0.9 else OVERFIT_ACC_GAP_LOW


def _overfit_patch(spec: _Spec, best_epoch: int) -> dict[str, Any]:
    patch: dict[str, Any] = {}
    if spec.train_size is not None and spec.train_size < SMALL_TRAIN_SET:
        patch["data.train_size"] = None  # more data first: the whole training set
    if spec.dropout < 0.3:
        patch["model.dropout"] = 0.3
    elif spec.l2 < 1e-3:
        patch["train.l2"] = 1e-3
    else:
        patch["data.augment.noise"] = 0.1
    if spec.early_stopping_patience is None:
        patch["train.early_stopping_patience"] = max(3, min(20, best_epoch // 2 or 1))
    return patch


def overfitting(*, metrics: Sequence[EpochRow], spec: _Spec | None = None) -> Finding | None:
    """A practitioner's overfit: validation accuracy well below training accuracy while
    validation loss sits many times above training loss, or (without accuracies) a
    large loss gap that grew after the best epoch."""
    spec = spec or _Spec()
    rows = [m for m in metrics if _finite(m.train_loss) and _finite(m.val_loss)]
    if len(rows) < 2:
        return None
    train = np.array([m.train_loss for m in rows], dtype=np.float64)
    val = np.array([m.val_loss for m in rows], dtype=np.float64)
    gaps = val - train
    best = int(np.argmin(val))
    gap, best_gap = float(gaps[-1]), float(gaps[best])
    val_rose = val[-1] > (1 + OVERFIT_VAL_RISE) * val[best] and train[-1] < train[best]
    growing = gap > OVERFIT_GAP and (gap > best_gap or val_rose)
    last = rows[-1]
    acc_gap: float | None = None
    opened = rows[best].epoch
    accuracy_overfit = False
    if _finite(last.train_acc) and _finite(last.val_acc):
        train_acc = float(last.train_acc)  # type: ignore[arg-type]
        acc_gap = train_acc - float(last.val_acc)  # type: ignore[arg-type]
        loss_ratio = float(val[-1]) / max(float(train[-1]), 1e-12)
        accuracy_overfit = (
            acc_gap >= _acc_gap_threshold(train_acc)
            and gap >= OVERFIT_MIN_LOSS_GAP
            and loss_ratio >= OVERFIT_LOSS_RATIO
        )
        if accuracy_overfit:  # the first epoch from which the accuracy gap stayed open
            for m in reversed(rows):
                if not (_finite(m.train_acc) and _finite(m.val_acc)):
                    break
                t, v = float(m.train_acc), float(m.val_acc)  # type: ignore[arg-type]
                if t - v < _acc_gap_threshold(t):
                    break
                opened = m.epoch
    if not (growing or accuracy_overfit):
        return None
    evidence: Evidence = {
        "gap": _num(gap),
        "best_epoch": rows[best].epoch,
        "opened_epoch": opened,
        "best_gap": _num(best_gap),
        "min_val_loss": _num(float(val[best])),
        "final_val_loss": _num(float(val[-1])),
        "final_train_loss": _num(float(train[-1])),
        "loss_ratio": _num(float(val[-1]) / max(float(train[-1]), 1e-12)),
    }
    if acc_gap is not None:
        evidence["acc_gap"] = _num(acc_gap)
    critical = gap > OVERFIT_CRITICAL_GAP or (acc_gap or 0.0) > OVERFIT_CRITICAL_ACC_GAP
    what = (
        f"validation accuracy is {acc_gap:.0%} below training accuracy and validation loss "
        f"is {evidence['loss_ratio']}x the training loss"
        if accuracy_overfit and acc_gap is not None
        else f"validation loss is {gap:.2f} above training loss"
    )
    return Finding(
        code="overfitting",
        severity="critical" if critical else "warning",
        layers=[],
        summary=(
            f"The model overfits: {what}; the gap opened at epoch {opened} (validation loss "
            f"was lowest at epoch {rows[best].epoch})."
        ),
        evidence=evidence,
        remedy=(
            "use a smaller model (lower model.depth/width), data.augment (shift, noise), "
            "model.dropout 0.3-0.5 or dropconnect, train.l2 (e.g. 1e-3), more data "
            f"(data.train_size), or train.early_stopping_patience (best epoch {rows[best].epoch})"
        ),
        suggested_spec_patch=_overfit_patch(spec, rows[best].epoch),
    )


def divergence(
    *,
    stats: LayerStats,
    metrics: Sequence[EpochRow],
    result: Mapping[str, Any] | None,
    spec: _Spec | None = None,
) -> Finding | None:
    spec = spec or _Spec()
    evidence: Evidence = {}
    if stats.first_nonfinite_step is not None:
        evidence["first_nonfinite_step"] = int(stats.first_nonfinite_step)
    # An epoch that recorded a row but no finite training loss diverged (SQLite keeps a
    # NaN as NULL); a missing val_loss is only counted with a non-finite train_loss.
    bad = [m.epoch for m in metrics if not _finite(m.train_loss)]
    bad += [m.epoch for m in metrics if m.val_loss is not None and not _finite(m.val_loss)]
    if bad:
        evidence["first_nonfinite_epoch"] = min(bad)
    if result and result.get("diverged") is True:
        evidence["diverged"] = "true"
    if not evidence:
        return None
    options = [_lr_remedy(spec)]
    patch = _lower_lr_patch(spec)
    if spec.precision in ("fp16", "bf16"):
        options.append("train.precision fp32")
        patch["train.precision"] = "fp32"
    where = (
        f" at step {stats.first_nonfinite_step}" if stats.first_nonfinite_step is not None else ""
    )
    return Finding(
        code="divergence",
        severity="critical",
        layers=[],
        summary=f"Training diverged: the loss or the gradients became NaN or infinite{where}.",
        evidence=evidence,
        remedy=", or ".join(options),
        suggested_spec_patch=patch,
    )


@dataclass(frozen=True)
class _Progress:
    """How far a finished run got, against chance."""

    classes: int
    chance: float
    train_acc: float
    best_acc: float  # the better of final train and validation accuracy
    epochs: int
    first_train_loss: float | None
    last_drop: float | None  # relative fall of the train loss over the last epoch

    @property
    def at_chance(self) -> bool:
        return self.best_acc < NOT_LEARNING_CHANCE_FACTOR * self.chance

    @property
    def fitting_poorly(self) -> bool:
        return self.best_acc < UNDERFIT_ACC

    @property
    def chance_loss(self) -> float:
        return math.log(self.classes)

    @classmethod
    def of(cls, layers: Sequence[LayerInfo], metrics: Sequence[EpochRow]) -> _Progress | None:
        outputs = [layer for layer in layers if layer.kind == "output" and layer.shape]
        if not metrics or not outputs or outputs[-1].shape[0] < 2:
            return None
        last = metrics[-1]
        if not _finite(last.train_acc):
            return None
        classes = outputs[-1].shape[0]
        train_acc = float(last.train_acc)  # type: ignore[arg-type]
        val_acc = float(last.val_acc) if _finite(last.val_acc) else 0.0  # type: ignore[arg-type]
        losses = [float(m.train_loss) for m in metrics if _finite(m.train_loss)]  # type: ignore[arg-type]
        first = metrics[0].train_loss
        first_loss = float(first) if first is not None and math.isfinite(first) else None
        drop = None
        if len(losses) >= 2 and losses[-2] > 0:
            drop = (losses[-2] - losses[-1]) / losses[-2]
        return cls(
            classes=classes,
            chance=1.0 / classes,
            train_acc=train_acc,
            best_acc=max(train_acc, val_acc),
            epochs=len(metrics),
            first_train_loss=first_loss,
            last_drop=drop,
        )


def not_learning(
    *, layers: Sequence[LayerInfo], metrics: Sequence[EpochRow], job_status: str
) -> Finding | None:
    """Training accuracy near chance after the run. A symptom: :func:`diagnose` points it
    at the cause it finds and copies that cause's patch."""
    if job_status != "succeeded":
        return None
    progress = _Progress.of(layers, metrics)
    if progress is None or progress.train_acc >= NOT_LEARNING_CHANCE_FACTOR * progress.chance:
        return None
    last = metrics[-1]
    evidence: Evidence = {
        "train_acc": _num(progress.train_acc),
        "chance_acc": _num(progress.chance),
        "epochs": len(metrics),
    }
    if _finite(last.train_loss):
        evidence["train_loss"] = _num(float(last.train_loss))  # type: ignore[arg-type]
        evidence["chance_loss"] = _num(progress.chance_loss)
    return Finding(
        code="not_learning",
        severity="critical" if progress.at_chance else "warning",
        layers=[],
        summary=(
            f"The model did not learn: training accuracy {progress.train_acc:.0%} after "
            f"{len(metrics)} epochs is near chance ({progress.chance:.0%})."
        ),
        evidence=evidence,
        remedy="train more epochs or raise train.lr",
        suggested_spec_patch={},
    )


# --- root causes -----------------------------------------------------------------------


def _weight_layer_medians(
    layers: Sequence[LayerInfo], stats: LayerStats, name: str
) -> list[tuple[int, float]]:
    out = []
    for layer in layers:
        if layer.kind not in WEIGHT_KINDS | {"output"}:
            continue
        median = _finite_median(stats.column(name, layer.index))
        if median is not None:
            out.append((layer.index, median))
    return out


def over_regularized(
    *,
    layers: Sequence[LayerInfo],
    stats: LayerStats,
    early_stats: LayerStats | None,
    metrics: Sequence[EpochRow],
    spec: _Spec,
) -> Finding | None:
    """A penalty or dropout so strong that the data cannot be fitted: with l1/l2 the
    weight norms collapse (the penalty's gradient outweighs the data's); with dropout
    the net stays near chance or trains far below its own validation accuracy."""
    progress = _Progress.of(layers, metrics)
    if progress is None or not progress.fitting_poorly:
        return None
    evidence: Evidence = {"best_acc": _num(progress.best_acc)}
    patch: dict[str, Any] = {}
    reasons: list[str] = []
    if (spec.l1 or spec.l2) and early_stats is not None:
        before = dict(_weight_layer_medians(layers, early_stats, "weight_norm"))
        after = _weight_layer_medians(layers, stats, "weight_norm")
        ratios = [w / before[i] for i, w in after if before.get(i)]
        if ratios and (shrink := float(np.median(ratios))) < WEIGHT_COLLAPSE_RATIO:
            evidence["weight_norm_ratio"] = _num(shrink)
            if spec.l2:
                evidence["l2"] = _num(spec.l2)
                patch["train.l2"] = float(f"{spec.l2 / 100:.1g}")
            if spec.l1:
                evidence["l1"] = _num(spec.l1)
                patch["train.l1"] = float(f"{spec.l1 / 100:.1g}")
            reasons.append(
                f"the weight penalty shrank the weight norms to {shrink:.0%} of their starting size"
            )
    if spec.dropout >= HEAVY_DROPOUT:
        last = metrics[-1]
        val_acc = float(last.val_acc) if _finite(last.val_acc) else None  # type: ignore[arg-type]
        below_val = val_acc is not None and val_acc - progress.train_acc > DROPOUT_TRAIN_VAL_GAP
        if progress.at_chance or below_val:
            evidence["dropout"] = _num(spec.dropout)
            patch["model.dropout"] = 0.2
            reasons.append(f"dropout {spec.dropout:g} leaves too few units to fit the data")
    if not reasons:
        return None
    return Finding(
        code="over_regularized",
        severity="critical" if progress.at_chance else "warning",
        layers=[],
        summary=f"Over-regularized: {' and '.join(reasons)}; accuracy stays at "
        f"{progress.best_acc:.0%}.",
        evidence=evidence,
        remedy="lower " + ", ".join(p.split(".")[1] for p in patch) + " (e.g. 100x)",
        suggested_spec_patch=patch,
    )


def _predicted_gain(layers: Sequence[LayerInfo], spec: _Spec) -> float | None:
    """The factor by which the init alone scales the signal from input to the last hidden
    layer (He et al. 2015: Var[y] = fan_in · Var[w] · Var[x] · (1/2 for ReLU))."""
    if spec.init not in ("normal", "default"):
        return None
    gain = 1.0
    counted = 0
    for layer in layers:
        if layer.kind not in WEIGHT_KINDS or len(layer.shape) < 2:
            continue
        fan_in = int(np.prod(layer.shape[1:]))
        # PyTorch's default (kaiming_uniform, a=sqrt(5)): Var[w] = 1 / (3 fan_in).
        var = (spec.init_std or 0.02) ** 2 if spec.init == "normal" else 1.0 / (3 * fan_in)
        gain *= math.sqrt(fan_in * var * (0.5 if spec.relu_like else 1.0))
        counted += 1
    return gain if counted else None


def poor_initialization(
    *, layers: Sequence[LayerInfo], early_stats: LayerStats | None, spec: _Spec
) -> Finding | None:
    """At the first telemetry steps the activations' scale collapses or explodes across
    depth, and the init is not the one that preserves it for this activation."""
    if early_stats is None or spec.init == spec.good_init():
        return None
    hidden = [layer for layer in layers if layer.kind in WEIGHT_KINDS and layer.activation]
    gain = _predicted_gain(layers, spec)
    # NaN from the first steps, and an init that predicts an explosion: the activations
    # overflowed (their statistics are NaN, not missing).
    blew_up = (
        early_stats.first_nonfinite_step is not None
        and early_stats.steps.size > 0
        and early_stats.first_nonfinite_step <= int(early_stats.steps.max())
        and gain is not None
        and gain > POOR_INIT_MAX_ACT_STD
    )
    scales: list[tuple[int, float]] = []
    for layer in hidden:
        scale = _finite_median_or_inf(early_stats, layer.index)
        if scale is None and blew_up:
            scale = math.inf
        if scale is not None:
            scales.append((layer.index, scale))
    if len(scales) < 2:
        return None
    smallest = min(scales, key=lambda item: item[1])
    largest = max(scales, key=lambda item: item[1])
    collapsed = smallest[1] < POOR_INIT_MIN_ACT_STD
    exploded = largest[1] > POOR_INIT_MAX_ACT_STD
    if not (collapsed or exploded):
        return None
    evidence: Evidence = {
        "init": spec.init or "default",
        "first_act_std": _num(scales[0][1]),
        "last_act_std": _num(scales[-1][1]),
        "min_act_std": _num(smallest[1]),
        "max_act_std": _num(largest[1]),
    }
    if spec.init == "normal" and spec.init_std is not None:
        evidence["init_std"] = _num(spec.init_std)
    if gain is not None:
        evidence["predicted_gain"] = _num(gain)
    how = "collapses" if collapsed else "explodes"
    flagged = [i for i, s in scales if s < POOR_INIT_MIN_ACT_STD or s > POOR_INIT_MAX_ACT_STD]
    return Finding(
        code="poor_initialization",
        severity="critical"
        if (collapsed and smallest[1] < POOR_INIT_MIN_ACT_STD**2) or exploded
        else "warning",
        layers=flagged,
        summary=(
            f"Poor initialization: at the first steps the activations' scale {how} across "
            f"depth (std from {scales[0][1]:.2g} in the first hidden layer to "
            f"{scales[-1][1]:.2g} in the last) with init {spec.init or 'default'}."
        ),
        evidence=evidence,
        remedy=f"use model.init {spec.good_init()} (it keeps the signal's scale for "
        f"{'ReLU-like' if spec.relu_like else 'sigmoid/tanh'} units)",
        suggested_spec_patch={"model.init": spec.good_init()},
    )


def _finite_median_or_inf(stats: LayerStats, layer_index: int) -> float | None:
    """Median act_std of a layer; inf when its outputs overflowed (all non-finite)."""
    values = stats.column("act_std", layer_index)
    finite = values[np.isfinite(values)]
    if finite.size:
        return float(np.median(finite))
    return math.inf if np.isinf(values).any() else None


def lr_too_low(
    *, layers: Sequence[LayerInfo], stats: LayerStats, metrics: Sequence[EpochRow], spec: _Spec
) -> Finding | None:
    """Every weight layer moves by orders of magnitude less than ~1e-3 of its norm per
    step while the run fits poorly."""
    progress = _Progress.of(layers, metrics)
    if progress is None or not progress.fitting_poorly:
        return None
    ratios = _weight_layer_medians(layers, stats, "update_ratio")
    if not ratios:
        return None
    fastest = max(r for _, r in ratios)
    if fastest >= LR_LOW_UPDATE_RATIO:
        return None
    factor = HEALTHY_UPDATE_RATIO / max(fastest, 1e-12)
    patch = {"train.lr": _round_lr(spec.lr * min(factor, 1e4))} if spec.lr else {}
    return Finding(
        code="lr_too_low",
        severity="critical" if progress.at_chance else "warning",
        layers=[i for i, _ in ratios],
        summary=(
            f"The learning rate is far too low: each step changes every layer's weights by "
            f"at most {fastest:.1e} of their norm (healthy runs: ~{HEALTHY_UPDATE_RATIO:g}), "
            f"so accuracy stays at {progress.best_acc:.0%}."
        ),
        evidence={"max_update_ratio": _num(fastest), "best_acc": _num(progress.best_acc)},
        remedy=(f"raise train.lr (e.g. to {patch['train.lr']:g})" if patch else "raise train.lr"),
        suggested_spec_patch=patch,
    )


def lr_too_high(
    *,
    layers: Sequence[LayerInfo],
    stats: LayerStats,
    metrics: Sequence[EpochRow],
    diverged: bool,
    spec: _Spec,
) -> Finding | None:
    """Steps too large for the loss surface: weights change by more than a tenth of their
    norm per step, the first epoch's loss spikes far above chance, the loss ends far
    above its minimum or above chance, or the run diverged."""
    evidence: Evidence = {}
    flagged: list[int] = []
    fast = [
        (i, r)
        for i, r in _weight_layer_medians(layers, stats, "update_ratio")
        if r > UPDATE_RATIO_HIGH
    ]
    if fast:
        evidence["max_update_ratio"] = _num(max(r for _, r in fast))
        flagged = [i for i, _ in fast]
    progress = _Progress.of(layers, metrics)
    losses = [float(m.train_loss) for m in metrics if _finite(m.train_loss)]  # type: ignore[arg-type]
    if progress is not None and losses:
        if (first := progress.first_train_loss) is not None and (
            first > LR_HIGH_LOSS_SPIKE * progress.chance_loss
        ):
            evidence["first_epoch_loss"] = _num(first)
        low = min(losses)
        if len(losses) >= 3 and losses[-1] > LR_HIGH_LOSS_RISE * low and losses[-1] > 0.1:
            evidence["loss_rise"] = _num(losses[-1] / low)
        if progress.fitting_poorly and losses[-1] > LR_HIGH_ABOVE_CHANCE * progress.chance_loss:
            evidence["final_loss_vs_chance"] = _num(losses[-1] / progress.chance_loss)
    if diverged:
        evidence["diverged"] = "true"
    if list(evidence) == ["diverged"] and (not spec.lr or spec.precision in ("fp16", "bf16")):
        return None  # a NaN alone, in half precision, may be an overflow rather than the lr
    if not evidence:
        return None
    strong = (progress is not None and progress.at_chance) or diverged
    # A blow-up in the first epoch (a loss far above that of a uniform guess, or NaN)
    # needs more than the usual tenth: the benchmark's 200x runs still blow up at 20x.
    first_epoch_nan = bool(metrics) and not _finite(metrics[0].train_loss)
    spiked = progress is not None and (progress.first_train_loss or 0.0) > (
        LR_BLOWUP_SPIKE * progress.chance_loss
    )
    factor = 100.0 if first_epoch_nan or spiked else 10.0
    return Finding(
        code="lr_too_high",
        severity="critical" if strong else "warning",
        layers=flagged,
        summary=(
            "The learning rate is too high: "
            + "; ".join(_LR_HIGH_WORDS[k].format(v=v) for k, v in evidence.items())
            + "."
        ),
        evidence=evidence,
        remedy=_lr_remedy(spec, factor=factor),
        suggested_spec_patch=_lower_lr_patch(spec, factor=factor),
    )


_LR_HIGH_WORDS: dict[str, str] = {
    "max_update_ratio": "a step changes the weights by up to {v} of their norm",
    "first_epoch_loss": "the first epoch's loss spiked to {v}",
    "loss_rise": "the loss ended {v}x above its minimum (it oscillates or climbs)",
    "final_loss_vs_chance": "the loss ends {v}x above that of a uniform guess",
    "diverged": "the loss became NaN or infinite",
}


def degradation(
    *, layers: Sequence[LayerInfo], metrics: Sequence[EpochRow], job_status: str, spec: _Spec
) -> Finding | None:
    """A deep plain net (no skip connections) stuck at chance: the depth itself stops it
    training (He et al. 2016), where a residual or shallower twin trains."""
    if job_status != "succeeded" or spec.skip or not spec.relu_like:
        return None  # sigmoid/tanh: the activation is the cause (vanishing, saturation)
    depth = sum(1 for layer in layers if layer.kind in WEIGHT_KINDS)
    progress = _Progress.of(layers, metrics)
    if depth < DEGRADATION_DEPTH or progress is None or not progress.at_chance:
        return None
    patch: dict[str, Any] = {"model.skip": True}
    if spec.norm in (None, "none"):
        patch["model.norm"] = "batch"
    if spec.relu_like and spec.init != "kaiming":
        patch["model.init"] = "kaiming"
    return Finding(
        code="degradation",
        severity="critical",
        layers=[],
        summary=(
            f"Degradation: a plain net {depth} layers deep without skip connections stays at "
            f"chance ({progress.best_acc:.0%}); residual blocks or a shallower net train."
        ),
        evidence={"depth": depth, "best_acc": _num(progress.best_acc), "skip": "false"},
        remedy="use model.skip true (residual blocks) and model.norm batch, or lower model.depth",
        suggested_spec_patch=patch,
    )


def underfitting(
    *,
    layers: Sequence[LayerInfo],
    stats: LayerStats,
    metrics: Sequence[EpochRow],
    job_status: str,
    spec: _Spec,
) -> Finding | None:
    """The run ended fitting the training set poorly (but above chance), or stopped after
    too few epochs or optimizer steps to converge: train longer when it was cut short,
    else a bigger model."""
    if job_status != "succeeded":
        return None
    progress = _Progress.of(layers, metrics)
    if progress is None:
        return None
    steps = int(stats.steps.max()) if stats.steps.size else None
    few_epochs = progress.epochs <= FEW_EPOCHS
    few_steps = steps is not None and steps < FEW_STEPS
    cut_short = (few_epochs or few_steps) and progress.best_acc < CUT_SHORT_ACC
    if not (progress.fitting_poorly or cut_short):
        return None
    still_falling = few_epochs or (
        progress.last_drop is not None and progress.last_drop > STILL_FALLING
    )
    if progress.at_chance and not (still_falling or cut_short):
        return None  # nothing learned at all: not_learning, with its cause
    evidence: Evidence = {
        "best_acc": _num(progress.best_acc),
        "train_acc": _num(progress.train_acc),
        "epochs": progress.epochs,
    }
    if steps is not None:
        evidence["steps"] = steps
    if progress.last_drop is not None:
        evidence["last_epoch_loss_drop"] = _num(progress.last_drop)
    patch: dict[str, Any]
    if few_steps and not few_epochs and spec.batch_size and spec.batch_size > MIN_BATCH:
        # A batch that makes TARGET_STEPS steps over the same epochs.
        batch = max(MIN_BATCH, spec.batch_size * (steps or 1) // TARGET_STEPS)
        patch = {"train.batch_size": batch}
        remedy = f"take more optimizer steps: train.batch_size {batch} (it made only {steps})"
    elif still_falling or cut_short:
        epochs = max(UNDERFIT_MIN_EPOCHS, progress.epochs * UNDERFIT_EPOCH_FACTOR)
        patch = {"train.epochs": min(10_000, epochs)}
        remedy = f"train longer (train.epochs {epochs}): the loss was still falling"
    else:
        width = min(4096, 2 * (spec.width or 64))
        patch = {"model.width": width}
        remedy = f"use a bigger model (model.width {width}) or raise train.lr"
    return Finding(
        code="underfitting",
        severity="warning",
        layers=[],
        summary=(
            f"Underfitting: accuracy reaches only {progress.best_acc:.0%} after "
            f"{progress.epochs} epochs"
            + (f" ({steps} optimizer steps)" if steps is not None else "")
            + (", and the loss was still falling at the end." if still_falling else ".")
        ),
        evidence=evidence,
        remedy=remedy,
        suggested_spec_patch=patch,
    )


# --- all rules -------------------------------------------------------------------------

# Which findings explain which: a symptom's cause is the first of these present.
CAUSES_OF: dict[str, tuple[str, ...]] = {
    "not_learning": (
        "over_regularized",
        "poor_initialization",
        "lr_too_low",
        "lr_too_high",
        "degradation",
        "saturation",
        "vanishing_gradient",
        "dead_units",
        "divergence",
        "underfitting",
    ),
    "divergence": ("poor_initialization", "lr_too_high"),
    "exploding_gradient": ("poor_initialization", "lr_too_high"),
    "vanishing_gradient": ("poor_initialization", "saturation", "degradation"),
    "dead_units": ("over_regularized", "poor_initialization", "lr_too_high"),
    "saturation": ("poor_initialization",),
    "underfitting": ("lr_too_low", "over_regularized"),
    "lr_too_high": ("poor_initialization",),
}


def _point_to_causes(findings: list[Finding]) -> list[Finding]:
    """Name each symptom's cause; a cause is at least as severe as what it explains."""
    by_code = {f.code: f for f in findings}
    out: dict[str, Finding] = dict(by_code)
    for f in findings:
        cause = next((c for c in CAUSES_OF.get(f.code, ()) if c in by_code), None)
        if cause is None:
            continue
        patch = f.suggested_spec_patch or dict(by_code[cause].suggested_spec_patch)
        if f.code == "not_learning":
            patch = dict(by_code[cause].suggested_spec_patch)
        out[f.code] = replace(
            out[f.code],
            caused_by=cause,
            summary=f"{f.summary} Cause: {cause} (see that finding).",
            evidence={**f.evidence, "caused_by": cause},
            suggested_spec_patch=patch,
            remedy=f"see {cause}: {by_code[cause].remedy}"
            if f.code == "not_learning"
            else out[f.code].remedy,
        )
        if SEVERITY_ORDER[f.severity] < SEVERITY_ORDER[out[cause].severity]:
            out[cause] = replace(out[cause], severity=f.severity)
    return [out[f.code] for f in findings]


def diagnose(
    *,
    layers: Sequence[LayerInfo],
    stats: LayerStats,
    metrics: Sequence[EpochRow],
    job_status: str,
    result: Mapping[str, Any] | None,
    spec: Mapping[str, Any] | None = None,
    early_stats: LayerStats | None = None,
) -> list[Finding]:
    """Every finding about one job: causes before the symptoms they explain, most severe
    first. ``spec`` (the stored experiment spec) tailors the remedies and patches: what
    the job already uses is not suggested again. ``early_stats``: the first telemetry
    steps (:func:`early_window_end`), where a poor initialisation shows."""
    hints = _Spec.parse(spec)
    diverged = bool(result and result.get("diverged") is True) or any(
        not _finite(m.train_loss) for m in metrics
    )
    regularized = over_regularized(
        layers=layers, stats=stats, early_stats=early_stats, metrics=metrics, spec=hints
    )
    init = poor_initialization(layers=layers, early_stats=early_stats, spec=hints)
    # A crushed or badly initialised net moves its weights by odd fractions of their
    # norm: the update ratios then say nothing about the learning rate.
    lr_rules: list[Finding | None] = []
    if regularized is None and init is None:
        lr_rules = [
            lr_too_low(layers=layers, stats=stats, metrics=metrics, spec=hints),
            lr_too_high(layers=layers, stats=stats, metrics=metrics, diverged=diverged, spec=hints),
        ]
    candidates = [
        regularized,
        init,
        *lr_rules,
        degradation(layers=layers, metrics=metrics, job_status=job_status, spec=hints),
        divergence(stats=stats, metrics=metrics, result=result, spec=hints),
        vanishing_gradient(layers=layers, stats=stats, spec=hints),
        exploding_gradient(layers=layers, stats=stats, spec=hints),
        dead_units(layers=layers, stats=stats, spec=hints),
        saturation(layers=layers, stats=stats, spec=hints),
        overfitting(metrics=metrics, spec=hints),
    ]
    findings = [f for f in candidates if f is not None]
    if any(f.code == "lr_too_high" for f in findings):  # a net killed by huge steps is still
        findings = [f for f in findings if f.code != "lr_too_low"]
    # Underfitting only when nothing else explains the poor fit, and never beside an
    # overfit (a training set fitted better than the validation set is not underfit).
    explained = {*CAUSES_OF["underfitting"], *CAUSES_OF["not_learning"][:-1], "overfitting"}
    if not any(f.code in explained for f in findings):
        fit = underfitting(
            layers=layers, stats=stats, metrics=metrics, job_status=job_status, spec=hints
        )
        if fit is not None:
            findings.append(fit)
    stuck = not_learning(layers=layers, metrics=metrics, job_status=job_status)
    if stuck is not None:
        if not any(f.code in CAUSES_OF["not_learning"] for f in findings):
            stuck = replace(
                stuck,
                remedy="no cause found in the statistics: raise train.lr or train longer",
                suggested_spec_patch={"train.lr": _round_lr(hints.lr * 10)} if hints.lr else {},
            )
        findings.append(stuck)
    findings = _point_to_causes(findings)
    # sorted() is stable: within a severity causes come first, then the rule order above.
    return sorted(findings, key=lambda f: (SEVERITY_ORDER[f.severity], f.caused_by is not None))


@dataclass(frozen=True)
class SweepRun:
    """One finished job of a sweep, as the cross-job rules see it."""

    job_id: str
    point: Mapping[str, Any]
    seed: int | None
    depth: int
    skip: bool
    train_loss: float | None


_TWIN_FIELDS = frozenset({"model.skip", "model.depth"})


def _twin_of(plain: SweepRun, other: SweepRun) -> bool:
    """``other`` is ``plain``'s residual or shallower twin: the same grid point but for
    model.skip / model.depth, the same seed, and residual or less deep."""
    if other.job_id == plain.job_id or other.seed != plain.seed:
        return False
    keys = set(plain.point) | set(other.point)
    differing = {k for k in keys if plain.point.get(k) != other.point.get(k)}
    if not differing or not differing <= _TWIN_FIELDS:
        return False
    return other.skip or other.depth < plain.depth


def sweep_degradation(runs: Sequence[SweepRun]) -> dict[str, Finding]:
    """Degradation judged across a sweep: a plain (no skip) net that trains worse than its
    residual or shallower twin. Keyed by the degraded job's id; the twin that trains best
    is the evidence."""
    findings: dict[str, Finding] = {}
    for plain in runs:
        if plain.skip or plain.train_loss is None or not math.isfinite(plain.train_loss):
            continue
        twins = [
            (t.train_loss, t)
            for t in runs
            if _twin_of(plain, t) and t.train_loss is not None and math.isfinite(t.train_loss)
        ]
        if not twins:
            continue
        best_loss, best = min(twins, key=lambda pair: pair[0])
        ratio = plain.train_loss / best_loss if best_loss > 0 else math.inf
        gap = plain.train_loss - best_loss
        if ratio < DEGRADATION_TWIN_LOSS_RATIO or gap < DEGRADATION_TWIN_LOSS_GAP:
            continue
        patch: dict[str, Any] = {"model.skip": True} if best.skip else {"model.depth": best.depth}
        twin = "residual" if best.skip else f"{best.depth}-layer"
        findings[plain.job_id] = Finding(
            code="degradation",
            severity="warning",
            layers=[],
            summary=(
                f"Degradation: this plain {plain.depth}-layer net ends at train loss "
                f"{_fmt(plain.train_loss)}, {ratio:.2f}x its {twin} twin's "
                f"({_fmt(best_loss)}) in this sweep: depth without skip connections "
                "makes it train worse, not better."
            ),
            evidence={
                "train_loss": _num(plain.train_loss),
                "twin_train_loss": _num(best_loss),
                "ratio": _num(ratio),
                "twin_job_id": best.job_id,
                "depth": plain.depth,
                "twin_depth": best.depth,
            },
            remedy="use model.skip true (residual blocks)"
            if best.skip
            else f"use model.depth {best.depth}, or model.skip true",
            suggested_spec_patch=patch,
        )
    return findings
