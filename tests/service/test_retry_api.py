"""POST /v1/jobs/{id}/retry-with: a new job, linked by parent_id, validated like a submit."""

from __future__ import annotations

import hashlib
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service import diagnosis
from service.api.app import create_app
from service.db.models import Job
from service.diagnosis import Finding
from tests.service.conftest import make_settings

SPEC: dict[str, Any] = {
    "name": "deep-sigmoid",
    "tags": ["vanishing"],
    "model": {"depth": 6, "width": 32, "activation": "sigmoid"},
    "train": {"epochs": 2},
}


def _finding(code: str, patch: dict[str, Any]) -> Finding:
    return Finding(
        code=code,
        severity="critical",
        layers=[0],
        summary=f"{code} happened.",
        evidence={},
        remedy="change it",
        suggested_spec_patch=patch,
    )


def _submit(client: TestClient, key: str | None = None) -> dict[str, Any]:
    headers = {"X-API-Key": key} if key else {}
    response = client.post("/v1/jobs", json=SPEC, headers=headers)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def _retry(client: TestClient, job_id: str, body: Any, **headers: str) -> Any:
    return client.post(f"/v1/jobs/{job_id}/retry-with", json=body, headers=headers)


def test_patch_makes_a_linked_job_with_the_changed_spec(client: TestClient) -> None:
    parent = _submit(client)
    response = _retry(client, parent["id"], {"patch": {"model.activation": "relu"}})
    assert response.status_code == 201, response.text
    child = response.json()
    assert response.headers["location"] == f"/v1/jobs/{child['id']}"
    assert child["id"] != parent["id"] and child["parent_id"] == parent["id"]
    assert child["status"] == "queued"
    assert child["spec"]["model"] == {**parent["spec"]["model"], "activation": "relu"}
    assert child["name"] == "deep-sigmoid" and child["tags"] == ["vanishing"]
    read = client.get(f"/v1/jobs/{child['id']}").json()
    assert read["parent_id"] == parent["id"]
    assert client.get(f"/v1/jobs/{parent['id']}").json()["parent_id"] is None
    listed = client.get("/v1/jobs").json()["items"]
    assert {j["id"]: j["parent_id"] for j in listed} == {
        child["id"]: parent["id"],
        parent["id"]: None,
    }
    retries = client.get(f"/v1/jobs?parent_id={parent['id']}").json()["items"]
    assert [j["id"] for j in retries] == [child["id"]]
    assert client.get(f"/v1/jobs?parent_id={child['id']}").json()["items"] == []


def test_apply_suggested_merges_the_patches_in_rank_order(
    client: TestClient, monkeypatch: pytest.MonkeyPatch
) -> None:
    findings = [
        _finding("vanishing_gradient", {"model.activation": "relu", "model.init": "kaiming"}),
        _finding("saturation", {"model.activation": "gelu", "model.norm": "batch"}),
        _finding("not_learning", {}),
    ]
    monkeypatch.setattr(diagnosis, "diagnose_job", lambda **_: findings)
    parent = _submit(client)
    response = _retry(client, parent["id"], {"apply": "suggested", "patch": {"train.lr": 0.01}})
    assert response.status_code == 201, response.text
    model, train = response.json()["spec"]["model"], response.json()["spec"]["train"]
    # The higher-ranked finding wins model.activation; the explicit patch wins over both.
    assert (model["activation"], model["init"], model["norm"]) == ("relu", "kaiming", "batch")
    assert train["lr"] == 0.01


def test_apply_suggested_without_a_suggestion_is_422_at_apply(client: TestClient) -> None:
    parent = _submit(client)  # queued: no statistics, no findings
    response = _retry(client, parent["id"], {"apply": "suggested"})
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "apply"]]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"patch": {"model.activaton": "relu"}}, ["body", "patch", "model.activaton"]),
        ({"patch": {"model": "relu"}}, ["body", "patch", "model"]),
        ({"patch": {"tags": ["a"]}}, ["body", "patch", "tags"]),
        ({"patch": {"model.activation": "swish"}}, ["body", "patch", "model.activation"]),
        ({"patch": {"model.depth": "deep"}}, ["body", "patch", "model.depth"]),
        ({"patch": {"model.depth": 10**6}}, ["body", "patch", "model.depth"]),
        ({"patch": {"data.augment.flip": True}}, ["body", "patch", "data.augment.flip"]),
        ({"patch": {}}, ["body"]),
        ({}, ["body"]),
        ({"apply": "everything"}, ["body", "apply"]),
        ({"patch": {"model.depth": 4}, "extra": 1}, ["body", "extra"]),
    ],
)
def test_bad_patch_is_422_at_its_entry(
    client: TestClient, body: dict[str, Any], loc: list[str]
) -> None:
    parent = _submit(client)
    response = _retry(client, parent["id"], body)
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]][:1] == [loc], response.text


def test_unknown_job_is_404(client: TestClient) -> None:
    response = _retry(client, "0" * 32, {"patch": {"model.depth": 4}})
    assert response.status_code == 404


def test_same_idempotency_key_returns_the_same_retry(client: TestClient) -> None:
    parent = _submit(client)
    body = {"patch": {"model.activation": "relu"}}
    first = _retry(client, parent["id"], body, **{"Idempotency-Key": "fix-1"})
    again = _retry(client, parent["id"], body, **{"Idempotency-Key": "fix-1"})
    assert (first.status_code, again.status_code) == (201, 200)
    assert first.json()["id"] == again.json()["id"]
    other = _retry(
        client,
        parent["id"],
        {"patch": {"model.activation": "gelu"}},
        **{"Idempotency-Key": "fix-1"},
    )
    assert other.status_code == 409


def test_a_sweep_jobs_retry_is_not_tagged_as_a_point_of_the_sweep(client: TestClient) -> None:
    sweep = client.post("/v1/sweeps", json={"base": SPEC, "grid": {"model.depth": [2, 3]}}).json()
    job_id = sweep["jobs"][0]["id"]
    child = _retry(client, job_id, {"patch": {"model.activation": "relu"}}).json()
    assert child["tags"] == ["vanishing"] and child["parent_id"] == job_id
    # Its name no longer claims the point it was: it says what the retry changed.
    assert child["name"] == f"{sweep['jobs'][0]['name']} → model.activation=relu"
    renamed = _retry(client, job_id, {"patch": {"name": "mine", "model.depth": 4}}).json()
    assert renamed["name"] == "mine"


def _hashed(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def keyed(tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, db_url, api_keys=[_hashed("tlk_a"), _hashed("tlk_b")])
    with TestClient(create_app(settings)) as client:
        yield client


def test_another_keys_job_is_404_and_the_retry_belongs_to_the_caller(
    keyed: TestClient, session: Any
) -> None:
    parent = _submit(keyed, key="tlk_a")
    body = {"patch": {"model.activation": "relu"}}
    assert _retry(keyed, parent["id"], body, **{"X-API-Key": "tlk_b"}).status_code == 404
    child = _retry(keyed, parent["id"], body, **{"X-API-Key": "tlk_a"}).json()
    stored = session.get(Job, child["id"])
    assert stored is not None and stored.owner == session.get(Job, parent["id"]).owner
