"""Admission control: what a spec would cost, computed from the spec alone, before it is queued.

The API never imports torch, so the engine's model is counted here by formula:
``parameter_count`` mirrors ``worker.engine.models.build_model`` layer by layer (a test
on the engine side holds the two to the same numbers). From the same walk come the
activation memory of one training batch, the multiply-accumulates of one example, and
the telemetry rows the job would write; with the dataset's size they give an estimate of
the run time. Each estimate is held to an operator limit (:class:`AdmissionLimits`), and
a spec over one is a 422 that names the field, the estimate and the limit.
"""

from __future__ import annotations

import dataclasses
import math
from dataclasses import dataclass

from service.specs import FIXED_SPLITS, ExperimentSpec, ModelSpec, SpecIssue

FLOAT_BYTES = 4  # float32 activations and inputs
LABEL_BYTES = 8  # int64 labels
# A training step costs at least this much whatever the model (kernel launches, the
# optimizer's loop over parameters, Python): eager PyTorch on a fast machine.
MIN_STEP_SECONDS = 1e-4
# Forward and backward of one example cost about 3x its forward pass (2 FLOPs per MAC).
TRAIN_FLOPS_PER_MAC = 6
EVAL_FLOPS_PER_MAC = 2

# Built-in datasets as the engine makes them (worker/engine/data.py): per-example input
# shape (channel first for signals and images), classes, and default split sizes.
BUILTIN_INPUT_SHAPE: dict[str, tuple[int, ...]] = {
    "mnist1d": (1, 40),
    "digits": (1, 8, 8),
    "spirals": (2,),
    "moons": (2,),
    "circles": (2,),
    "blobs": (2,),
}
BUILTIN_CLASSES: dict[str, int] = {
    "mnist1d": 10,
    "digits": 10,
    "spirals": 3,
    "moons": 2,
    "circles": 2,
    "blobs": 3,
}
SYNTHETIC_SIZES = (2000, 1000)  # train, val when the spec gives none
UPLOADED_VAL_FRACTION = 0.2


@dataclass(frozen=True)
class DataShape:
    """What the worker will hold in memory: per-example input shape, classes, split sizes."""

    input_shape: tuple[int, ...]
    num_classes: int
    n_train: int
    n_val: int
    n_loaded: int  # examples the worker loads (an uploaded dataset is loaded whole)


def builtin_data_shape(spec: ExperimentSpec) -> DataShape:
    data = spec.data
    split = FIXED_SPLITS.get(data.dataset)
    train, val = split if split is not None else SYNTHETIC_SIZES
    n_train, n_val = data.train_size or train, data.val_size or val
    loaded = (train + val) if split is not None else n_train + n_val
    return DataShape(
        BUILTIN_INPUT_SHAPE[data.dataset], BUILTIN_CLASSES[data.dataset], n_train, n_val, loaded
    )


def uploaded_data_shape(spec: ExperimentSpec, *, x_shape: list[int], num_classes: int) -> DataShape:
    """An uploaded x of shape (n, f) is a signal (1, f); (n, H, W) an image (1, H, W)."""
    n = x_shape[0]
    n_val = spec.data.val_size or max(1, round(UPLOADED_VAL_FRACTION * n))
    n_train = spec.data.train_size or max(0, n - n_val)
    return DataShape((1, *x_shape[1:]), num_classes, n_train, n_val, n)


@dataclass(frozen=True)
class ModelCost:
    parameters: int
    tracked_layers: int  # layers with parameters: the rows of /layers, one stat row each
    macs_per_example: int  # multiply-accumulates of one forward pass
    activation_floats_per_example: int  # what autograd keeps for the backward pass


