"""Job queries (service.db.repository.jobs): atomic claims, idempotent finishes, attempts,
leases and fencing, resends and worker rows."""

from __future__ import annotations

from datetime import UTC, datetime, timedelta

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service.db.models import Job, JobTag
from service.db.repository import jobs as job_queries
from service.errors import StaleAttempt
from tests.service.conftest import stored_job


def test_create_job_stores_spec_tags_and_defaults(session: Session) -> None:
    job_id = stored_job(session, name="n", tags=["a", "b", "a"], train={"epochs": 3})
    job = job_queries.get_job(session=session, job_id=job_id, owner=None)
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
    job = job_queries.get_job(session=session, job_id=job_id, owner=None)
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


def _state(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job


def _expire(session: Session, job_id: str) -> None:
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=long_ago))
    session.commit()


def test_each_claim_is_a_new_attempt_with_a_lease(session: Session) -> None:
    job_id = stored_job(session)
    assert _state(session, job_id).attempt == 0
    before = datetime.now(UTC)
    job = job_queries.claim_job(session=session, job_id=job_id, worker="w", lease_s=30)
    session.commit()
    assert job is not None and job.attempt == 1 and job.max_attempts == 3
    assert job.lease_expires_at is not None
    assert job.lease_expires_at >= before + timedelta(seconds=29)


def test_an_expired_lease_requeues_then_fails_after_the_last_attempt(session: Session) -> None:
    job_id, live_id = stored_job(session), stored_job(session)
    job_queries.claim_job(session=session, job_id=live_id, worker="w", lease_s=600)
    for attempt in (1, 2):
        assert job_queries.claim_job(session=session, job_id=job_id, worker="w") is not None
        _expire(session, job_id)
        released = job_queries.expire_leases(session=session, now=datetime.now(UTC))
        session.commit()
        assert [(r.job_id, r.attempt, r.status) for r in released] == [(job_id, attempt, "queued")]
        job = _state(session, job_id)
        assert job.status == "queued" and job.enqueued_at is None  # the reconciler sends it
        assert f"requeued for attempt {attempt + 1}" in (job.error or "")
    assert job_queries.claim_job(session=session, job_id=job_id, worker="w") is not None
    _expire(session, job_id)
    released = job_queries.expire_leases(session=session, now=datetime.now(UTC))
    session.commit()
    assert [r.status for r in released] == ["failed"]
    job = _state(session, job_id)
    assert job.status == "failed" and job.attempt == 3 and job.finished_at is not None
    assert "worker lost" in (job.error or "") and "attempt 3, the last of 3" in (job.error or "")
    assert _state(session, live_id).status == "running"  # its lease is still good


def test_a_stale_attempt_can_renew_nothing_and_write_nothing(session: Session) -> None:
    job_id = stored_job(session)
    job_queries.claim_job(session=session, job_id=job_id, worker="paused")
    session.commit()
    job_queries.guard_attempt(session=session, job_id=job_id, attempt=1)  # current: passes
    assert job_queries.renew_lease(session=session, job_id=job_id, attempt=1, lease_s=30)
    session.commit()
    _expire(session, job_id)
    job_queries.expire_leases(session=session, now=datetime.now(UTC))
    job_queries.claim_job(session=session, job_id=job_id, worker="other")
    session.commit()
    with pytest.raises(StaleAttempt):
        job_queries.guard_attempt(session=session, job_id=job_id, attempt=1)
    session.rollback()
    assert not job_queries.renew_lease(session=session, job_id=job_id, attempt=1, lease_s=30)
    job_queries.guard_attempt(session=session, job_id=job_id, attempt=2)
    job_queries.finish_job(session=session, job_id=job_id, status="succeeded")
    session.commit()
    with pytest.raises(StaleAttempt):  # finished: no attempt is current any more
        job_queries.guard_attempt(session=session, job_id=job_id, attempt=2)


def test_a_graceful_release_does_not_use_up_an_attempt(session: Session) -> None:
    job_id = stored_job(session)
    for attempt in range(1, 6):  # more stops than max_attempts
        job_queries.claim_job(session=session, job_id=job_id, worker="w")
        released = job_queries.release_attempt(
            session=session, job_id=job_id, attempt=attempt, reason="shutdown", counted=False
        )
        session.commit()
        assert released is not None and released.status == "queued"
    job = _state(session, job_id)
    assert job.attempt == 5 and job.preemptions == 5
    # A lost attempt still counts: three losses fail it whatever the stops before.
    for attempt in range(6, 9):
        job_queries.claim_job(session=session, job_id=job_id, worker="w")
        released = job_queries.release_attempt(
            session=session, job_id=job_id, attempt=attempt, reason="killed"
        )
        session.commit()
    assert released is not None and released.status == "failed"
    assert (
        job_queries.release_attempt(session=session, job_id=job_id, attempt=8, reason="again")
        is None
    )


def test_a_lost_attempt_with_a_pending_cancel_ends_cancelled(session: Session) -> None:
    job_id = stored_job(session)
    job_queries.claim_job(session=session, job_id=job_id, worker="w")
    job_queries.request_cancel(session=session, job_id=job_id)
    released = job_queries.release_attempt(session=session, job_id=job_id, attempt=1, reason="x")
    session.commit()
    assert released is not None and released.status == "cancelled"


def test_jobs_to_resend_are_taken_once_per_window(session: Session) -> None:
    never_sent, sent_long_ago, sent_now = (stored_job(session) for _ in range(3))
    job_queries.mark_enqueued(session=session, job_ids=[sent_long_ago, sent_now], sent=True)
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    session.execute(update(Job).where(Job.id == sent_long_ago).values(enqueued_at=long_ago))
    session.commit()
    cutoff = datetime.now(UTC) - timedelta(seconds=60)
    due = job_queries.take_jobs_to_resend(session=session, sent_before=cutoff)
    session.commit()
    assert sorted(j.id for j in due) == sorted([never_sent, sent_long_ago])
    assert job_queries.take_jobs_to_resend(session=session, sent_before=cutoff) == []


def test_worker_rows_beat_and_are_forgotten(session: Session) -> None:
    job_queries.beat_worker(session=session, worker_id="a", hostname="h", pid=1, queues="cpu")
    session.commit()
    first = job_queries.list_workers(session=session)[0].heartbeat_at
    job_queries.beat_worker(session=session, worker_id="a", hostname="h", pid=1, queues="cpu")
    session.commit()
    rows = job_queries.list_workers(session=session, hostname="h")
    assert len(rows) == 1 and rows[0].heartbeat_at > first
    assert job_queries.count_live_workers(session=session, beat_after=first) == 1
    job_queries.forget_workers(session=session, worker_ids=["a"])
    session.commit()
    assert job_queries.list_workers(session=session) == []
