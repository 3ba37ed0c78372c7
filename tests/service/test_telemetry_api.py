"""Metrics, layers, gradients and histograms, read back from rows the worker's calls write."""

from __future__ import annotations

import itertools
import math
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.db.models import LAYER_STAT_COLUMNS
from service.db.repository import telemetry as telemetry_queries
from tests.service.conftest import start_running_job

LAYERS = [
    {
        "index": 0,
        "name": "hidden.0.linear",
        "kind": "linear",
        "params": 10,
        "shape": [2, 4],
        "activation": "sigmoid",
    },
    {
        "index": 1,
        "name": "hidden.1.linear",
        "kind": "linear",
        "params": 20,
        "shape": [4, 4],
        "activation": "sigmoid",
    },
    {
        "index": 2,
        "name": "head",
        "kind": "linear",
        "params": 5,
        "shape": [1, 4],
        "activation": None,
    },
]


def _running_job(client: TestClient, session: Session) -> str:
    return start_running_job(client, session, LAYERS)


def _stat_rows(steps: range) -> list[dict[str, Any]]:
    return [
        {
            "layer_index": layer,
            "step": step,
            "epoch": 1 + step // 50,
            **{name: float(layer * 1000 + step) for name in LAYER_STAT_COLUMNS},
        }
        for layer in range(3)
        for step in steps
    ]


def test_metrics_are_per_epoch_rows_in_order(client: TestClient, session: Session) -> None:
    job_id = _running_job(client, session)
    for epoch in (2, 1):
        metric = {
            "epoch": epoch,
            "train_loss": 1.0 / epoch,
            "train_acc": 0.5,
            "val_loss": 0.9,
            "val_acc": 0.4,
            "lr": 0.05,
            "seconds": 1.5,
        }
        telemetry_queries.add_epoch_metric(session=session, job_id=job_id, metric=metric)
    session.commit()
    rows = client.get(f"/v1/jobs/{job_id}/metrics").json()
    assert [r["epoch"] for r in rows] == [1, 2]
    assert rows[1] == {
        "epoch": 2,
        "train_loss": 0.5,
        "train_acc": 0.5,
        "val_loss": 0.9,
        "val_acc": 0.4,
        "lr": 0.05,
        "seconds": 1.5,
    }


def test_diverged_metrics_are_valid_json(client: TestClient, session: Session, db_url: str) -> None:
    job_id = _running_job(client, session)
    metric = {
        "epoch": 1,
        "train_loss": math.nan,
        "train_acc": 0.1,
        "val_loss": math.inf,
        "val_acc": 0.1,
        "lr": 0.05,
        "seconds": 1.0,
    }
    telemetry_queries.add_epoch_metric(session=session, job_id=job_id, metric=metric)
    session.commit()
    row = client.get(f"/v1/jobs/{job_id}/metrics").json()[0]
    # SQLite turns NaN into NULL; PostgreSQL keeps it.
    assert row["train_loss"] == (None if db_url.startswith("sqlite") else "NaN")
    assert row["val_loss"] == "Infinity"


def test_layers_table(client: TestClient, session: Session) -> None:
    job_id = _running_job(client, session)
    body = client.get(f"/v1/jobs/{job_id}/layers").json()
    assert body == LAYERS


def test_gradients_all_layers_and_stats_by_default(client: TestClient, session: Session) -> None:
    job_id = _running_job(client, session)
    telemetry_queries.add_layer_stats(
        session=session, job_id=job_id, rows=_stat_rows(range(0, 30, 10))
    )
    session.commit()
    body = client.get(f"/v1/jobs/{job_id}/gradients").json()
    assert body["job_id"] == job_id
    assert body["stats"] == list(LAYER_STAT_COLUMNS)
    assert [(s["layer_index"], s["name"], s["kind"]) for s in body["series"]] == [
        (0, "hidden.0.linear", "linear"),
        (1, "hidden.1.linear", "linear"),
        (2, "head", "linear"),
    ]
    point = body["series"][1]["points"][2]
    assert point["step"] == 20
    assert point["epoch"] == 1
    assert point["grad_norm"] == 1020.0
    assert set(point) == {
        "step",
        "epoch",
        *LAYER_STAT_COLUMNS,
        *(f"{name}_min" for name in LAYER_STAT_COLUMNS),
        *(f"{name}_max" for name in LAYER_STAT_COLUMNS),
    }


