"""Sweeps API: grid expansion, validation located in the grid, rows with results and findings."""

from __future__ import annotations

import copy
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service import queue
from service.api.app import create_app
from service.config import Settings
from service.db.repository import jobs as job_queries
from service.specs import EXAMPLE_SPEC
from tests.service.conftest import make_settings

GRID = {"model.activation": ["sigmoid", "relu"], "model.norm": ["none", "batch"]}


def _base(**model: Any) -> dict[str, Any]:
    base = copy.deepcopy(EXAMPLE_SPEC)
    base["model"].update({"depth": 2, **model})
    return base


def _create(client: TestClient, **body: Any) -> dict[str, Any]:
    body = {"name": "act-norm", "base": _base(), "grid": GRID, **body}
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 201, response.text
    assert response.headers["Location"] == f"/v1/sweeps/{response.json()['id']}"
    sweep: dict[str, Any] = response.json()
    return sweep


def _detail(client: TestClient, body: dict[str, Any]) -> list[dict[str, Any]]:
    response = client.post("/v1/sweeps", json={"base": _base(), **body})
    assert response.status_code == 422, response.text
    detail: list[dict[str, Any]] = response.json()["detail"]
    return detail


def test_sweep_expands_the_grid_into_named_tagged_jobs(client: TestClient) -> None:
    sweep = _create(client)
    assert sweep["name"] == "act-norm"
    assert sweep["grid"] == GRID
    assert sweep["base"]["model"]["activation"] == "sigmoid"
    assert [job["name"] for job in sweep["jobs"]] == [
        "act-norm model.activation=sigmoid,model.norm=none",
        "act-norm model.activation=sigmoid,model.norm=batch",
        "act-norm model.activation=relu,model.norm=none",
        "act-norm model.activation=relu,model.norm=batch",
    ]
    points = [(j["spec"]["model"]["activation"], j["spec"]["model"]["norm"]) for j in sweep["jobs"]]
    assert points == [
        ("sigmoid", "none"),
        ("sigmoid", "batch"),
        ("relu", "none"),
        ("relu", "batch"),
    ]
    for job in sweep["jobs"]:
        assert job["status"] == "queued"
        assert job["tags"] == ["vanishing", f"sweep:{sweep['id']}"]
        assert job["spec"]["model"]["depth"] == 2  # the base's other fields are kept
    tagged = client.get(f"/v1/jobs?tag=sweep:{sweep['id']}").json()["items"]
    assert {j["id"] for j in tagged} == {j["id"] for j in sweep["jobs"]}


def test_each_job_of_a_sweep_is_enqueued_once(client: TestClient, queue_dir: Path) -> None:
    sweep = _create(client, grid={"train.lr": [0.1, 0.01], "model.depth": [2, 4, 6]})
    assert len(sweep["jobs"]) == 6
    messages = [p.read_text() for p in queue_dir.glob("*.msg")]
    assert len(messages) == 6
    for job in sweep["jobs"]:
        assert sum(job["id"] in text for text in messages) == 1


def test_job_names_format_values_as_json_and_default_to_the_base_name(
    client: TestClient,
) -> None:
    sweep = _create(client, name="", grid={"model.skip": [True], "train.lr": [0.1]})
    assert sweep["name"] == "sigmoid-depth-20"
    assert sweep["grid"] == {"model.skip": [True], "train.lr": [0.1]}  # validated values
    assert sweep["jobs"][0]["name"] == "sigmoid-depth-20 model.skip=true,train.lr=0.1"


def test_invalid_grid_values_are_422_located_at_the_value(client: TestClient) -> None:
    detail = _detail(client, {"grid": {"model.activation": ["relu", "swish"], "model.depth": [0]}})
    locs = {tuple(item["loc"]): item for item in detail}
    assert set(locs) == {
        ("body", "grid", "model.activation", 1),
        ("body", "grid", "model.depth", 0),
    }
    assert locs[("body", "grid", "model.activation", 1)]["input"] == "swish"
    assert "model.activation" in locs[("body", "grid", "model.activation", 1)]["msg"]


