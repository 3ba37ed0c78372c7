"""The words trainlab uses for its states and kinds: each spelled once, here.

Every other place takes its strings from these ``Literal`` types (the database check
constraints, the API schemas and so the OpenAPI document, the engine, the CLI; the
dashboard reads them from ``/dashboard/vocabulary.json``). Pure typing: the engine imports it too.
"""

from __future__ import annotations

from typing import Literal, get_args

JobStatus = Literal["queued", "running", "succeeded", "failed", "cancelled"]
JOB_STATUSES: tuple[JobStatus, ...] = get_args(JobStatus)
INITIAL_STATUS: JobStatus = "queued"  # every job starts here, before a worker claims it
SUCCESS_STATUS: JobStatus = "succeeded"  # trained to the end (or early-stopped)
FAILURE_STATUS: JobStatus = "failed"  # the job carries an error
CANCELLED_STATUS: JobStatus = "cancelled"
FINISHED_STATUSES: frozenset[JobStatus] = frozenset(
    {SUCCESS_STATUS, FAILURE_STATUS, CANCELLED_STATUS}
)
ACTIVE_STATUSES: frozenset[JobStatus] = frozenset(JOB_STATUSES) - FINISHED_STATUSES

# What a tracked layer is. Weight layers carry the gradient-flow story; norm layers
# (batchnorm, layernorm, groupnorm) sit between them; projection is a residual
# shortcut's 1x1 map; output is the classifier on top.
LayerKind = Literal[
    "linear",
    "conv1d",
    "conv2d",
    "batchnorm",
    "layernorm",
    "groupnorm",
    "projection",
    "output",
]
LAYER_KINDS: tuple[LayerKind, ...] = get_args(LayerKind)
HIDDEN_WEIGHT_KINDS: frozenset[LayerKind] = frozenset({"linear", "conv1d", "conv2d"})
NORM_KINDS: frozenset[LayerKind] = frozenset({"batchnorm", "layernorm", "groupnorm"})

# How a layer's activation can saturate: sigmoid near 0 or 1, tanh near ±1, ReLU at
# exactly 0 ("units at 0", not a bound); "none" for activations without either.
SaturationKind = Literal["sigmoid", "tanh", "relu", "none"]
SATURATION_KINDS: tuple[SaturationKind, ...] = get_args(SaturationKind)

# The shape of a dataset's examples: feature vectors, 1-D signals or 2-D images.
DataLayout = Literal["table", "seq", "image"]
DATA_LAYOUTS: tuple[DataLayout, ...] = get_args(DataLayout)


def sql_in(column: str, values: tuple[str, ...]) -> str:
    """``column IN ('a', 'b')`` for a check constraint over one of these vocabularies."""
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


# Plots the API draws as images, and their formats.
JobPlotName = Literal["loss", "gradient-flow", "activations", "update-ratio", "landscape"]
JOB_PLOT_NAMES: tuple[JobPlotName, ...] = get_args(JobPlotName)
SweepPlotName = Literal["loss", "accuracy", "gradient-flow"]
SWEEP_PLOT_NAMES: tuple[SweepPlotName, ...] = get_args(SweepPlotName)
ImageFormat = Literal["png", "svg"]
IMAGE_FORMATS: tuple[ImageFormat, ...] = get_args(ImageFormat)

# Comparison operators of job search filters (``?where=train.lr>=0.01``).
FilterOp = Literal["=", "!=", "<", "<=", ">", ">="]
FILTER_OPS: tuple[FilterOp, ...] = get_args(FilterOp)
# How a searched spec or result field compares: as a number, a string or a boolean.
FieldKind = Literal["number", "string", "boolean"]
# What a diagnosis finding can say (service.diagnosis.rules emits these; a test holds the
# rules to this list). ``train.stop_on`` names some of them; a run stopped by one ends
# ``failed`` with an error that starts with ``STOPPED_ON_FINDING``, as a time limit
# starts with ``time_limit``.
FindingCode = Literal[
    "vanishing_gradient",
    "exploding_gradient",
    "dead_units",
    "saturation",
    "overfitting",
    "divergence",
    "not_learning",
    "lr_too_low",
    "lr_too_high",
    "oscillation",
    "over_regularized",
    "degradation",
    "poor_initialization",
    "underfitting",
]
FINDING_CODES: tuple[FindingCode, ...] = get_args(FindingCode)
STOPPED_ON_FINDING = "stopped_on_finding"
