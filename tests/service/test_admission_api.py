"""Admission control at submit: a spec whose cost passes an operator limit is a 422 that
names the field, the estimate and the limit; nothing is stored or queued."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient

from service.admission import parameter_count
from service.api.app import create_app
from service.specs import ModelSpec
from tests.service.conftest import make_settings


def _refused(client: TestClient, spec: dict[str, Any]) -> dict[str, Any]:
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 422, response.text
    detail: list[dict[str, Any]] = response.json()["detail"]
    assert len(detail) == 1, detail
    return detail[0]


def test_a_model_over_the_parameter_limit_is_422(client: TestClient, queue_dir: Path) -> None:
    """The issue's depth 256 x width 4096 (4.3 G parameters) never reaches a worker."""
    spec = {"model": {"depth": 256, "width": 4096}, "train": {"epochs": 1}}
    count = parameter_count(ModelSpec(depth=256, width=4096), input_shape=(1, 40), num_classes=10)
    assert count > 4_000_000_000
    found = [d["loc"] for d in client.post("/v1/jobs", json=spec).json()["detail"]]
    assert ["body", "model"] in found
    detail = next(d for d in client.post("/v1/jobs", json=spec).json()["detail"])
    assert f"{count:,}" in detail["msg"] and "20,000,000" in detail["msg"]
    assert client.get("/v1/jobs").json()["items"] == []
    assert not queue_dir.exists() or not any(queue_dir.iterdir())


def test_activation_memory_of_a_batch_is_422_at_batch_size(client: TestClient) -> None:
    spec: dict[str, Any] = {
        "model": {"arch": "cnn", "depth": 4, "width": 512},
        "train": {"batch_size": 4000, "epochs": 1},
    }
    detail = _refused(client, spec)
    assert detail["loc"] == ["body", "train", "batch_size"]
    assert "MiB of activations" in detail["msg"] and "2,048.0 MiB" in detail["msg"]
    spec["train"]["batch_size"] = 256
    assert client.post("/v1/jobs", json=spec).status_code == 201


def test_telemetry_rows_over_the_limit_are_422_at_every_n_steps(client: TestClient) -> None:
    spec: dict[str, Any] = {
        "data": {"dataset": "spirals", "train_size": 1_000_000},
        "model": {"depth": 3, "width": 8},
        "train": {"epochs": 1, "batch_size": 1},
        "telemetry": {"every_n_steps": 1},
    }
    detail = _refused(client, spec)
    assert detail["loc"] == ["body", "telemetry", "every_n_steps"]
    # 4 tracked layers (3 hidden + output) x 1,000,000 steps
    assert "4,000,000 telemetry rows" in detail["msg"] and "1,000,000" in detail["msg"]
    spec["telemetry"]["every_n_steps"] = 10
    assert client.post("/v1/jobs", json=spec).status_code == 201


def test_estimated_run_time_over_the_limit_is_422_at_epochs(client: TestClient) -> None:
    spec = {
        "data": {"dataset": "spirals", "train_size": 1_000_000},
        "model": {"depth": 1, "width": 4},
        "train": {"epochs": 10_000, "batch_size": 1},
        "telemetry": {"every_n_steps": 0},
    }
    detail = _refused(client, spec)
    assert detail["loc"] == ["body", "train", "epochs"]
    assert "10,000,000,000 steps" in detail["msg"] and "604,800 s" in detail["msg"]


def test_a_job_cannot_finish_within_its_own_time_limit_is_422(client: TestClient) -> None:
    """The estimate (which errs short) against the job's own train.time_limit_s."""
    spec: dict[str, Any] = {
        "data": {"dataset": "spirals", "train_size": 100_000},
        "model": {"depth": 1, "width": 4},
        "train": {"epochs": 100, "batch_size": 1, "time_limit_s": 60},
        "telemetry": {"every_n_steps": 0},
    }
    detail = _refused(client, spec)  # 10 million steps take at least 1,000 s
    assert detail["loc"] == ["body", "train", "epochs"]
    assert "its run-time limit is 60 s" in detail["msg"]
    spec["train"]["time_limit_s"] = 7200
    assert client.post("/v1/jobs", json=spec).status_code == 201


def test_dataset_size_after_decompression_is_limited(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, max_dataset_bytes=100_000)
    with TestClient(create_app(settings)) as client:
        detail = _refused(client, {"data": {"dataset": "mnist1d"}})
        assert detail["loc"] == ["body", "data", "dataset"]
        # 5000 examples x (40 float32 + one int64 label)
        assert "0.8 MiB once decompressed" in detail["msg"]
        assert client.post("/v1/jobs", json={"data": {"dataset": "moons"}}).status_code == 201


@pytest.mark.parametrize(
    ("setting", "value", "spec", "loc"),
    [
        ("max_parameters", 1_000, {"model": {"width": 64}}, ["body", "model"]),
        ("max_time_limit_s", 0.01, {"train": {"epochs": 50}}, ["body", "train", "epochs"]),
    ],
)
def test_every_limit_is_an_operator_setting(
    tmp_path: Path, db_url: str, setting: str, value: float, spec: dict[str, Any], loc: list[str]
) -> None:
    settings = make_settings(tmp_path, db_url, **{setting: value})
    with TestClient(create_app(settings)) as client:
        assert _refused(client, spec)["loc"] == loc


def test_a_sweep_point_over_a_limit_rejects_the_sweep(client: TestClient) -> None:
    body = {"base": {"model": {"depth": 64}}, "grid": {"model.width": [8, 4096]}}
    response = client.post("/v1/sweeps", json=body)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", "base", "model"]
    assert "model.width=4096" in detail[0]["msg"]
    assert client.get("/v1/jobs").json()["items"] == []
