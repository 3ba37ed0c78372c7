"""What does trainlab's per-layer telemetry cost per training step?

Runs interleaved rounds (every variant once per round, in rotating order, so drift and
a noisy neighbour hit all variants alike) and prints the median per-step time, its
spread (min..max of the round medians) and ratios:

  a  hand-written PyTorch loop: forward, cross-entropy, backward, SGD step
  b  trainlab Trainer.step with telemetry off (the code train() runs)    target b/a <= 1.05
  c  trainlab, telemetry every step (all statistics + activations)       target c/b <= 1.10
  d  trainlab, telemetry every 10 steps                                  target d/b <= 1.02
  e  a + naive per-value statistics (.item() per statistic per layer)
  f  a + wandb.watch(log="gradients", log_freq=1), offline               (if installed)
  g  a + TensorBoard add_histogram of every gradient every step          (if installed)
  h  b + no-op forward hooks kept registered on every activation (the alternative to
     registering hooks per telemetry step)

Workloads: W1 = MLP, 20 hidden layers of 256 ReLU units, input 64, batch 128, 10 classes;
W2 = 1-D CNN, 3 conv layers of 32 channels (kernel 5) on length-40 signals, batch 128.
Inputs are random tensors already on the device.

    .venv/bin/python bench/bench_telemetry.py                 # CPU, 1 thread
    .venv/bin/python bench/bench_telemetry.py --threads 2 --rounds 9 --steps 40
    .venv/bin/python bench/bench_telemetry.py --device cuda --precision bf16
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.nn import functional

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.specs import ExperimentSpec
from worker.engine.loop import Trainer, make_optimizer
from worker.engine.models import build_model

WORKLOADS: dict[str, dict[str, Any]] = {
    "W1": {
        "model": {
            "arch": "mlp",
            "depth": 20,
            "width": 256,
            "activation": "relu",
            "init": "kaiming",
        },
        "input_shape": (64,),
    },
    "W2": {
        "model": {"arch": "cnn", "depth": 3, "width": 32, "activation": "relu", "kernel_size": 5},
        "input_shape": (1, 40),
    },
}
BATCH = 128
CLASSES = 10


@dataclass
class Variant:
    key: str
    label: str
    step: Callable[[], None]
    close: Callable[[], None] = lambda: None


def make_spec(workload: str, every: int, precision: str) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "model": WORKLOADS[workload]["model"],
            "train": {"optimizer": "sgd", "lr": 0.01, "momentum": 0.9, "precision": precision},
            "telemetry": {"every_n_steps": every, "activations": True},
        }
    )


def engine_variant(
    key: str,
    label: str,
    workload: str,
    every: int,
    args: argparse.Namespace,
    idle_hooks: bool = False,
) -> Variant:
    device = torch.device(args.device)
    torch.manual_seed(0)
    shape = WORKLOADS[workload]["input_shape"]
    trainer = Trainer(
        make_spec(workload, every, args.precision),
        input_shape=shape,
        num_classes=CLASSES,
        device=device,
        on_event=lambda e: None,
    )
    if idle_hooks:
        for layer in trainer.built.layers:
            if layer.activation_module is not None:
                layer.activation_module.register_forward_pre_hook(lambda m, a: None)
                layer.activation_module.register_forward_hook(lambda m, a, o: None)
    x, y = random_batch(shape, device)
    counter = iter(range(1, 1 << 62))

    def step() -> None:
        trainer.step(x, y, step=next(counter), epoch=1)

    return Variant(key, label, step, trainer.close)


def random_batch(shape: tuple[int, ...], device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(BATCH, *shape, generator=g).to(device)
    y = torch.randint(0, CLASSES, (BATCH,), generator=g).to(device)
    return x, y


def hand_variant(
    key: str,
    label: str,
    workload: str,
    args: argparse.Namespace,
    extra: Callable[[nn.Module, torch.Tensor], Callable[[], None]] | None = None,
) -> Variant:
    """The loop a PyTorch user writes by hand; ``extra`` adds a statistics method."""
    device = torch.device(args.device)
    torch.manual_seed(0)
    spec = make_spec(workload, 0, args.precision)
    shape = WORKLOADS[workload]["input_shape"]
    model = build_model(spec.model, input_shape=shape, num_classes=CLASSES).module.to(device)
    opt = make_optimizer([p for p in model.parameters()], spec.train)
    x, y = random_batch(shape, device)
    dtype = torch.bfloat16 if args.precision == "bf16" else torch.float16
    autocast: Callable[[], contextlib.AbstractContextManager[Any]] = (
        contextlib.nullcontext
        if args.precision == "fp32"
        else lambda: torch.autocast(device.type, dtype=dtype)
    )
    after_backward: Callable[[], None] | None = None

    def step() -> None:
        opt.zero_grad(set_to_none=True)
        with autocast():
            loss = functional.cross_entropy(model(x), y)
        torch.autograd.backward(loss)
        if after_backward is not None:
            after_backward()
        opt.step()

    if extra is not None:
        after_backward = extra(model, x)
    return Variant(key, label, step)


def naive_stats(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    """What a first version looks like: one .item() per statistic per parameter."""
    params = [p for p in model.parameters()]
    rows: list[list[float]] = []

    def after_backward() -> None:
        for p in params:
            g = p.grad
            assert g is not None
            rows.append(
                [
                    g.norm().item(),
                    g.mean().item(),
                    g.std().item(),
                    g.abs().max().item(),
                    (g == 0).float().mean().item(),
                    p.norm().item(),
                    torch.isnan(g).sum().item(),
                    torch.isinf(g).sum().item(),
                ]
            )
        rows.clear()

    return after_backward


def wandb_watch(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    import wandb

    run = wandb.init(
        mode="offline", dir=tempfile.mkdtemp(prefix="bench-wandb-"), project="bench", reinit=True
    )
    wandb.watch(model, log="gradients", log_freq=1)
    step = iter(range(1 << 62))

    def after_backward() -> None:
        run.log({}, step=next(step))  # commits the histograms the hooks computed

    return after_backward


def tensorboard_histograms(model: nn.Module, x: torch.Tensor) -> Callable[[], None]:
    from torch.utils.tensorboard import SummaryWriter

    writer = SummaryWriter(tempfile.mkdtemp(prefix="bench-tb-"))
    named = list(model.named_parameters())
    step = iter(range(1 << 62))

    def after_backward() -> None:
        i = next(step)
        for name, p in named:
            writer.add_histogram(f"grad/{name}", p.grad, i)

    return after_backward


def optional(name: str, make: Callable[[], Variant]) -> Variant | None:
    try:
        return make()
    except ImportError as exc:
        print(f"  note: variant {name} skipped ({exc.name or exc} not installed)")
    except Exception as exc:  # a comparison tool failing must not sink the bench
        print(f"  note: variant {name} skipped ({type(exc).__name__}: {exc})")
    return None


def sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def measure(variants: list[Variant], args: argparse.Namespace) -> dict[str, list[float]]:
    device = torch.device(args.device)
    for v in variants:
        for _ in range(args.warmup):
            v.step()
    sync(device)
    per_round: dict[str, list[float]] = {v.key: [] for v in variants}
    for r in range(args.rounds):
        order = variants[r % len(variants) :] + variants[: r % len(variants)]
        for v in order:
            sync(device)
            t0 = time.perf_counter()
            for _ in range(args.steps):
                v.step()
            sync(device)
            per_round[v.key].append((time.perf_counter() - t0) / args.steps * 1e3)
    return per_round


def report(workload: str, variants: list[Variant], times: dict[str, list[float]]) -> None:
    med = {k: statistics.median(v) for k, v in times.items()}
    targets = {"b": ("a", 1.05), "c": ("b", 1.10), "d": ("b", 1.02)}
    print(f"\n{workload}: median ms/step over rounds (min..max of round means)")
    print(f"{'':3}{'variant':58}{'ms/step':>9}{'spread':>17}{'vs a':>7}{'vs b':>7}  target")
    for v in variants:
        t = times[v.key]
        ratio_a = med[v.key] / med["a"] if "a" in med else float("nan")
        ratio_b = med[v.key] / med["b"] if "b" in med else float("nan")
        target = ""
        if v.key in targets:
            base, limit = targets[v.key]
            got = med[v.key] / med[base]
            target = f"{v.key}/{base} <= {limit:.2f}: {'ok' if got <= limit else 'MISSED'}"
        spread = f"{min(t):.2f}..{max(t):.2f}"
        figures = f"{med[v.key]:9.2f}{spread:>17}{ratio_a:7.2f}{ratio_b:7.2f}"
        print(f"{v.key:3}{v.label:58}{figures}  {target}")


def make_variants(workload: str, args: argparse.Namespace) -> list[Variant]:
    makers: dict[str, Callable[[], Variant | None]] = {
        "a": lambda: hand_variant("a", "hand-written loop", workload, args),
        "b": lambda: engine_variant("b", "trainlab, telemetry off", workload, 0, args),
        "c": lambda: engine_variant("c", "trainlab, telemetry every step", workload, 1, args),
        "d": lambda: engine_variant("d", "trainlab, telemetry every 10 steps", workload, 10, args),
        "e": lambda: hand_variant(
            "e", "hand loop + per-value .item() stats", workload, args, naive_stats
        ),
        "f": lambda: optional(
            "f",
            lambda: hand_variant(
                "f",
                "hand loop + wandb.watch(gradients, log_freq=1)",
                workload,
                args,
                wandb_watch,
            ),
        ),
        "g": lambda: optional(
            "g",
            lambda: hand_variant(
                "g",
                "hand loop + TensorBoard add_histogram every grad",
                workload,
                args,
                tensorboard_histograms,
            ),
        ),
        "h": lambda: engine_variant(
            "h",
            "trainlab, telemetry off, idle hooks left registered",
            workload,
            0,
            args,
            idle_hooks=True,
        ),
    }
    return [v for k in args.variants if (v := makers[k]()) is not None]


def main() -> None:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawTextHelpFormatter
    )
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--precision", default="fp32", choices=["fp32", "bf16", "fp16"])
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--rounds", type=int, default=31)
    parser.add_argument("--steps", type=int, default=10, help="steps per variant per round")
    parser.add_argument("--warmup", type=int, default=10)
    parser.add_argument("--workloads", default="W1,W2")
    parser.add_argument("--variants", default="abcdefgh")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    torch.set_flush_denormal(True)
    print(
        f"torch {torch.__version__}, device {args.device}, precision {args.precision}, "
        f"torch threads {torch.get_num_threads()}, {args.rounds} rounds x {args.steps} steps"
    )
    if args.device.startswith("cuda"):
        print(f"GPU: {torch.cuda.get_device_name()}")
    for workload in args.workloads.split(","):
        variants = make_variants(workload, args)
        times = measure(variants, args)
        report(workload, variants, times)
        for v in variants:
            v.close()


if __name__ == "__main__":
    main()
