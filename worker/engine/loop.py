"""The training loop: ``train(spec, on_event=...)`` runs one experiment and reports events.

Read :func:`train` top to bottom: data, model and optimizer once, then epochs of steps,
validation, early stopping and divergence checks. The per-step hot path lives in
:meth:`Trainer.step` so that ``bench/`` times exactly the code the service runs.

Rules the hot path keeps:

* No host-device sync on ordinary steps: the epoch's loss and correct count accumulate
  as device tensors and are read once at epoch end. Telemetry steps sync only when the
  collector flushes. Every sync point carries a "host-device sync point" comment.
* Statistics always see unscaled gradients (``GradScaler.unscale_`` first), including the
  L1/L2 penalty and after clipping: the gradient the optimizer applies.
* L1/L2 are the coupled penalties of docs/DESIGN.md, ``(l2/2)·Σw² + l1·Σ|w|`` over the weights
  of linear/conv/projection/output layers (not biases, not norm parameters). Their
  gradient ``l2·w + l1·sign(w)`` is added straight to ``.grad`` with two foreach ops:
  exactly the gradient autograd would produce for the penalized loss, without building
  an autograd graph over every weight each step. ``train_loss`` is the data loss
  (cross-entropy) without the penalty.
* Step numbers are global and 1-based; telemetry runs on steps where
  ``step % every_n_steps == 0`` (steps 10, 20, ... for every_n_steps=10).
* Training loss and accuracy are averaged over the epoch's examples (batches weighted by
  their size), in train mode, as the model was during each step.
* fp16 on a CPU works (autocast float16 + GradScaler) but is slower than fp32 there: it is
  allowed, with a logged warning, so a run meant for a GPU can be checked on a laptop.
"""

from __future__ import annotations

import contextlib
import logging
import math
import time
import warnings
from dataclasses import asdict, astuple, dataclass, replace
from pathlib import Path
from typing import Literal

import numpy as np
import torch
from torch import nn
from torch.nn import functional

from service.specs import ExperimentSpec, TrainSpec
from worker.engine.augment import augment_batch
from worker.engine.checkpoint import TrainState, cpu_copy, join_state, model_weights, split_state
from worker.engine.data import TensorData, iterate_batches, load_dataset, steps_per_epoch
from worker.engine.events import (
    CheckpointSink,
    EpochEnd,
    Event,
    EventSink,
    RunStarted,
    StepProgress,
    StopCheck,
    TrainResult,
)
from worker.engine.landscape import LandscapeSlice, loss_slice
from worker.engine.layer_stats import TelemetryCollector
from worker.engine.models import BuiltModel, TrackedLayer, build_model, count_parameters

log = logging.getLogger(__name__)

VAL_BATCH = 4096  # validation needs no gradients: big batches, few kernel launches
NORM_KINDS = frozenset({"batchnorm", "layernorm", "groupnorm"})
ADAMW_DEFAULT_WEIGHT_DECAY = 0.01
SCHEDULER_ORDER_WARNING = r"Detected call of `lr_scheduler.step\(\)` before `optimizer.step\(\)`"


def _no_events(event: Event) -> None:
    return None


def _never() -> bool:
    return False


def resolve_device(requested: Literal["auto", "cpu", "cuda"] | str) -> torch.device:
    """The device a spec's ``train.device`` asks for; "auto" prefers CUDA when present."""
    if requested == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if requested == "cuda" and not torch.cuda.is_available():
        raise RuntimeError(
            "the spec asks for device 'cuda' but this worker has no usable CUDA GPU "
            "(torch.cuda.is_available() is False); route it to a GPU worker or use 'auto'"
        )
    return torch.device(requested)


def _autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager[None]:
    if precision == "fp32":
        return contextlib.nullcontext()
    dtype = torch.bfloat16 if precision == "bf16" else torch.float16
    return torch.autocast(device_type=device.type, dtype=dtype)


