"""Dataset uploads: .npz and .csv, normalized storage, and clear 413/422 for bad files."""

from __future__ import annotations

import io
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.db.repository import datasets as dataset_queries
from tests.service.conftest import make_settings


def _npz(**arrays: Any) -> bytes:
    buffer = io.BytesIO()
    np.savez(buffer, **arrays)
    return buffer.getvalue()


def _upload(client: TestClient, content: bytes, filename: str, **data: str) -> Any:
    return client.post("/v1/datasets", files={"file": (filename, content)}, data=data)


def _images(n: int = 20) -> bytes:
    rng = np.random.default_rng(0)
    return _npz(x=rng.normal(size=(n, 8, 8)), y=np.arange(n) % 3)


def test_upload_npz_then_train_on_it(client: TestClient, session: Session) -> None:
    response = _upload(client, _images(), "digits.npz", name="tiny images")
    assert response.status_code == 201, response.text
    ds = response.json()
    assert ds["id"].startswith("ds_") and len(ds["id"]) == 15
    assert ds["name"] == "tiny images"
    assert (ds["n_examples"], ds["x_shape"], ds["num_classes"]) == (20, [20, 8, 8], 3)
    assert ds["layout"] == "image"
    assert client.get(f"/v1/datasets/{ds['id']}").json() == ds
    assert [d["id"] for d in client.get("/v1/datasets").json()] == [ds["id"]]

    content = dataset_queries.get_dataset_content(session=session, dataset_id=ds["id"])
    assert content is not None and len(content) == ds["size_bytes"]
    with np.load(io.BytesIO(content)) as stored:
        assert stored["x"].dtype == np.float32 and stored["y"].dtype == np.int64

    spec = {"data": {"dataset": ds["id"], "augment": {"flip": True}}, "model": {"arch": "cnn"}}
    assert client.post("/v1/jobs", json=spec).status_code == 201


def test_upload_csv_with_label_column(client: TestClient) -> None:
    lines = ["a,label,b"] + [f"{i}.5,{i % 2},{-i}" for i in range(12)]
    response = _upload(client, "\n".join(lines).encode(), "table.csv")
    assert response.status_code == 201, response.text
    ds = response.json()
    assert (ds["name"], ds["n_examples"], ds["x_shape"], ds["num_classes"]) == (
        "table",
        12,
        [12, 2],
        2,
    )
    assert ds["layout"] == "seq"
    spec = {"data": {"dataset": ds["id"], "augment": {"flip": True}}}
    response = client.post("/v1/jobs", json=spec)
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["body", "data", "augment", "flip"]


def test_upload_csv_label_defaults_to_last_column(client: TestClient) -> None:
    lines = ["f1,f2,f3,class"] + [f"1,2,3,{i % 4}" for i in range(10)]
    ds = _upload(client, "\n".join(lines).encode(), "t.csv").json()
    assert (ds["x_shape"], ds["num_classes"]) == ([10, 3], 4)


X = np.zeros((12, 4))
Y = np.arange(12) % 2


@pytest.mark.parametrize(
    ("content", "filename", "message"),
    [
        (b"not a zip", "a.npz", "not a readable .npz"),
        (_npz(x=X), "a.npz", "missing ['y']"),
        (_npz(x=np.zeros(12), y=Y), "a.npz", "2 dims"),
        (_npz(x=np.array(["a"] * 12), y=Y), "a.npz", "numeric"),
        (_npz(x=np.full((12, 4), np.nan), y=Y), "a.npz", "finite"),
        (_npz(x=np.full((12, 4), 1e300), y=Y), "a.npz", "float32 range"),
        (_npz(x=X, y=Y - 1), "a.npz", "negative"),
        (_npz(x=X, y=Y + 0.5), "a.npz", "integer class labels"),
        (_npz(x=X, y=np.zeros(12, dtype=int)), "a.npz", "C=1"),
        (_npz(x=X, y=np.arange(12) * 100), "a.npz", "C=1101"),
        (_npz(x=X, y=Y[:11]), "a.npz", "12 examples but y has 11"),
        (_npz(x=X[:5], y=Y[:5]), "a.npz", "at least 10"),
        (_npz(x=np.array([object()] * 12, dtype=object), y=Y), "a.npz", "dtype object"),
        (b"a,label\n1,x\n", "a.csv", "numbers only"),
        (b"a,b,label\n1,2\n", "a.csv", "header 3"),
        (b"\xff\xfe", "a.csv", "UTF-8"),
        (b"abc", "a.txt", "not '.txt'"),
    ],
)
def test_bad_uploads_are_422_with_a_message(
    client: TestClient, content: bytes, filename: str, message: str
) -> None:
    response = _upload(client, content, filename)
    assert response.status_code == 422, response.text
    detail = response.json()["detail"][0]
    assert detail["loc"] == ["body", "file"]
    assert message in detail["msg"]


def test_missing_file_is_422(client: TestClient) -> None:
    assert client.post("/v1/datasets", data={"name": "x"}).status_code == 422


def test_upload_over_the_limit_is_413(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(tmp_path, db_url, max_upload_bytes=5_000)
    with TestClient(create_app(settings)) as client:
        big = _npz(x=np.zeros((200, 10)), y=np.arange(200) % 2)
        assert _upload(client, big, "big.npz").status_code == 413
        assert _upload(client, _npz(x=X, y=Y), "ok.npz").status_code == 201


def test_unknown_dataset_is_404(client: TestClient) -> None:
    assert client.get("/v1/datasets/ds_000000000000").status_code == 404
