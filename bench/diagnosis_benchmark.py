"""How well the diagnosis names injected faults, beside published rule sets, on real runs.

    .venv/bin/python bench/diagnosis_benchmark.py            # seeds 0 1 (tune) + 2 3 (check)
    .venv/bin/python bench/diagnosis_benchmark.py --quick    # seed 0 only, 2 bases
    .venv/bin/python bench/diagnosis_benchmark.py --jobs 2   # two training processes

Fault operators in the style of DeepCrime (Humbatova et al., ISSTA 2021) and AUTOTRAINER
(Zhang et al., ICSE 2021) change one spec field (or a pair that belongs together) of a
healthy base spec; every faulty run sits beside its healthy twin (same base, same seed).
Each run trains in this process with the engine's ``train()`` (CPU, one thread), and its
statistics go through :func:`rule_inputs`, which cuts the same windows the service's
bounded queries read (the last half of the telemetry steps, and the first steps), into
``service.diagnosis.rules.diagnose``. The same recorded statistics feed re-implementations
of AUTOTRAINER's and SageMaker Debugger's built-in rules (:mod:`bench.baseline_rules`).

Scoring: a run is *detected* by a tool when it raises, at warning or critical (for the
baselines: any alarm), one of the codes its fault accepts; per code, precision is over
the runs where the code fired, recall over the faults whose primary code it is. A
healthy twin with any warning/critical finding is a false alarm. Recorded runs are
cached (``--cache``) so that re-scoring after a threshold change takes seconds.
"""

from __future__ import annotations

import argparse
import hashlib
import itertools
import json
import multiprocessing
import pickle
import sys
import time
from collections import defaultdict
from collections.abc import Callable, Iterable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.diagnosis import rules
from service.specs import ExperimentSpec
from worker.engine.events import STAT_NAMES, EpochEnd, Event, LayerStatsBatch, RunStarted

# --- base specs and fault operators ----------------------------------------------------------

TELEMETRY = {"every_n_steps": 5, "histogram_bins": 0, "activations": True}

BASES: dict[str, dict[str, Any]] = {
    "mlp-digits": {
        "data": {"dataset": "digits"},
        "model": {"arch": "mlp", "depth": 3, "width": 128, "activation": "relu", "init": "kaiming"},
        "train": {"epochs": 12, "batch_size": 64, "optimizer": "sgd", "lr": 0.05},
        "telemetry": TELEMETRY,
    },
    "cnn-mnist1d": {
        "data": {"dataset": "mnist1d", "train_size": 2000, "val_size": 500},
        "model": {"arch": "cnn", "depth": 3, "width": 32, "activation": "relu", "init": "kaiming"},
        "train": {"epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": 3e-3},
        "telemetry": TELEMETRY,
    },
    "cnn-digits": {
        "data": {"dataset": "digits"},
        "model": {"arch": "cnn", "depth": 3, "width": 16, "activation": "relu", "init": "kaiming"},
        "train": {"epochs": 10, "batch_size": 64, "optimizer": "adam", "lr": 3e-3},
        "telemetry": TELEMETRY,
    },
}


def get(spec: Mapping[str, Any], path: str) -> Any:
    section, key = path.split(".")
    return spec.get(section, {}).get(key)


def apply_patch(spec: Mapping[str, Any], patch: Mapping[str, Any]) -> dict[str, Any]:
    """A copy of ``spec`` with dotted ``patch`` paths (``"model.depth"``) set."""
    out: dict[str, Any] = json.loads(json.dumps(spec))
    for path, value in patch.items():
        *parents, leaf = path.split(".")
        node = out
        for part in parents:
            node = node.setdefault(part, {})
        node[leaf] = value
    return out


@dataclass(frozen=True)
class Fault:
    """A fault operator: the patch it applies to a base, and the codes that name it
    (``codes[0]`` is the primary one, the cause; the rest are acceptable symptoms)."""

    name: str
    patch: Callable[[Mapping[str, Any]], dict[str, Any]]
    codes: tuple[str, ...]


