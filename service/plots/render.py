# ruff: noqa: RUF001  (figure labels use Greek letters and the minus sign)
"""Figures as PNG or SVG bytes, drawn with matplotlib's headless Agg backend.

Pure functions of plain data (lists, arrays, dataclasses): no SQL, no web, no torch. The
use case (``service.plots``) loads a job's rows and calls them. Each figure is a
``matplotlib.figure.Figure`` of its own (never ``pyplot``, whose global state is not
safe across the API's request threads), sized so that a PNG has exactly the pixels asked.
"""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from dataclasses import dataclass

import matplotlib

matplotlib.use("Agg")  # headless: never look for a display

import numpy as np
import numpy.typing as npt
from matplotlib.axes import Axes
from matplotlib.colors import LogNorm
from matplotlib.figure import Figure
from matplotlib.ticker import LogLocator, MaxNLocator

from service.vocabulary import ImageFormat

FloatArray = npt.NDArray[np.float64]

TRAIN_COLOR = "#2563eb"
VAL_COLOR = "#dc2626"
GAP_COLOR = "#fca5a5"
CHANCE_COLOR = "#6b7280"
ZERO_COLOR = "#ef4444"  # a statistic that is exactly 0: below any log scale, drawn as a floor
HEALTHY_UPDATE_RATIO = 1e-3  # the usual rule of thumb for ||dW|| / ||W|| per step


@dataclass(frozen=True)
class ImageSize:
    """Pixels of the PNG (an SVG gets the same size in points at ``dpi``)."""

    width: int
    height: int
    dpi: int


@dataclass(frozen=True)
class LineSeries:
    label: str
    x: Sequence[float]
    y: Sequence[float | None]


def figure(size: ImageSize) -> Figure:
    return Figure(
        figsize=(size.width / size.dpi, size.height / size.dpi), dpi=size.dpi, layout="constrained"
    )


def save(fig: Figure, fmt: ImageFormat, size: ImageSize) -> bytes:
    buffer = io.BytesIO()
    # No bbox_inches="tight": it would change the pixel size. No date in the metadata, so
    # the same data always gives the same bytes.
    metadata = {"Software": None} if fmt == "png" else {"Date": None}
    fig.savefig(buffer, format=fmt, dpi=size.dpi, metadata=metadata)
    return buffer.getvalue()


def _floats(values: Sequence[float | None]) -> FloatArray:
    return np.array([math.nan if v is None else float(v) for v in values], dtype=np.float64)


def _empty(ax: Axes, message: str) -> None:
    ax.text(0.5, 0.5, message, ha="center", va="center", transform=ax.transAxes, color="#6b7280")
    ax.set_xticks([])
    ax.set_yticks([])


def _integer_axis(ax: Axes) -> None:
    ax.xaxis.set_major_locator(MaxNLocator(integer=True, nbins=8))


# --- one job ----------------------------------------------------------------------------


def loss_curves(
    fig: Figure,
    *,
    epochs: Sequence[int],
    train: Sequence[float | None],
    val: Sequence[float | None],
    chance: float | None,
    title: str,
) -> None:
    """Train vs validation loss per epoch; the generalisation gap (val above train) shaded."""
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize="medium")
    if not epochs:
        _empty(ax, "no finished epoch yet")
        return
    x = np.asarray(epochs, dtype=np.float64)
    t, v = _floats(train), _floats(val)
    ax.plot(x, t, "-o", color=TRAIN_COLOR, label="train loss", markersize=3)
    ax.plot(x, v, "--o", color=VAL_COLOR, label="validation loss", markersize=3)
    ok = np.isfinite(t) & np.isfinite(v)
    ax.fill_between(
        x, t, v, where=ok & (v > t), color=GAP_COLOR, alpha=0.45, label="gap (val − train)"
    )
    if chance is not None:
        ax.axhline(chance, color=CHANCE_COLOR, linestyle=":", label=f"chance (ln C = {chance:.3g})")
    ax.set_xlabel("epoch")
    ax.set_ylabel("cross-entropy loss")
    _integer_axis(ax)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="small")


