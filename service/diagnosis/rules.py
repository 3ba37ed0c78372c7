"""The diagnosis rules: what went wrong in a training job, from its stored statistics.

Pure functions over plain arrays and dataclasses: no SQL, no FastAPI, no torch. The use
case (``service.diagnosis.diagnose_job``) loads the rows and calls :func:`diagnose`.

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
from dataclasses import dataclass, field
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
UPDATE_RATIO_HIGH = 0.1  # median ||dw||/||w|| of a layer; healthy runs here: <= 0.03

# dead_units (plain ReLU only: act_saturation is the fraction of outputs exactly 0).
# Not 0.5: a healthy ReLU layer outputs ~50% zeros by construction. Measured on MNIST-1D
# (20 layers, 2 epochs): 0.42-0.57 with default init, 0.50-0.72 with He init, 0.49-0.55
# with batch norm; a 6-layer net killed by Adam lr 0.05 or SGD lr 0.5: 0.84-1.0.
DEAD_FRACTION = 0.8
DEAD_CRITICAL_FRACTION = 0.95

# saturation (sigmoid/tanh: act_saturation is the fraction within 1e-2 of a bound).
SATURATED_FRACTION = 0.5
SATURATED_CRITICAL_FRACTION = 0.9

# overfitting: final val_loss - train_loss, and it must be growing.
OVERFIT_GAP = 0.5
OVERFIT_CRITICAL_GAP = 2.0
OVERFIT_VAL_RISE = 0.10  # val loss this far above its minimum while train loss fell

# not_learning: final train accuracy below this multiple of chance (1 / classes).
NOT_LEARNING_CHANCE_FACTOR = 1.5


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
    suggested_spec_patch: dict[str, Any] = field(default_factory=dict)


@dataclass(frozen=True)
class _Spec:
    """The few spec fields the remedies depend on (all optional)."""

    init: str | None = None
    norm: str | None = None
    skip: bool | None = None
    lr: float | None = None
    grad_clip: float | None = None
    precision: str | None = None

    @classmethod
    def parse(cls, spec: Mapping[str, Any] | None) -> _Spec:
        if not spec:
            return cls()
        model = spec.get("model") or {}
        train = spec.get("train") or {}
        lr = train.get("lr")
        clip = train.get("grad_clip")
        return cls(
            init=model.get("init"),
            norm=model.get("norm"),
            skip=model.get("skip"),
            lr=float(lr) if isinstance(lr, int | float) else None,
            grad_clip=float(clip) if isinstance(clip, int | float) else None,
            precision=train.get("precision"),
        )


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
    fast: list[tuple[int, float]] = []
    for layer in layers:
        if layer.kind not in WEIGHT_KINDS | {"output", "projection"}:
            continue  # a norm layer's gamma can start at 0: its ratio means little
        median = _finite_median(stats.column("update_ratio", layer.index))
        if median is not None and median > UPDATE_RATIO_HIGH:
            fast.append((layer.index, median))
    if fast:
        evidence["max_update_ratio"] = _num(max(r for _, r in fast))
        flagged.update(i for i, _ in fast)
    if not evidence:
        return None
    if fast and len(evidence) == 1:
        summary = (
            f"Each step changes the weights by more than {UPDATE_RATIO_HIGH:g} of their "
            "norm: the learning rate is too high for stable training."
        )
    else:
        summary = (
            "Gradients explode: their norms are large or grow by orders of magnitude "
            "towards the input."
        )
    return Finding(
        code="exploding_gradient",
        severity="critical" if critical else "warning",
        layers=sorted(flagged),
        summary=summary,
        evidence=evidence,
        remedy=_lr_remedy(spec, extra="norm batch"),
    )


def _lr_remedy(spec: _Spec, *, extra: str | None = None) -> str:
    lower = f"lower train.lr (e.g. {spec.lr / 10:g})" if spec.lr else "lower train.lr (e.g. 10x)"
    options = [lower]
    if spec.grad_clip is None:
        options.append("set train.grad_clip 1.0")
    if extra and not (extra == "norm batch" and spec.norm not in (None, "none")):
        options.append(extra)
    return ", ".join(options[:-1]) + (" or " if len(options) > 1 else "") + options[-1]


# --- activations -----------------------------------------------------------------------


def _saturated_layers(
    layers: Sequence[LayerInfo], stats: LayerStats, activations: frozenset[str], threshold: float
) -> list[tuple[int, float]]:
    found = []
    for layer in layers:
        if layer.activation not in activations:
            continue
        median = _finite_median(stats.column("act_saturation", layer.index))
        if median is not None and median > threshold:
            found.append((layer.index, median))
    return found


def dead_units(
    *, layers: Sequence[LayerInfo], stats: LayerStats, spec: _Spec | None = None
) -> Finding | None:
    spec = spec or _Spec()
    dead = _saturated_layers(layers, stats, frozenset({"relu"}), DEAD_FRACTION)
    if not dead:
        return None
    worst_index, worst = max(dead, key=lambda item: item[1])
    relu_layers = sum(1 for layer in layers if layer.activation == "relu")
    options = ["use activation leaky_relu or elu", "lower train.lr"]
    if spec.init != "kaiming":
        options.append("init kaiming")
    return Finding(
        code="dead_units",
        severity="critical" if worst > DEAD_CRITICAL_FRACTION else "warning",
        layers=[i for i, _ in dead],
        summary=(
            f"ReLU units are dead: in {len(dead)} of {relu_layers} ReLU layers more than "
            f"{DEAD_FRACTION:.0%} of the outputs are exactly zero (up to {worst:.0%} in "
            f"layer {worst_index}), so no gradient flows through them."
        ),
        evidence={
            "max_zero_fraction": _num(worst),
            "worst_layer": worst_index,
            "mean_zero_fraction": _num(float(np.mean([f for _, f in dead]))),
            "layers_flagged": len(dead),
            "relu_layers": relu_layers,
        },
        remedy=", ".join(options[:-1]) + " or " + options[-1],
    )


def saturation(
    *, layers: Sequence[LayerInfo], stats: LayerStats, spec: _Spec | None = None
) -> Finding | None:
    spec = spec or _Spec()
    saturated = _saturated_layers(layers, stats, SIGMOID_LIKE, SATURATED_FRACTION)
    if not saturated:
        return None
    worst_index, worst = max(saturated, key=lambda item: item[1])
    options = ["use activation relu (or gelu) with init kaiming"]
    if spec.norm in (None, "none"):
        options.insert(0, "use norm batch")
    return Finding(
        code="saturation",
        severity="critical" if worst > SATURATED_CRITICAL_FRACTION else "warning",
        layers=[i for i, _ in saturated],
        summary=(
            f"Sigmoid/tanh units saturate: in {len(saturated)} layers more than "
            f"{SATURATED_FRACTION:.0%} of the outputs sit at a bound (up to {worst:.0%} in "
            f"layer {worst_index}), where their derivative is nearly zero."
        ),
        evidence={
            "max_saturated_fraction": _num(worst),
            "worst_layer": worst_index,
            "layers_flagged": len(saturated),
        },
        remedy=" or ".join(options),
    )


# --- epoch metrics ---------------------------------------------------------------------


def overfitting(*, metrics: Sequence[EpochRow]) -> Finding | None:
    rows = [m for m in metrics if _finite(m.train_loss) and _finite(m.val_loss)]
    if len(rows) < 2:
        return None
    train = np.array([m.train_loss for m in rows], dtype=np.float64)
    val = np.array([m.val_loss for m in rows], dtype=np.float64)
    gaps = val - train
    best = int(np.argmin(val))
    gap, best_gap = float(gaps[-1]), float(gaps[best])
    val_rose = val[-1] > (1 + OVERFIT_VAL_RISE) * val[best] and train[-1] < train[best]
    if gap <= OVERFIT_GAP or not (gap > best_gap or val_rose):
        return None
    evidence: Evidence = {
        "gap": _num(gap),
        "best_epoch": rows[best].epoch,
        "best_gap": _num(best_gap),
        "min_val_loss": _num(float(val[best])),
        "final_val_loss": _num(float(val[-1])),
        "final_train_loss": _num(float(train[-1])),
    }
    last = rows[-1]
    if _finite(last.train_acc) and _finite(last.val_acc):
        evidence["acc_gap"] = _num(float(last.train_acc) - float(last.val_acc))  # type: ignore[arg-type]
    return Finding(
        code="overfitting",
        severity="critical" if gap > OVERFIT_CRITICAL_GAP else "warning",
        layers=[],
        summary=(
            f"The model overfits: validation loss is {gap:.2f} above training loss and the "
            f"gap grew after epoch {rows[best].epoch}, where validation loss was lowest."
        ),
        evidence=evidence,
        remedy=(
            "use a smaller model (lower model.depth/width), data.augment (shift, noise), "
            "model.dropout 0.3-0.5 or dropconnect, train.l2 (e.g. 1e-3), more data "
            f"(data.train_size), or train.early_stopping_patience (best epoch {rows[best].epoch})"
        ),
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
    if spec.precision in ("fp16", "bf16"):
        options.append("train.precision fp32")
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
    )


def not_learning(
    *, layers: Sequence[LayerInfo], metrics: Sequence[EpochRow], job_status: str
) -> Finding | None:
    if job_status != "succeeded" or not metrics:
        return None
    outputs = [layer for layer in layers if layer.kind == "output" and layer.shape]
    last = metrics[-1]
    if not outputs or not _finite(last.train_acc) or outputs[-1].shape[0] < 2:
        return None
    classes = outputs[-1].shape[0]
    chance = 1.0 / classes
    acc = float(last.train_acc)  # type: ignore[arg-type]
    if acc >= NOT_LEARNING_CHANCE_FACTOR * chance:
        return None
    evidence: Evidence = {
        "train_acc": _num(acc),
        "chance_acc": _num(chance),
        "epochs": len(metrics),
    }
    if _finite(last.train_loss):
        evidence["train_loss"] = _num(float(last.train_loss))  # type: ignore[arg-type]
        evidence["chance_loss"] = _num(math.log(classes))
    return Finding(
        code="not_learning",
        severity="info",
        layers=[],
        summary=(
            f"The model did not learn: training accuracy {acc:.0%} after {len(metrics)} "
            f"epochs is near chance ({chance:.0%})."
        ),
        evidence=evidence,
        remedy="see the other findings; otherwise train more epochs or raise train.lr",
    )


# --- all rules -------------------------------------------------------------------------


def diagnose(
    *,
    layers: Sequence[LayerInfo],
    stats: LayerStats,
    metrics: Sequence[EpochRow],
    job_status: str,
    result: Mapping[str, Any] | None,
    spec: Mapping[str, Any] | None = None,
) -> list[Finding]:
    """Every finding about one job, most severe first. ``spec`` (the stored experiment
    spec) only tailors the remedies: what the job already uses is not suggested again."""
    hints = _Spec.parse(spec)
    candidates = [
        divergence(stats=stats, metrics=metrics, result=result, spec=hints),
        vanishing_gradient(layers=layers, stats=stats, spec=hints),
        exploding_gradient(layers=layers, stats=stats, spec=hints),
        dead_units(layers=layers, stats=stats, spec=hints),
        saturation(layers=layers, stats=stats, spec=hints),
        overfitting(metrics=metrics),
        not_learning(layers=layers, metrics=metrics, job_status=job_status),
    ]
    findings = [f for f in candidates if f is not None]
    if any(f.code == "divergence" for f in findings):  # NaN losses explain the accuracy
        findings = [f for f in findings if f.code != "not_learning"]
    # sorted() is stable: equal severities keep the rule order above.
    return sorted(findings, key=lambda f: SEVERITY_ORDER[f.severity])
