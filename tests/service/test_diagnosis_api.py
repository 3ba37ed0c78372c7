"""GET /v1/jobs/{id}/diagnosis on stored rows, and the bounded window it reads."""

from __future__ import annotations

import math
from typing import Any

import numpy as np
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.db.repository import telemetry as telemetry_queries
from tests.service.conftest import start_running_job

API_LAYERS = [
    {
        "index": i,
        "name": f"hidden.{i}.linear",
        "kind": "linear",
        "params": 272,
        "shape": [16, 16],
        "activation": "sigmoid",
    }
    for i in range(4)
] + [
    {
        "index": 4,
        "name": "output",
        "kind": "output",
        "params": 170,
        "shape": [10, 16],
        "activation": None,
    }
]


def _running_job(client: TestClient, session: Session) -> str:
    return start_running_job(client, session, API_LAYERS)


def _vanishing_rows(steps: range) -> list[dict[str, Any]]:
    norms = [1e-9, 1e-6, 1e-3, 0.1, 0.2]
    return [
        {
            "layer_index": layer,
            "step": step,
            "epoch": 1,
            "grad_norm": norm,
            "update_ratio": 1e-3,
            "act_saturation": 0.0 if layer < 4 else None,
            "nan_count": 0.0,
            "inf_count": 0.0,
        }
        for step in steps
        for layer, norm in enumerate(norms)
    ]


def test_late_layer_stats_are_the_last_half_strided_from_the_last_step(
    client: TestClient, session: Session
) -> None:
    job_id = _running_job(client, session)
    telemetry_queries.add_layer_stats(
        session=session, job_id=job_id, rows=_vanishing_rows(range(0, 101))
    )
    session.commit()
    rows = telemetry_queries.list_late_layer_stats(
        session=session, job_id=job_id, stats=["grad_norm"], max_steps=1000
    )
    assert sorted({r.step for r in rows}) == list(range(50, 101))
    assert len(rows) == 51 * 5
    strided = telemetry_queries.list_late_layer_stats(
        session=session, job_id=job_id, stats=["grad_norm"], max_steps=10
    )
    steps = sorted({r.step for r in strided})
    assert steps == list(range(52, 101, 6))  # stride (51 - 1) // 10 + 1, back from 100
    assert [r.layer_index for r in strided[:5]] == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("from_rollup", [False, True])
@pytest.mark.parametrize("max_steps", [1000, 10])
def test_late_window_as_arrays_holds_the_rows_of_the_late_window(
    client: TestClient,
    session: Session,
    monkeypatch: pytest.MonkeyPatch,
    from_rollup: bool,
    max_steps: int,
) -> None:
    if from_rollup:  # as a long job's window is read
        monkeypatch.setattr(telemetry_queries, "RAW_READ_ROWS", 0)
    job_id = _running_job(client, session)
    rows = _vanishing_rows(range(0, 301))
    rows[-3]["grad_norm"] = math.inf
    telemetry_queries.add_layer_stats(session=session, job_id=job_id, rows=rows)
    session.commit()
    stats = ["grad_norm", "act_saturation"]
    listed = telemetry_queries.list_late_layer_stats(
        session=session, job_id=job_id, stats=stats, max_steps=max_steps
    )
    window = telemetry_queries.late_layer_stat_window(
        session=session, job_id=job_id, stats=stats, max_steps=max_steps
    )
    expected: list[tuple[Any, ...]] = sorted(
        (cells[0], cells[1], *(math.nan if v is None else v for v in cells[2:]))
        for cells in (tuple[Any, ...](row) for row in listed)
    )
    got: list[tuple[Any, ...]] = list(
        zip(window.layer.tolist(), window.step.tolist(), *window.values.T.tolist(), strict=True)
    )
    assert len(got) == len(expected) > 0
    for a, b in zip(got, expected, strict=True):
        assert a[:2] == b[:2]
        # The same float32 (PostgreSQL's REAL): the window holds it widened, a row as the
        # driver read its decimal.
        assert np.array_equal(
            np.array(a[2:], dtype=np.float32), np.array(b[2:], dtype=np.float32), equal_nan=True
        )