def make_optimizer(params: list[nn.Parameter], train: TrainSpec) -> torch.optim.Optimizer:
    # foreach=True: one multi-tensor kernel per update term instead of one per parameter.
    if train.optimizer == "sgd":
        return torch.optim.SGD(
            params, lr=train.lr, momentum=train.momentum, nesterov=train.nesterov, foreach=True
        )
    if train.optimizer == "adam":
        return torch.optim.Adam(params, lr=train.lr, foreach=True)
    weight_decay = train.weight_decay
    if weight_decay is None:
        weight_decay = ADAMW_DEFAULT_WEIGHT_DECAY
    return torch.optim.AdamW(params, lr=train.lr, weight_decay=weight_decay, foreach=True)


def make_schedule(
    optimizer: torch.optim.Optimizer, train: TrainSpec
) -> torch.optim.lr_scheduler.LRScheduler:
    """Stepped once per epoch."""
    if train.schedule == "step":
        return torch.optim.lr_scheduler.StepLR(optimizer, train.step_size, gamma=train.gamma)
    if train.schedule == "cosine":
        return torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, T_max=train.epochs)
    return torch.optim.lr_scheduler.ConstantLR(optimizer, factor=1.0, total_iters=0)


def penalized_weights(layers: list[TrackedLayer]) -> list[torch.Tensor]:
    """The weights L1/L2 apply to: every non-norm layer's ``weight`` (no biases)."""
    weights: list[torch.Tensor] = []
    for layer in layers:
        if layer.info.kind in NORM_KINDS:
            continue
        weight = getattr(layer.module, "weight", None)
        if isinstance(weight, nn.Parameter) and weight.requires_grad:
            weights.append(weight)
    return weights


