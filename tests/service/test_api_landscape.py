"""GET /v1/jobs/{id}/landscape: the slice stored in the job's result, or a typed 404."""

from __future__ import annotations

import math
from typing import Any

from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.db import repository
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


def _finished_job(client: TestClient, session: Session, result: dict[str, Any]) -> str:
    job_id = start_running_job(client, session, [])
    repository.finish_job(session=session, job_id=job_id, status="succeeded", result=result)
    session.commit()
    return job_id


def test_landscape_is_read_back_from_the_jobs_result(client: TestClient, session: Session) -> None:
    job_id = _finished_job(client, session, {"train_loss": 1.5, "landscape": LANDSCAPE})
    response = client.get(f"/v1/jobs/{job_id}/landscape")
    assert response.status_code == 200, response.text
    assert response.json() == {
        **LANDSCAPE,
        "job_id": job_id,
        "losses": ["NaN", 2.5, 1.5, 2.0, 3.0],  # a diverged point far from the minimum
    }


def test_two_dimensional_landscape_is_a_grid(client: TestClient, session: Session) -> None:
    grid = {**LANDSCAPE, "dims": 2, "alphas": [-1.0, 1.0], "losses": [[2.0, 3.0], [1.0, 4.0]]}
    job_id = _finished_job(client, session, {"landscape": grid})
    body = client.get(f"/v1/jobs/{job_id}/landscape").json()
    assert (body["dims"], body["losses"]) == (2, [[2.0, 3.0], [1.0, 4.0]])


def test_landscape_is_404_when_the_job_has_none(client: TestClient, session: Session) -> None:
    running = start_running_job(client, session, [])
    finished = _finished_job(client, session, {"train_loss": 1.5, "landscape": None})
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