def test_queued_job_has_no_findings(client: TestClient) -> None:
    job_id = client.post("/v1/jobs", json={"name": "q"}).json()["id"]
    response = client.get(f"/v1/jobs/{job_id}/diagnosis")
    assert response.status_code == 200
    assert response.json() == {"job_id": job_id, "status": "queued", "findings": []}


def test_unknown_job_diagnosis_is_404(client: TestClient) -> None:
    assert client.get("/v1/jobs/nope/diagnosis").status_code == 404


def test_running_sigmoid_job_reports_vanishing_gradient(
    client: TestClient, session: Session
) -> None:
    job_id = _running_job(client, session)
    telemetry_queries.add_layer_stats(
        session=session, job_id=job_id, rows=_vanishing_rows(range(10, 110, 10))
    )
    telemetry_queries.add_epoch_metric(
        session=session,
        job_id=job_id,
        metric={"epoch": 1, "train_loss": 2.3, "train_acc": 0.1, "val_loss": 2.3, "val_acc": 0.1},
    )
    session.commit()
    body = client.get(f"/v1/jobs/{job_id}/diagnosis").json()
    assert body["job_id"] == job_id and body["status"] == "running"
    assert [f["code"] for f in body["findings"]] == ["vanishing_gradient"]
    finding = body["findings"][0]
    assert finding["severity"] == "critical"
    assert finding["layers"] == [0, 1]
    assert finding["evidence"]["ratio"] == pytest.approx(1e-8)
    assert finding["evidence"]["depth"] == 4
    assert set(finding) == {
        "code",
        "severity",
        "layers",
        "summary",
        "evidence",
        "remedy",
        "suggested_spec_patch",
        "caused_by",
    }
    assert finding["suggested_spec_patch"]["model.activation"] == "relu"
    assert finding["caused_by"] is None
    assert "kaiming" in finding["remedy"]


def test_nan_gradients_report_divergence(client: TestClient, session: Session) -> None:
    job_id = _running_job(client, session)
    rows = _vanishing_rows(range(10, 50, 10))
    for row in rows:
        if row["step"] >= 30:
            row.update(grad_norm=math.nan, nan_count=12.0)
    telemetry_queries.add_layer_stats(session=session, job_id=job_id, rows=rows)
    telemetry_queries.add_epoch_metric(
        session=session, job_id=job_id, metric={"epoch": 1, "train_loss": math.nan}
    )
    session.commit()
    response = client.get(f"/v1/jobs/{job_id}/diagnosis")
    assert response.status_code == 200, response.text
    findings = {f["code"]: f for f in response.json()["findings"]}
    # The cause ranks first; the symptom names it.
    assert response.json()["findings"][0]["code"] == "lr_too_high"
    finding = findings["divergence"]
    assert finding["evidence"] == {
        "first_nonfinite_step": 30,
        "first_nonfinite_epoch": 1,
        "caused_by": "lr_too_high",
    }
    assert finding["caused_by"] == "lr_too_high"
    assert finding["suggested_spec_patch"]["train.grad_clip"] == 1.0


def test_poor_initialization_is_read_from_the_first_steps(
    client: TestClient, session: Session
) -> None:
    """The activations collapse at the first telemetry step only: the late window the
    other rules read cannot show it, the early window the use case also reads does."""
    job_id = _running_job(client, session)  # default init, telemetry every 10 steps
    rows = _vanishing_rows(range(10, 110, 10))
    for row in rows:
        row["grad_norm"] = 0.1  # no vanishing: only the activations tell
        if row["layer_index"] < 4:
            collapsed = row["step"] == 10 and row["layer_index"] == 3
            row["act_std"] = 1e-5 if collapsed else 0.3
    telemetry_queries.add_layer_stats(session=session, job_id=job_id, rows=rows)
    session.commit()
    response = client.get(f"/v1/jobs/{job_id}/diagnosis")
    assert response.status_code == 200, response.text
    findings = {f["code"]: f for f in response.json()["findings"]}
    assert set(findings) == {"poor_initialization"}
    finding = findings["poor_initialization"]
    assert finding["layers"] == [3]
    assert finding["evidence"]["min_act_std"] == 1e-5
    assert finding["suggested_spec_patch"] == {"model.init": "kaiming"}  # the spec: relu