class Trainer:
    """Model, optimizer, precision and telemetry of one run, and its per-step hot path."""

    def __init__(
        self,
        spec: ExperimentSpec,
        *,
        input_shape: tuple[int, ...],
        num_classes: int,
        device: torch.device,
        on_event: EventSink = _no_events,
        flush_every: int = 32,
    ) -> None:
        self.spec = spec
        self.device = device
        self.on_event = on_event
        self.flush_every = flush_every
        train, telemetry = spec.train, spec.telemetry
        self.built: BuiltModel = build_model(
            spec.model, input_shape=input_shape, num_classes=num_classes
        )
        self.model = self.built.module.to(device)
        params = [p for p in self.model.parameters() if p.requires_grad]
        self.optimizer = make_optimizer(params, train)
        self.schedule = make_schedule(self.optimizer, train)
        self.autocast = _autocast(device, train.precision)
        # GradScaler only for fp16: bf16 has fp32's exponent range and needs no scaling.
        self.scaler = torch.amp.GradScaler(device.type, enabled=train.precision == "fp16")
        self.l1, self.l2, self.grad_clip = train.l1, train.l2, train.grad_clip
        self.penalized = penalized_weights(self.built.layers)
        self.every_n = telemetry.every_n_steps
        self.collector: TelemetryCollector | None = None
        if self.every_n > 0:
            self.collector = TelemetryCollector(
                self.built.layers,
                activations=telemetry.activations,
                histogram_bins=telemetry.histogram_bins,
                flush_every=flush_every,
            )
        # The epoch's running sums, on the device: read once per epoch.
        self.loss_sum = torch.zeros((), device=device)
        self.correct = torch.zeros((), dtype=torch.int64, device=device)

    def is_telemetry_step(self, step: int) -> bool:
        return self.collector is not None and step % self.every_n == 0

    def step(self, xb: torch.Tensor, yb: torch.Tensor, *, step: int, epoch: int) -> None:
        """One optimizer step on a batch; statistics when ``step`` is a telemetry step."""
        collector = self.collector if self.is_telemetry_step(step) else None
        capture = collector.activation_capture() if collector else contextlib.nullcontext()
        with capture, self.autocast:
            logits = self.model(xb)
            loss = functional.cross_entropy(logits, yb)
        self.optimizer.zero_grad(set_to_none=True)
        torch.autograd.backward(self.scaler.scale(loss))
        if self.scaler.is_enabled() and (collector or self.grad_clip or self.l1 or self.l2):
            self.scaler.unscale_(self.optimizer)  # statistics and penalties on true grads
        self._add_penalty_gradients()
        if self.grad_clip is not None:
            params = [p for g in self.optimizer.param_groups for p in g["params"]]
            nn.utils.clip_grad_norm_(params, self.grad_clip, foreach=True)
        if collector:
            collector.capture_gradients(step=step, epoch=epoch)
        self.scaler.step(self.optimizer)
        self.scaler.update()
        if collector:
            collector.capture_update()
            if collector.pending >= self.flush_every:
                self.flush()
        with torch.no_grad():
            self.loss_sum.add_(loss.detach().float(), alpha=len(yb))
            self.correct.add_((logits.argmax(dim=1) == yb).sum())

    @torch.no_grad()
    def _add_penalty_gradients(self) -> None:
        # d/dw of (l2/2)·Σw² + l1·Σ|w|; sign(0) = 0 is the subgradient autograd uses too.
        if not (self.l1 or self.l2) or not self.penalized:
            return
        weights = [w for w in self.penalized if w.grad is not None]
        grads = [w.grad for w in weights if w.grad is not None]
        if self.l2:
            torch._foreach_add_(grads, weights, alpha=self.l2)
        if self.l1:
            torch._foreach_add_(grads, torch._foreach_sign(weights), alpha=self.l1)

    def flush(self) -> None:
        if self.collector is not None:
            batch = self.collector.flush()  # host-device sync point (one copy)
            if batch is not None:
                self.on_event(batch)

    def take_epoch_sums(self) -> tuple[float, int]:
        """(sum of per-example losses, correct count) since the last call."""
        sums = torch.stack((self.loss_sum.double(), self.correct.double()))
        loss_sum, correct = sums.tolist()  # host-device sync point
        self.loss_sum.zero_()
        self.correct.zero_()
        return loss_sum, int(correct)

    @torch.no_grad()
    def evaluate(self, x: torch.Tensor, y: torch.Tensor) -> tuple[float, float]:
        """(mean loss, accuracy) in eval mode: dropout and DropConnect off, BN running stats."""
        self.model.eval()
        loss_sum = torch.zeros((), device=self.device)
        correct = torch.zeros((), dtype=torch.int64, device=self.device)
        for start in range(0, len(y), VAL_BATCH):
            xb, yb = x[start : start + VAL_BATCH], y[start : start + VAL_BATCH]
            with self.autocast:
                logits = self.model(xb)
            loss_sum += functional.cross_entropy(logits.float(), yb, reduction="sum")
            correct += (logits.argmax(dim=1) == yb).sum()
        self.model.train()
        n = max(len(y), 1)
        total, right = torch.stack(
            (loss_sum.double(), correct.double())
        ).tolist()  # host-device sync point
        return total / n, right / n

    def lr(self) -> float:
        return float(self.optimizer.param_groups[0]["lr"])

    def close(self) -> None:
        if self.collector is not None:
            self.collector.close()


def landscape_of(trainer: Trainer, data: TensorData, spec: ExperimentSpec) -> LandscapeSlice:
    """The loss slice of the trained model on a seeded subset of the training data."""
    settings = spec.telemetry.landscape
    assert settings is not None
    n = len(data.y_train)
    # A fixed subset, drawn on the CPU from the run's seed: the same on every device.
    pick = torch.randperm(n, generator=torch.Generator().manual_seed(spec.train.seed))
    idx = pick[: settings.max_examples].to(data.x_train.device)
    started = time.perf_counter()
    result = loss_slice(
        trainer.model,
        data.x_train[idx],
        data.y_train[idx],
        points=settings.points,
        span=settings.span,
        dims=settings.dims,
        seed=spec.train.seed,
        autocast=trainer.autocast,
    )
    log.info("landscape slice (%dD) took %.2f s", settings.dims, time.perf_counter() - started)
    return result


@dataclass
class _Best:
    val_loss: float = math.inf
    epoch: int = 0


