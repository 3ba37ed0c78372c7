"""Job queries (service.db.repository.jobs): atomic claims, idempotent finishes, heartbeats."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db.models import Job, JobTag
from service.db.repository import jobs as job_queries
from tests.service.conftest import stored_job


def test_create_job_stores_spec_tags_and_defaults(session: Session) -> None:
    job_id = stored_job(session, name="n", tags=["a", "b", "a"], train={"epochs": 3})
    job = job_queries.get_job(session=session, job_id=job_id)
    assert job is not None
    assert (job.status, job.epochs, job.step, job.cancel_requested) == ("queued", 3, 0, False)
    assert job.spec["train"]["epochs"] == 3
    assert job.created_at.tzinfo is not None
    tags = session.scalars(select(JobTag.tag).where(JobTag.job_id == job_id)).all()
    assert sorted(tags) == ["a", "b"]


def test_claim_is_atomic_and_only_from_queued(session: Session) -> None:
    job_id = stored_job(session)
    claimed = job_queries.claim_job(session=session, job_id=job_id, worker="w1")
    assert claimed is not None
    assert (claimed.status, claimed.worker) == ("running", "w1")
    assert claimed.started_at is not None
    session.commit()
    assert job_queries.claim_job(session=session, job_id=job_id, worker="w2") is None
    assert job_queries.claim_job(session=session, job_id="missing", worker="w2") is None


def test_finish_keeps_the_first_outcome(session: Session) -> None:
    job_id = stored_job(session)
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


def test_cancel_flags(session: Session) -> None:
    queued, running = stored_job(session), stored_job(session)
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


def test_stale_running_jobs_fail_and_live_ones_stay(session: Session) -> None:
    stale_id, live_id, queued_id = stored_job(session), stored_job(session), stored_job(session)
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


def test_heartbeat_is_stamped_only_while_running(session: Session) -> None:
    job_id = stored_job(session)
    assert not job_queries.record_heartbeat(session=session, job_id=job_id)
    session.commit()
    job = job_queries.get_job(session=session, job_id=job_id)
    assert job is not None and job.heartbeat_at is None  # queued: no heartbeat
    assert job_queries.claim_job(session=session, job_id=job_id, worker="w") is not None
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    session.execute(update(Job).where(Job.id == job_id).values(heartbeat_at=long_ago))
    session.commit()
    before = datetime.now(UTC) - timedelta(seconds=1)  # DB clocks may round
    assert job_queries.record_heartbeat(session=session, job_id=job_id)
    session.commit()
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None and job.heartbeat_at is not None and job.heartbeat_at >= before
    job_queries.finish_job(session=session, job_id=job_id, status="succeeded")
    session.commit()
    assert not job_queries.record_heartbeat(session=session, job_id=job_id)
