"""The repository functions the worker calls: atomic claims, idempotent finishes, bulk writes."""

from __future__ import annotations

import math
from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db.models import Job, JobTag, Layer, LayerStat
from service.db.repository import datasets as dataset_queries
from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from service.specs import ExperimentSpec


def _job(session: Session, **spec: object) -> str:
    job = job_queries.create_job(
        session=session, spec=ExperimentSpec.model_validate(spec), queue="cpu"
    )
    session.commit()
    return job.id


def test_create_job_stores_spec_tags_and_defaults(session: Session) -> None:
    job_id = _job(session, name="n", tags=["a", "b", "a"], train={"epochs": 3})
    job = job_queries.get_job(session=session, job_id=job_id)
    assert job is not None
    assert (job.status, job.epochs, job.step, job.cancel_requested) == ("queued", 3, 0, False)
    assert job.spec["train"]["epochs"] == 3
    assert job.created_at.tzinfo is not None
    tags = session.scalars(select(JobTag.tag).where(JobTag.job_id == job_id)).all()
    assert sorted(tags) == ["a", "b"]


def test_claim_is_atomic_and_only_from_queued(session: Session) -> None:
    job_id = _job(session)
    claimed = job_queries.claim_job(session=session, job_id=job_id, worker="w1")
    assert claimed is not None
    assert (claimed.status, claimed.worker) == ("running", "w1")
    assert claimed.started_at is not None
    session.commit()
    assert job_queries.claim_job(session=session, job_id=job_id, worker="w2") is None
    assert job_queries.claim_job(session=session, job_id="missing", worker="w2") is None


def test_finish_keeps_the_first_outcome(session: Session) -> None:
    job_id = _job(session)
    job_queries.claim_job(session=session, job_id=job_id, worker="w")
    job_queries.finish_job(session=session, job_id=job_id, status="succeeded", result={"a": 1})
    job_queries.finish_job(session=session, job_id=job_id, status="failed", error="late")
    session.commit()
    job = job_queries.get_job(session=session, job_id=job_id)
    assert job is not None
    assert (job.status, job.result, job.error) == ("succeeded", {"a": 1}, None)
    assert job.finished_at is not None
    with pytest.raises(ValueError, match="final status"):
        job_queries.finish_job(session=session, job_id=job_id, status="running")


def test_save_run_plan_can_be_repeated(session: Session) -> None:
    job_id = _job(session)
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
    job = job_queries.get_job(session=session, job_id=job_id)
    assert job is not None and (job.total_steps, job.device) == (9, "cuda")


def test_layer_stats_accept_numpy_scalars_and_missing_stats(session: Session) -> None:
    np = pytest.importorskip("numpy")
    job_id = _job(session)
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


def test_non_finite_values_are_stored(session: Session) -> None:
    job_id = _job(session)
    row = {
        "layer_index": 0,
        "step": 1,
        "epoch": 1,
        "grad_norm": math.nan,
        "grad_mean": math.inf,
        "grad_std": -math.inf,
    }
    telemetry_queries.add_layer_stats(session=session, job_id=job_id, rows=[row])
    session.commit()
    stat = session.scalars(select(LayerStat)).one()
    sqlite = session.get_bind().dialect.name == "sqlite"
    # SQLite REAL cannot hold NaN (it becomes NULL); PostgreSQL float8 can.
    assert stat.grad_norm is None if sqlite else math.isnan(stat.grad_norm or 0.0)
    assert (stat.grad_mean, stat.grad_std) == (math.inf, -math.inf)


def test_cancel_flags(session: Session) -> None:
    queued, running = _job(session), _job(session)
    job_queries.claim_job(session=session, job_id=running, worker="w")
    assert job_queries.cancel_queued_job(session=session, job_id=queued)
    assert not job_queries.cancel_queued_job(session=session, job_id=running)
    assert job_queries.request_cancel(session=session, job_id=running)
    session.commit()
    assert job_queries.is_cancel_requested(session=session, job_id=running)
    assert not job_queries.is_cancel_requested(session=session, job_id="missing")
    assert job_queries.count_jobs_by_status(session=session) == {
        "queued": 0,
        "running": 1,
        "succeeded": 0,
        "failed": 0,
        "cancelled": 1,
    }


def test_deleting_a_job_cascades_to_its_rows(session: Session) -> None:
    job_id = _job(session, tags=["t"])
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


def test_dataset_content_roundtrip(session: Session) -> None:
    dataset = dataset_queries.create_dataset(
        session=session,
        name="d",
        n_examples=10,
        x_shape=[10, 2],
        num_classes=2,
        layout="seq",
        content=b"\x00npz",
    )
    session.commit()
    assert dataset_queries.get_dataset_content(session=session, dataset_id=dataset.id) == b"\x00npz"
    assert dataset_queries.get_dataset_content(session=session, dataset_id="ds_x") is None


def test_result_with_numpy_scalars_and_nan_is_stored_as_json(session: Session) -> None:
    np = pytest.importorskip("numpy")
    job_id = _job(session)
    result = {"steps": np.int64(7), "val_loss": np.float64("nan"), "ok": True, "d": "cpu"}
    job_queries.finish_job(session=session, job_id=job_id, status="succeeded", result=result)
    session.commit()
    session.expire_all()
    job = job_queries.get_job(session=session, job_id=job_id)
    assert job is not None
    assert job.result == {"steps": 7, "val_loss": "NaN", "ok": True, "d": "cpu"}


def test_stale_running_jobs_fail_and_live_ones_stay(session: Session) -> None:
    stale_id, live_id, queued_id = _job(session), _job(session), _job(session)
    for job_id in (stale_id, live_id):
        job_queries.claim_job(session=session, job_id=job_id, worker="w")
    session.commit()
    cutoff = datetime.now(UTC) + timedelta(seconds=1)  # both heartbeats are older
    job_queries.record_heartbeat(session=session, job_id=live_id)
    session.execute(
        update(Job).where(Job.id == live_id).values(heartbeat_at=cutoff + timedelta(seconds=5))
    )
    session.commit()

    assert job_queries.fail_stale_jobs(session=session, stale_before=cutoff) == [stale_id]
    session.commit()
    states = {
        job.id: (job.status, job.error)
        for job in session.scalars(select(Job).execution_options(populate_existing=True))
    }
    assert states[stale_id][0] == "failed" and "worker lost" in (states[stale_id][1] or "")
    assert states[live_id] == ("running", None)
    assert states[queued_id] == ("queued", None)
    assert job_queries.fail_stale_jobs(session=session, stale_before=cutoff) == []


def test_heartbeat_moves_forward_only_while_running(session: Session) -> None:
    job_id = _job(session)
    job_queries.record_heartbeat(session=session, job_id=job_id)
    session.commit()
    job = job_queries.get_job(session=session, job_id=job_id)
    assert job is not None and job.heartbeat_at is None  # queued: no heartbeat
    claimed = job_queries.claim_job(session=session, job_id=job_id, worker="w")
    assert claimed is not None and claimed.heartbeat_at is not None
    first = claimed.heartbeat_at
    session.commit()
    job_queries.record_heartbeat(session=session, job_id=job_id)
    session.commit()
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None and job.heartbeat_at is not None and job.heartbeat_at >= first
