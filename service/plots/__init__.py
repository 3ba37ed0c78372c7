"""Plot use cases: a job's or a sweep's figures as PNG or SVG, for reports and notebooks.

This module loads what a job recorded through the telemetry and compare use cases and
hands plain arrays to ``render`` (matplotlib, Agg). Rendering is imported on the first
plot, so that processes which never draw one never load matplotlib.
"""

from __future__ import annotations

import math
import re
import statistics
from collections.abc import Sequence
from typing import TYPE_CHECKING

import numpy as np
from sqlalchemy.orm import Session

from service import compare, sweeps, telemetry
from service.db.models import Job, Layer, Sweep
from service.errors import InvalidRequest
from service.keys import Principal
from service.vocabulary import HIDDEN_WEIGHT_KINDS, ImageFormat, JobPlotName, SweepPlotName

if TYPE_CHECKING:
    from service.plots.render import ImageSize

MIN_PIXELS = 120
MAX_PIXELS = 4000
MIN_DPI = 50
MAX_DPI = 300
DEFAULT_SIZE = "960x540"
DEFAULT_DPI = 100
SIZE_PATTERN = re.compile(r"^(\d{1,5})x(\d{1,5})$")
# Points per layer a figure asks for: a heatmap column or a line vertex per ~4 pixels.
MAX_PLOT_POINTS = 240
# Layers whose gradients carry the gradient-flow story (norm layers sit between them).
FLOW_KINDS = frozenset(HIDDEN_WEIGHT_KINDS) | {"projection", "output"}

MEDIA_TYPES: dict[ImageFormat, str] = {"png": "image/png", "svg": "image/svg+xml"}


def image_size(size: str, dpi: int) -> ImageSize:
    """``WIDTHxHEIGHT`` in pixels, each within [MIN_PIXELS, MAX_PIXELS], or a 422."""
    from service.plots.render import ImageSize

    match = SIZE_PATTERN.match(size)
    width, height = (int(match.group(1)), int(match.group(2))) if match else (0, 0)
    if not (MIN_PIXELS <= width <= MAX_PIXELS and MIN_PIXELS <= height <= MAX_PIXELS):
        msg = (
            f"size must be WIDTHxHEIGHT in pixels, each between {MIN_PIXELS} and "
            f"{MAX_PIXELS} (e.g. {DEFAULT_SIZE})"
        )
        raise InvalidRequest.single(("query", "size"), msg, size)
    return ImageSize(width=width, height=height, dpi=dpi)


def layer_label(layer: Layer) -> str:
    return f"{layer.index} {layer.name}"


def chance_loss(layers: Sequence[Layer]) -> float | None:
    """ln(classes): the loss of a model that predicts uniformly (from the output layer)."""
    outputs = [layer for layer in layers if layer.kind == "output" and layer.shape]
    classes = outputs[-1].shape[0] if outputs else 0
    return math.log(classes) if classes >= 2 else None


def saturation_name(activation: str | None) -> str:
    """What ``act_saturation`` counts for a layer's activation."""
    if activation in ("sigmoid", "tanh"):
        return "saturated"
    if activation == "relu":
        return "units at 0"
    return "none"


def _title(job: Job, what: str) -> str:
    return f"{job.name or job.id[:8]}: {what}"


def _series(
    session: Session, job: Job, stats: list[str], kinds: frozenset[str] | None
) -> tuple[list[Layer], list[telemetry.Series]]:
    layers = list(telemetry.layers(session=session, job=job))
    _, series = telemetry.gradient_series(
        session=session,
        job=job,
        layer=[],
        stat=stats,
        from_step=None,
        to_step=None,
        max_points=MAX_PLOT_POINTS,
    )
    if kinds is not None:
        series = [s for s in series if s.kind in kinds]
    return layers, series


def _float(value: object) -> float | None:
    if value is None:
        return None
    try:
        return float(value)  # type: ignore[arg-type]
    except (TypeError, ValueError):
        return None


