"""Hostile input: every request the issue found answering 500 (or accepted silently) is a
4xx with a clear message, on SQLite and PostgreSQL."""

from __future__ import annotations

import io
import zipfile
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.db.repository import telemetry as telemetry_queries
from tests.service.conftest import start_running_job

JSON = {"Content-Type": "application/json"}
LAYERS = [
    {"index": 0, "name": "hidden.0.linear", "kind": "linear", "params": 8, "shape": [2, 4]},
    {"index": 1, "name": "output", "kind": "output", "params": 3, "shape": [1, 2]},
]


def _locs(response: Any) -> list[list[Any]]:
    return [item["loc"] for item in response.json()["detail"]]


# --- lone surrogates and NUL ------------------------------------------------------------


@pytest.mark.parametrize(
    "body",
    [
        b'{"name": "\\ud800"}',
        b'{"tags": ["ok", "\\udfff"]}',
        b'{"model": {"activation": "\\ud83d"}}',
        b'{"\\ud800": 1}',
    ],
)
def test_lone_surrogate_in_a_job_body_is_422(client: TestClient, body: bytes) -> None:
    response = client.post("/v1/jobs", content=body, headers=JSON)
    assert response.status_code == 422, response.text
    assert "surrogate" in response.text
    assert response.json()["detail"][0]["loc"][0] == "body"


def test_lone_surrogate_in_a_sweep_body_is_422(client: TestClient) -> None:
    body = b'{"name": "\\udc00", "grid": {"model.depth": [1, 2]}}'
    response = client.post("/v1/sweeps", content=body, headers=JSON)
    assert response.status_code == 422, response.text
    assert _locs(response) == [["body", "name"]]


@pytest.mark.parametrize(
    "body",
    [
        {"name": "a\x00b"},
        {"tags": ["\x00"]},
        {"data": {"dataset": "mnist1d\x00"}},
    ],
)
def test_nul_in_a_job_body_is_422(client: TestClient, body: dict[str, Any]) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert "NUL" in response.text


def test_nul_in_a_sweep_name_is_422(client: TestClient) -> None:
    response = client.post("/v1/sweeps", json={"name": "s\x00", "grid": {"model.depth": [1]}})
    assert response.status_code == 422, response.text
    assert _locs(response) == [["body", "name"]]


@pytest.mark.parametrize(
    "path",
    [
        "/v1/jobs/%00",
        "/v1/jobs/%00/metrics",
        "/v1/jobs/a%00b/cancel",
        "/v1/sweeps/%00",
        "/v1/datasets/%00",
    ],
)
def test_nul_in_a_path_is_404(client: TestClient, path: str) -> None:
    method = "POST" if path.endswith("cancel") else "GET"
    assert client.request(method, path).status_code == 404


@pytest.mark.parametrize(
    "query",
    ["name=%00", "tag=a%00", "model.activation=relu%00", "cursor=%00", "status=%00", "%00=1"],
)
def test_nul_in_a_query_is_422(client: TestClient, query: str) -> None:
    response = client.get(f"/v1/jobs?{query}")
    assert response.status_code == 422, response.text


def test_nul_or_surrogate_inside_a_cursor_is_422(client: TestClient) -> None:
    import base64

    for raw in (
        b'{"s":"-created_at","k":{"dt":"2026-01-01T00:00:00+00:00"},"i":"\\ud800"}',
        b'{"s":"-created_at","k":{"dt":"2026-01-01T00:00:00+00:00"},"i":"a\\u0000"}',
    ):
        cursor = base64.urlsafe_b64encode(raw).decode().rstrip("=")
        response = client.get(f"/v1/jobs?cursor={cursor}")
        assert response.status_code == 422, response.text
        assert _locs(response) == [["query", "cursor"]]


def test_422_handler_survives_an_unencodable_input(client: TestClient) -> None:
    """The 422 that echoes its input must itself be writable as UTF-8 JSON."""
    response = client.post("/v1/jobs", content=b'{"train": {"epochs": "\\ud800"}}', headers=JSON)
    assert response.status_code == 422
    response.json()


# --- integers beyond the columns' range ---------------------------------------------------