def _scaled_lr(factor: float) -> Callable[[Mapping[str, Any]], dict[str, Any]]:
    return lambda base: {"train.lr": min(10.0, float(get(base, "train.lr")) * factor)}


def _train_size(base: Mapping[str, Any]) -> int:
    size = get(base, "data.train_size")
    return int(size) if size else {"mnist1d": 4000, "digits": 1437}[get(base, "data.dataset")]


def _deep(base: Mapping[str, Any]) -> dict[str, Any]:
    """Deep variants stay affordable: CNNs at 16 channels, at most 5 epochs."""
    narrow = {"model.width": 16} if get(base, "model.arch") == "cnn" else {}
    return {**narrow, "train.epochs": min(5, int(get(base, "train.epochs")))}


FAULTS: tuple[Fault, ...] = (
    # DeepCrime "change learning rate"; AUTOTRAINER's "improper hyperparameters".
    Fault(
        "lr_far_too_high",
        _scaled_lr(200.0),
        (
            "lr_too_high",
            "divergence",
            "oscillation",
            "exploding_gradient",
            "dead_units",
            "not_learning",
        ),
    ),
    Fault("lr_far_too_low", _scaled_lr(1e-4), ("lr_too_low", "underfitting", "not_learning")),
    # DeepCrime "change activation function" in a deep net.
    Fault(
        "sigmoid_deep",
        lambda base: {
            "model.activation": "sigmoid",
            "model.depth": 10,
            "model.init": "default",
            **_deep(base),
        },
        ("vanishing_gradient", "saturation", "poor_initialization", "degradation", "not_learning"),
    ),
    Fault(
        "tanh_deep",
        lambda base: {
            "model.activation": "tanh",
            "model.depth": 10,
            "model.init": "normal",
            "model.init_std": 0.5,
            **_deep(base),
        },
        (
            "saturation",
            "vanishing_gradient",
            "poor_initialization",
            "exploding_gradient",
            "underfitting",
            "not_learning",
        ),
    ),
    # DeepCrime "change weights initialisation": scaled far down and far up.
    Fault(
        "init_scaled_down",
        lambda _: {"model.init": "normal", "model.init_std": 1e-3, "model.depth": 6},
        ("poor_initialization", "vanishing_gradient", "dead_units", "not_learning"),
    ),
    Fault(
        "init_scaled_up",
        lambda _: {"model.init": "normal", "model.init_std": 1.0, "model.depth": 6},
        ("poor_initialization", "exploding_gradient", "divergence", "dead_units", "not_learning"),
    ),
    # DeepCrime "change batch size": one batch per epoch.
    Fault(
        "batch_size_whole_set",
        lambda base: {"train.batch_size": _train_size(base)},
        ("underfitting", "lr_too_low", "not_learning"),
    ),
    # DeepCrime "add/change weights regularisation"; AUTOTRAINER has none.
    Fault(
        "l2_far_too_strong",
        lambda _: {"train.l2": 0.5},
        ("over_regularized", "underfitting", "dead_units", "not_learning"),
    ),
    Fault(
        "l1_far_too_strong",
        lambda _: {"train.l1": 0.05},
        ("over_regularized", "underfitting", "dead_units", "not_learning"),
    ),
    # DeepCrime "change dropout rate".
    Fault(
        "dropout_far_too_strong",
        lambda _: {"model.dropout": 0.9},
        ("over_regularized", "underfitting", "dead_units", "not_learning"),
    ),
    # DeepCrime "add layer" (many): a deep plain net, no skip connections.
    Fault(
        "deep_plain_no_skip",
        lambda base: {
            "model.depth": 20,
            "model.init": "default",
            "model.skip": False,
            **_deep(base),
        },
        ("degradation", "vanishing_gradient", "poor_initialization", "dead_units", "not_learning"),
    ),
    # DeepCrime "change training data" (reduce): far too few examples for the model.
    Fault(
        "train_set_too_small",
        lambda base: {
            "data.train_size": 60,
            "train.epochs": 40,
            "train.batch_size": 20,
            "model.width": 2 * int(get(base, "model.width")),
        },
        ("overfitting",),
    ),
    # DeepCrime "change epochs": far too few.
    Fault(
        "too_few_epochs",
        lambda base: {"train.epochs": 1, "train.lr": float(get(base, "train.lr")) / 5},
        ("underfitting", "lr_too_low", "not_learning"),
    ),
)


