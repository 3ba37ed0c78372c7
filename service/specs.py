"""The experiment contract: what a client may ask trainlab to train.

Pure Pydantic, shared by the API (request bodies), the database (stored as JSON) and the
engine (which reads it to build data, model and optimizer). Field bounds here are the
absolute limits; an operator can tighten depth, width, epochs and sizes through
``service.config.SpecLimits``, checked by :func:`check_spec`.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Annotated, Any, Literal, NamedTuple

from pydantic import BaseModel, ConfigDict, Field, field_validator

from service.vocabulary import FINDING_CODES, DataLayout, FindingCode

BuiltinDataset = Literal["mnist1d", "digits", "spirals", "moons", "circles", "blobs"]
BUILTIN_DATASETS: tuple[str, ...] = ("mnist1d", "digits", "spirals", "moons", "circles", "blobs")
SYNTHETIC_DATASETS: frozenset[str] = frozenset({"spirals", "moons", "circles", "blobs"})
# Input layout of each built-in dataset: "table" (feature vectors), "seq" (1-D signals),
# "image" (2-D). Uploaded datasets get theirs from the shape of their arrays.
BUILTIN_LAYOUT: dict[str, DataLayout] = {
    "mnist1d": "seq",
    "digits": "image",
    "spirals": "table",
    "moons": "table",
    "circles": "table",
    "blobs": "table",
}


class SplitSizes(NamedTuple):
    train: int
    val: int


# Examples in the fixed splits of the built-in datasets that have them (mnist1d's official
# split; digits' 1797 images split 80/20): train_size and val_size draw subsets of these.
# worker/engine/data.py makes the splits and a test holds it to this table. Synthetic
# datasets have no fixed split: they are generated at the size asked for.
FIXED_SPLITS: dict[str, SplitSizes] = {
    "mnist1d": SplitSizes(train=4000, val=1000),
    "digits": SplitSizes(train=1437, val=360),
}
UPLOADED_DATASET_ID = re.compile(r"^ds_[0-9a-f]{12}$")
DATASET_PATTERN = rf"^({'|'.join(BUILTIN_DATASETS)}|ds_[0-9a-f]{{12}})$"

Activation = Literal["sigmoid", "tanh", "relu", "leaky_relu", "elu", "gelu", "silu"]
Norm = Literal["none", "batch", "layer"]
Init = Literal["default", "xavier", "kaiming", "normal"]
Optimizer = Literal["sgd", "adam", "adamw"]
Schedule = Literal["constant", "step", "cosine"]
Device = Literal["auto", "cpu", "cuda"]
Precision = Literal["fp32", "bf16", "fp16"]

Probability = Annotated[float, Field(ge=0.0, lt=1.0)]


class _Strict(BaseModel):
    # Unknown fields are an error: a typo such as "activaton" must not silently train
    # the default model. Infinity and NaN are too: no bound means anything for them, and
    # JSON cannot store them. Strict types: "depth": "3" and "skip": 1 are errors, not
    # quietly converted (a number is a JSON number, a boolean a JSON boolean).
    model_config = ConfigDict(extra="forbid", frozen=True, allow_inf_nan=False, strict=True)


class AugmentSpec(_Strict):
    """Training-time augmentation, applied on the device to whole batches."""

    shift: int = Field(0, ge=0, le=16, description="Random translation, in samples or pixels.")
    scale: float = Field(0.0, ge=0.0, le=0.5, description="Random amplitude/zoom factor 1±scale.")
    noise: float = Field(0.0, ge=0.0, le=5.0, description="Std of added Gaussian noise.")
    flip: bool = Field(False, description="Random horizontal flip (2-D images only).")

    @property
    def enabled(self) -> bool:
        return self.shift > 0 or self.scale > 0 or self.noise > 0 or self.flip


class DataSpec(_Strict):
    dataset: str = Field(
        "mnist1d",
        description="A built-in dataset (mnist1d, digits, spirals, moons, circles, blobs) "
        "or the id of an uploaded one (ds_...).",
        # Documented for clients; the validator below gives the friendlier error.
        json_schema_extra={"pattern": DATASET_PATTERN},
    )
    train_size: int | None = Field(
        None, ge=1, le=1_000_000, description="Seeded subset size; null takes all."
    )
    val_size: int | None = Field(
        None, ge=1, le=1_000_000, description="Seeded validation subset size; null takes all."
    )
    noise: float | None = Field(
        None, ge=0.0, le=10.0, description="Noise level of a synthetic dataset."
    )
    augment: AugmentSpec = Field(
        default_factory=AugmentSpec,
        description="Training-time augmentation (off by default): a remedy for overfitting.",
    )

    @field_validator("dataset")
    @classmethod
    def _known_dataset(cls, value: str) -> str:
        if value in BUILTIN_DATASETS or UPLOADED_DATASET_ID.match(value):
            return value
        raise ValueError(
            f"unknown dataset {value!r}: use one of {', '.join(BUILTIN_DATASETS)} "
            "or the id of an uploaded dataset (ds_ and 12 hex digits)"
        )

    @property
    def is_uploaded(self) -> bool:
        return self.dataset not in BUILTIN_DATASETS


class ModelSpec(_Strict):
    arch: Literal["mlp", "cnn"] = Field(
        "mlp",
        description="mlp: fully connected; cnn: 1-D convolutions for signals, 2-D for images.",
    )
    depth: int = Field(4, ge=1, le=256, description="Hidden layers (the output layer is extra).")
    width: int = Field(128, ge=1, le=4096, description="Units per hidden layer, or channels.")
    activation: Activation = Field(
        "relu",
        description="Hidden-layer activation. sigmoid/tanh saturate and make deep nets' "
        "gradients vanish; relu-like ones keep them flowing (with init kaiming).",
    )
    norm: Norm = Field(
        "none", description="Normalisation after each hidden layer: batch, layer or none."
    )
    skip: bool = Field(False, description="Group hidden layers into residual blocks of two.")
    dropout: Probability = Field(
        0.0, description="Probability of zeroing a hidden unit while training (0 = off)."
    )
    dropconnect: Probability = Field(
        0.0, description="Probability of zeroing a weight while training (DropConnect; 0 = off)."
    )
    init: Init = Field(
        "default",
        description="Weight init: default (PyTorch's), xavier (Glorot), kaiming (He, for "
        "ReLU-like units) or normal (std init_std).",
    )
    init_std: float = Field(0.02, gt=0.0, le=10.0, description="Std used when init is 'normal'.")
    kernel_size: int = Field(5, ge=1, le=15, description="CNN kernel size (odd).")


class TrainSpec(_Strict):
    epochs: int = Field(5, ge=1, le=10_000, description="Passes over the training set.")
    batch_size: int = Field(128, ge=1, le=65_536, description="Examples per training step.")
    optimizer: Optimizer = Field("sgd", description="sgd (with momentum), adam or adamw.")
    lr: float = Field(0.05, gt=0.0, le=10.0, description="Learning rate (the schedule's start).")
    momentum: float = Field(0.9, ge=0.0, lt=1.0, description="SGD momentum (sgd only).")
    nesterov: bool = Field(False, description="Nesterov momentum (sgd with momentum > 0).")
    weight_decay: float | None = Field(
        None, ge=0.0, le=1.0, description="Decoupled weight decay, adamw only (default 0.01)."
    )
    l1: float = Field(0.0, ge=0.0, le=1.0, description="Adds l1·Σ|w| to the loss.")
    l2: float = Field(0.0, ge=0.0, le=1.0, description="Adds (l2/2)·Σw² to the loss.")
    schedule: Schedule = Field(
        "constant",
        description="Learning-rate schedule: constant, step (x gamma every step_size epochs) "
        "or cosine (to 0 at the last epoch).",
    )
    step_size: int = Field(10, ge=1, le=10_000, description="Epochs between 'step' decays.")
    gamma: float = Field(0.1, gt=0.0, le=1.0, description="Decay factor of the 'step' schedule.")
    grad_clip: float | None = Field(
        None, gt=0.0, le=1e6, description="Max global gradient norm; null: no clipping."
    )
    early_stopping_patience: int | None = Field(
        None, ge=1, le=10_000, description="Stop after this many epochs without val improvement."
    )
    seed: int = Field(
        0, ge=0, le=2**31 - 1, description="Seeds data subsets, init, dropout and batch order."
    )
    device: Device = Field(
        "auto",
        description="cuda runs on a GPU worker (the gpu queue); auto uses CUDA where the "
        "worker that takes the job has it; cpu never does.",
    )
    precision: Precision = Field(
        "fp32", description="fp32, or bf16/fp16 autocast (mixed precision) on the device."
    )
    checkpoint_every: int = Field(
        1,
        ge=0,
        le=10_000,
        description="Save a resumable checkpoint every N epochs, which a new attempt after a "
        "lost worker resumes from, and keep the final weights (GET /v1/jobs/{id}/checkpoint); "
        "0 turns both off (tiny jobs simply start again).",
    )
    time_limit_s: float | None = Field(
        None,
        gt=0,
        le=365 * 24 * 3600,
        description="Run-time limit in seconds, over all attempts: past it the job ends "
        "failed (time_limit) with what it recorded. null: the server's limit.",
    )
    stop_on: list[FindingCode] = Field(
        default_factory=list,
        max_length=len(FINDING_CODES),
        description="Finding codes (e.g. divergence, vanishing_gradient) that end the run "
        "early: the diagnosis is recomputed after every epoch, and once it reports one of "
        "these the job ends failed (stopped_on_finding) with what it recorded.",
    )


class LandscapeSpec(_Strict):
    """A loss-landscape slice after training (Li et al. 2018, filter-normalized directions)."""

    points: int = Field(21, ge=5, le=101, description="Points per direction.")
    span: float = Field(
        1.0, gt=0.0, le=5.0, description="Alphas run over [-span, span], in filter-norm units."
    )
    dims: Literal[1, 2] = Field(1, description="1: a curve; 2: a points x points grid.")
    max_examples: int = Field(
        1024, ge=1, le=65_536, description="Training examples the loss is evaluated on."
    )


class TelemetrySpec(_Strict):
    every_n_steps: int = Field(
        10, ge=0, le=1_000_000, description="Layer statistics every N steps; 0 turns them off."
    )
    histogram_bins: int = Field(0, ge=0, le=512, description="Per-layer gradient histograms.")
    activations: bool = Field(True, description="Record each layer's activation statistics.")
    landscape: LandscapeSpec | None = Field(
        None, description="Compute a loss-landscape slice at the end of training; null: off."
    )


EXAMPLE_SPEC: dict[str, Any] = {
    "name": "sigmoid-depth-20",
    "tags": ["vanishing"],
    "data": {
        "dataset": "mnist1d",
        "train_size": 4000,
        "val_size": 1000,
        "augment": {"shift": 0, "scale": 0.0, "noise": 0.0, "flip": False},
    },
    "model": {
        "arch": "mlp",
        "depth": 20,
        "width": 128,
        "activation": "sigmoid",
        "norm": "none",
        "skip": False,
        "dropout": 0.0,
        "dropconnect": 0.0,
        "init": "default",
    },
    "train": {
        "epochs": 2,
        "batch_size": 128,
        "optimizer": "sgd",
        "lr": 0.05,
        "momentum": 0.9,
        "l1": 0.0,
        "l2": 0.0,
        "seed": 0,
        "device": "auto",
        "precision": "fp32",
    },
    "telemetry": {"every_n_steps": 10, "histogram_bins": 0, "activations": True},
}


class ExperimentSpec(_Strict):
    """One training run: data, model, optimisation and what to record."""

    model_config = ConfigDict(
        extra="forbid",
        frozen=True,
        allow_inf_nan=False,
        strict=True,
        json_schema_extra={"examples": [EXAMPLE_SPEC]},
    )

    name: str = Field("", max_length=200, description="Free text, shown in lists and plots.")
    tags: list[Annotated[str, Field(min_length=1, max_length=64)]] = Field(
        default_factory=list,
        max_length=32,
        description="Up to 32 labels of 1-64 characters; GET /v1/jobs?tag= filters on one.",
    )
    data: DataSpec = Field(default_factory=DataSpec, description="What to train on.")
    model: ModelSpec = Field(default_factory=ModelSpec, description="The network.")
    train: TrainSpec = Field(default_factory=TrainSpec, description="How to optimise it.")
    telemetry: TelemetrySpec = Field(
        default_factory=TelemetrySpec, description="What to record while it trains."
    )


@dataclass(frozen=True)
class SpecIssue:
    """A cross-field problem, located like a Pydantic error (path inside the spec)."""

    loc: tuple[str, ...]
    msg: str


@dataclass(frozen=True)
class SpecLimits:
    """Operator bounds, tighter than the schema's."""

    max_depth: int = 256
    max_width: int = 4096
    max_epochs: int = 10_000
    max_train_size: int = 1_000_000
    max_batch_size: int = 65_536
    max_time_limit_s: float = 7 * 24 * 3600.0