@dataclass
class _Walk:
    """Running totals while the layers are laid out as ``build_model`` lays them."""

    spec: ModelSpec
    dims: int  # 0: linear (MLP); 1 or 2: convolution
    positions: int  # spatial positions each conv layer keeps ("same" padding)
    parameters: int = 0
    tracked: int = 0
    macs: int = 0
    floats: int = 0

    def weight_layer(self, n_in: int, n_out: int) -> None:
        kernel = self.spec.kernel_size**self.dims
        bias = n_out if self.spec.norm != "batch" else 0
        self.parameters += n_in * n_out * kernel + bias
        self.macs += n_in * n_out * kernel * self.positions
        self.tracked += 1
        # the layer's output and its activation's output
        self.floats += 2 * n_out * self.positions

    def norm(self, channels: int) -> None:
        if self.spec.norm == "none":
            return
        self.parameters += 2 * channels  # weight and bias (batch, layer and group norm)
        self.tracked += 1
        self.floats += channels * self.positions

    def dropout(self, channels: int) -> None:
        if self.spec.dropout > 0:
            self.floats += channels * self.positions

    def projection(self, n_in: int, n_out: int) -> None:
        self.parameters += n_in * n_out  # linear or 1x1 conv, no bias
        self.macs += n_in * n_out * self.positions
        self.tracked += 1
        self.floats += n_out * self.positions


