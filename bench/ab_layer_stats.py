"""A/B of the statistics collector in one process: this tree's against an older one.

bench_telemetry.py times whole steps, whose GEMMs dominate and swing 10-20 % on a busy
machine; this times only the parts of a telemetry step that involve the collector (the
forward with its hooks, capture_gradients, capture_update and the flush) on one model,
alternating the two collectors every block of 32 steps (one flush per block), and
prints the median over blocks of each part's per-step mean.

The older collector is loaded from a single file under another module name, e.g. the
one before the layer_stats package::

    git show 212fd50:worker/engine/layer_stats.py > /tmp/layer_stats_before.py
    .venv/bin/python bench/ab_layer_stats.py /tmp/layer_stats_before.py --workload W1

It must offer the same calls (activation_capture, capture_gradients, capture_update,
flush, pending); an assert on the number of activation statistics is relaxed, since
STAT_NAMES may have grown since (its extra columns are then left unwritten).
"""

from __future__ import annotations

import argparse
import importlib.util
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import torch
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

import bench_telemetry as bt

from worker.engine.layer_stats import TelemetryCollector
from worker.engine.loop import Trainer

BLOCK = 32  # telemetry steps per block, one flush at its end (the Trainer's default)
PARTS = ("forward", "capture_gradients", "capture_update+flush", "total")


def load_collector_class(path: Path) -> Any:
    source = path.read_text().replace("assert STAT_NAMES[", "assert True or STAT_NAMES[")
    spec = importlib.util.spec_from_loader("layer_stats_before", loader=None)
    assert spec is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up
    exec(compile(source, str(path), "exec"), module.__dict__)
    return module.TelemetryCollector


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("before", type=Path, help="an older single-file layer_stats.py")
    parser.add_argument("--workload", default="W1", choices=sorted(bt.WORKLOADS))
    parser.add_argument("--blocks", type=int, default=20)
    args = parser.parse_args()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    shape = bt.WORKLOADS[args.workload]["input_shape"]
    trainer = Trainer(
        bt.make_spec(args.workload, 1, "fp32"),
        input_shape=shape,
        num_classes=bt.CLASSES,
        device=torch.device("cpu"),
    )
    layers, model, optimizer = trainer.built.layers, trainer.model, trainer.optimizer
    collectors: dict[str, Any] = {
        "before": load_collector_class(args.before)(layers, activations=True),
        "after": TelemetryCollector(layers, activations=True),
    }
    g = torch.Generator().manual_seed(0)
    x = torch.randn(bt.BATCH, *shape, generator=g)
    y = torch.randint(0, bt.CLASSES, (bt.BATCH,), generator=g)
    times: dict[str, dict[str, list[float]]] = {k: {p: [] for p in PARTS} for k in collectors}
    clock = time.perf_counter
    for block in range(args.blocks + 2):  # the first two blocks warm up
        order = ("after", "before") if block % 2 else ("before", "after")
        for name in order:
            collector = collectors[name]
            sums = dict.fromkeys(PARTS, 0.0)
            for i in range(BLOCK):
                t0 = clock()
                with collector.activation_capture():
                    loss = functional.cross_entropy(model(x), y)
                t1 = clock()
                optimizer.zero_grad(set_to_none=True)
                torch.autograd.backward(loss)
                t2 = clock()
                collector.capture_gradients(step=i, epoch=1)
                t3 = clock()
                optimizer.step()
                t4 = clock()
                collector.capture_update()
                if i == BLOCK - 1:
                    collector.flush()
                t5 = clock()
                sums["forward"] += t1 - t0
                sums["capture_gradients"] += t3 - t2
                sums["capture_update+flush"] += t5 - t4
                sums["total"] += (t1 - t0) + (t3 - t2) + (t5 - t4)
            if block >= 2:
                for part in PARTS:
                    times[name][part].append(sums[part] / BLOCK * 1e3)
    print(f"{args.workload}: ms per telemetry step, median of {args.blocks} blocks")
    for part in PARTS:
        before = statistics.median(times["before"][part])
        after = statistics.median(times["after"][part])
        ratio = after / before
        print(f"  {part:22s} before {before:7.3f}  after {after:7.3f}  after/before {ratio:.3f}")
    paired = [a - b for a, b in zip(times["after"]["total"], times["before"]["total"], strict=True)]
    print(
        f"  paired total after-before per block: median {statistics.median(paired):+.3f} ms "
        f"(min {min(paired):+.3f}, max {max(paired):+.3f})"
    )


if __name__ == "__main__":
    main()