@dataclass
class _Counters:
    """Where the loop stands; saved in every checkpoint and restored from it."""

    step: int = 0  # optimizer steps done, over all epochs
    epochs_done: int = 0  # epochs completed (validated, reported)
    batches_done: int = 0  # batches of the current (unfinished) epoch already stepped
    seen: int = 0  # examples of the current epoch already stepped
    epoch_seconds: float = 0.0  # training seconds of the current epoch before a stop
    elapsed_s: float = 0.0  # training seconds of the earlier attempts
    best_val_loss: float | None = None
    best_epoch: int = 0
    last: list[float] | None = None  # the last EpochEnd's fields


def capture_state(
    trainer: Trainer,
    counters: _Counters,
    *,
    shuffle_gen: torch.Generator,
    epoch_shuffle: torch.Tensor,
    augment_gen: torch.Generator,
) -> TrainState:
    """A CPU snapshot of everything the run needs to continue, at a step boundary.

    ``epoch_shuffle`` is the shuffle generator's state before the current epoch drew
    its permutation: a resumed attempt draws the same one and skips the batches done.
    """
    tensors: dict[str, torch.Tensor] = {
        "rng.torch": torch.get_rng_state(),
        "rng.shuffle": shuffle_gen.get_state(),
        "rng.shuffle_epoch": epoch_shuffle.clone(),
        "rng.augment": augment_gen.get_state(),
        "epoch.loss_sum": cpu_copy(trainer.loss_sum),
        "epoch.correct": cpu_copy(trainer.correct),
    }
    if trainer.device.type == "cuda":
        tensors["rng.cuda"] = torch.cuda.get_rng_state(trainer.device)
    meta = {
        "counters": asdict(counters),
        "model": split_state("model", trainer.model.state_dict(), tensors),
        "optimizer": split_state("optimizer", trainer.optimizer.state_dict(), tensors),
        "schedule": split_state("schedule", trainer.schedule.state_dict(), tensors),
        "scaler": split_state("scaler", trainer.scaler.state_dict(), tensors),
    }
    return TrainState(tensors=tensors, meta=meta)


def restore_state(
    trainer: Trainer,
    state: TrainState,
    *,
    shuffle_gen: torch.Generator,
    augment_gen: torch.Generator,
) -> tuple[_Counters, torch.Tensor]:
    """Load ``state`` into a freshly built trainer; returns the counters and the
    shuffle state the interrupted epoch started from."""
    t, meta = state.tensors, state.meta
    trainer.model.load_state_dict(join_state(meta["model"], t))
    trainer.optimizer.load_state_dict(join_state(meta["optimizer"], t))
    trainer.schedule.load_state_dict(join_state(meta["schedule"], t))
    if scaler_state := join_state(meta["scaler"], t):
        trainer.scaler.load_state_dict(scaler_state)
    trainer.loss_sum.copy_(t["epoch.loss_sum"])
    trainer.correct.copy_(t["epoch.correct"])
    torch.set_rng_state(t["rng.torch"])
    shuffle_gen.set_state(t["rng.shuffle"])
    augment_gen.set_state(t["rng.augment"])
    if "rng.cuda" in t and trainer.device.type == "cuda":
        torch.cuda.set_rng_state(t["rng.cuda"], trainer.device)
    return _Counters(**meta["counters"]), t["rng.shuffle_epoch"]