def gradient_flow(
    fig: Figure,
    *,
    steps: Sequence[int],
    layer_labels: Sequence[str],
    norms: FloatArray,
    title: str,
) -> None:
    """A layers x steps heatmap of the gradient norm on a log colour scale (input at the
    bottom). Vanishing gradients are a dark band at the bottom; a norm of exactly 0
    (underflow) gets the marked floor colour instead of disappearing."""
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize="medium")
    positive = norms[np.isfinite(norms) & (norms > 0)]
    if not len(steps) or not positive.size:
        _empty(ax, "no gradient statistics recorded yet")
        return
    cmap = matplotlib.colormaps["viridis"].with_extremes(under=ZERO_COLOR, bad="#d1d5db")
    lo, hi = float(positive.min()), float(positive.max())
    if hi <= lo:
        lo, hi = lo / 10, hi * 10
    shown = np.where(norms == 0, lo / 10, norms)  # below vmin: the "under" colour
    extent_steps = np.asarray(steps, dtype=np.float64)
    half = (extent_steps[1] - extent_steps[0]) / 2 if len(steps) > 1 else 0.5
    image = ax.imshow(
        np.ma.masked_invalid(shown),
        aspect="auto",
        origin="lower",
        interpolation="nearest",
        cmap=cmap,
        norm=LogNorm(vmin=lo, vmax=hi),
        extent=(extent_steps[0] - half, extent_steps[-1] + half, -0.5, len(layer_labels) - 0.5),
    )
    colorbar = fig.colorbar(image, ax=ax, extend="min" if (norms == 0).any() else "neither")
    colorbar.set_label("‖∇W‖ (log scale)")
    colorbar.locator = LogLocator(numticks=6)
    ticks = _label_ticks(len(layer_labels))
    ax.set_yticks(ticks, [layer_labels[i] for i in ticks], fontsize="x-small")
    ax.set_xlabel("training step")
    ax.set_ylabel("layer (input at the bottom)")
    zeros = int((norms == 0).sum())
    if zeros:
        ax.text(
            1.0, 1.01, f"{zeros} cells exactly 0 (red)", transform=ax.transAxes, ha="right",
            va="bottom", fontsize="x-small", color=ZERO_COLOR,
        )  # fmt: skip


def _label_ticks(n: int, most: int = 24) -> list[int]:
    """Every layer when they fit, else an even subset that keeps both ends."""
    if n <= most:
        return list(range(n))
    step = math.ceil(n / most)
    ticks = list(range(0, n, step))
    if ticks[-1] != n - 1:
        ticks.append(n - 1)
    return ticks


def layer_bars(
    fig: Figure,
    *,
    layer_labels: Sequence[str],
    fractions: Sequence[float | None],
    fraction_names: Sequence[str],
    act_std: Sequence[float | None],
    title: str,
) -> None:
    """Per layer: the fraction of saturated units (sigmoid/tanh at a bound) or of units at
    0 (ReLU) as bars, and the activations' standard deviation as a line (right axis)."""
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize="medium")
    if not layer_labels:
        _empty(ax, "no activation statistics recorded (telemetry.activations)")
        return
    x = np.arange(len(layer_labels))
    values = _floats(fractions)
    colors = {"saturated": "#d97706", "units at 0": "#7c3aed"}
    for name in dict.fromkeys(fraction_names):
        if name not in colors:
            continue
        mask = np.array([n == name for n in fraction_names])
        ax.bar(x[mask], np.nan_to_num(values[mask]), color=colors[name], label=name, width=0.75)
    ax.set_ylim(0, 1)
    ax.set_ylabel("fraction of units")
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ticks = _label_ticks(len(layer_labels))
    ax.set_xticks(
        ticks, [layer_labels[i] for i in ticks], rotation=60, ha="right", fontsize="x-small"
    )
    std = _floats(act_std)
    if np.isfinite(std).any():
        right = ax.twinx()
        right.plot(x, std, "-o", color="#0f766e", markersize=3, label="activation std")
        right.set_ylabel("activation std")
        right.set_ylim(bottom=0)
        right.legend(loc="upper right", fontsize="small")
    if any(n in colors for n in fraction_names):
        ax.legend(loc="upper left", fontsize="small")


def layer_lines_log(
    fig: Figure,
    *,
    series: Sequence[LineSeries],
    ylabel: str,
    title: str,
    reference: tuple[float, str] | None = None,
) -> None:
    """One line per layer over steps on a log axis; zeros drawn on a marked floor."""
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize="medium")
    arrays = [(s, _floats(s.y)) for s in series]
    positive = np.concatenate([y[np.isfinite(y) & (y > 0)] for _, y in arrays] or [np.zeros(0)])
    if not positive.size:
        _empty(ax, f"no {ylabel} recorded yet")
        return
    floor = float(positive.min()) / 10
    cmap = matplotlib.colormaps["plasma"]
    has_zero = False
    for i, (s, y) in enumerate(arrays):
        color = cmap(0.85 * i / max(1, len(arrays) - 1))
        ax.plot(s.x, np.where(y > 0, y, np.nan), color=color, linewidth=1.2, label=s.label)
        zeros = y == 0
        if zeros.any():
            has_zero = True
            ax.plot(np.asarray(s.x)[zeros], np.full(int(zeros.sum()), floor), "v", color=color)
    ax.set_yscale("log")
    if has_zero:
        ax.axhline(floor, color=ZERO_COLOR, linewidth=0.8, linestyle="--", label="exactly 0")
    if reference is not None:
        ax.axhline(reference[0], color=CHANCE_COLOR, linestyle=":", label=reference[1])
    ax.set_xlabel("training step")
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3, which="major")
    ax.legend(fontsize="x-small", ncol=max(1, math.ceil(len(series) / 12)), loc="best")


