"""The reconciler of a worker's main process, one sweep at a time, on both databases."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import threading
import time
from datetime import UTC, datetime
from pathlib import Path

import pytest
from sqlalchemy import select, update
from sqlalchemy.orm import Session

from service import queue
from service.config import Settings
from service.db.models import Job
from service.db.repository import jobs as job_queries
from tests.service.conftest import make_settings, stored_job
from worker.supervision import FORK_GUARD, Reconciler
from worker.tasks import session_factory_for


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url, heartbeat_interval_s=0.1, lease_s=60)


@pytest.fixture
def sent(monkeypatch: pytest.MonkeyPatch) -> list[str]:
    """Job ids the reconciler sends (the broker is not what these tests are about)."""
    ids: list[str] = []

    def send(_settings: Settings, *, job_id: str, queue: str) -> None:
        ids.append(job_id)

    monkeypatch.setattr(queue, "enqueue_training", send)
    return ids


def _dead_pid() -> int:
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def _reconciler(settings: Settings, worker_id: str = "me") -> Reconciler:
    return Reconciler(settings, session_factory_for(settings), worker_id=worker_id)


def _job(session: Session, job_id: str) -> Job:
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None
    return job


def test_the_job_of_a_dead_pool_child_is_freed_and_sent_at_once(
    settings: Settings, session: Session, sent: list[str]
) -> None:
    dead, alive = stored_job(session), stored_job(session)
    job_queries.claim_job(
        session=session, job_id=dead, worker="w", worker_id="me", worker_pid=_dead_pid()
    )
    job_queries.claim_job(
        session=session, job_id=alive, worker="w", worker_id="me", worker_pid=os.getpid()
    )
    session.commit()
    _reconciler(settings).sweep()
    job = _job(session, dead)
    assert job.status == "queued" and "pool process" in (job.error or "")
    assert _job(session, alive).status == "running"
    assert sent == [dead]
    assert job_queries.list_workers(session=session)[0].id == "me"  # it beat its row


def test_a_dead_worker_on_this_host_is_found_by_its_pid(
    settings: Settings, session: Session, sent: list[str]
) -> None:
    job_id = stored_job(session)
    pid = _dead_pid()
    host = socket.gethostname()
    job_queries.beat_worker(session=session, worker_id="old", hostname=host, pid=pid, queues="")
    job_queries.claim_job(session=session, job_id=job_id, worker="w", worker_id="old")
    session.commit()
    _reconciler(settings).sweep()
    assert _job(session, job_id).status == "queued" and sent == [job_id]
    assert [w.id for w in job_queries.list_workers(session=session)] == ["me"]


def test_a_dead_workers_row_stays_until_its_locked_job_is_taken_back(
    settings: Settings, session: Session, db_url: str, sent: list[str]
) -> None:
    # What made a chaos test end by lease expiry: the job row was still locked by the
    # killed worker's pool child when the successor first swept, SKIP LOCKED passed it
    # by, and the dead worker's row, the only way to find the job by pid, was dropped.
    if db_url.startswith("sqlite"):
        pytest.skip("row locks (FOR UPDATE SKIP LOCKED) are PostgreSQL's; SQLite locks the file")
    job_id = stored_job(session)
    host = socket.gethostname()
    job_queries.beat_worker(
        session=session, worker_id="old", hostname=host, pid=_dead_pid(), queues=""
    )
    job_queries.claim_job(session=session, job_id=job_id, worker="w", worker_id="old")
    session.commit()
    reconciler = _reconciler(settings)
    with session_factory_for(settings)() as holder, holder.begin():
        holder.execute(select(Job.id).where(Job.id == job_id).with_for_update())
        reconciler.sweep()
        assert _job(session, job_id).status == "running"
        workers = {w.id for w in job_queries.list_workers(session=session)}
        session.commit()
        assert workers == {"me", "old"}
    reconciler.sweep()  # the lock is gone: the next sweep finds the job by the dead pid
    job = _job(session, job_id)
    assert job.status == "queued" and "died" in (job.error or "") and sent == [job_id]
    assert [w.id for w in job_queries.list_workers(session=session)] == ["me"]


def test_leases_are_judged_only_after_a_whole_lease_connected(
    settings: Settings, session: Session, sent: list[str]
) -> None:
    job_id = stored_job(session)
    job_queries.claim_job(session=session, job_id=job_id, worker="elsewhere")
    long_ago = datetime(2020, 1, 1, tzinfo=UTC)
    session.execute(update(Job).where(Job.id == job_id).values(lease_expires_at=long_ago))
    session.commit()
    reconciler = _reconciler(settings)
    reconciler.sweep()  # just connected (e.g. after an outage): live attempts may renew
    assert _job(session, job_id).status == "running"
    reconciler._connected_since = 0.0  # connected since long ago
    reconciler.sweep()
    job = _job(session, job_id)
    assert job.status == "queued" and "lease" in (job.error or "") and sent == [job_id]


def test_jobs_never_sent_are_sent_and_a_failed_send_is_retried(
    settings: Settings, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    job_id = stored_job(session)

    def down(_settings: Settings, *, job_id: str, queue: str) -> None:
        raise ConnectionError("broker down")

    monkeypatch.setattr(queue, "enqueue_training", down)
    _reconciler(settings).sweep()
    assert _job(session, job_id).enqueued_at is None  # not sent: tried again next sweep
    sent: list[str] = []
    monkeypatch.setattr(queue, "enqueue_training", lambda _s, *, job_id, queue: sent.append(job_id))
    _reconciler(settings).sweep()
    assert sent == [job_id] and _job(session, job_id).enqueued_at is not None


def test_a_fork_waits_for_the_reconcilers_transaction(tmp_path: Path) -> None:
    """A pool child forked while the reconciler thread is inside a SQLite transaction
    inherited SQLite's in-memory lock state and could never write ("database is locked"
    on every claim, seen in the chaos tests). Forks wait for the guarded database work."""
    path = tmp_path / "fork.db"
    with sqlite3.connect(path, isolation_level=None) as setup:
        setup.execute("PRAGMA journal_mode=WAL")
        setup.execute("CREATE TABLE t (x INTEGER)")
    in_transaction = threading.Event()

    def reconciler_like() -> None:
        with FORK_GUARD:
            conn = sqlite3.connect(path, isolation_level=None, check_same_thread=False)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (1)")
            in_transaction.set()
            time.sleep(0.5)
            conn.execute("COMMIT")
            conn.close()

    thread = threading.Thread(target=reconciler_like)
    thread.start()
    in_transaction.wait()
    pid = os.fork()  # waits for the guard
    if pid == 0:  # the child: write, as a pool child claims its job
        code = 1
        try:
            conn = sqlite3.connect(path, isolation_level=None, timeout=2)
            conn.execute("BEGIN IMMEDIATE")
            conn.execute("INSERT INTO t VALUES (2)")
            conn.execute("COMMIT")
            code = 0
        finally:
            os._exit(code)
    thread.join()
    _, status = os.waitpid(pid, 0)
    assert os.waitstatus_to_exitcode(status) == 0, "the forked child could not write"
