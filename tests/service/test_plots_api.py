"""/v1/jobs/{id}/plots and /v1/sweeps/{id}/plots: real PNG and SVG images of the size asked."""

from __future__ import annotations

import io
import re
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from matplotlib.image import imread
from sqlalchemy.orm import Session

from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from service.vocabulary import JOB_PLOT_NAMES, SWEEP_PLOT_NAMES
from tests.service.conftest import recorded_job

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png(response: Any) -> np.ndarray:
    assert response.status_code == 200, response.text
    assert response.headers["content-type"] == "image/png"
    assert response.content.startswith(PNG_MAGIC)
    return imread(io.BytesIO(response.content), format="png")


def _with_landscape(client: TestClient, session: Session, dims: int) -> str:
    job_id = recorded_job(client, session, status=None)
    alphas = [-1.0, -0.5, 0.0, 0.5, 1.0]
    losses: Any = [2.0, 1.2, 1.0, 1.3, 2.2]
    if dims == 2:
        losses = [[1.0 + a * a + b * b for b in alphas] for a in alphas]
    grid = {
        "dims": dims,
        "alphas": alphas,
        "losses": losses,
        "roughness": 0.1,
        "sharpness": 0.2,
        "local_minima": 1,
        "examples": 64,
    }
    telemetry_queries.save_landscape(session=session, job_id=job_id, grid=grid)
    job_queries.finish_job(session=session, job_id=job_id, status="succeeded", result={})
    session.commit()
    return job_id


@pytest.mark.parametrize("name", [n for n in JOB_PLOT_NAMES if n != "landscape"])
def test_job_plot_is_a_png_of_the_asked_size(
    client: TestClient, session: Session, name: str
) -> None:
    job_id = recorded_job(client, session)
    pixels = _png(client.get(f"/v1/jobs/{job_id}/plots/{name}.png?size=640x360&dpi=80"))
    assert pixels.shape[:2] == (360, 640)
    assert pixels[..., :3].std() > 0.05  # something is drawn, not a blank canvas


@pytest.mark.parametrize("dims", [1, 2])
def test_landscape_plot_in_one_and_two_dimensions(
    client: TestClient, session: Session, dims: int
) -> None:
    job_id = _with_landscape(client, session, dims)
    pixels = _png(client.get(f"/v1/jobs/{job_id}/plots/landscape.png?size=400x400"))
    assert pixels.shape[:2] == (400, 400)


def test_landscape_plot_is_404_without_a_landscape(client: TestClient, session: Session) -> None:
    job_id = recorded_job(client, session)
    response = client.get(f"/v1/jobs/{job_id}/plots/landscape.png")
    assert response.status_code == 404
    assert "telemetry.landscape" in response.json()["detail"]


def test_svg_has_the_size_in_points(client: TestClient, session: Session) -> None:
    job_id = recorded_job(client, session)
    response = client.get(f"/v1/jobs/{job_id}/plots/gradient-flow.svg?size=800x400&dpi=100")
    assert response.status_code == 200
    assert response.headers["content-type"].startswith("image/svg+xml")
    head = response.text[:2000]
    assert "<svg" in head
    # 800 px at 100 dpi = 8 in = 576 pt.
    assert re.search(r'width="576(\.0+)?pt"', head) and re.search(r'height="288(\.0+)?pt"', head)


def test_gradient_flow_shows_vanishing_layers_darker_than_healthy_ones(
    client: TestClient, session: Session
) -> None:
    """The heatmap's bottom rows (input side) are dark where gradients vanish; a healthy
    net's rows look alike."""

    def rows_brightness(job_id: str) -> tuple[float, float]:
        pixels = _png(client.get(f"/v1/jobs/{job_id}/plots/gradient-flow.png?size=600x600"))
        brightness = pixels[..., :3].mean(axis=2)
        column = brightness[:, 300]  # the middle of the heatmap
        # Heatmap rows sit between the title and the x axis: compare its bottom and top.
        return float(column[430:470].mean()), float(column[100:140].mean())

    bottom, top = rows_brightness(recorded_job(client, session, vanishing=True))
    assert bottom < top - 0.2
    healthy_bottom, healthy_top = rows_brightness(recorded_job(client, session, vanishing=False))
    assert abs(healthy_bottom - healthy_top) < 0.1


def test_plots_of_a_job_without_data_still_render(client: TestClient, session: Session) -> None:
    job_id = client.post("/v1/jobs", json={}).json()["id"]
    for name in ("loss", "gradient-flow", "activations", "update-ratio"):
        assert _png(client.get(f"/v1/jobs/{job_id}/plots/{name}.png")).shape[:2] == (540, 960)


@pytest.mark.parametrize(
    "query",
    ["size=100x300", "size=5000x300", "size=big", "size=300", "dpi=20", "dpi=400"],
)
def test_size_and_dpi_out_of_bounds_are_422(
    client: TestClient, session: Session, query: str
) -> None:
    job_id = recorded_job(client, session)
    response = client.get(f"/v1/jobs/{job_id}/plots/loss.png?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][:2] == ["query", query.split("=")[0]]


def test_unknown_plot_or_format_is_422_and_unknown_job_404(
    client: TestClient, session: Session
) -> None:
    job_id = recorded_job(client, session)
    assert client.get(f"/v1/jobs/{job_id}/plots/nope.png").status_code == 422
    assert client.get(f"/v1/jobs/{job_id}/plots/loss.gif").status_code == 422
    assert client.get("/v1/jobs/nope/plots/loss.png").status_code == 404


@pytest.mark.parametrize("name", SWEEP_PLOT_NAMES)
def test_sweep_plot_compares_its_points(client: TestClient, name: str) -> None:
    body = {"base": {"train": {"epochs": 1}}, "grid": {"model.activation": ["sigmoid", "relu"]}}
    sweep_id = client.post("/v1/sweeps", json=body).json()["id"]
    pixels = _png(client.get(f"/v1/sweeps/{sweep_id}/plots/{name}.png?size=500x300"))
    assert pixels.shape[:2] == (300, 500)
    assert client.get(f"/v1/sweeps/nope/plots/{name}.png").status_code == 404
