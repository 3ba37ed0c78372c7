"""/v1/jobs/{id}/plots/{name}.{png,svg} and /v1/sweeps/{id}/plots/{name}.{png,svg}:
figures drawn by the server (matplotlib, headless) for reports and notebooks."""

from __future__ import annotations

from typing import Annotated, Any

from fastapi import APIRouter, Path, Query, Response
from starlette.concurrency import run_in_threadpool

from service import plots
from service.api.deps import JobDep, SessionDep, SweepDep
from service.api.schemas.common import error_responses
from service.vocabulary import ImageFormat, JobPlotName, SweepPlotName

router = APIRouter(tags=["plots"])

SizeQuery = Annotated[
    str,
    Query(
        max_length=11,
        description=f"Image size in pixels, WIDTHxHEIGHT, each from {plots.MIN_PIXELS} to "
        f"{plots.MAX_PIXELS} (an SVG gets the same size in points at `dpi`).",
        examples=[plots.DEFAULT_SIZE],
    ),
]
DpiQuery = Annotated[
    int,
    Query(
        ge=plots.MIN_DPI,
        le=plots.MAX_DPI,
        description="Dots per inch: scales text and lines within the same pixel size.",
    ),
]

IMAGE_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "The figure",
        "content": {
            "image/png": {"schema": {"type": "string", "format": "binary"}},
            "image/svg+xml": {"schema": {"type": "string"}},
        },
    },
}

JOB_PLOTS_DESCRIPTION = (
    "`loss`: train vs validation loss per epoch, the gap shaded, chance level dotted. "
    "`gradient-flow`: a layers x steps heatmap of the gradient norm (log colour; a band "
    "that darkens towards the input is a vanishing gradient; exact zeros in red). "
    "`activations`: per layer, the fraction of saturated units (sigmoid/tanh) or of units "
    "at 0 (ReLU) and the activations' std. `update-ratio`: ‖ΔW‖/‖W‖ per layer and step. "
    "`landscape`: the loss slice (a curve, or contours in 2-D; 404 when the job has none)."
)


def _image(content: bytes, fmt: ImageFormat) -> Response:
    return Response(content, media_type=plots.MEDIA_TYPES[fmt])


@router.get(
    "/jobs/{job_id}/plots/{name}.{fmt}",
    response_class=Response,
    responses={**IMAGE_RESPONSES, **error_responses(404, 422)},
    summary="A job's figure as PNG or SVG",
    description=JOB_PLOTS_DESCRIPTION,
)
async def job_plot(
    job: JobDep,
    session: SessionDep,
    name: Annotated[JobPlotName, Path(description="Which figure.")],
    fmt: Annotated[ImageFormat, Path(description="png (pixels) or svg (vector).")],
    size: SizeQuery = plots.DEFAULT_SIZE,
    dpi: DpiQuery = plots.DEFAULT_DPI,
) -> Response:
    image_size = plots.image_size(size, dpi)
    # Drawing takes tens of milliseconds of CPU: off the event loop.
    content = await run_in_threadpool(
        plots.job_plot, session=session, job=job, name=name, fmt=fmt, size=image_size
    )
    return _image(content, fmt)


@router.get(
    "/sweeps/{sweep_id}/plots/{name}.{fmt}",
    response_class=Response,
    responses={**IMAGE_RESPONSES, **error_responses(404, 422)},
    summary="A sweep's grid points side by side, as PNG or SVG",
    description="`loss`: each point's validation loss per epoch. `accuracy`: each point's "
    "final train and validation accuracy. `gradient-flow`: each point's gradient norm by "
    "weight layer at its last recorded step (log scale: vanishing points fall to the left).",
)
async def sweep_plot(
    sweep: SweepDep,
    session: SessionDep,
    name: Annotated[SweepPlotName, Path(description="Which figure.")],
    fmt: Annotated[ImageFormat, Path(description="png (pixels) or svg (vector).")],
    size: SizeQuery = plots.DEFAULT_SIZE,
    dpi: DpiQuery = plots.DEFAULT_DPI,
) -> Response:
    image_size = plots.image_size(size, dpi)
    content = await run_in_threadpool(
        plots.sweep_plot, session=session, sweep=sweep, name=name, fmt=fmt, size=image_size
    )
    return _image(content, fmt)