def test_cross_field_rule_at_a_grid_value_or_at_the_base(client: TestClient) -> None:
    # skip=true needs an even depth: 3 is the grid's second depth value.
    response = client.post(
        "/v1/sweeps",
        json={"base": _base(skip=True), "grid": {"model.depth": [2, 3]}},
    )
    assert response.status_code == 422
    [item] = response.json()["detail"]
    assert item["loc"] == ["body", "grid", "model.depth", 1]
    assert "even" in item["msg"] and "model.depth=3" in item["msg"]
    # The base's odd depth is only wrong in combination with the grid's skip=true.
    response = client.post(
        "/v1/sweeps", json={"base": _base(depth=3), "grid": {"model.skip": [False, True]}}
    )
    assert response.status_code == 422
    [item] = response.json()["detail"]
    assert item["loc"] == ["body", "base", "model", "depth"]
    assert "model.skip=true" in item["msg"]


def test_operator_limits_apply_to_every_point(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, max_depth=8)
    with TestClient(create_app(settings)) as client:
        response = client.post(
            "/v1/sweeps", json={"base": _base(), "grid": {"model.depth": [4, 16]}}
        )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "grid", "model.depth", 1]


def test_too_many_points_is_422_and_stores_nothing(
    client: TestClient, settings: Settings, queue_dir: Path
) -> None:
    grid = {"train.seed": list(range(9)), "model.depth": list(range(1, 9))}
    detail = _detail(client, {"grid": grid})
    assert detail[0]["loc"] == ["body", "grid"]
    assert f"72 points; a sweep may have at most {settings.max_sweep_points}" in detail[0]["msg"]
    assert client.get("/v1/sweeps").json()["items"] == []
    assert list(queue_dir.glob("*.msg")) == []


@pytest.mark.parametrize("key", ["model.activaton", "model", "tags", "foo", "data.augment", "name"])
def test_unknown_or_non_scalar_grid_field_is_422(client: TestClient, key: str) -> None:
    detail = _detail(client, {"grid": {key: ["x"]}})
    assert detail[0]["loc"] == ["body", "grid", key]


@pytest.mark.parametrize(
    ("grid", "loc"),
    [
        ({}, ["body", "grid"]),
        ({"model.activation": []}, ["body", "grid", "model.activation"]),
        ({"train.lr": [0.1, 0.10]}, ["body", "grid", "train.lr", 1]),
        ({"train.lr": [1, 1.0]}, ["body", "grid", "train.lr", 1]),
    ],
)
def test_empty_grid_empty_values_and_duplicates_are_422(
    client: TestClient, grid: dict[str, Any], loc: list[Any]
) -> None:
    assert _detail(client, {"grid": grid})[0]["loc"] == loc


def test_base_spec_errors_are_located_in_the_base(client: TestClient) -> None:
    response = client.post(
        "/v1/sweeps",
        json={"base": {"model": {"activaton": "relu"}}, "grid": {"train.lr": [0.1]}},
    )
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "base", "model", "activaton"]
    tags = [f"t{i}" for i in range(32)]
    detail = _detail(client, {"base": {"tags": tags}, "grid": {"train.lr": [0.1]}})
    assert detail[0]["loc"] == ["body", "base", "tags"]


def test_rows_show_each_point_with_its_result_and_findings(
    client: TestClient, session: Session
) -> None:
    sweep = _create(client, grid={"model.activation": ["sigmoid", "relu"]})
    first, second = (job["id"] for job in sweep["jobs"])
    job_queries.claim_job(session=session, job_id=first, worker="w")
    result = {"train_loss": 2.0, "train_acc": 0.5, "val_loss": 2.5, "val_acc": 0.4}
    job_queries.finish_job(
        session=session, job_id=first, status="succeeded", result={**result, "diverged": True}
    )
    session.commit()

    body = client.get(f"/v1/sweeps/{sweep['id']}").json()
    assert body["id"] == sweep["id"]
    assert [job["id"] for job in body["jobs"]] == [first, second]
    done, waiting = body["rows"]
    assert done["job_id"] == first
    assert done["point"] == {"model.activation": "sigmoid"}
    assert done["status"] == "succeeded"
    assert done["result"]["val_acc"] == 0.4
    # The cause ranks first (lr_too_high), the divergence it explains after it.
    divergence = next(f for f in done["findings"] if f["code"] == "divergence")
    assert divergence["severity"] == "critical"
    assert done["findings"][0]["code"] == "lr_too_high"
    assert "Cause: lr_too_high" in divergence["summary"]
    assert waiting == {
        "job_id": second,
        "name": "act-norm model.activation=relu",
        "point": {"model.activation": "relu"},
        "seed": None,
        "status": "queued",
        "result": None,
        "error": None,
        "findings": [],
    }