# --- recording ----------------------------------------------------------------------------


@dataclass
class Recording:
    """What a run reports, as the service stores it."""

    layers: list[rules.LayerInfo] = field(default_factory=list)
    steps: list[np.ndarray] = field(default_factory=list)
    values: list[np.ndarray] = field(default_factory=list)
    epochs: list[rules.EpochRow] = field(default_factory=list)
    total_steps: int = 0
    diverged: bool = False
    seconds: float = 0.0

    def __call__(self, event: Event) -> None:
        if isinstance(event, RunStarted):
            self.layers = [
                rules.LayerInfo(
                    layer.index, layer.name, layer.kind, layer.activation, tuple(layer.shape)
                )
                for layer in event.layers
            ]
            self.total_steps = event.total_steps
        elif isinstance(event, LayerStatsBatch):
            self.steps.append(event.steps)
            self.values.append(event.values)
        elif isinstance(event, EpochEnd):
            self.epochs.append(
                rules.EpochRow(
                    event.epoch, event.train_loss, event.train_acc, event.val_loss, event.val_acc
                )
            )

    def table(self) -> tuple[np.ndarray, np.ndarray]:
        """(steps, values[steps, layers, stats]) over the whole run."""
        if not self.steps:
            return np.zeros(0, dtype=np.int64), np.zeros((0, len(self.layers), len(STAT_NAMES)))
        return np.concatenate(self.steps), np.concatenate(self.values)


def _stats(
    steps: np.ndarray,
    values: np.ndarray,
    layers: Sequence[rules.LayerInfo],
    keep: np.ndarray,
    *,
    first_nonfinite: int | None,
) -> rules.LayerStats:
    names = rules.DIAGNOSIS_STAT_NAMES
    matrices = {n: values[keep][:, :, STAT_NAMES.index(n)].astype(np.float64) for n in names}
    return rules.LayerStats(
        steps[keep].astype(np.int64),
        tuple(layer.index for layer in layers),
        matrices,
        first_nonfinite,
    )


def rule_inputs(rec: Recording) -> dict[str, Any]:
    """The inputs of ``rules.diagnose`` the service would load for this run."""
    steps, values = rec.table()
    first_nonfinite = None
    if steps.size:
        bad = (np.nan_to_num(values[:, :, STAT_NAMES.index("nan_count")]) > 0) | (
            np.nan_to_num(values[:, :, STAT_NAMES.index("inf_count")]) > 0
        )
        if bad.any():
            first_nonfinite = int(steps[np.argmax(bad.any(axis=1))])
        late = steps >= (steps.min() + steps.max()) // 2
        early = steps <= rules.early_window_end(rec.total_steps, int(steps.min()))
    else:
        late = early = np.zeros(0, dtype=bool)
    return {
        "layers": rec.layers,
        "stats": _stats(steps, values, rec.layers, late, first_nonfinite=first_nonfinite),
        "early_stats": _stats(steps, values, rec.layers, early, first_nonfinite=first_nonfinite),
        "metrics": rec.epochs,
        "job_status": "succeeded",
        "result": {"diverged": rec.diverged},
    }


def _spec_key(spec: Mapping[str, Any]) -> str:
    return hashlib.sha256(json.dumps(spec, sort_keys=True).encode()).hexdigest()[:16]


