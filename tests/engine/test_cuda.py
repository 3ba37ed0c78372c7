"""CUDA paths: device placement, bf16/fp16 statistics, no host sync on ordinary steps.

Skipped where torch sees no CUDA device (the CI machines); run on a GPU node with
``pytest tests/engine/test_cuda.py``.
"""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pytest
import torch

from service.specs import ExperimentSpec
from worker.engine.data import load_dataset
from worker.engine.events import STAT_NAMES, Event, LayerStatsBatch, RunStarted
from worker.engine.loop import Trainer, train

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


def _spec(precision: str = "fp32", every_n_steps: int = 5) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "data": {"dataset": "mnist1d", "train_size": 1024, "val_size": 256},
            "model": {"depth": 8, "width": 128, "activation": "relu", "norm": "batch"},
            "train": {"epochs": 2, "batch_size": 128, "device": "cuda", "precision": precision},
            "telemetry": {"every_n_steps": every_n_steps, "histogram_bins": 16},
        }
    )


def _stats(spec: ExperimentSpec, cache: Path, device: str | None = None) -> np.ndarray:
    batches: list[LayerStatsBatch] = []

    def collect(event: Event) -> None:
        if isinstance(event, LayerStatsBatch):
            batches.append(event)

    result = train(spec, on_event=collect, cache_dir=cache, device=device)
    assert not result.diverged
    return np.concatenate([b.values for b in batches])


def test_cuda_run_reports_cuda_device(mnist1d_cache: Path) -> None:
    events: list[Event] = []
    result = train(_spec(), on_event=events.append, cache_dir=mnist1d_cache)
    started = next(e for e in events if isinstance(e, RunStarted))
    assert started.device.startswith("cuda")
    assert result.device.startswith("cuda")
    assert 0.0 <= result.val_acc <= 1.0


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_statistics_match_fp32(mnist1d_cache: Path, precision: str) -> None:
    reference = _stats(_spec("fp32"), mnist1d_cache)
    mixed = _stats(_spec(precision), mnist1d_cache)
    assert reference.shape == mixed.shape
    column = STAT_NAMES.index("grad_norm")
    # Early steps, before the two runs drift apart: unscaled gradient norms agree.
    first = reference[0, :, column], mixed[0, :, column]
    np.testing.assert_allclose(first[1], first[0], rtol=0.1)


def test_cpu_and_cuda_statistics_agree(mnist1d_cache: Path) -> None:
    cpu = _stats(_spec(), mnist1d_cache, device="cpu")
    gpu = _stats(_spec(), mnist1d_cache)
    column = STAT_NAMES.index("weight_norm")
    np.testing.assert_allclose(gpu[0, :, column], cpu[0, :, column], rtol=1e-3)


@pytest.mark.parametrize("precision", ["fp32", "bf16"])
def test_ordinary_steps_never_sync_with_the_host(mnist1d_cache: Path, precision: str) -> None:
    spec = _spec(precision, every_n_steps=1000)
    data = load_dataset(spec.data, seed=0, cache_dir=mnist1d_cache).to(torch.device("cuda"))
    trainer = Trainer(
        spec,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        device=torch.device("cuda"),
    )
    index = torch.arange(128, device="cuda")
    xb, yb = data.x_train[index], data.y_train[index]
    trainer.step(xb, yb, step=1, epoch=1)  # warm-up: lazy optimizer state, cuBLAS handles
    torch.cuda.synchronize()
    torch.cuda.set_sync_debug_mode("error")
    try:
        for step in range(2, 12):
            trainer.step(xb, yb, step=step, epoch=1)
    finally:
        torch.cuda.set_sync_debug_mode("default")
    trainer.close()
