"""Run each lesson of docs/DESIGN.md through the engine and print what the statistics show.

    .venv/bin/python bench/lessons.py              # CPU, 1 thread, ~2 minutes
    .venv/bin/python bench/lessons.py --seeds 3

Each row is one spec (a change against the lesson's base) and the figure that lesson is
about, read from the same LayerStatsBatch/EpochEnd events the service stores.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.specs import ExperimentSpec
from worker.engine.events import STAT_NAMES, EpochEnd, Event, LayerStatsBatch
from worker.engine.loop import train

GRAD_NORM = STAT_NAMES.index("grad_norm")
PREACT_STD = STAT_NAMES.index("preact_std")


@dataclass
class Run:
    stats: list[np.ndarray] = field(default_factory=list)
    epochs: list[EpochEnd] = field(default_factory=list)

    def __call__(self, event: Event) -> None:
        if isinstance(event, LayerStatsBatch):
            self.stats.append(event.values)
        elif isinstance(event, EpochEnd):
            self.epochs.append(event)

    @property
    def values(self) -> np.ndarray:
        return np.concatenate(self.stats)

    def first_last_ratio(self) -> float:
        """Median over telemetry steps of grad_norm(first layer) / grad_norm(last hidden)."""
        norms = self.values[:, :, GRAD_NORM]
        return float(np.median(norms[:, 0] / norms[:, -2]))

    def gap(self) -> float:
        """Generalisation gap at the end: validation loss minus training loss."""
        last = self.epochs[-1]
        return last.val_loss - last.train_loss


def merge(base: dict[str, Any], change: dict[str, Any]) -> dict[str, Any]:
    out = {k: dict(v) if isinstance(v, dict) else v for k, v in base.items()}
    for section, fields in change.items():
        out.setdefault(section, {}).update(fields)
    return out


def run(spec: dict[str, Any], seed: int, cache: Path) -> Run:
    spec = merge(spec, {"train": {"seed": seed, "device": "cpu"}})
    recorder = Run()
    train(ExperimentSpec.model_validate(spec), on_event=recorder, cache_dir=cache)
    return recorder


VANISHING = {
    "data": {"dataset": "mnist1d"},
    "model": {"depth": 20, "width": 128, "activation": "sigmoid"},
    "train": {"epochs": 2, "lr": 0.05},
    "telemetry": {"every_n_steps": 5},
}
DEGRADATION = {
    "data": {"dataset": "mnist1d", "train_size": 1000},
    "model": {"depth": 24, "width": 64, "activation": "relu"},
    "train": {"epochs": 3},
    "telemetry": {"every_n_steps": 0},
}
OVERFIT = {
    "data": {"dataset": "mnist1d", "train_size": 200},
    "model": {"depth": 3, "width": 256, "activation": "relu"},
    "train": {"epochs": 40, "batch_size": 32, "optimizer": "adam", "lr": 1e-3},
    "telemetry": {"every_n_steps": 0},
}


def lessons() -> list[tuple[str, dict[str, Any], str, Callable[[Run], float]]]:
    ratio, gap = Run.first_last_ratio, Run.gap

    def final_train_loss(r: Run) -> float:
        return r.epochs[-1].train_loss

    def preact_std(r: Run) -> float:
        return float(np.nanmedian(r.values[:, :-1, PREACT_STD]))

    vanishing = "grad first/last"
    return [
        ("sigmoid, depth 20", VANISHING, vanishing, ratio),
        (
            "relu, default init",
            merge(VANISHING, {"model": {"activation": "relu"}}),
            vanishing,
            ratio,
        ),
        (
            "relu + kaiming",
            merge(VANISHING, {"model": {"activation": "relu", "init": "kaiming"}}),
            vanishing,
            ratio,
        ),
        (
            "sigmoid + batch norm",
            merge(VANISHING, {"model": {"norm": "batch"}}),
            vanishing,
            ratio,
        ),
        (
            "sigmoid + batch norm",
            merge(VANISHING, {"model": {"norm": "batch"}}),
            "median preact std",
            preact_std,
        ),
        ("plain, depth 24", DEGRADATION, "final train loss", final_train_loss),
        (
            "residual, depth 24",
            merge(DEGRADATION, {"model": {"skip": True}}),
            "final train loss",
            final_train_loss,
        ),
        ("big model, 200 examples", OVERFIT, "val-train loss gap", gap),
        (
            "smaller model",
            merge(OVERFIT, {"model": {"depth": 1, "width": 32}}),
            "val-train loss gap",
            gap,
        ),
        (
            "augmentation",
            merge(OVERFIT, {"data": {"augment": {"shift": 3, "noise": 0.3}}}),
            "val-train loss gap",
            gap,
        ),
        ("dropout 0.5", merge(OVERFIT, {"model": {"dropout": 0.5}}), "val-train loss gap", gap),
        (
            "dropconnect 0.5",
            merge(OVERFIT, {"model": {"dropconnect": 0.5}}),
            "val-train loss gap",
            gap,
        ),
        ("l2 1e-2", merge(OVERFIT, {"train": {"l2": 1e-2}}), "val-train loss gap", gap),
        ("l1 1e-3", merge(OVERFIT, {"train": {"l1": 1e-3}}), "val-train loss gap", gap),
    ]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--seeds", type=int, default=2)
    parser.add_argument("--threads", type=int, default=1)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    print(f"torch {torch.__version__}, {args.threads} thread(s), {args.seeds} seed(s)")
    print(f"{'lesson':<28}{'figure':<20}{'median':>12}   per seed")
    with tempfile.TemporaryDirectory() as cache:
        for title, spec, figure, measure in lessons():
            values = [measure(run(spec, seed, Path(cache))) for seed in range(args.seeds)]
            shown = ", ".join(f"{v:.3g}" for v in values)
            print(f"{title:<28}{figure:<20}{statistics.median(values):>12.3g}   {shown}")


if __name__ == "__main__":
    main()
