"""Telemetry queries (service.db.repository.telemetry): run plans and bulk statistics."""

from __future__ import annotations

import pytest
from sqlalchemy import select
from sqlalchemy.orm import Session

from service.db.models import Job, JobTag, Layer, LayerStat
from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from tests.service.conftest import stored_job


def test_save_run_plan_can_be_repeated(session: Session) -> None:
    job_id = stored_job(session)
    layer = {
        "index": 0,
        "name": "l",
        "kind": "linear",
        "params": 3,
        "shape": (3, 1),
        "activation": None,
    }
    for _ in range(2):
        telemetry_queries.save_run_plan(
            session=session, job_id=job_id, layers=[layer], total_steps=9, epochs=3, device="cuda"
        )
    session.commit()
    assert len(telemetry_queries.list_layers(session=session, job_id=job_id)) == 1
    job = job_queries.get_job(session=session, job_id=job_id, owner=None)
    assert job is not None and (job.total_steps, job.device) == (9, "cuda")


def test_layer_stats_accept_numpy_scalars_and_missing_stats(session: Session) -> None:
    np = pytest.importorskip("numpy")
    job_id = stored_job(session)
    rows = [
        {
            "layer_index": np.int64(1),
            "step": np.int64(5),
            "epoch": np.int64(1),
            "grad_norm": np.float64(0.5),
            "unknown_key": 1.0,
        }
    ]
    assert telemetry_queries.add_layer_stats(session=session, job_id=job_id, rows=rows) == 1
    assert telemetry_queries.add_layer_stats(session=session, job_id=job_id, rows=[]) == 0
    session.commit()
    stat = session.scalars(select(LayerStat)).one()
    assert (stat.layer_index, stat.step, stat.grad_norm, stat.act_mean) == (1, 5, 0.5, None)


def test_deleting_a_job_cascades_to_its_rows(session: Session) -> None:
    job_id = stored_job(session, tags=["t"])
    layer = {
        "index": 0,
        "name": "l",
        "kind": "linear",
        "params": 1,
        "shape": [1],
        "activation": None,
    }
    telemetry_queries.save_run_plan(
        session=session, job_id=job_id, layers=[layer], total_steps=1, epochs=1, device="cpu"
    )
    telemetry_queries.add_layer_stats(
        session=session, job_id=job_id, rows=[{"layer_index": 0, "step": 0, "epoch": 1}]
    )
    session.commit()
    session.delete(session.get(Job, job_id))
    session.commit()
    for model in (JobTag, Layer, LayerStat):
        assert session.scalars(select(model)).all() == []