def record(spec: dict[str, Any], cache: Path) -> Recording:
    path = cache / f"run-{_spec_key(spec)}.pkl"
    if path.exists():
        with path.open("rb") as f:
            loaded = pickle.load(f)
        # Stored as a plain dict: a pickled class would name the module that recorded it.
        return Recording(**(loaded if isinstance(loaded, dict) else vars(loaded)))
    import torch

    from worker.engine.loop import train

    torch.set_num_threads(1)
    rec = Recording()
    started = time.perf_counter()
    result = train(ExperimentSpec.model_validate(spec), on_event=rec, cache_dir=cache)
    rec.seconds = time.perf_counter() - started
    rec.diverged = result.diverged
    tmp = path.with_suffix(".tmp")
    with tmp.open("wb") as f:
        pickle.dump(vars(rec), f)
    tmp.replace(path)
    return rec


# --- the cases ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Case:
    base: str
    fault: str | None  # None: the healthy twin
    seed: int
    spec: dict[str, Any]
    codes: tuple[str, ...]


def cases(bases: Iterable[str], seeds: Iterable[int]) -> list[Case]:
    out = []
    for base_name in bases:
        base = BASES[base_name]
        for seed in seeds:
            seeded = apply_patch(
                base, {"train.seed": seed, "train.device": "cpu", "train.checkpoint_every": 0}
            )
            out.append(Case(base_name, None, seed, seeded, ()))
            for fault in FAULTS:
                spec = apply_patch(seeded, fault.patch(seeded))
                ExperimentSpec.model_validate(spec)
                out.append(Case(base_name, fault.name, seed, spec, fault.codes))
    return out


def _record_case(args: tuple[dict[str, Any], str]) -> Recording:
    return record(args[0], Path(args[1]))


# --- detectors ----------------------------------------------------------------------------

Detector = Callable[[Recording, Mapping[str, Any]], set[str]]


def trainlab(rec: Recording, spec: Mapping[str, Any]) -> set[str]:
    full = ExperimentSpec.model_validate(spec).model_dump(mode="json")
    findings = rules.diagnose(**rule_inputs(rec), spec=full)
    return {f.code for f in findings if f.severity in ("warning", "critical")}


def _column(rec: Recording, name: str) -> tuple[np.ndarray, np.ndarray]:
    steps, values = rec.table()
    return steps, values[:, :, STAT_NAMES.index(name)]


def _weight_layers(rec: Recording) -> list[rules.LayerInfo]:
    kinds = ("linear", "conv1d", "conv2d", "output")
    return [layer for layer in rec.layers if layer.kind in kinds]


def _nonfinite(rec: Recording) -> bool:
    _, nan = _column(rec, "nan_count")
    _, inf = _column(rec, "inf_count")
    losses = [m.train_loss for m in rec.epochs] + [m.val_loss for m in rec.epochs]
    bad_loss = any(v is None or not np.isfinite(v) for v in losses)
    return bool(bad_loss or (np.nan_to_num(nan) > 0).any() or (np.nan_to_num(inf) > 0).any())


# AUTOTRAINER (Zhang et al., ICSE 2021), as its monitor (AutoTrainer/utils/monitor.py)
# decides, with its default parameters: beta_1 1e-3, beta_2 1e-4 (vanishing: first/last
# kernel gradient norm ratio below beta_1 and first norm below beta_2), beta_3 70
# (exploding: ratio above it), gamma 0.7 (dying ReLU: share of exactly-zero gradient
# entries), zeta 0.03 / eta 0.2 (oscillating accuracy), delta 0.01 (stalled accuracy),
# Theta 0.7 (satisfactory accuracy). Gradient symptoms are only reported for a run that
# did not converge; NaN losses or gradients are always "explode". Its per-batch
# gradients are read here from the telemetry steps.
AT_BETA_1, AT_BETA_2, AT_BETA_3, AT_GAMMA = 1e-3, 1e-4, 70.0, 0.7
AT_ZETA, AT_ETA, AT_DELTA, AT_THETA = 0.03, 0.2, 0.01, 0.7


def _autotrainer_oscillates(acc: Sequence[float]) -> bool:
    maxima = [
        acc[i] for i in range(1, len(acc) - 1) if acc[i] >= acc[i - 1] and acc[i] >= acc[i + 1]
    ]
    minima = [
        acc[i] for i in range(1, len(acc) - 1) if acc[i] <= acc[i - 1] and acc[i] <= acc[i + 1]
    ]
    swings = sum(1 for hi, lo in zip(maxima, minima, strict=False) if hi - lo >= AT_ZETA)
    return swings >= AT_ETA * len(acc)


