"""Tenants: every job, sweep, dataset and idempotency key belongs to the key that made it.

Another key gets 404 (never 403) on its ids in every route, lists show a key only its own
rows, an admin key sees everything, and with no keys configured everything stays open.
"""

from __future__ import annotations

import hashlib
import io
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.db.repository import telemetry as telemetry_queries
from service.keys import hash_key, parse_key_entry
from tests.service.conftest import make_settings

KEY_A, KEY_B, KEY_ADMIN = "tlk_alpha-secret", "tlk_bravo-secret", "tlk_root-secret"
A = {"X-API-Key": KEY_A}
B = {"X-API-Key": KEY_B}
ADMIN = {"X-API-Key": KEY_ADMIN}
LAYERS = [
    {"index": 0, "name": "hidden.0.linear", "kind": "linear", "params": 8, "shape": [2, 4]},
    {"index": 1, "name": "output", "kind": "output", "params": 3, "shape": [1, 2]},
]


def sha256_entry(key: str) -> str:
    return "sha256:" + hashlib.sha256(key.encode()).hexdigest()


@pytest.fixture
def keyed(tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    settings = make_settings(
        tmp_path,
        db_url,
        api_keys=[sha256_entry(KEY_A), sha256_entry(KEY_B)],
        admin_keys=[sha256_entry(KEY_ADMIN)],
    )
    with TestClient(create_app(settings)) as client:
        yield client


def _npz() -> bytes:
    buffer = io.BytesIO()
    rng = np.random.default_rng(0)
    np.savez(buffer, x=rng.normal(size=(20, 6)), y=np.arange(20) % 2)
    return buffer.getvalue()


def _operations(client: TestClient, prefix: str, placeholder: str, value: str) -> list[Any]:
    """Every (method, path) under ``prefix`` in the live schema, also routes added later."""
    paths = client.get("/openapi.json").json()["paths"]
    return [
        (method.upper(), template.replace(placeholder, value))
        for template, item in paths.items()
        if template.startswith(prefix)
        for method in item
    ]


def _job_of(client: TestClient, headers: dict[str, str], **spec: Any) -> str:
    response = client.post("/v1/jobs", json=spec, headers=headers)
    assert response.status_code == 201, response.text
    job_id: str = response.json()["id"]
    return job_id


def test_another_key_gets_404_on_every_job_route(keyed: TestClient, session: Session) -> None:
    job_id = _job_of(keyed, A, name="mine")
    telemetry_queries.save_run_plan(
        session=session, job_id=job_id, layers=LAYERS, total_steps=10, epochs=1, device="cpu"
    )
    session.commit()
    operations = _operations(keyed, "/v1/jobs/{job_id}", "{job_id}", job_id)
    assert len(operations) >= 10  # job, cancel, metrics, layers, gradients, events, plots...
    for method, path in operations:
        theirs = keyed.request(method, path, headers=B)
        assert theirs.status_code == 404, (method, path, theirs.text)
        assert theirs.json()["detail"] == f"no job with id {job_id!r}"
    assert keyed.get(f"/v1/jobs/{job_id}", headers=A).status_code == 200
    assert keyed.get(f"/v1/jobs/{job_id}/layers", headers=A).json()[0]["name"] == "hidden.0.linear"
    # cancelling another key's job is a 404 and leaves it queued
    assert keyed.post(f"/v1/jobs/{job_id}/cancel", headers=B).status_code == 404
    assert keyed.get(f"/v1/jobs/{job_id}", headers=A).json()["status"] == "queued"
    # comparing with another key's job is as unknown as comparing with no job at all
    compared = keyed.get(f"/v1/compare?jobs={job_id}&metric=val_loss", headers=B)
    assert compared.status_code == 404, compared.text
    assert keyed.get(f"/v1/compare?jobs={job_id}&metric=val_loss", headers=A).status_code == 200


def test_lists_show_only_the_callers_rows_and_admin_sees_all(keyed: TestClient) -> None:
    mine = _job_of(keyed, A, name="a", tags=["t"])
    theirs = _job_of(keyed, B, name="b", tags=["t"])
    assert [j["id"] for j in keyed.get("/v1/jobs", headers=A).json()["items"]] == [mine]
    assert [j["id"] for j in keyed.get("/v1/jobs?tag=t", headers=B).json()["items"]] == [theirs]
    everything = keyed.get("/v1/jobs", headers=ADMIN).json()["items"]
    assert {j["id"] for j in everything} == {mine, theirs}
    assert keyed.get(f"/v1/jobs/{mine}", headers=ADMIN).status_code == 200
    owners = {j["id"]: j["owner"] for j in everything}
    assert owners[mine] != owners[theirs]
    assert owners[mine] == parse_key_entry(sha256_entry(KEY_A)).principal


def test_sweeps_belong_to_their_key(keyed: TestClient) -> None:
    body = {"name": "s", "base": {"model": {"depth": 2}}, "grid": {"model.width": [4, 8]}}
    created = keyed.post("/v1/sweeps", json=body, headers=A)
    assert created.status_code == 201, created.text
    sweep = created.json()
    for method, path in _operations(keyed, "/v1/sweeps/{sweep_id}", "{sweep_id}", sweep["id"]):
        theirs = keyed.request(method, path, headers=B)
        assert theirs.status_code == 404, (method, path, theirs.text)
    assert keyed.get("/v1/sweeps", headers=B).json()["items"] == []
    assert [s["id"] for s in keyed.get("/v1/sweeps", headers=A).json()["items"]] == [sweep["id"]]
    assert [s["id"] for s in keyed.get("/v1/sweeps", headers=ADMIN).json()["items"]] == [
        sweep["id"]
    ]
    for job in sweep["jobs"]:  # the sweep's jobs are its owner's too
        assert keyed.get(f"/v1/jobs/{job['id']}", headers=B).status_code == 404
        assert keyed.get(f"/v1/jobs/{job['id']}", headers=A).status_code == 200


def test_datasets_belong_to_their_key_and_others_cannot_train_on_them(
    keyed: TestClient,
) -> None:
    uploaded = keyed.post("/v1/datasets", files={"file": ("d.npz", _npz())}, headers=A)
    assert uploaded.status_code == 201, uploaded.text
    ds = uploaded.json()["id"]
    for method, path in _operations(keyed, "/v1/datasets/{dataset_id}", "{dataset_id}", ds):
        theirs = keyed.request(method, path, headers=B)
        assert theirs.status_code == 404, (method, path, theirs.text)
    assert keyed.get("/v1/datasets", headers=B).json() == []
    assert [d["id"] for d in keyed.get("/v1/datasets", headers=A).json()] == [ds]
    assert [d["id"] for d in keyed.get("/v1/datasets", headers=ADMIN).json()] == [ds]
    spec = {"data": {"dataset": ds}}
    response = keyed.post("/v1/jobs", json=spec, headers=B)
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"] == ["body", "data", "dataset"]
    sweep = {"base": spec, "grid": {"model.width": [4]}}
    assert keyed.post("/v1/sweeps", json=sweep, headers=B).status_code == 422
    assert keyed.post("/v1/jobs", json=spec, headers=A).status_code == 201


def test_idempotency_keys_are_per_key(keyed: TestClient) -> None:
    header = {"Idempotency-Key": "same"}
    first = keyed.post("/v1/jobs", json={"name": "a"}, headers=A | header)
    assert first.status_code == 201
    # Another key's identical request is a new job of its own, not a replay of A's.
    other = keyed.post("/v1/jobs", json={"name": "a"}, headers=B | header)
    assert other.status_code == 201, other.text
    assert other.json()["id"] != first.json()["id"]
    # ...and a different body under B's key does not collide with A's key space either.
    assert keyed.post("/v1/jobs", json={"name": "b"}, headers=A | header).status_code == 409
    replay = keyed.post("/v1/jobs", json={"name": "a"}, headers=B | header)
    assert (replay.status_code, replay.json()["id"]) == (200, other.json()["id"])


def test_wrong_and_missing_keys(keyed: TestClient) -> None:
    assert keyed.get("/v1/jobs").status_code == 401
    assert keyed.get("/v1/jobs", headers={"X-API-Key": "nope"}).status_code == 403
    # the configured hash itself is not a key
    assert keyed.get("/v1/jobs", headers={"X-API-Key": sha256_entry(KEY_A)}).status_code == 403
    assert keyed.get("/v1/jobs", headers=ADMIN).status_code == 200


def test_keys_off_everything_is_open_and_owned_by_anonymous(client: TestClient) -> None:
    job = client.post("/v1/jobs", json={}).json()
    assert job["owner"] == "anonymous"
    assert client.get(f"/v1/jobs/{job['id']}").status_code == 200
    assert [j["id"] for j in client.get("/v1/jobs").json()["items"]] == [job["id"]]


def test_key_entries_are_hashes(tmp_path: Path, db_url: str) -> None:
    entry = parse_key_entry(sha256_entry(KEY_A))
    assert entry.principal.startswith("k_") and len(entry.principal) == 14
    named = parse_key_entry("alice=" + sha256_entry(KEY_A))
    assert named.principal == "alice"
    assert hash_key(KEY_A, "sha512").startswith("sha512:")
    assert (
        parse_key_entry(hash_key(KEY_A, "sha512")).digest == hashlib.sha512(KEY_A.encode()).digest()
    )
    for bad in (
        "plaintext-key",
        "md5:" + "0" * 32,
        "sha256:xyz",
        "sha256:" + "0" * 63,
        "b d=sha256:" + "0" * 64,
    ):
        with pytest.raises(ValueError):
            parse_key_entry(bad)
    with pytest.raises(ValueError, match="trainlab keys"):
        make_settings(tmp_path, db_url, api_keys=["k1"])


def test_two_keys_with_one_name_share_their_rows(tmp_path: Path, db_url: str) -> None:
    """Rotation: the old and the new key of one principal see the same jobs."""
    settings = make_settings(
        tmp_path,
        db_url,
        api_keys=["alice=" + sha256_entry(KEY_A), "alice=" + sha256_entry(KEY_B)],
    )
    with TestClient(create_app(settings)) as client:
        job = _job_of(client, A)
        assert client.get(f"/v1/jobs/{job}", headers=B).status_code == 200
        assert client.get(f"/v1/jobs/{job}", headers=B).json()["owner"] == "alice"
