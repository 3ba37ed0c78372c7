"""GET /v1/compare: one statistic of several jobs aligned on step, or a metric on epoch."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.db.repository import telemetry as telemetry_queries
from tests.service.conftest import recorded_job


def test_layer_statistic_of_two_jobs_aligned_on_step(client: TestClient, session: Session) -> None:
    vanishing = recorded_job(client, session, depth=3, vanishing=True)
    healthy = recorded_job(client, session, depth=3, vanishing=False, steps=20)
    response = client.get(f"/v1/compare?jobs={vanishing},{healthy}&stat=grad_norm&layer=0")
    assert response.status_code == 200, response.text
    body = response.json()
    assert (body["axis"], body["quantity"], body["layer"]) == ("step", "grad_norm", "0")
    assert body["x"] == [0, 10, 20, 30, 40]
    first, second = body["series"]
    assert [first["job_id"], second["job_id"]] == [vanishing, healthy]
    assert first["layer_name"] == second["layer_name"] == "hidden.0.linear"
    assert first["values"][0] == pytest.approx(1e-9)  # 1e-3 ** depth at step 0
    assert second["values"] == [pytest.approx(v) for v in (0.1, 0.11, 0.12)] + [None, None]


def test_layer_by_name_and_jobs_of_different_depths(client: TestClient, session: Session) -> None:
    shallow = recorded_job(client, session, depth=2)
    deep = recorded_job(client, session, depth=5)
    body = client.get(f"/v1/compare?jobs={shallow},{deep}&stat=update_ratio&layer=output").json()
    assert [s["layer_index"] for s in body["series"]] == [2, 5]
    assert all(v is not None for s in body["series"] for v in s["values"])


def test_epoch_metric_aligned_on_epoch(client: TestClient, session: Session) -> None:
    short = recorded_job(client, session, epochs=2)
    long = recorded_job(client, session, epochs=4)
    body = client.get(f"/v1/compare?jobs={short},{long}&metric=val_loss").json()
    assert (body["axis"], body["layer"]) == ("epoch", None)
    assert body["x"] == [1, 2, 3, 4]
    assert body["series"][0]["values"][2:] == [None, None]
    assert body["series"][1]["values"] == [pytest.approx(2.3 - 0.1 * e) for e in (1, 2, 3, 4)]


def test_non_finite_values_are_json_strings(
    client: TestClient, session: Session, db_url: str
) -> None:
    job_id = recorded_job(client, session, depth=1, steps=0)
    row = {"layer_index": 0, "step": 5, "epoch": 1, "grad_norm": float("inf")}
    telemetry_queries.add_layer_stats(session=session, job_id=job_id, rows=[row])
    session.commit()
    body = client.get(f"/v1/compare?jobs={job_id}&stat=grad_norm").json()
    assert body["series"][0]["values"][-1] == "Infinity"


def test_series_are_downsampled_per_job(client: TestClient, session: Session) -> None:
    job_id = recorded_job(client, session, depth=1, steps=200)
    body = client.get(f"/v1/compare?jobs={job_id}&stat=grad_norm&max_points=5").json()
    assert body["x"][0] == 0 and body["x"][-1] == 200 and len(body["x"]) <= 5


@pytest.mark.parametrize(
    "query",
    [
        "stat=grad_norm",  # no jobs
        "jobs=&stat=grad_norm",
        "jobs={job}",  # neither stat nor metric
        "jobs={job}&stat=grad_norm&metric=val_loss",
        "jobs={job}&stat=nope",
        "jobs={job}&metric=nope",
        "jobs=" + ",".join(f"j{i}" for i in range(21)) + "&stat=grad_norm",
    ],
)
def test_bad_queries_are_422(client: TestClient, session: Session, query: str) -> None:
    job_id = recorded_job(client, session, depth=1)
    response = client.get("/v1/compare?" + query.format(job=job_id))
    assert response.status_code == 422, response.text


def test_unknown_job_is_404_naming_it(client: TestClient, session: Session) -> None:
    job_id = recorded_job(client, session, depth=1)
    response = client.get(f"/v1/compare?jobs={job_id},missing&metric=val_loss")
    assert response.status_code == 404
    assert "missing" in response.json()["detail"]


def test_jobs_of_different_lengths_share_their_steps(client: TestClient, session: Session) -> None:
    short = recorded_job(client, session, depth=1, steps=100)
    long = recorded_job(client, session, depth=1, steps=300)
    body = client.get(f"/v1/compare?jobs={short},{long}&stat=grad_norm").json()
    assert body["x"] == list(range(0, 301, 10))
    first, second = (s["values"] for s in body["series"])
    assert all(v is not None for v in first[:11]) and first[11:] == [None] * 20
    assert all(v is not None for v in second)


def test_downsampled_jobs_of_different_lengths_stay_aligned(
    client: TestClient, session: Session
) -> None:
    short = recorded_job(client, session, depth=1, steps=200)
    long = recorded_job(client, session, depth=1, steps=600)
    body = client.get(f"/v1/compare?jobs={short},{long}&stat=grad_norm&max_points=31").json()
    assert len(body["x"]) <= 31
    first, second = (s["values"] for s in body["series"])
    assert all(v is not None for v in second)  # the longest job has a value at every x
    assert all(v is not None for x, v in zip(body["x"], first, strict=True) if x <= 200)
