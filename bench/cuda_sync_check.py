"""On a CUDA machine: prove that non-telemetry steps never sync host and device, and time
bare vs telemetry-every-step vs every-10 on W1 (MLP 20x256 ReLU, batch 128), fp32 and bf16.

    .venv/bin/python bench/cuda_sync_check.py            # < 2 min on one GPU

Non-telemetry steps run under torch.cuda.set_sync_debug_mode("error"): any implicit
host-device sync there (an .item(), a bool(tensor), a pageable copy) raises. Telemetry
steps are allowed to sync only in flush(). Prints one PASS/FAIL line per check and a
steps/s table; exits 1 if any check failed.
"""

from __future__ import annotations

import sys
import time
import traceback
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.specs import ExperimentSpec
from worker.engine.loop import Trainer

STEPS = 200
WARMUP = 20


def make_trainer(every: int, precision: str) -> Trainer:
    spec = ExperimentSpec.model_validate(
        {
            "model": {"depth": 20, "width": 256, "activation": "relu", "init": "kaiming"},
            "train": {"optimizer": "sgd", "lr": 0.01, "precision": precision},
            "telemetry": {"every_n_steps": every, "activations": True},
        }
    )
    torch.manual_seed(0)
    return Trainer(spec, input_shape=(64,), num_classes=10, device=torch.device("cuda"))


def run(trainer: Trainer, steps: int, first: int, strict: bool) -> None:
    x = torch.randn(128, 64, device="cuda")
    y = torch.randint(0, 10, (128,), device="cuda")
    for step in range(first, first + steps):
        telemetry = trainer.is_telemetry_step(step)
        if strict and not telemetry:
            torch.cuda.set_sync_debug_mode("error")
        try:
            trainer.step(x, y, step=step, epoch=1)
        finally:
            torch.cuda.set_sync_debug_mode(0)


def steps_per_second(every: int, precision: str) -> float:
    trainer = make_trainer(every, precision)
    run(trainer, WARMUP, 1, strict=False)
    torch.cuda.synchronize()
    t0 = time.perf_counter()
    run(trainer, STEPS, WARMUP + 1, strict=False)
    trainer.flush()
    torch.cuda.synchronize()
    rate = STEPS / (time.perf_counter() - t0)
    trainer.close()
    return rate


def main() -> int:
    if not torch.cuda.is_available():
        print("no CUDA device: nothing to check")
        return 1
    print(f"torch {torch.__version__}, {torch.cuda.get_device_name()}")
    failed = False
    for precision in ("fp32", "bf16"):
        for every in (0, 1, 10):
            name = f"{precision} every_n_steps={every}: no sync on non-telemetry steps"
            try:
                trainer = make_trainer(every, precision)
                run(trainer, 5, 1, strict=False)  # first-call allocations and caches
                run(trainer, 40, 6, strict=True)
                trainer.flush()
                trainer.close()
                print(f"PASS {name}")
            except Exception:
                failed = True
                print(f"FAIL {name}")
                traceback.print_exc()
    print(f"\nW1 steps/s ({STEPS} steps after {WARMUP} warm-up; higher is better)")
    print(f"{'precision':10}{'bare':>10}{'every 1':>10}{'every 10':>10}{'1/bare':>8}{'10/bare':>9}")
    for precision in ("fp32", "bf16"):
        try:
            bare, each, tenth = (steps_per_second(e, precision) for e in (0, 1, 10))
            print(
                f"{precision:10}{bare:10.1f}{each:10.1f}{tenth:10.1f}"
                f"{bare / each:8.3f}{bare / tenth:9.3f}   (time ratios vs bare)"
            )
        except Exception:
            failed = True
            traceback.print_exc()
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