def landscape(
    fig: Figure,
    *,
    dims: int,
    alphas: Sequence[float],
    losses: Sequence[float | None] | Sequence[Sequence[float | None]],
    title: str,
) -> None:
    """1-D: the loss along one direction; 2-D: filled contours of log loss, + at the
    trained weights."""
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize="medium")
    a = np.asarray(alphas, dtype=np.float64)
    if dims == 1:
        y = _floats(losses)  # type: ignore[arg-type]
        ax.plot(a, y, "-o", color=VAL_COLOR, markersize=3)
        finite = y[np.isfinite(y) & (y > 0)]
        if finite.size and finite.max() / finite.min() > 100:
            ax.set_yscale("log")
        ax.axvline(0, color=CHANCE_COLOR, linestyle=":", label="trained weights")
        ax.set_xlabel("α (filter-normalised direction)")
        ax.set_ylabel("training loss")
        ax.grid(alpha=0.3)
        ax.legend(fontsize="small")
        return
    grid = np.array([_floats(row) for row in losses], dtype=np.float64)  # type: ignore[arg-type]
    logs = np.log10(np.where(grid > 0, grid, np.nan))
    # losses[i][j] is at (alphas[i], alphas[j]): rows along the first direction.
    contours = ax.contourf(a, a, np.ma.masked_invalid(logs.T), levels=20, cmap="viridis")
    fig.colorbar(contours, ax=ax).set_label("log10 loss")
    ax.plot([0], [0], "w+", markersize=12, markeredgewidth=2)
    ax.set_xlabel("α (direction 1)")
    ax.set_ylabel("β (direction 2)")
    ax.set_aspect("equal")


# --- a sweep's points side by side ------------------------------------------------------


def sweep_curves(
    fig: Figure,
    *,
    series: Sequence[LineSeries],
    xlabel: str,
    ylabel: str,
    title: str,
    log: bool = False,
    chance: float | None = None,
) -> None:
    """One line per grid point (validation loss per epoch, or gradient norm by layer)."""
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize="medium")
    if not any(len(s.x) for s in series):
        _empty(ax, "no point has data yet")
        return
    cmap = matplotlib.colormaps["tab10"]
    for i, s in enumerate(series):
        y = _floats(s.y)
        if log:
            y = np.where(y > 0, y, np.nan)
        ax.plot(s.x, y, "-o", markersize=3, color=cmap(i % 10), label=s.label)
    if log:
        ax.set_yscale("log")
    if chance is not None:
        ax.axhline(chance, color=CHANCE_COLOR, linestyle=":", label="chance")
    _integer_axis(ax)
    ax.set_xlabel(xlabel)
    ax.set_ylabel(ylabel)
    ax.grid(alpha=0.3)
    ax.legend(fontsize="x-small")


def sweep_accuracy(
    fig: Figure,
    *,
    labels: Sequence[str],
    train: Sequence[float | None],
    val: Sequence[float | None],
    chance: float | None,
    title: str,
) -> None:
    """Train and validation accuracy of each grid point as paired bars."""
    ax = fig.add_subplot()
    ax.set_title(title, loc="left", fontsize="medium")
    if not labels:
        _empty(ax, "the sweep has no points")
        return
    x = np.arange(len(labels))
    ax.bar(x - 0.2, np.nan_to_num(_floats(train)), width=0.4, color=TRAIN_COLOR, label="train")
    ax.bar(x + 0.2, np.nan_to_num(_floats(val)), width=0.4, color=VAL_COLOR, label="validation")
    if chance is not None:
        ax.axhline(chance, color=CHANCE_COLOR, linestyle=":", label="chance")
    ax.set_ylim(0, 1)
    ax.yaxis.set_major_formatter(lambda v, _pos: f"{v:.0%}")
    ax.set_xticks(x, labels, rotation=20, ha="right", fontsize="x-small")
    ax.set_ylabel("accuracy")
    ax.legend(fontsize="small")
