"""Spec validation through the API: field errors from FastAPI, cross-field ones from check_spec."""

from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi.testclient import TestClient

from service.api.app import create_app
from service.db.models import LAYER_STAT_COLUMNS
from service.specs import EXAMPLE_SPEC
from tests.service.conftest import make_settings


def _locs(response: Any) -> list[list[Any]]:
    return [item["loc"] for item in response.json()["detail"]]


def test_layer_stat_columns_match_the_engine_contract() -> None:
    from worker.engine.events import STAT_NAMES

    assert LAYER_STAT_COLUMNS == STAT_NAMES


def test_example_spec_is_accepted(client: TestClient) -> None:
    assert client.post("/v1/jobs", json=EXAMPLE_SPEC).status_code == 201


def test_unknown_field_is_422_with_its_path(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={"model": {"activaton": "sigmoid"}})
    assert response.status_code == 422
    assert _locs(response) == [["body", "model", "activaton"]]


def test_out_of_range_depth_is_422(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={"model": {"depth": 0}})
    assert response.status_code == 422
    assert _locs(response) == [["body", "model", "depth"]]


def test_flip_on_a_1d_dataset_is_422_at_the_flip_field(client: TestClient) -> None:
    body = {"data": {"dataset": "mnist1d", "augment": {"flip": True}}}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    detail = response.json()["detail"]
    assert detail[0]["loc"] == ["body", "data", "augment", "flip"]
    assert detail[0]["type"] == "value_error"
    assert "2-D images" in detail[0]["msg"]
    assert detail[0]["input"] is True


def test_several_cross_field_issues_are_all_reported(client: TestClient) -> None:
    body = {"model": {"skip": True, "depth": 5}, "train": {"nesterov": True, "optimizer": "adam"}}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert _locs(response) == [["body", "model", "depth"], ["body", "train", "nesterov"]]


def test_operator_limit_on_depth(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, max_depth=8)
    with TestClient(create_app(settings)) as client:
        response = client.post("/v1/jobs", json={"model": {"depth": 9}})
        assert response.status_code == 422
        detail = response.json()["detail"][0]
        assert detail["loc"] == ["body", "model", "depth"]
        assert "at most 8" in detail["msg"]
        assert client.post("/v1/jobs", json={"model": {"depth": 8}}).status_code == 201


def test_unknown_uploaded_dataset_is_422_at_data_dataset(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={"data": {"dataset": "ds_0123456789ab"}})
    assert response.status_code == 422
    assert _locs(response) == [["body", "data", "dataset"]]
    assert "POST /v1/datasets" in response.json()["detail"][0]["msg"]


def test_bad_input_never_500(client: TestClient) -> None:
    cases: list[dict[str, Any]] = [
        {"content": b"{not json", "headers": {"Content-Type": "application/json"}},
        {"content": b"[1, 2]", "headers": {"Content-Type": "application/json"}},
        {"json": {"model": {"depth": 10**400}}},
        {"json": {"train": {"seed": 2**80}}},
        {"json": {"train": {"lr": "fast"}}},
        {"json": {"tags": ["x" * 65]}},
        {"json": {"data": {"dataset": "imagenet"}}},
        {
            "content": b'{"train": {"grad_clip": 1e400}}',
            "headers": {"Content-Type": "application/json"},
        },
    ]
    for case in cases:
        response = client.post("/v1/jobs", **case)
        assert response.status_code == 422, (case, response.text)


def test_infinite_number_is_a_422_at_its_field(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs",
        content=b'{"train": {"grad_clip": 1e400}}',
        headers={"Content-Type": "application/json"},
    )
    assert response.status_code == 422
    (error,) = response.json()["detail"]
    assert error["loc"] == ["body", "train", "grad_clip"]
    assert error["input"] == "Infinity"  # the one spelling of service.kit.jsonnum
    assert "finite" in error["msg"]


def test_val_size_beyond_a_fixed_split_is_422_naming_what_there_is(client: TestClient) -> None:
    response = client.post("/v1/jobs", json={"data": {"dataset": "digits", "val_size": 1000}})
    assert response.status_code == 422
    (detail,) = response.json()["detail"]
    assert detail["loc"] == ["body", "data", "val_size"]
    assert "360 validation examples" in detail["msg"]
    assert detail["input"] == 1000


def test_train_size_beyond_a_fixed_split_is_422_at_train_size(client: TestClient) -> None:
    body = {"data": {"dataset": "mnist1d", "train_size": 4001, "val_size": 1001}}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422
    assert _locs(response) == [["body", "data", "train_size"], ["body", "data", "val_size"]]
    assert "4000 training examples" in response.json()["detail"][0]["msg"]


def test_whole_fixed_splits_and_any_synthetic_size_are_accepted(client: TestClient) -> None:
    for data in (
        {"dataset": "digits", "train_size": 1437, "val_size": 360},
        {"dataset": "mnist1d", "train_size": 4000, "val_size": 1000},
        {"dataset": "spirals", "train_size": 5000, "val_size": 5000},
    ):
        assert client.post("/v1/jobs", json={"data": data}).status_code == 201, data