def test_a_plain_point_that_trains_worse_than_its_residual_twin_shows_degradation(
    client: TestClient, session: Session
) -> None:
    sweep = _create(client, grid={"model.skip": [False, True]})
    plain, residual = (job["id"] for job in sweep["jobs"])
    for job_id, loss in ((plain, 2.30), (residual, 1.72)):
        job_queries.claim_job(session=session, job_id=job_id, worker="w")
        result = {"train_loss": loss, "train_acc": 0.9, "val_loss": loss, "val_acc": 0.9}
        job_queries.finish_job(session=session, job_id=job_id, status="succeeded", result=result)
    session.commit()
    rows = client.get(f"/v1/sweeps/{sweep['id']}").json()["rows"]
    first = rows[0]["findings"][0]
    assert first["code"] == "degradation" and "residual twin" in first["summary"]
    assert first["suggested_spec_patch"] == {"model.skip": True}
    assert all(f["code"] != "degradation" for f in rows[1]["findings"])


def test_unknown_sweep_is_404(client: TestClient) -> None:
    response = client.get("/v1/sweeps/does-not-exist")
    assert response.status_code == 404
    assert "does-not-exist" in response.json()["detail"]


def test_list_newest_first_with_counts_and_cursor(client: TestClient, session: Session) -> None:
    older = _create(client, name="older")
    newer = _create(client, name="newer", grid={"train.lr": [0.1]})
    job_queries.finish_job(session=session, job_id=older["jobs"][0]["id"], status="cancelled")
    session.commit()

    page = client.get("/v1/sweeps?limit=1").json()
    assert [s["id"] for s in page["items"]] == [newer["id"]]
    assert page["items"][0]["points"] == 1
    page = client.get(f"/v1/sweeps?limit=1&cursor={page['next_cursor']}").json()
    assert [s["id"] for s in page["items"]] == [older["id"]]
    assert page["next_cursor"] is None
    counts = page["items"][0]["status_counts"]
    assert counts["queued"] == 3 and counts["cancelled"] == 1 and page["items"][0]["points"] == 4
    assert client.get("/v1/sweeps?cursor=%%%").status_code == 422


def test_broker_failure_fails_no_job_and_marks_the_unsent_ones(
    client: TestClient, settings: Settings, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    sent: list[str] = []

    def flaky(_settings: Settings, *, job_id: str, queue: str) -> None:
        if sent:
            raise ConnectionError("broker down")
        sent.append(job_id)

    monkeypatch.setattr(queue, "enqueue_training", flaky)
    response = client.post("/v1/sweeps", json={"base": _base(), "grid": GRID})
    assert response.status_code == 201, response.text
    [sweep] = client.get("/v1/sweeps").json()["items"]
    assert sweep["status_counts"]["queued"] == 4 and sweep["status_counts"]["failed"] == 0
    # The reconciler sends exactly the three that never reached the broker.
    cutoff = datetime.now(UTC) - timedelta(seconds=60)
    unsent = job_queries.take_jobs_to_resend(session=session, sent_before=cutoff)
    rows = client.get(f"/v1/sweeps/{sweep['id']}").json()["rows"]
    assert sorted(j.id for j in unsent) == sorted(
        r["job_id"] for r in rows if r["job_id"] not in sent
    )
    assert len(unsent) == 3


def test_openapi_has_the_sweep_example(client: TestClient) -> None:
    operation = client.get("/openapi.json").json()["paths"]["/v1/sweeps"]["post"]
    examples = operation["requestBody"]["content"]["application/json"]["examples"]
    value = examples["activation_x_norm"]["value"]
    assert value["base"]["model"]["depth"] == 20 and value["base"]["data"]["dataset"] == "mnist1d"
    assert client.post("/v1/sweeps", json=value).status_code == 201


def test_the_point_limit_is_an_operator_setting(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, max_sweep_points=4)
    with TestClient(create_app(settings)) as client:
        small = {"base": _base(), "grid": {"model.depth": [1, 2, 3, 4]}}
        assert client.post("/v1/sweeps", json=small).status_code == 201
        large = {"base": _base(), "grid": {"model.depth": [1, 2, 3, 4, 5]}}
        response = client.post("/v1/sweeps", json=large)
    assert response.status_code == 422
    assert "5 points; a sweep may have at most 4" in response.json()["detail"][0]["msg"]