@pytest.mark.parametrize(
    "query",
    [
        "train.seed=9223372036854775807",
        "train.seed=2147483648",
        "data.train_size=3000000000",
        "model.depth=-9223372036854775809",
        "telemetry.every_n_steps=99999999999999999999999",
    ],
)
def test_integer_filter_beyond_the_field_bounds_is_422(client: TestClient, query: str) -> None:
    response = client.get(f"/v1/jobs?{query}")
    assert response.status_code == 422, response.text
    assert _locs(response) == [["query", query.split("=")[0]]]


def test_integer_filter_within_bounds_still_filters(client: TestClient) -> None:
    job = client.post("/v1/jobs", json={"train": {"seed": 2**31 - 1}}).json()
    found = client.get("/v1/jobs?train.seed=2147483647").json()["items"]
    assert [j["id"] for j in found] == [job["id"]]


# --- strict JSON types and duplicate keys --------------------------------------------------


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        ({"model": {"depth": "3"}}, ["body", "model", "depth"]),
        ({"model": {"skip": "true"}}, ["body", "model", "skip"]),
        ({"model": {"skip": 1}}, ["body", "model", "skip"]),
        ({"train": {"lr": "0.1"}}, ["body", "train", "lr"]),
        ({"train": {"epochs": 2.0}}, ["body", "train", "epochs"]),
        ({"telemetry": {"activations": "no"}}, ["body", "telemetry", "activations"]),
    ],
)
def test_numbers_and_booleans_sent_as_strings_are_422(
    client: TestClient, body: dict[str, Any], loc: list[str]
) -> None:
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 422, response.text
    assert _locs(response) == [loc]


def test_strict_types_in_a_sweep_grid_and_base(client: TestClient) -> None:
    response = client.post("/v1/sweeps", json={"grid": {"model.depth": ["2", 3]}})
    assert response.status_code == 422, response.text
    assert _locs(response) == [["body", "grid", "model.depth", 0]]
    response = client.post(
        "/v1/sweeps", json={"base": {"train": {"epochs": "1"}}, "grid": {"model.depth": [2]}}
    )
    assert response.status_code == 422, response.text
    assert _locs(response) == [["body", "base", "train", "epochs"]]


@pytest.mark.parametrize(
    ("body", "loc"),
    [
        (b'{"name": "a", "name": "b"}', ["body", "name"]),
        (b'{"model": {"depth": 3, "depth": 200}}', ["body", "model", "depth"]),
        (b'{"tags": [{"a": 1, "a": 2}]}', ["body", "tags", 0, "a"]),
    ],
)
def test_duplicate_json_keys_are_422(client: TestClient, body: bytes, loc: list[Any]) -> None:
    response = client.post("/v1/jobs", content=body, headers=JSON)
    assert response.status_code == 422, response.text
    assert _locs(response) == [loc]
    assert "duplicate" in response.json()["detail"][0]["msg"]


def test_duplicate_keys_in_a_sweep_body_are_422(client: TestClient) -> None:
    body = b'{"grid": {"model.depth": [1], "model.depth": [2]}}'
    response = client.post("/v1/sweeps", content=body, headers=JSON)
    assert response.status_code == 422, response.text
    assert _locs(response) == [["body", "grid", "model.depth"]]


# --- uploads --------------------------------------------------------------------------------


def _npy(array: np.ndarray) -> bytes:
    buffer = io.BytesIO()
    np.save(buffer, array, allow_pickle=False)
    return buffer.getvalue()


def _header_only(shape: tuple[int, ...], descr: str = "<f8") -> bytes:
    buffer = io.BytesIO()
    np.lib.format.write_array_header_1_0(
        buffer, {"descr": descr, "fortran_order": False, "shape": shape}
    )
    return buffer.getvalue()


def _zip(**members: bytes) -> bytes:
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for name, content in members.items():
            archive.writestr(f"{name}.npy", content)
    return buffer.getvalue()


def _upload(client: TestClient, content: bytes, filename: str = "d.npz") -> Any:
    return client.post("/v1/datasets", files={"file": (filename, content)})


