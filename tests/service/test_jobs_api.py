"""Jobs API: submit, read, list and filter, pagination, idempotency and cancellation."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service import checkpoints
from service.api.app import create_app
from service.config import Settings
from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from service.specs import EXAMPLE_SPEC
from service.vocabulary import FINISHED_STATUSES, JobStatus
from tests.service.conftest import make_settings


def _submit(client: TestClient, **spec: Any) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    return job


def test_submit_stores_commits_and_enqueues(client: TestClient, queue_dir: Path) -> None:
    response = client.post("/v1/jobs", json=EXAMPLE_SPEC)
    assert response.status_code == 201
    job = response.json()
    assert response.headers["Location"] == f"/v1/jobs/{job['id']}"
    assert job["status"] == "queued"
    assert job["name"] == "sigmoid-depth-20"
    assert job["tags"] == ["vanishing"]
    assert job["queue"] == "cpu"
    assert job["spec"]["model"]["activation"] == "sigmoid"
    assert job["progress"] == {
        "epoch": 0,
        "epochs": 2,
        "step": 0,
        "total_steps": 0,
        "fraction": 0.0,
    }
    assert job["created_at"].endswith(("+00:00", "Z"))
    messages = list(queue_dir.glob("*.msg"))
    assert len(messages) == 1
    assert job["id"] in messages[0].read_text()


def test_cuda_spec_goes_to_the_gpu_queue(client: TestClient, queue_dir: Path) -> None:
    job = _submit(client, train={"device": "cuda"})
    assert job["queue"] == "gpu"
    assert [p.name.endswith(".gpu.msg") for p in queue_dir.glob("*.msg")] == [True]


def test_get_job_and_404(client: TestClient) -> None:
    job = _submit(client, name="one")
    assert client.get(f"/v1/jobs/{job['id']}").json() == job
    response = client.get("/v1/jobs/does-not-exist")
    assert response.status_code == 404
    assert "does-not-exist" in response.json()["detail"]
    for suffix in ("metrics", "layers", "gradients", "histograms"):
        assert client.get(f"/v1/jobs/nope/{suffix}").status_code == 404
    assert client.post("/v1/jobs/nope/cancel").status_code == 404


def test_progress_reflects_worker_writes(client: TestClient, session: Session) -> None:
    job = _submit(client)
    assert job_queries.claim_job(session=session, job_id=job["id"], worker="w1") is not None
    telemetry_queries.save_run_plan(
        session=session, job_id=job["id"], layers=[], total_steps=40, epochs=5, device="cpu"
    )
    job_queries.update_progress(session=session, job_id=job["id"], epoch=2, step=10)
    session.commit()
    body = client.get(f"/v1/jobs/{job['id']}").json()
    assert body["status"] == "running"
    assert body["worker"] == "w1"
    assert body["device"] == "cpu"
    assert body["started_at"] is not None
    assert body["progress"] == {
        "epoch": 2,
        "epochs": 5,
        "step": 10,
        "total_steps": 40,
        "fraction": 0.25,
    }


def test_list_filters_by_status_tag_name_and_spec_fields(
    client: TestClient, session: Session
) -> None:
    sig = _submit(client, name="sig", tags=["vanishing"], model={"activation": "sigmoid"})
    relu = _submit(client, name="relu", tags=["fix"], train={"lr": 0.1})
    skip = _submit(client, name="res", model={"skip": True, "depth": 6}, data={"train_size": 64})
    job_queries.claim_job(session=session, job_id=relu["id"], worker="w")
    session.commit()

    def ids(query: str) -> set[str]:
        response = client.get(f"/v1/jobs?{query}")
        assert response.status_code == 200, response.text
        return {j["id"] for j in response.json()["items"]}

    assert ids("") == {sig["id"], relu["id"], skip["id"]}
    assert ids("status=running") == {relu["id"]}
    assert ids("status=running&status=queued") == {sig["id"], relu["id"], skip["id"]}
    assert ids("tag=vanishing") == {sig["id"]}
    assert ids("name=res") == {skip["id"]}
    assert ids("model.activation=sigmoid") == {sig["id"]}
    assert ids("model.activation=relu&train.lr=0.1") == {relu["id"]}
    assert ids("train.lr=0.05") == {sig["id"], skip["id"]}
    assert ids("model.skip=true") == {skip["id"]}
    assert ids("model.depth=6") == {skip["id"]}
    assert ids("data.train_size=64") == {skip["id"]}
    assert ids("data.train_size=null") == {sig["id"], relu["id"]}
    assert ids("data.augment.flip=false") == {sig["id"], relu["id"], skip["id"]}


@pytest.mark.parametrize(
    "query",
    [
        "model.activaton=relu",
        "foo=1",
        "model=1",
        "tags=x",
        "data.augment=1",
        "model.depth=deep",
        "model.depth=99999999999999999999999",
        "model.activation=swish",
        "train.lr=nan",
        "status=done",
        "limit=0",
        "limit=201",
        "sort=model",
        "cursor=%%%",
        "cursor=eyJ4IjoxfQ",
    ],
)
def test_bad_list_queries_are_422(client: TestClient, query: str) -> None:
    response = client.get(f"/v1/jobs?{query}")
    assert response.status_code == 422, response.text
    assert response.json()["detail"][0]["loc"][0] == "query"


def test_cursor_pagination_walks_every_job_once_in_order(client: TestClient) -> None:
    created = [_submit(client, name=f"j{i}")["id"] for i in range(7)]
    for sort, expected in (("-created_at", created[::-1]), ("created_at", created)):
        seen: list[str] = []
        url: str | None = f"/v1/jobs?limit=3&sort={sort}"
        pages = 0
        while url:
            body = client.get(url).json()
            seen += [j["id"] for j in body["items"]]
            cursor = body["next_cursor"]
            url = f"/v1/jobs?limit=3&sort={sort}&cursor={cursor}" if cursor else None
            pages += 1
        assert seen == expected
        assert pages == 3


def test_cursor_of_another_sort_order_is_422(client: TestClient) -> None:
    for i in range(3):
        _submit(client, name=f"j{i}")
    cursor = client.get("/v1/jobs?limit=1").json()["next_cursor"]
    response = client.get(f"/v1/jobs?limit=1&sort=created_at&cursor={cursor}")
    assert response.status_code == 422


def test_idempotent_replay_returns_the_same_job_with_200(
    client: TestClient, queue_dir: Path
) -> None:
    headers = {"Idempotency-Key": "abc-1"}
    first = client.post("/v1/jobs", json=EXAMPLE_SPEC, headers=headers)
    again = client.post("/v1/jobs", json=EXAMPLE_SPEC, headers=headers)
    assert first.status_code == 201
    assert again.status_code == 200
    assert again.json()["id"] == first.json()["id"]
    assert again.headers["Location"] == first.headers["Location"]
    assert len(list(queue_dir.glob("*.msg"))) == 1


def test_idempotency_key_with_a_different_body_is_409(client: TestClient) -> None:
    headers = {"Idempotency-Key": "abc-2"}
    assert client.post("/v1/jobs", json={"name": "a"}, headers=headers).status_code == 201
    response = client.post("/v1/jobs", json={"name": "b"}, headers=headers)
    assert response.status_code == 409
    assert "Idempotency-Key" in response.json()["detail"]


def test_idempotency_ignores_defaults_written_out(client: TestClient) -> None:
    headers = {"Idempotency-Key": "abc-3"}
    first = client.post("/v1/jobs", json={"name": "a"}, headers=headers).json()
    same = client.post("/v1/jobs", json={"name": "a", "model": {"depth": 4}}, headers=headers)
    assert same.status_code == 200
    assert same.json()["id"] == first["id"]


def test_cancel_queued_job_is_immediate(client: TestClient) -> None:
    job = _submit(client)
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 200
    body = response.json()
    assert body["status"] == "cancelled"
    assert body["finished_at"] is not None


def test_cancelled_queued_job_cannot_be_claimed(client: TestClient, session: Session) -> None:
    job = _submit(client)
    client.post(f"/v1/jobs/{job['id']}/cancel")
    assert job_queries.claim_job(session=session, job_id=job["id"], worker="w") is None


def test_cancel_running_job_flags_it_for_the_worker(client: TestClient, session: Session) -> None:
    job = _submit(client)
    job_queries.claim_job(session=session, job_id=job["id"], worker="w")
    session.commit()
    body = client.post(f"/v1/jobs/{job['id']}/cancel").json()
    assert body["status"] == "running"
    assert body["cancel_requested"] is True
    assert job_queries.is_cancel_requested(session=session, job_id=job["id"])
    job_queries.finish_job(session=session, job_id=job["id"], status="cancelled")
    session.commit()
    assert client.get(f"/v1/jobs/{job['id']}").json()["status"] == "cancelled"


@pytest.mark.parametrize("final", sorted(FINISHED_STATUSES))
def test_cancel_finished_job_is_409(client: TestClient, session: Session, final: JobStatus) -> None:
    job = _submit(client)
    job_queries.claim_job(session=session, job_id=job["id"], worker="w")
    job_queries.finish_job(session=session, job_id=job["id"], status=final, result={"a": 1.0})
    session.commit()
    response = client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code == 409
    assert final in response.json()["detail"]


def test_result_with_nan_and_numpy_scalars_is_readable(
    client: TestClient, session: Session
) -> None:
    job = _submit(client)
    job_queries.claim_job(session=session, job_id=job["id"], worker="w")
    result = {
        "train_loss": float("nan"),
        "val_loss": np.float64("inf"),
        "val_acc": 0.1,
        "steps": np.int64(7),
    }
    job_queries.finish_job(session=session, job_id=job["id"], status="failed", result=result)
    session.commit()
    body = client.get(f"/v1/jobs/{job['id']}").json()
    assert body["result"] == {
        "train_loss": "NaN",
        "val_loss": "Infinity",
        "val_acc": 0.1,
        "steps": 7,
    }
    assert body["progress"]["fraction"] == 0.0


def test_submit_answers_201_queued_while_the_broker_is_down(tmp_path: Path, db_url: str) -> None:
    # Nothing listens on port 1: every send fails; no job may fail because of it.
    settings = make_settings(tmp_path, db_url, broker_url="redis://127.0.0.1:1/0")
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/jobs", json={}, headers={"Idempotency-Key": "k"})
        assert response.status_code == 201, response.text
        job = response.json()
        assert job["status"] == "queued" and job["attempt"] == 0 and job["max_attempts"] == 3
        again = client.post("/v1/jobs", json={}, headers={"Idempotency-Key": "k"})
        assert again.status_code == 200 and again.json()["status"] == "queued"


def test_final_weights_are_served_as_safetensors(
    client: TestClient, settings: Settings, session: Session
) -> None:
    from safetensors.numpy import load, save

    job_id = client.post("/v1/jobs", json={}).json()["id"]
    response = client.get(f"/v1/jobs/{job_id}/checkpoint")
    assert response.status_code == 404 and "final weights" in response.json()["detail"]
    path = checkpoints.final_weights_path(settings.resolved_checkpoint_dir, job_id)
    path.parent.mkdir(parents=True)
    path.write_bytes(save({"layer.weight": np.arange(6, dtype=np.float32).reshape(2, 3)}))
    job_queries.finish_job(session=session, job_id=job_id, status="succeeded")
    session.commit()
    response = client.get(f"/v1/jobs/{job_id}/checkpoint")
    assert response.status_code == 200
    assert response.headers["content-type"] == "application/octet-stream"
    assert load(response.content)["layer.weight"].tolist() == [[0, 1, 2], [3, 4, 5]]
    assert client.get("/v1/jobs/missing/checkpoint").status_code == 404