def dataset_layout(spec: DataSpec, uploaded_ndim: int | None = None) -> DataLayout | None:
    """ "table", "seq" or "image"; None when an uploaded dataset's shape is not known."""
    if not spec.is_uploaded:
        return BUILTIN_LAYOUT[spec.dataset]
    if uploaded_ndim is None:
        return None
    by_ndim: dict[int, DataLayout] = {2: "seq", 3: "image"}
    return by_ndim.get(uploaded_ndim, "table")


def check_spec(
    spec: ExperimentSpec,
    limits: SpecLimits | None = None,
    *,
    uploaded_ndim: int | None = None,
) -> list[SpecIssue]:
    """Cross-field rules and operator limits that a field validator cannot express.

    ``uploaded_ndim`` is the number of dimensions of an uploaded dataset's ``x`` array
    (2 for feature vectors or 1-D signals, 3 for images), when the spec names one.
    """
    limits = limits or SpecLimits()
    issues: list[SpecIssue] = []
    model, train, data = spec.model, spec.train, spec.data

    for loc, value, bound in (
        (("model", "depth"), model.depth, limits.max_depth),
        (("model", "width"), model.width, limits.max_width),
        (("train", "epochs"), train.epochs, limits.max_epochs),
        (("train", "batch_size"), train.batch_size, limits.max_batch_size),
        (("data", "train_size"), data.train_size or 0, limits.max_train_size),
    ):
        if value > bound:
            issues.append(SpecIssue(loc, f"must be at most {bound} on this server (got {value})"))
    if train.time_limit_s is not None and train.time_limit_s > limits.max_time_limit_s:
        issues.append(
            SpecIssue(
                ("train", "time_limit_s"),
                f"must be at most {limits.max_time_limit_s:g} s on this server "
                f"(got {train.time_limit_s:g})",
            )
        )

    if model.skip and model.depth % 2:
        issues.append(
            SpecIssue(
                ("model", "depth"),
                f"with skip=true hidden layers form residual blocks of two, so depth must be "
                f"even (got {model.depth})",
            )
        )
    if model.arch == "cnn" and model.kernel_size % 2 == 0:
        issues.append(SpecIssue(("model", "kernel_size"), "must be odd for 'same' padding"))
    if train.nesterov and (train.optimizer != "sgd" or train.momentum == 0):
        issues.append(SpecIssue(("train", "nesterov"), "needs optimizer 'sgd' with momentum > 0"))
    if train.weight_decay is not None and train.optimizer != "adamw":
        issues.append(
            SpecIssue(
                ("train", "weight_decay"),
                "decoupled weight decay is for 'adamw' only; use train.l2 for an L2 penalty",
            )
        )

    layout = dataset_layout(data, uploaded_ndim)
    if data.augment.flip and layout not in (None, "image"):
        issues.append(
            SpecIssue(
                ("data", "augment", "flip"),
                f"flip needs 2-D images; dataset {data.dataset!r} is not (try shift or noise)",
            )
        )
    if data.augment.shift and layout == "table":
        issues.append(
            SpecIssue(
                ("data", "augment", "shift"),
                f"shift needs signals or images; {data.dataset!r} is a table of features",
            )
        )
    if model.arch == "cnn" and layout == "table":
        issues.append(
            SpecIssue(
                ("model", "arch"),
                f"cnn needs signals or images; {data.dataset!r} is a table of features (use mlp)",
            )
        )
    if data.noise is not None and not data.is_uploaded and data.dataset not in SYNTHETIC_DATASETS:
        issues.append(
            SpecIssue(("data", "noise"), "noise level applies to synthetic datasets only")
        )
    issues.extend(_split_size_issues(data))
    return issues


def _split_size_issues(data: DataSpec) -> list[SpecIssue]:
    """A subset larger than its fixed split would only fail later, in the worker."""
    split = FIXED_SPLITS.get(data.dataset)
    if split is None:
        return []
    issues: list[SpecIssue] = []
    for field, asked, available, part in (
        ("train_size", data.train_size, split.train, "training"),
        ("val_size", data.val_size, split.val, "validation"),
    ):
        if asked is not None and asked > available:
            issues.append(
                SpecIssue(
                    ("data", field),
                    f"{data.dataset!r} has {available} {part} examples: ask for at most "
                    f"{available}, or null for all of them (got {asked})",
                )
            )
    return issues