def _max_rise(values: Sequence[float]) -> float:
    return max([b - a for a, b in itertools.pairwise(values)] or [0.0])


def autotrainer(rec: Recording) -> set[str]:
    if _nonfinite(rec):
        return {"exploding_gradient", "divergence"}
    train_acc = [m.train_acc or 0.0 for m in rec.epochs]
    val_acc = [m.val_acc or 0.0 for m in rec.epochs]
    if not train_acc:
        return set()
    not_converged = max(val_acc) < AT_THETA or max(train_acc) < AT_THETA
    stalled = _max_rise(val_acc) < AT_DELTA and _max_rise(train_acc) < AT_DELTA
    if not (not_converged or stalled):
        return {"oscillation"} if _autotrainer_oscillates(train_acc) else set()
    weights = _weight_layers(rec)
    _, grad = _column(rec, "grad_norm")
    _, zeros = _column(rec, "grad_zero_frac")
    first, last = weights[0].index, weights[-1].index
    with np.errstate(all="ignore"):
        rate = grad[:, first] / grad[:, last]
    sizes = np.array([float(np.prod(layer.shape)) for layer in weights])
    columns = [layer.index for layer in weights]
    zero_share = np.nansum(zeros[:, columns] * sizes, axis=1) / sizes.sum()
    if (zero_share >= AT_GAMMA).any():
        return {"dead_units"}
    if (rate > AT_BETA_3).any():
        return {"exploding_gradient"}
    if ((rate < AT_BETA_1) & (grad[:, first] < AT_BETA_2)).any():
        return {"vanishing_gradient"}
    return {"not_learning"} if stalled else set()


# SageMaker Debugger's built-in rules (smdebug), default parameters, as documented:
# VanishingGradient (mean |gradient| of a tensor below 1e-7 at a step; read here as the
# layer's RMS gradient, grad_norm / sqrt(elements)), ExplodingTensor (any NaN or Inf),
# DeadRelu (threshold_layer 50%: more than half a ReLU layer's outputs inactive),
# SaturatedActivation (threshold_layer 50% of a tanh/sigmoid layer's outputs at a
# bound), Overfit (ratio_threshold 0.1: (val - train) / train loss above 0.1, patience 1).
SM_VANISHING = 1e-7
SM_LAYER_SHARE = 0.5
SM_OVERFIT_RATIO = 0.1


def sagemaker(rec: Recording) -> set[str]:
    fired: set[str] = set()
    if _nonfinite(rec):
        fired.add("divergence")
    _, grad = _column(rec, "grad_norm")
    for layer in _weight_layers(rec):
        rms = grad[:, layer.index] / np.sqrt(float(np.prod(layer.shape)))
        if (rms[np.isfinite(rms)] < SM_VANISHING).any():
            fired.add("vanishing_gradient")
    _, sat = _column(rec, "act_saturation")
    for layer in rec.layers:
        share = sat[:, layer.index]
        if not (np.nan_to_num(share) > SM_LAYER_SHARE).any():
            continue
        if layer.activation == "relu":
            fired.add("dead_units")
        elif layer.activation in ("sigmoid", "tanh"):
            fired.add("saturation")
    for m in rec.epochs:
        finite = bool(m.train_loss and m.val_loss and np.isfinite([m.train_loss, m.val_loss]).all())
        if finite and (m.val_loss - m.train_loss) / m.train_loss > SM_OVERFIT_RATIO:  # type: ignore[operator]
            fired.add("overfitting")
            break
    return fired


# The codes each tool can raise at all (its vocabulary mapped onto trainlab's).
VOCABULARY: dict[str, frozenset[str]] = {
    "AUTOTRAINER": frozenset(
        {
            "exploding_gradient",
            "divergence",
            "dead_units",
            "vanishing_gradient",
            "not_learning",
            "oscillation",
        }
    ),
    "SageMaker Debugger": frozenset(
        {"divergence", "vanishing_gradient", "dead_units", "saturation", "overfitting"}
    ),
}