def train(
    spec: ExperimentSpec,
    *,
    on_event: EventSink = _no_events,
    should_stop: StopCheck = _never,
    device: str | torch.device | None = None,
    data: TensorData | None = None,
    cache_dir: Path | None = None,
    arrays: tuple[np.ndarray, np.ndarray] | None = None,
    flush_every: int = 32,
    resume: TrainState | None = None,
    on_checkpoint: CheckpointSink | None = None,
    should_suspend: StopCheck = _never,
    time_limit_s: float | None = None,
) -> TrainResult:
    """Train ``spec``, calling ``on_event`` with RunStarted, StepProgress (every step),
    LayerStatsBatch (every ``flush_every`` telemetry steps and at each epoch end) and
    EpochEnd; ``should_stop()`` is polled every step and cancels within that step.

    ``device`` overrides ``spec.train.device``; ``data`` skips loading (tests, benches).
    With ``telemetry.landscape`` set, a run that trained to its end (not cancelled, not
    diverged) also gets a loss-landscape slice in ``TrainResult.landscape``.
    Does not set torch's thread count: the worker sizes it; RunStarted reports it.

    Durability: ``on_checkpoint(state)`` gets a :class:`TrainState` after every
    ``train.checkpoint_every``-th epoch, always after every event of the steps it
    covers; ``resume`` continues from one, exactly as the run would have gone on.
    ``should_suspend()`` is polled every step: when true the run flushes, checkpoints
    at that step boundary and returns ``suspended``. Past ``time_limit_s`` seconds of
    training (the earlier attempts' included) it stops and returns ``timed_out``.
    """
    started = time.perf_counter()
    train_spec = spec.train
    # Saturated sigmoids produce denormals, which are very slow on CPUs.
    torch.set_flush_denormal(True)
    dev = resolve_device(train_spec.device) if device is None else torch.device(device)
    if train_spec.precision == "fp16" and dev.type == "cpu":
        log.warning("fp16 on CPU runs through autocast emulation and is slower than fp32")
    torch.manual_seed(train_spec.seed)
    # Separate streams: shuffling on the CPU, augmentation on the data's device.
    shuffle_gen = torch.Generator().manual_seed(train_spec.seed)
    augment_gen = torch.Generator(device=dev).manual_seed(train_spec.seed + 1)

    # Data: loaded once, moved to the device once, batched by index.
    if data is None:
        data = load_dataset(spec.data, seed=train_spec.seed, cache_dir=cache_dir, arrays=arrays)
    data = data.to(dev)
    n_train = len(data.y_train)
    spe = steps_per_epoch(n_train, train_spec.batch_size)
    total_steps = spe * train_spec.epochs
    augment = spec.data.augment if spec.data.augment.enabled else None

    trainer = Trainer(
        spec,
        input_shape=data.input_shape,
        num_classes=data.num_classes,
        device=dev,
        on_event=on_event,
        flush_every=flush_every,
    )
    counters = _Counters()
    epoch_shuffle = shuffle_gen.get_state()
    if resume is not None:
        counters, epoch_shuffle = restore_state(
            trainer, resume, shuffle_gen=shuffle_gen, augment_gen=augment_gen
        )
        shuffle_gen.set_state(epoch_shuffle)  # the interrupted epoch draws its order again
    on_event(
        RunStarted(
            layers=[layer.info for layer in trainer.built.layers],
            device=str(dev),
            precision=train_spec.precision,
            torch_threads=torch.get_num_threads(),
            total_steps=total_steps,
            steps_per_epoch=spe,
            param_count=count_parameters(trainer.model),
            resumed_step=counters.step,
            resumed_epochs=counters.epochs_done,
        )
    )

    def snapshot() -> TrainState:
        counters.elapsed_s = elapsed_before + time.perf_counter() - started
        return capture_state(
            trainer,
            counters,
            shuffle_gen=shuffle_gen,
            epoch_shuffle=epoch_shuffle,
            augment_gen=augment_gen,
        )

    elapsed_before = counters.elapsed_s
    best = _Best(
        counters.best_val_loss if counters.best_val_loss is not None else math.inf,
        counters.best_epoch,
    )
    last = EpochEnd(counters.epochs_done, *counters.last) if counters.last else None
    step = counters.step
    epoch = counters.epochs_done
    cancelled = stopped_early = diverged = suspended = timed_out = False
    try:
        for epoch in range(counters.epochs_done + 1, train_spec.epochs + 1):
            trainer.model.train()
            epoch_start = time.perf_counter()
            skip = counters.batches_done  # > 0 only in the epoch a resume continues
            epoch_shuffle = shuffle_gen.get_state()
            for batch, idx in enumerate(
                iterate_batches(n_train, train_spec.batch_size, generator=shuffle_gen, device=dev)
            ):
                if batch < skip:
                    continue
                step += 1
                xb, yb = data.x_train[idx], data.y_train[idx]
                if augment is not None:  # training batches only, never validation
                    xb = augment_batch(xb, augment, layout=data.layout, generator=augment_gen)
                trainer.step(xb, yb, step=step, epoch=epoch)
                counters.seen += len(idx)
                on_event(StepProgress(epoch=epoch, step=step, total_steps=total_steps))
                if should_stop():
                    cancelled = True
                    break
                over = time_limit_s is not None and (
                    elapsed_before + time.perf_counter() - started > time_limit_s
                )
                if over or should_suspend():
                    timed_out, suspended = over, not over
                    counters.step, counters.batches_done = step, batch + 1
                    break
            trainer.flush()
            if dev.type == "cuda":
                torch.cuda.synchronize()  # host-device sync point: the clock needs the GPU done
            seconds = counters.epoch_seconds + time.perf_counter() - epoch_start
            if suspended and on_checkpoint is not None:
                counters.epoch_seconds = seconds
                on_checkpoint(snapshot())  # mid-epoch: after the flush above
            if cancelled or suspended or timed_out:
                break
            loss_sum, correct = trainer.take_epoch_sums()
            seen = max(counters.seen, 1)
            train_loss, train_acc = loss_sum / seen, correct / seen
            val_loss, val_acc = trainer.evaluate(data.x_val, data.y_val)
            last = EpochEnd(epoch, train_loss, train_acc, val_loss, val_acc, trainer.lr(), seconds)
            on_event(last)
            with warnings.catch_warnings():
                # Resumed at an epoch's last step, this process has not stepped the
                # optimizer yet (nor has fp16's scaler after an overflow): PyTorch's order
                # check warns although the schedule counts epochs right.
                warnings.filterwarnings("ignore", message=SCHEDULER_ORDER_WARNING)
                trainer.schedule.step()
            if not math.isfinite(train_loss):
                diverged = True
                break
            if val_loss < best.val_loss:
                best = _Best(val_loss, epoch)
            counters = replace(
                counters,
                step=step,
                epochs_done=epoch,
                batches_done=0,
                seen=0,
                epoch_seconds=0.0,
                best_val_loss=best.val_loss,
                best_epoch=best.epoch,
                last=list(astuple(last))[1:],
            )
            patience = train_spec.early_stopping_patience
            if patience is not None and epoch - best.epoch >= patience:
                stopped_early = True
                break
            every = train_spec.checkpoint_every
            if on_checkpoint is not None and every and epoch % every == 0:
                on_checkpoint(snapshot())
    finally:
        trainer.close()

    landscape = None
    finished = not (cancelled or diverged or suspended or timed_out)
    keeps_checkpoints = on_checkpoint is not None and train_spec.checkpoint_every > 0
    if spec.telemetry.landscape is not None and last is not None and finished:
        landscape = landscape_of(trainer, data, spec).as_dict()

    nan = math.nan
    return TrainResult(
        train_loss=last.train_loss if last else nan,
        train_acc=last.train_acc if last else nan,
        val_loss=last.val_loss if last else nan,
        val_acc=last.val_acc if last else nan,
        best_val_loss=best.val_loss if best.epoch else nan,
        best_epoch=best.epoch,
        epochs_run=last.epoch if last else 0,
        steps=step,
        stopped_early=stopped_early,
        cancelled=cancelled,
        diverged=diverged,
        seconds=time.perf_counter() - started,
        device=str(dev),
        landscape=landscape,
        suspended=suspended,
        timed_out=timed_out,
        resumed_from_step=resume.step if resume is not None else None,
        weights=model_weights(trainer.model) if finished and keeps_checkpoints else None,
    )


__all__ = [
    "Trainer",
    "capture_state",
    "landscape_of",
    "make_optimizer",
    "make_schedule",
    "penalized_weights",
    "resolve_device",
    "restore_state",
    "train",
]
