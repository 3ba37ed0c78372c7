"""Cross-cutting behaviour: health, readiness, metrics, body limits, API keys and docs."""

from __future__ import annotations

import os
import socket
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.db.repository import jobs as job_queries
from service.keys import hash_key
from service.specs import EXAMPLE_SPEC
from tests.service.conftest import make_settings, recorded_job


def _worker_row(session: Session, *, pid: int) -> None:
    job_queries.beat_worker(
        session=session, worker_id=f"w-{pid}", hostname=socket.gethostname(), pid=pid, queues=""
    )
    session.commit()


@pytest.fixture
def patient_client(tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    """Readiness with a generous timeout: these tests are about what the checks find, and
    on a loaded machine the first database check can outlast the default second (it then
    says "unreachable" / "unknown", which ``test_readyz_names_the_failing_check`` covers)."""
    with TestClient(
        create_app(make_settings(tmp_path, db_url, readiness_timeout_s=10.0))
    ) as client:
        yield client


def test_healthz_and_readyz(patient_client: TestClient, session: Session) -> None:
    client = patient_client
    assert client.get("/healthz").json() == {"status": "ok", "checks": {}}
    _worker_row(session, pid=os.getpid())  # a live process on this host
    response = client.get("/readyz")
    assert response.status_code == 200
    assert response.json()["checks"] == {"database": "ok", "broker": "ok", "workers": "ok"}


def test_readyz_is_503_while_no_worker_is_alive(
    patient_client: TestClient, session: Session
) -> None:
    client = patient_client
    assert client.get("/readyz").json()["checks"]["workers"] == "none alive"
    dead = subprocess.Popen(["true"])
    dead.wait()
    _worker_row(session, pid=dead.pid)  # a fresh beat, but its process has exited
    response = client.get("/readyz")
    assert response.status_code == 503
    assert response.json()["checks"]["workers"] == "none alive"


def test_readyz_names_the_failing_check(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(
        tmp_path, db_url, broker_url="redis://127.0.0.1:1/0", readiness_needs_worker=False
    )
    with TestClient(create_app(settings)) as client:
        response = client.get("/readyz")
        assert response.status_code == 503
        assert response.json() == {
            "status": "unavailable",
            "checks": {"database": "ok", "broker": "unreachable"},
        }


def test_root_redirects_to_the_dashboard(client: TestClient) -> None:
    response = client.get("/", follow_redirects=False)
    assert response.status_code in (302, 307)
    assert response.headers["location"] == "/dashboard"


def test_prometheus_metrics(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json={}).json()["id"]
    client.get(f"/v1/jobs/{job_id}")
    client.get("/v1/jobs/missing")
    text = client.get("/metrics").text
    assert 'trainlab_jobs{status="queued"} 1.0' in text
    assert 'trainlab_jobs{status="running"} 0.0' in text
    assert 'trainlab_http_requests_total{method="POST",route="/v1/jobs",status="201"} 1.0' in text
    assert 'route="/v1/jobs/{job_id}",status="200"' in text
    assert 'route="/v1/jobs/{job_id}",status="404"' in text
    assert "trainlab_http_request_duration_seconds_bucket" in text


def test_metrics_for_operators_queue_depth_and_run_histograms(
    client: TestClient, session: Session
) -> None:
    queued = [client.post("/v1/jobs", json={}).json()["id"] for _ in range(2)]
    ran = recorded_job(client, session, steps=40)  # claimed, 40 steps, succeeded
    assert ran not in queued
    text = client.get("/metrics").text
    assert 'trainlab_queue_depth{queue="cpu"} 2.0' in text
    assert 'trainlab_queue_depth{queue="gpu"} 0.0' in text
    assert 'trainlab_job_duration_seconds_count{status="succeeded"} 1.0' in text
    assert 'trainlab_job_duration_seconds_bucket{le="+Inf",status="succeeded"} 1.0' in text
    assert 'trainlab_job_steps_per_second_count{status="succeeded"} 1.0' in text


def test_json_body_over_the_limit_is_413(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, max_body_bytes=1_000)
    with TestClient(create_app(settings)) as client:
        body = {"name": "x" * 150, "tags": ["t" * 60] * 20}
        response = client.post("/v1/jobs", json=body)
        assert response.status_code == 413
        assert "1000 bytes" in response.json()["detail"]

        def chunks() -> Any:  # no Content-Length: the streamed size is checked
            yield b'{"name": "'
            yield b"x" * 2_000
            yield b'"}'

        response = client.post(
            "/v1/jobs", content=chunks(), headers={"Content-Type": "application/json"}
        )
        assert response.status_code == 413
        assert client.post("/v1/jobs", json=EXAMPLE_SPEC).status_code == 201


def test_api_keys_guard_v1_only(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, api_keys=[hash_key("k1"), hash_key("k2")])
    with TestClient(create_app(settings)) as client:
        missing = client.get("/v1/jobs")
        assert missing.status_code == 401
        assert client.get("/v1/jobs", headers={"X-API-Key": "nope"}).status_code == 403
        assert client.get("/v1/jobs", headers={"X-API-Key": "ü".encode()}).status_code == 403
        assert client.get("/v1/jobs", headers={"X-API-Key": "k2"}).status_code == 200
        assert client.post("/v1/jobs", json={}).status_code == 401
        for open_path in ("/healthz", "/docs", "/openapi.json", "/metrics"):
            assert client.get(open_path).status_code == 200, open_path
        assert client.get("/readyz").status_code == 503  # no worker; but no key asked for


def test_docs_and_every_request_body_has_an_example(client: TestClient) -> None:
    assert "swagger-ui" in client.get("/docs").text.lower()
    schema = client.get("/openapi.json").json()
    bodies = 0
    for path, item in schema["paths"].items():
        for method, operation in item.items():
            for media in operation.get("requestBody", {}).get("content", {}).values():
                bodies += 1
                assert _has_example(media, schema), (method, path)
    assert bodies == 4  # POST /v1/jobs, /v1/datasets, /v1/sweeps, /v1/jobs/{id}/retry-with
    examples = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"][
        "examples"
    ]
    assert {"vanishing", "relu_batchnorm", "residual", "overfitting_dropout"} <= set(examples)
    assert examples["vanishing"]["value"]["train"]["epochs"] == 2


def test_every_openapi_example_is_accepted(client: TestClient) -> None:
    schema = client.get("/openapi.json").json()
    media = schema["paths"]["/v1/jobs"]["post"]["requestBody"]["content"]["application/json"]
    for name, example in media["examples"].items():
        response = client.post("/v1/jobs", json=example["value"])
        assert response.status_code == 201, (name, response.text)


def _has_example(media: dict[str, Any], schema: dict[str, Any]) -> bool:
    if "example" in media or "examples" in media:
        return True
    ref = media.get("schema", {}).get("$ref", "")
    component = schema["components"]["schemas"].get(ref.rsplit("/", 1)[-1], {})
    properties = component.get("properties", {})
    # multipart forms: every non-file field carries examples (a file cannot).
    return bool(properties) and all(
        "examples" in prop or prop.get("format") == "binary" or "contentMediaType" in prop
        for prop in properties.values()
    )


def test_an_unreachable_database_is_a_503_with_retry_after(tmp_path: Path) -> None:
    # Nothing listens on port 1: every connection is refused.
    settings = make_settings(tmp_path, "postgresql+psycopg://postgres@127.0.0.1:1/none")
    with TestClient(create_app(settings), raise_server_exceptions=False) as client:
        for method, path in (("GET", "/v1/jobs"), ("GET", "/v1/jobs/abc"), ("POST", "/v1/jobs")):
            response = client.request(method, path, json={} if method == "POST" else None)
            assert response.status_code == 503, response.text
            assert response.headers["retry-after"] == "5"
            assert "database" in response.json()["detail"]
        ready = client.get("/readyz")
        assert ready.status_code == 503 and ready.json()["checks"]["database"] == "unreachable"
