"""Sweeps with seeds: each grid point runs once per seed, and the read gives each point's
mean and spread of the result figures over its seeds."""

from __future__ import annotations

import statistics
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.db.repository import jobs as job_queries
from tests.service.conftest import make_settings

BASE: dict[str, Any] = {"model": {"depth": 2, "width": 16}, "train": {"epochs": 1}}


def _create(client: TestClient, body: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 201, response.text
    sweep: dict[str, Any] = response.json()
    return sweep


def _finish(session: Session, job_id: str, status: str, **result: float) -> None:
    job_queries.claim_job(session=session, job_id=job_id, worker="w")
    job_queries.finish_job(session=session, job_id=job_id, status=status, result=result)  # type: ignore[arg-type]
    session.commit()


def test_each_point_runs_once_per_seed_in_grid_then_seed_order(client: TestClient) -> None:
    sweep = _create(
        client,
        {
            "name": "s",
            "base": BASE,
            "grid": {"model.activation": ["relu", "tanh"]},
            "seeds": [7, 3],
        },
    )
    assert sweep["seeds"] == [7, 3]
    runs = [(j["spec"]["model"]["activation"], j["spec"]["train"]["seed"]) for j in sweep["jobs"]]
    assert runs == [("relu", 7), ("relu", 3), ("tanh", 7), ("tanh", 3)]
    assert sweep["jobs"][1]["name"] == "s model.activation=relu,seed=3"
    body = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert [(r["point"], r["seed"]) for r in body["rows"]] == [
        ({"model.activation": "relu"}, 7),
        ({"model.activation": "relu"}, 3),
        ({"model.activation": "tanh"}, 7),
        ({"model.activation": "tanh"}, 3),
    ]
    assert [(p["point"], p["seeds"], p["metrics"]) for p in body["points"]] == [
        ({"model.activation": "relu"}, [7, 3], {}),
        ({"model.activation": "tanh"}, [7, 3], {}),
    ]


def test_points_show_mean_and_spread_over_the_succeeded_seeds(
    client: TestClient, session: Session
) -> None:
    sweep = _create(client, {"base": BASE, "grid": {"model.depth": [2, 3]}, "seeds": [0, 1, 2]})
    ids = [job["id"] for job in sweep["jobs"]]
    for job_id, acc in zip(ids[:3], [0.5, 0.7, 0.9], strict=True):
        _finish(session, job_id, "succeeded", val_acc=acc, val_loss=1 - acc)
    _finish(session, ids[3], "succeeded", val_acc=0.6, val_loss=float("nan"))
    _finish(session, ids[4], "failed", val_acc=0.99)  # not averaged in

    first, second = client.get(f"/v1/sweeps/{sweep['id']}").json()["points"]
    assert first["job_ids"] == ids[:3]
    acc = first["metrics"]["val_acc"]
    assert acc["n"] == 3 and acc["mean"] == pytest.approx(0.7)
    assert acc["std"] == pytest.approx(statistics.stdev([0.5, 0.7, 0.9]))
    assert (acc["min"], acc["max"]) == (0.5, 0.9)
    assert second["metrics"]["val_acc"] == {
        "n": 1,
        "mean": 0.6,
        "std": None,
        "min": 0.6,
        "max": 0.6,
    }
    assert "val_loss" not in second["metrics"]  # NaN is not a figure to average


def test_max_sweep_points_counts_points_times_seeds(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, max_sweep_points=6)
    with TestClient(create_app(settings)) as client:
        body = {"base": BASE, "grid": {"model.depth": [2, 3]}, "seeds": [0, 1, 2, 3]}
        response = client.post("/v1/sweeps", json=body)
        assert response.status_code == 422, response.text
        detail = response.json()["detail"][0]
        assert detail["loc"] == ["body", "grid"] and "2 points x 4 seeds = 8 runs" in detail["msg"]
        assert client.get("/v1/jobs").json()["items"] == []
        ok = client.post("/v1/sweeps", json={**body, "seeds": [0, 1, 2]})
        assert ok.status_code == 201, ok.text


@pytest.mark.parametrize(
    ("extra", "loc"),
    [
        ({"seeds": [1, 2, 1]}, ["body", "seeds", 2]),
        ({"seeds": []}, ["body", "seeds"]),
        ({"seeds": [-1]}, ["body", "seeds", 0]),
        ({"seeds": [0], "grid": {"train.seed": [1, 2]}}, ["body", "grid", "train.seed"]),
    ],
)
def test_bad_seeds_are_422_at_their_place(
    client: TestClient, extra: dict[str, Any], loc: list[Any]
) -> None:
    body = {"base": BASE, "grid": {"model.depth": [2]}, **extra}
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [loc]