def test_gradients_filter_layers_by_index_or_name_and_stats(
    client: TestClient, session: Session
) -> None:
    job_id = _running_job(client, session)
    telemetry_queries.add_layer_stats(
        session=session, job_id=job_id, rows=_stat_rows(range(0, 50, 10))
    )
    session.commit()
    query = "layer=0&layer=head&stat=grad_norm&stat=act_saturation&from_step=10&to_step=30"
    body = client.get(f"/v1/jobs/{job_id}/gradients?{query}").json()
    assert body["stats"] == ["grad_norm", "act_saturation"]
    assert [s["layer_index"] for s in body["series"]] == [0, 2]
    assert [p["step"] for p in body["series"][1]["points"]] == [10, 20, 30]
    assert body["series"][1]["points"][0] == {
        "step": 10,
        "epoch": 1,
        "grad_norm": 2010.0,
        "act_saturation": 2010.0,
        "grad_norm_min": 2010.0,
        "act_saturation_min": 2010.0,
        "grad_norm_max": 2010.0,
        "act_saturation_max": 2010.0,
    }


@pytest.mark.parametrize(
    "n_steps,max_points,expected", [(1001, 500, 334), (2400, 300, 300), (1000, 500, 500)]
)
def test_downsampled_series_have_the_same_length_on_every_backend(
    client: TestClient, session: Session, n_steps: int, max_points: int, expected: int
) -> None:
    # Buckets of w = ceil(n / m) steps: ceil(n / w) points.
    job_id = _running_job(client, session)
    telemetry_queries.add_layer_stats(
        session=session, job_id=job_id, rows=_stat_rows(range(n_steps))
    )
    session.commit()
    url = f"/v1/jobs/{job_id}/gradients?stat=grad_norm&max_points={max_points}"
    lengths = {len(series["points"]) for series in client.get(url).json()["series"]}
    assert lengths == {expected}


@pytest.fixture(params=["raw", "rollup"])
def read_path(request: pytest.FixtureRequest, monkeypatch: pytest.MonkeyPatch) -> str:
    """Downsampled reads from the raw rows, or (as a long job's are) from the rollup."""
    if request.param == "rollup":
        monkeypatch.setattr(telemetry_queries, "RAW_READ_ROWS", 0)
    return str(request.param)


@pytest.mark.parametrize("n_steps,max_points", [(1000, 500), (1001, 7), (10, 2), (11, 4), (5, 500)])
def test_gradients_downsampled_into_buckets_ending_at_the_last_step(
    client: TestClient, session: Session, n_steps: int, max_points: int
) -> None:
    job_id = _running_job(client, session)
    telemetry_queries.add_layer_stats(
        session=session, job_id=job_id, rows=_stat_rows(range(n_steps))
    )
    session.commit()
    width = math.ceil(n_steps / max_points)
    url = f"/v1/jobs/{job_id}/gradients?stat=grad_norm&max_points={max_points}"
    for series in client.get(url).json()["series"]:
        steps = [p["step"] for p in series["points"]]
        if n_steps <= max_points:
            assert steps == list(range(n_steps))
        else:
            assert max_points // 2 < len(steps) <= max_points
        assert steps[0] == width - 1  # a point is its bucket's last step
        assert steps[-1] == n_steps - 1
        gaps = {b - a for a, b in itertools.pairwise(steps[:-1])}
        assert len(gaps) <= 1  # equal buckets, except possibly the last
        first = series["points"][0]
        assert first["grad_norm_min"] < first["grad_norm_max"] or width == 1