def test_npz_whose_header_claims_a_huge_array_is_422(client: TestClient) -> None:
    content = _zip(x=_header_only((10, 10**11)), y=_npy(np.arange(10) % 2))
    assert len(content) < 600
    response = _upload(client, content)
    assert response.status_code == 422, response.text
    assert "x" in response.json()["detail"][0]["msg"]
    assert "bytes" in response.json()["detail"][0]["msg"]


def test_npz_header_that_lies_about_its_length_is_422(client: TestClient) -> None:
    # The header promises 10 x 4 floats; the member holds none of them.
    content = _zip(x=_header_only((10, 4)), y=_npy(np.arange(10) % 2))
    response = _upload(client, content)
    assert response.status_code == 422, response.text


def test_npz_object_arrays_and_pickles_are_refused(client: TestClient) -> None:
    buffer = io.BytesIO()
    np.save(buffer, np.array([{"a": 1}] * 10, dtype=object), allow_pickle=True)
    content = _zip(x=buffer.getvalue(), y=_npy(np.arange(10) % 2))
    response = _upload(client, content)
    assert response.status_code == 422, response.text
    assert "object" in response.text or "pickle" in response.text


def test_npz_that_inflates_far_beyond_the_upload_limit_is_422(client: TestClient) -> None:
    # ~150 KB of zeros on the wire, 156 MB once inflated (the zip bomb).
    x = np.zeros((39_000, 500), dtype=np.float64)
    content = _zip(x=_npy(x), y=_npy(np.arange(39_000) % 2))
    assert len(content) < 300_000
    response = _upload(client, content)
    assert response.status_code == 422, response.text
    assert "inflate" in response.text or "bytes" in response.text


def test_csv_with_quoted_fields_is_parsed(client: TestClient) -> None:
    lines = ['"a","b, with comma","label"'] + [f'"{i}.5",{-i},"{i % 2}"' for i in range(12)]
    response = _upload(client, "\n".join(lines).encode(), "quoted.csv")
    assert response.status_code == 201, response.text
    assert response.json()["x_shape"] == [12, 2]


def test_nul_in_a_dataset_name_is_422(client: TestClient) -> None:
    lines = ["a,label"] + [f"{i},{i % 2}" for i in range(12)]
    response = client.post(
        "/v1/datasets",
        files={"file": ("t.csv", "\n".join(lines).encode())},
        data={"name": "n\x00"},
    )
    assert response.status_code == 422, response.text
    response = client.post("/v1/datasets", files={"file": ("t\x00.csv", "\n".join(lines).encode())})
    assert response.status_code in (201, 422), response.text


# --- bounded responses ----------------------------------------------------------------------


def test_histograms_are_bounded_by_step_range_and_a_row_cap(
    client: TestClient, session: Session
) -> None:
    job_id = start_running_job(client, session, LAYERS)
    rows = [
        {"layer_index": layer, "step": step, "lo": -1.0, "hi": 1.0, "counts": [1, 2, 3]}
        for layer in (0, 1)
        for step in range(0, 100, 10)
    ]
    telemetry_queries.add_histograms(session=session, job_id=job_id, rows=rows)
    session.commit()
    url = f"/v1/jobs/{job_id}/histograms"
    assert len(client.get(url).json()) == 20
    window = client.get(url, params={"from_step": 20, "to_step": 40}).json()
    assert sorted({r["step"] for r in window}) == [20, 30, 40]
    assert len(client.get(url, params={"limit": 3}).json()) == 3
    assert client.get(url, params={"limit": 10**9}).status_code == 422
    only = client.get(url, params={"layer": "output", "from_step": 90}).json()
    assert [(r["layer_index"], r["step"]) for r in only] == [(1, 90)]


@pytest.mark.parametrize("layer", ["²", "1" * 5000, "-1", "٣"])
def test_odd_layer_values_are_422_not_500(client: TestClient, session: Session, layer: str) -> None:
    job_id = start_running_job(client, session, LAYERS)
    for route in ("gradients", "histograms"):
        response = client.get(f"/v1/jobs/{job_id}/{route}", params={"layer": layer})
        assert response.status_code == 422, (route, response.text)
        assert _locs(response) == [["query", "layer"]]