def model_cost(spec: ModelSpec, *, input_shape: tuple[int, ...], num_classes: int) -> ModelCost:
    """Parameters, tracked layers, MACs and kept activations of the model ``spec`` builds."""
    if spec.arch == "mlp":
        walk = _Walk(spec, dims=0, positions=1)
        n_in = math.prod(input_shape)
    else:
        walk = _Walk(spec, dims=len(input_shape) - 1, positions=math.prod(input_shape[1:]))
        n_in = input_shape[0]
    width = spec.width
    if spec.skip:
        for _ in range(spec.depth // 2):
            if n_in != width:
                walk.projection(n_in, width)
            for block_in in (n_in, width):
                walk.weight_layer(block_in, width)
                walk.norm(width)
            walk.dropout(width)
            walk.dropout(width)
            walk.floats += width * walk.positions  # the residual sum
            n_in = width
    else:
        for _ in range(spec.depth):
            walk.weight_layer(n_in, width)
            walk.norm(width)
            walk.dropout(width)
            n_in = width
    walk.parameters += width * num_classes + num_classes  # the output layer
    walk.macs += width * num_classes
    walk.tracked += 1
    walk.floats += math.prod(input_shape) + num_classes
    return ModelCost(walk.parameters, walk.tracked, walk.macs, walk.floats)


def parameter_count(spec: ModelSpec, *, input_shape: tuple[int, ...], num_classes: int) -> int:
    """Trainable parameters of the model, equal to the engine's ``count_parameters``."""
    return model_cost(spec, input_shape=input_shape, num_classes=num_classes).parameters


@dataclass(frozen=True)
class Estimate:
    parameters: int
    activation_bytes: int  # one training batch
    telemetry_rows: int
    dataset_bytes: int
    total_steps: int
    run_seconds: float


def estimate(spec: ExperimentSpec, data: DataShape, *, flops_per_second: float) -> Estimate:
    cost = model_cost(spec.model, input_shape=data.input_shape, num_classes=data.num_classes)
    train, telemetry = spec.train, spec.telemetry
    steps_per_epoch = math.ceil(data.n_train / train.batch_size)
    total_steps = train.epochs * steps_per_epoch
    telemetry_steps = total_steps // telemetry.every_n_steps if telemetry.every_n_steps else 0
    rows_per_step = 2 if telemetry.histogram_bins > 0 else 1  # statistics (+ histograms)
    batch = min(train.batch_size, max(1, data.n_train))
    epoch_flops = cost.macs_per_example * (
        TRAIN_FLOPS_PER_MAC * data.n_train + EVAL_FLOPS_PER_MAC * data.n_val
    )
    seconds = train.epochs * (steps_per_epoch * MIN_STEP_SECONDS + epoch_flops / flops_per_second)
    if telemetry.landscape is not None:
        ls = telemetry.landscape
        evaluations = ls.points**ls.dims * min(ls.max_examples, data.n_train)
        seconds += EVAL_FLOPS_PER_MAC * cost.macs_per_example * evaluations / flops_per_second
    example_bytes = math.prod(data.input_shape) * FLOAT_BYTES + LABEL_BYTES
    return Estimate(
        parameters=cost.parameters,
        activation_bytes=cost.activation_floats_per_example * FLOAT_BYTES * batch,
        telemetry_rows=cost.tracked_layers * telemetry_steps * rows_per_step,
        dataset_bytes=data.n_loaded * example_bytes,
        total_steps=total_steps,
        run_seconds=seconds,
    )


@dataclass(frozen=True)
class AdmissionLimits:
    """Operator limits on what one job may cost (service.config.Settings holds them).

    ``max_run_seconds`` is the server's run-time limit (``max_time_limit_s``, which the
    worker enforces while the job runs); :func:`limits_for` lowers it to the job's own
    ``train.time_limit_s``.
    """

    max_parameters: int
    max_activation_bytes: int
    max_telemetry_rows: int
    max_dataset_bytes: int
    max_run_seconds: float


def limits_for(spec: ExperimentSpec, limits: AdmissionLimits) -> AdmissionLimits:
    """The limits of this job: its run time bounded by its own limit where it sets one. An
    estimate that errs short and still passes that limit would certainly end the job
    failed (time_limit): better said at submit than after the limit has been spent."""
    own = spec.train.time_limit_s
    if own is None or own >= limits.max_run_seconds:
        return limits
    return dataclasses.replace(limits, max_run_seconds=own)


def _n(value: float) -> str:
    return f"{value:,.0f}"


def _mib(value: int) -> str:
    return f"{value / 2**20:,.1f} MiB"


def check(found: Estimate, limits: AdmissionLimits) -> list[SpecIssue]:
    """One issue per estimate over its limit, located at the field to change."""
    issues: list[SpecIssue] = []
    if found.parameters > limits.max_parameters:
        issues.append(
            SpecIssue(
                ("model",),
                f"the model would have {_n(found.parameters)} parameters; this server "
                f"allows at most {_n(limits.max_parameters)} (lower model.depth or "
                "model.width)",
            )
        )
    if found.activation_bytes > limits.max_activation_bytes:
        issues.append(
            SpecIssue(
                ("train", "batch_size"),
                f"one batch would keep about {_mib(found.activation_bytes)} of activations "
                f"for the backward pass; this server allows at most "
                f"{_mib(limits.max_activation_bytes)} (lower train.batch_size or model.width)",
            )
        )
    if found.telemetry_rows > limits.max_telemetry_rows:
        issues.append(
            SpecIssue(
                ("telemetry", "every_n_steps"),
                f"the job would write {_n(found.telemetry_rows)} telemetry rows (tracked "
                f"layers x {_n(found.total_steps)} steps / every_n_steps); this server "
                f"allows at most {_n(limits.max_telemetry_rows)} (raise "
                "telemetry.every_n_steps, or record fewer steps)",
            )
        )
    if found.dataset_bytes > limits.max_dataset_bytes:
        issues.append(
            SpecIssue(
                ("data", "dataset"),
                f"the dataset takes {_mib(found.dataset_bytes)} once decompressed; this "
                f"server allows at most {_mib(limits.max_dataset_bytes)} per job",
            )
        )
    if found.run_seconds > limits.max_run_seconds:
        issues.append(
            SpecIssue(
                ("train", "epochs"),
                f"the job would run about {_n(found.run_seconds)} s ({_n(found.total_steps)} "
                f"steps); its run-time limit is {_n(limits.max_run_seconds)} s "
                "(train.time_limit_s, at most the server's max_time_limit_s): fewer epochs, "
                "a smaller train_size or model, or a larger batch_size",
            )
        )
    return issues