def test_downsampling_keeps_each_buckets_min_max_and_last(
    client: TestClient, session: Session, db_url: str, read_path: str
) -> None:
    job_id = _running_job(client, session)
    rows = [
        {"layer_index": 0, "step": step, "epoch": 1, "grad_norm": 1.0, "nan_count": 0.0}
        for step in range(1000)
    ]
    rows[123]["grad_norm"] = 1e6  # a spike
    rows[777].update(grad_norm=math.nan, nan_count=5.0)  # a NaN
    rows[999]["grad_norm"] = 2.0
    telemetry_queries.add_layer_stats(session=session, job_id=job_id, rows=rows)
    session.commit()
    url = f"/v1/jobs/{job_id}/gradients?layer=0&stat=grad_norm&stat=nan_count&max_points=10"
    points = client.get(url).json()["series"][0]["points"]
    # A point is its bucket's last step (from the rollup: its last segment's last step).
    assert [p["step"] // 100 for p in points] == list(range(10))
    assert points[-1]["step"] == 999
    assert points[1]["grad_norm_max"] == 1e6 and points[1]["grad_norm"] == 1.0
    assert points[1]["grad_norm_min"] == 1.0
    # PostgreSQL keeps the NaN (the largest value); SQLite stores every NaN as NULL.
    nan_max = 1.0 if db_url.startswith("sqlite") else "NaN"
    assert points[7]["grad_norm_max"] == nan_max and points[7]["grad_norm_min"] == 1.0
    assert points[7]["nan_count_max"] == 5.0 and points[7]["nan_count"] == 0.0
    assert points[9]["grad_norm"] == 2.0  # the last value of the last bucket
    assert all(p["nan_count_max"] == 0.0 for i, p in enumerate(points) if i != 7)


def test_gradients_nan_and_inf(client: TestClient, session: Session, db_url: str) -> None:
    job_id = _running_job(client, session)
    row = {
        "layer_index": 0,
        "step": 1,
        "epoch": 1,
        "grad_norm": math.nan,
        "grad_mean": math.inf,
        "grad_std": -math.inf,
        "nan_count": 3.0,
    }
    telemetry_queries.add_layer_stats(session=session, job_id=job_id, rows=[row])
    session.commit()
    url = f"/v1/jobs/{job_id}/gradients?layer=0"
    point = client.get(url).json()["series"][0]["points"][0]
    assert point["grad_norm"] == (None if db_url.startswith("sqlite") else "NaN")
    assert point["grad_mean"] == "Infinity"
    assert point["grad_std"] == "-Infinity"
    assert point["nan_count"] == 3.0
    assert point["act_mean"] is None


@pytest.mark.parametrize(
    "query",
    [
        "layer=7",
        "layer=nope",
        "stat=grad_nrm",
        "max_points=1",
        "max_points=10001",
        "from_step=-1",
        "to_step=99999999999999",
    ],
)
def test_gradients_bad_query_is_422(client: TestClient, session: Session, query: str) -> None:
    job_id = _running_job(client, session)
    response = client.get(f"/v1/jobs/{job_id}/gradients?{query}")
    assert response.status_code == 422, response.text


def test_histograms_by_layer_and_step(client: TestClient, session: Session) -> None:
    job_id = _running_job(client, session)
    rows = [
        {"layer_index": layer, "step": step, "lo": -1.0, "hi": 1.0, "counts": [layer, step, 1]}
        for layer in range(3)
        for step in (10, 20)
    ]
    assert telemetry_queries.add_histograms(session=session, job_id=job_id, rows=rows) == 6
    session.commit()
    everything = client.get(f"/v1/jobs/{job_id}/histograms").json()
    assert len(everything) == 6
    body = client.get(f"/v1/jobs/{job_id}/histograms?layer=head&step=20").json()
    assert body == [{"layer_index": 2, "step": 20, "lo": -1.0, "hi": 1.0, "counts": [2, 20, 1]}]
    assert client.get(f"/v1/jobs/{job_id}/histograms?layer=9").status_code == 422


def _spiky_rows() -> list[dict[str, Any]]:
    """Three layers x 1000 steps: a spike, a NaN burst, an inf, and a layer (the head)
    whose activation statistics are absent."""
    rows = [
        {
            "layer_index": layer,
            "step": step,
            "epoch": 1 + step // 100,
            "grad_norm": 1.0 + layer,
            "update_ratio": 1e-3 * (1 + step % 7),
            "nan_count": 0.0,
            "act_mean": None if layer == 2 else 0.5,
        }
        for layer in range(3)
        for step in range(1000)
    ]
    rows[123]["grad_norm"] = 1e6  # layer 0, a spike
    rows[777].update(grad_norm=math.nan, nan_count=5.0)  # layer 0, a NaN
    rows[1000 + 500]["update_ratio"] = math.inf  # layer 1
    rows[1000 + 999]["grad_norm"] = -math.inf  # layer 1, its last value
    return rows


@pytest.mark.parametrize(
    "query",
    [
        "",
        "stat=grad_norm&stat=act_mean&max_points=10",
        "layer=head&layer=0&stat=update_ratio&max_points=7",
        "from_step=100&to_step=350&max_points=20",
        "from_step=995",
    ],
)
def test_gradient_columns_hold_what_the_points_hold(
    client: TestClient, session: Session, read_path: str, query: str
) -> None:
    job_id = _running_job(client, session)
    telemetry_queries.add_layer_stats(session=session, job_id=job_id, rows=_spiky_rows())
    session.commit()
    url = f"/v1/jobs/{job_id}/gradients?{query}"
    points = client.get(url).json()
    columns = client.get(f"{url}&format=columns").json()
    assert columns["format"] == "columns"
    assert columns["stats"] == points["stats"]
    assert [s["layer_index"] for s in columns["series"]] == [
        s["layer_index"] for s in points["series"]
    ]
    keys = [
        "step",
        "epoch",
        *(f"{n}{end}" for end in ("", "_min", "_max") for n in points["stats"]),
    ]
    for by_column, by_point in zip(columns["series"], points["series"], strict=True):
        assert (by_column["name"], by_column["kind"]) == (by_point["name"], by_point["kind"])
        assert sorted(by_column["columns"]) == sorted(keys)
        rebuilt = [
            {key: by_column["columns"][key][i] for key in keys}
            for i in range(len(by_column["columns"]["step"]))
        ]
        assert rebuilt == by_point["points"]
        assert rebuilt  # every case reads some points
        for key in keys[2:]:  # NULL where nothing was stored, through every statistic
            stat = key.removesuffix("_min").removesuffix("_max")
            if stat == "grad_norm":
                continue  # its NaN is a NULL on SQLite
            stored = stat in ("update_ratio", "nan_count") or (
                stat == "act_mean" and by_column["name"] != "head"
            )
            nulls = [value is None for value in by_column["columns"][key]]
            assert nulls == [not stored] * len(nulls), key


def test_gradient_columns_keep_a_spike_a_nan_and_an_inf_through_downsampling(
    client: TestClient, session: Session, db_url: str, read_path: str
) -> None:
    job_id = _running_job(client, session)
    telemetry_queries.add_layer_stats(session=session, job_id=job_id, rows=_spiky_rows())
    session.commit()
    query = "stat=grad_norm&stat=update_ratio&stat=act_mean&max_points=10&format=columns"
    body = client.get(f"/v1/jobs/{job_id}/gradients?{query}").json()
    first, second, head = (s["columns"] for s in body["series"])
    # A point is its bucket's last step (from the rollup: its last segment's last step).
    assert [step // 100 for step in first["step"]] == list(range(10))
    assert first["step"][-1] == 999
    assert first["grad_norm_max"][1] == 1e6 and first["grad_norm"][1] == 1.0
    # PostgreSQL keeps the NaN (the largest value); SQLite stores every NaN as NULL.
    assert first["grad_norm_max"][7] == (1.0 if db_url.startswith("sqlite") else "NaN")
    assert first["grad_norm_min"][7] == 1.0
    assert second["update_ratio_max"][5] == "Infinity"
    assert second["grad_norm"][9] == "-Infinity" and second["grad_norm_min"][9] == "-Infinity"
    assert second["grad_norm_max"][9] == 2.0
    assert head["act_mean"] == [None] * 10 and head["act_mean_max"] == [None] * 10
    assert first["act_mean"] == [0.5] * 10
    # A REAL reads back as the decimal written (0.002), not its float32 widened to
    # 0.0020000000949949026, in both forms.
    stored = [1e-3 * (1 + step % 7) for step in first["step"]]
    assert first["update_ratio"] == stored
    points = client.get(f"/v1/jobs/{job_id}/gradients?layer=0&stat=update_ratio&max_points=10")
    assert [p["update_ratio"] for p in points.json()["series"][0]["points"]] == stored


def test_gradient_columns_of_a_job_without_statistics_are_empty(
    client: TestClient, session: Session
) -> None:
    job_id = _running_job(client, session)
    body = client.get(f"/v1/jobs/{job_id}/gradients?stat=grad_norm&format=columns").json()
    assert [s["layer_index"] for s in body["series"]] == [0, 1, 2]
    assert body["series"][0]["columns"] == {
        "step": [],
        "epoch": [],
        "grad_norm": [],
        "grad_norm_min": [],
        "grad_norm_max": [],
    }


def test_gradient_format_must_be_points_or_columns(client: TestClient, session: Session) -> None:
    job_id = _running_job(client, session)
    response = client.get(f"/v1/jobs/{job_id}/gradients?format=rows")
    assert response.status_code == 422
    assert response.json()["detail"][0]["loc"] == ["query", "format"]