DETECTORS: dict[str, Detector] = {
    "trainlab": trainlab,
    "AUTOTRAINER": lambda rec, spec: autotrainer(rec),
    "SageMaker Debugger": lambda rec, spec: sagemaker(rec),
}


@dataclass
class Score:
    detected: int = 0
    faulty: int = 0
    false_alarms: int = 0
    healthy: int = 0
    fired: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    fired_right: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    primary: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    primary_hit: dict[str, int] = field(default_factory=lambda: defaultdict(int))
    misses: list[str] = field(default_factory=list)
    wrong: list[str] = field(default_factory=list)
    alarms: list[str] = field(default_factory=list)


def score(detector: Detector, runs: Sequence[tuple[Case, Recording]]) -> Score:
    s = Score()
    for case, rec in runs:
        codes = detector(rec, case.spec)
        label = f"{case.base}/{case.fault or 'healthy'}/s{case.seed}"
        for code in codes:
            s.fired[code] += 1
            s.fired_right[code] += code in case.codes
        if case.fault is None:
            s.healthy += 1
            if codes:
                s.false_alarms += 1
                s.alarms.append(f"{label}: {sorted(codes)}")
            continue
        s.faulty += 1
        s.primary[case.codes[0]] += 1
        s.primary_hit[case.codes[0]] += case.codes[0] in codes
        if extra := codes - set(case.codes):
            s.wrong.append(f"{label}: {sorted(extra)}")
        if codes & set(case.codes):
            s.detected += 1
        else:
            s.misses.append(f"{label}: {sorted(codes)}")
    return s


def _ratio(a: int, b: int) -> str:
    return f"{a / b:.2f}" if b else "-"


def table(scores: Mapping[str, Score]) -> str:
    names = list(scores)
    lines = [
        "| | " + " | ".join(names) + " |",
        "|---|" + "---|" * len(names),
        "| overall recall (fault named) | "
        + " | ".join(
            f"{_ratio(s.detected, s.faulty)} ({s.detected}/{s.faulty})" for s in scores.values()
        )
        + " |",
        "| cause named (the fault's primary code) | "
        + " | ".join(f"{_ratio(sum(s.primary_hit.values()), s.faulty)}" for s in scores.values())
        + " |",
        "| false alarms on healthy twins | "
        + " | ".join(
            f"{_ratio(s.false_alarms, s.healthy)} ({s.false_alarms}/{s.healthy})"
            for s in scores.values()
        )
        + " |",
    ]
    codes = sorted({c for s in scores.values() for c in (*s.fired, *s.primary)})
    for code in codes:
        cells = []
        for name, s in scores.items():
            if code not in VOCABULARY.get(name, frozenset({code})):
                cells.append("no rule")
                continue
            p = _ratio(s.fired_right[code], s.fired[code]) if s.fired.get(code) else "-"
            r = _ratio(s.primary_hit[code], s.primary[code]) if s.primary.get(code) else "-"
            cells.append(f"P {p} / R {r}" if (s.fired.get(code) or s.primary.get(code)) else "")
        lines.append(f"| `{code}` | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--quick", action="store_true", help="seed 0, two bases, no check seeds")
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1], help="tuning seeds")
    parser.add_argument("--check-seeds", type=int, nargs="*", default=[2, 3])
    parser.add_argument("--bases", nargs="+", default=list(BASES))
    parser.add_argument("--jobs", type=int, default=2, help="training processes")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/trainlab-diagnosis-bench"))
    parser.add_argument(
        "--cached-only", action="store_true", help="score only the runs already recorded"
    )
    parser.add_argument(
        "--fixes", action="store_true", help="also train each fault's suggested patch"
    )
    parser.add_argument("--verbose", action="store_true", help="list every miss and false alarm")
    args = parser.parse_args()
    if args.quick:
        args.seeds, args.check_seeds, args.bases = [0], [], args.bases[:2]
    args.cache.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    groups = {"tuning seeds " + " ".join(map(str, args.seeds)): cases(args.bases, args.seeds)}
    if args.check_seeds:
        groups["check seeds " + " ".join(map(str, args.check_seeds))] = cases(
            args.bases, args.check_seeds
        )
    if args.cached_only:
        groups = {
            title: [c for c in group if (args.cache / f"run-{_spec_key(c.spec)}.pkl").exists()]
            for title, group in groups.items()
        }
    every = [c for group in groups.values() for c in group]
    work = [(c.spec, str(args.cache)) for c in every]
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            recs = pool.map(_record_case, work, chunksize=1)
    else:
        recs = [_record_case(w) for w in work]
    by_spec = {_spec_key(c.spec): r for c, r in zip(every, recs, strict=True)}
    train_s = sum(r.seconds for r in recs)
    print(
        f"{len(every)} runs, {len(FAULTS)} faults x {len(args.bases)} bases "
        f"({', '.join(args.bases)}); training {train_s:.0f} s of CPU time (cached runs count "
        f"what they took when recorded); wall {time.perf_counter() - started:.0f} s"
    )
    for title, group in groups.items():
        runs = [(c, by_spec[_spec_key(c.spec)]) for c in group]
        scores = {name: score(det, runs) for name, det in DETECTORS.items()}
        print(f"\n### {title}\n")
        print(table(scores))
        s = scores["trainlab"]
        if args.verbose or s.misses or s.alarms:
            for line in s.misses:
                print(f"  trainlab missed {line}")
            for line in s.alarms:
                print(f"  trainlab false alarm {line}")
        if args.verbose:
            for line in s.wrong:
                print(f"  trainlab also said {line}")
    if args.fixes:
        first = next(iter(groups.values()))
        print_fixes([(c, by_spec[_spec_key(c.spec)]) for c in first], args)


