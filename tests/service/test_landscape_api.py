"""GET /v1/jobs/{id}/landscape: the slice stored in its own table, or a typed 404."""

from __future__ import annotations

import math
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from tests.service.conftest import start_running_job

LANDSCAPE: dict[str, Any] = {
    "dims": 1,
    "alphas": [-1.0, -0.5, 0.0, 0.5, 1.0],
    "losses": [math.nan, 2.5, 1.5, 2.0, 3.0],
    "roughness": 0.25,
    "sharpness": 0.4,
    "local_minima": 1,
    "examples": 512,
}


def _finished_job(
    client: TestClient, session: Session, grid: dict[str, Any] | None, summary: dict[str, Any]
) -> str:
    job_id = start_running_job(client, session, [])
    if grid is not None:
        telemetry_queries.save_landscape(session=session, job_id=job_id, grid=grid)
    job_queries.finish_job(session=session, job_id=job_id, status="succeeded", result=summary)
    session.commit()
    return job_id


def test_landscape_is_read_back_from_its_table(client: TestClient, session: Session) -> None:
    summary = {"train_loss": 1.5, "landscape": {"dims": 1, "points": 5, "roughness": 0.25}}
    job_id = _finished_job(client, session, LANDSCAPE, summary)
    response = client.get(f"/v1/jobs/{job_id}/landscape")
    assert response.status_code == 200, response.text
    assert response.json() == {
        **LANDSCAPE,
        "job_id": job_id,
        "losses": ["NaN", 2.5, 1.5, 2.0, 3.0],  # a diverged point far from the minimum
    }


def test_job_reads_and_lists_never_carry_the_grid(client: TestClient, session: Session) -> None:
    summary = {"train_loss": 1.5, "landscape": {"dims": 1, "points": 5, "roughness": 0.25}}
    job_id = _finished_job(client, session, LANDSCAPE, summary)
    read = client.get(f"/v1/jobs/{job_id}").json()
    listed = client.get("/v1/jobs").json()["items"][0]
    for job in (read, listed):
        assert job["result"]["landscape"] == summary["landscape"]
        assert "losses" not in str(job) and "alphas" not in str(job)


def test_two_dimensional_landscape_is_a_grid(client: TestClient, session: Session) -> None:
    grid = {**LANDSCAPE, "dims": 2, "alphas": [-1.0, 1.0], "losses": [[2.0, 3.0], [1.0, 4.0]]}
    job_id = _finished_job(client, session, grid, {})
    body = client.get(f"/v1/jobs/{job_id}/landscape").json()
    assert (body["dims"], body["losses"]) == (2, [[2.0, 3.0], [1.0, 4.0]])


def test_landscape_is_404_when_the_job_has_none(client: TestClient, session: Session) -> None:
    running = start_running_job(client, session, [])
    finished = _finished_job(client, session, None, {"train_loss": 1.5, "landscape": None})
    for job_id in (running, finished):
        response = client.get(f"/v1/jobs/{job_id}/landscape")
        assert response.status_code == 404
        assert "set telemetry.landscape" in response.json()["detail"]
    assert client.get("/v1/jobs/nope/landscape").status_code == 404


def test_landscape_spec_is_validated(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={"telemetry": {"landscape": {"points": 3}}})
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "telemetry", "landscape", "points"]
    for bad in ({"span": 0}, {"span": 6}, {"dims": 3}, {"resolution": 5}):
        response = client.post("/v1/jobs", json={"telemetry": {"landscape": bad}})
        assert response.status_code == 422, bad
    ok = client.post("/v1/jobs", json={"telemetry": {"landscape": {}}})
    assert ok.status_code == 201
    assert ok.json()["spec"]["telemetry"]["landscape"] == {
        "points": 21,
        "span": 1.0,
        "dims": 1,
        "max_examples": 1024,
    }
    default = client.post("/v1/jobs", json={}).json()
    assert default["spec"]["telemetry"]["landscape"] is None