def _late_median(points: Sequence[dict[str, object]], stat: str) -> float | None:
    """Median of the last half of a series (the state the run settled in)."""
    values = [v for p in points[len(points) // 2 :] if (v := _float(p.get(stat))) is not None]
    values = [v for v in values if math.isfinite(v)]
    return statistics.median(values) if values else None


def job_plot(
    *, session: Session, job: Job, name: JobPlotName, fmt: ImageFormat, size: ImageSize
) -> bytes:
    from service.plots import render

    fig = render.figure(size)
    if name == "loss":
        metrics = telemetry.epoch_metrics(session=session, job=job)
        render.loss_curves(
            fig,
            epochs=[m.epoch for m in metrics],
            train=[m.train_loss for m in metrics],
            val=[m.val_loss for m in metrics],
            chance=chance_loss(telemetry.layers(session=session, job=job)),
            title=_title(job, "loss per epoch"),
        )
    elif name == "gradient-flow":
        layers, series = _series(session, job, ["grad_norm"], FLOW_KINDS)
        steps = sorted({int(p["step"]) for s in series for p in s.points})
        column = {step: i for i, step in enumerate(steps)}
        norms = np.full((len(series), len(steps)), np.nan)
        for row, s in enumerate(series):
            for p in s.points:
                value = _float(p.get("grad_norm"))
                if value is not None:
                    norms[row, column[int(p["step"])]] = value
        names = {layer.index: layer_label(layer) for layer in layers}
        render.gradient_flow(
            fig,
            steps=steps,
            layer_labels=[names.get(s.layer_index, str(s.layer_index)) for s in series],
            norms=norms,
            title=_title(job, "gradient flow (‖∇W‖ per layer and step)"),
        )
    elif name == "activations":
        layers, series = _series(session, job, ["act_saturation", "act_std"], None)
        by_index = {layer.index: layer for layer in layers}
        with_activation = [
            s
            for s in series
            if s.layer_index in by_index and by_index[s.layer_index].activation is not None
        ]
        render.layer_bars(
            fig,
            layer_labels=[layer_label(by_index[s.layer_index]) for s in with_activation],
            fractions=[_late_median(s.points, "act_saturation") for s in with_activation],
            fraction_names=[
                saturation_name(by_index[s.layer_index].activation) for s in with_activation
            ],
            act_std=[_late_median(s.points, "act_std") for s in with_activation],
            title=_title(job, "activations per layer (median over the last half of the run)"),
        )
    elif name == "update-ratio":
        layers, series = _series(session, job, ["update_ratio"], FLOW_KINDS)
        names = {layer.index: layer_label(layer) for layer in layers}
        render.layer_lines_log(
            fig,
            series=[
                render.LineSeries(
                    names.get(s.layer_index, str(s.layer_index)),
                    [float(p["step"]) for p in s.points],
                    [_float(p.get("update_ratio")) for p in s.points],
                )
                for s in series
            ],
            ylabel="‖ΔW‖ / ‖W‖ per step",
            title=_title(job, "update ratio per layer"),
            reference=(render.HEALTHY_UPDATE_RATIO, "1e-3 (a healthy rate)"),
        )
    else:
        found = telemetry.landscape(session=session, job=job)
        render.landscape(
            fig,
            dims=found.dims,
            alphas=found.alphas,
            losses=[_float(v) for v in found.losses]
            if found.dims == 1
            else [[_float(v) for v in row] for row in found.losses],
            title=_title(job, f"loss landscape (roughness {found.roughness or 0:.3g})"),
        )
    return render.save(fig, fmt, size)


def sweep_plot(
    *, session: Session, sweep: Sweep, name: SweepPlotName, fmt: ImageFormat, size: ImageSize
) -> bytes:
    """The sweep's grid points side by side: validation loss per epoch, accuracies, or
    the gradient norm by depth at each point's last recorded step."""
    from service.plots import render

    detail = sweeps.sweep_detail(session=session, sweep=sweep)
    labels = {job.id: sweeps.point_label(job.grid_point or {}) or job.name for job in detail.jobs}
    first_layers = (
        list(telemetry.layers(session=session, job=detail.jobs[0])) if detail.jobs else []
    )
    chance = chance_loss(first_layers)
    title = f"sweep {sweep.name or sweep.id[:8]}"
    fig = render.figure(size)
    if name == "loss":
        comparison = compare.compare_jobs(
            session=session,
            # The sweep was looked up as the caller (SweepDep); its jobs are its owner's.
            principal=Principal(sweep.owner),
            job_ids=[j.id for j in detail.jobs],
            metric="val_loss",
        )
        render.sweep_curves(
            fig,
            series=[
                render.LineSeries(labels[s.job_id], comparison.x, [_float(v) for v in s.values])
                for s in comparison.series
            ],
            xlabel="epoch",
            ylabel="validation loss",
            title=f"{title}: validation loss per epoch",
            chance=chance,
        )
    elif name == "accuracy":
        results = [row.job.result or {} for row in detail.rows]
        render.sweep_accuracy(
            fig,
            labels=[labels[row.job.id] for row in detail.rows],
            train=[_float(r.get("train_acc")) for r in results],
            val=[_float(r.get("val_acc")) for r in results],
            chance=math.exp(-chance) if chance is not None else None,
            title=f"{title}: final accuracy per point",
        )
    else:
        lines = []
        for job in detail.jobs:
            _, series = _series_last(session, job)
            lines.append(
                render.LineSeries(labels[job.id], list(range(len(series))), [v for _, v in series])
            )
        render.sweep_curves(
            fig,
            series=lines,
            xlabel="weight layer (0 = input)",
            ylabel="‖∇W‖ at the last recorded step",
            title=f"{title}: gradient norm by depth",
            log=True,
        )
    return render.save(fig, fmt, size)


def _series_last(session: Session, job: Job) -> tuple[list[int], list[tuple[int, float | None]]]:
    """Each weight layer's grad_norm at its last recorded step (2 points keep both ends)."""
    _, series = telemetry.gradient_series(
        session=session,
        job=job,
        layer=[],
        stat=["grad_norm"],
        from_step=None,
        to_step=None,
        max_points=2,
    )
    kept = [s for s in series if s.kind in FLOW_KINDS]
    return [s.layer_index for s in kept], [
        (s.layer_index, _float(s.points[-1].get("grad_norm")) if s.points else None) for s in kept
    ]