def _first_cause(rec: Recording, spec: Mapping[str, Any]) -> rules.Finding | None:
    full = ExperimentSpec.model_validate(spec).model_dump(mode="json")
    findings = [f for f in rules.diagnose(**rule_inputs(rec), spec=full) if f.severity != "info"]
    return findings[0] if findings else None


def print_fixes(runs: Sequence[tuple[Case, Recording]], args: argparse.Namespace) -> None:
    """Apply each faulty run's first finding's suggested patch ("try the fix"), train the
    patched spec and report whether the fault's primary code is gone."""
    faulty = [(c, r) for c, r in runs if c.fault is not None]
    patched: list[tuple[Case, rules.Finding | None, dict[str, Any]]] = []
    for case, rec in faulty:
        cause = _first_cause(rec, case.spec)
        spec = apply_patch(case.spec, cause.suggested_spec_patch) if cause else case.spec
        patched.append((case, cause, spec))
    work = [(spec, str(args.cache)) for _, _, spec in patched]
    if args.jobs > 1:
        with multiprocessing.get_context("spawn").Pool(args.jobs) as pool:
            recs = pool.map(_record_case, work, chunksize=1)
    else:
        recs = [_record_case(w) for w in work]
    print("\n### Try the fix: the first finding's suggested patch, trained\n")
    print("| run | patch | val acc before → after | diagnosis after (warning and above) |")
    print("|---|---|---|---|")
    fixed = healthy = 0
    for (case, cause, spec), (_, before), after in zip(patched, faulty, recs, strict=True):
        codes = trainlab(after, spec)
        fixed += case.codes[0] not in codes
        healthy += not codes
        patch = json.dumps(cause.suggested_spec_patch) if cause else "-"
        acc = f"{before.epochs[-1].val_acc:.0%} → {after.epochs[-1].val_acc:.0%}"
        after_codes = ", ".join(sorted(codes)) or "none"
        print(f"| {case.base}/{case.fault}/s{case.seed} | `{patch}` | {acc} | {after_codes} |")
    print(
        f"\nafter one patch: the fault's code gone in {fixed}/{len(patched)} runs, "
        f"no warning at all in {healthy}/{len(patched)}"
    )


if __name__ == "__main__":
    main()
