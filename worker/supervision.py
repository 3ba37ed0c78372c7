"""What a worker's main process does besides consuming: it keeps jobs from being lost.

The main process outlives the pool children that train, so it runs one thread, the
reconciler, which every ``reconcile_interval_s``:

* beats this worker's ``worker_node`` row (``/readyz`` counts live workers by it);
* frees at once the job of a pool child that died (killed, out of memory), and the jobs
  of a dead worker process on this host (a restarted ``trainlab up`` worker finds its
  predecessor's), by their pids: seconds, not a lease;
* requeues (attempt + 1) or, after the last attempt, fails running jobs whose lease
  expired: their worker is paused, partitioned or gone with its machine;
* sends queued jobs that never reached the broker (the jobs it just freed among them:
  a freed job is marked never sent), or that sat unclaimed for ``resend_after_s`` (a
  message lost with a broker restart);
* applies the retention of raw statistics (``raw_stats_retention_days``), now and then.

A dead child also wakes it at once (Celery's ``worker_process_shutdown``). On SIGTERM
it forwards the signal to the pool children, whose running job checkpoints at its next
step and goes back to the queue (``worker.tasks.SUSPEND``).

Leases are judged only by a reconciler that has reached the database for a whole lease:
after an outage that every worker saw, live attempts get the time to renew theirs
before anyone calls them lost.
"""

from __future__ import annotations

import contextlib
import logging
import os
import signal
import socket
import threading
import time
import uuid
from collections.abc import Sequence
from datetime import timedelta
from typing import Any

from billiard.process import BaseProcess
from celery.signals import (
    worker_init,
    worker_process_shutdown,
    worker_ready,
    worker_shutdown,
    worker_shutting_down,
)
from sqlalchemy.orm import Session, sessionmaker

from service import queue, telemetry
from service.config import Settings, get_settings
from service.db.base import utcnow
from service.db.repository import jobs as job_queries
from service.kit.processes import process_alive

logger = logging.getLogger(__name__)

# SQLite keeps each process's lock state in memory. A fork while another thread of this
# process is inside a transaction hands the child a copy that says a connection of its
# own holds the lock, one that will never finish: every write of the child then waits
# out busy_timeout ("database is locked"), for good. Prefork replaces a dead pool child by
# forking this process, whose reconciler thread writes every sweep; so the reconciler's
# database work and forks exclude each other (a fork waits for the sweep's transactions).
FORK_GUARD = threading.Lock()
os.register_at_fork(
    before=FORK_GUARD.acquire,
    after_in_parent=FORK_GUARD.release,
    after_in_child=FORK_GUARD.release,
)

# This worker process's id (worker_node.id), set before the pool forks: the children
# inherit it and stamp it on the jobs they claim.
WORKER_ID: str | None = None
MAIN_PID: int | None = None
# A worker row not beaten for this many leases belongs to a worker gone for good.
FORGET_AFTER_LEASES = 20


def is_main_process() -> bool:
    """True in a worker's main process (and outside any worker); False in a pool child."""
    return MAIN_PID is None or os.getpid() == MAIN_PID


def new_worker_id() -> str:
    return f"{socket.gethostname()}-{os.getpid()}-{uuid.uuid4().hex[:8]}"


def send_jobs(settings: Settings, jobs: Sequence[tuple[str, str]]) -> int:
    """Send (job id, queue) pairs; a job that could not be sent is marked so, and the
    next sweep tries again. Returns how many were sent."""
    from worker.tasks import session_factory_for

    failed: list[str] = []
    for job_id, job_queue in jobs:
        try:
            queue.enqueue_training(settings, job_id=job_id, queue=job_queue)
        except Exception:
            logger.warning("could not send job %s; it is sent again later", job_id)
            failed.append(job_id)
    if failed:
        with session_factory_for(settings)() as session, session.begin():
            job_queries.mark_enqueued(session=session, job_ids=failed, sent=False)
    return len(jobs) - len(failed)


class Reconciler:
    """The main process's sweeps (see the module docstring); ``sweep`` is one of them."""

    def __init__(
        self,
        settings: Settings,
        session_factory: sessionmaker[Session],
        *,
        worker_id: str,
        queues: str = "",
    ) -> None:
        self.settings = settings
        self.session_factory = session_factory
        self.worker_id = worker_id
        self.hostname = socket.gethostname()
        self.queues = queues
        self._connected_since: float | None = None
        self._pruned_at: float | None = None
        self._wake = threading.Event()
        self._stop = threading.Event()
        self.stopping = threading.Event()  # warm shutdown began
        self._thread = threading.Thread(target=self._run, name="reconciler", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def wake(self) -> None:
        self._wake.set()

    def stop(self) -> None:
        """Stop sweeping and remove this worker's row (it is not alive any more)."""
        self._stop.set()
        self._wake.set()
        self._thread.join(timeout=5)
        try:
            with FORK_GUARD, self.session_factory() as session, session.begin():
                job_queries.forget_workers(session=session, worker_ids=[self.worker_id])
        except Exception:
            logger.warning("could not remove worker row %s", self.worker_id, exc_info=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.sweep()
            except Exception:
                logger.warning("reconciler sweep failed", exc_info=True)
                self._connected_since = None
            self._wake.wait(self.settings.reconcile_interval_s)
            self._wake.clear()

    def sweep(self) -> None:
        with FORK_GUARD:
            to_send = self._sweep_database()
        if to_send:
            send_jobs(self.settings, to_send)

    def _sweep_database(self) -> list[tuple[str, str]]:
        """The sweep's database work; returns the jobs to send (sent outside the guard)."""
        self._beat()
        if self._connected_since is None:
            self._connected_since = time.monotonic()
        # Released jobs are marked never sent: the resend below sends them, once.
        self.release_dead_processes()
        if time.monotonic() - self._connected_since >= self.settings.lease_s:
            self.expire_leases()
        self.prune_raw_stats()
        if self.stopping.is_set():
            return []  # a stopping worker sends nothing (its consumer could take it back)
        sent_before = utcnow() - timedelta(seconds=self.settings.resend_after_s)
        with self.session_factory() as session, session.begin():
            due = job_queries.take_jobs_to_resend(session=session, sent_before=sent_before)
            return [(job.id, job.queue) for job in due]

    def prune_raw_stats(self) -> int:
        """Retention (``raw_stats_retention_days``), every ``prune_interval_s`` at most."""
        if self.settings.raw_stats_retention_days is None:
            return 0
        now = time.monotonic()
        if self._pruned_at is not None and now - self._pruned_at < self.settings.prune_interval_s:
            return 0
        self._pruned_at = now
        with self.session_factory() as session:
            dropped = telemetry.prune_raw_stats(session=session, settings=self.settings)
        if dropped:
            logger.info("retention: dropped %d raw statistic rows", dropped)
        return dropped

    def _beat(self) -> None:
        with self.session_factory() as session, session.begin():
            job_queries.beat_worker(
                session=session,
                worker_id=self.worker_id,
                hostname=self.hostname,
                pid=os.getpid(),
                queues=self.queues,
            )
            forget_before = utcnow() - timedelta(
                seconds=FORGET_AFTER_LEASES * self.settings.lease_s
            )
            gone = [
                w.id
                for w in job_queries.list_workers(session=session)
                if w.heartbeat_at < forget_before
            ]
            job_queries.forget_workers(session=session, worker_ids=gone)

    def release_dead_processes(self) -> list[job_queries.Released]:
        """Free the jobs of this host's dead pool children and dead worker processes."""
        released: list[job_queries.Released] = []
        with self.session_factory() as session, session.begin():
            local = job_queries.list_workers(session=session, hostname=self.hostname)
            dead_workers = [
                w.id for w in local if w.id != self.worker_id and not process_alive(w.pid)
            ]
            attempts = job_queries.list_running_attempts(
                session=session, worker_ids=[self.worker_id, *dead_workers]
            )
            for run in attempts:
                if run.worker_id == self.worker_id:
                    pid = run.worker_pid
                    if pid is None or pid == os.getpid() or process_alive(pid):
                        continue
                    reason = f"worker lost: its pool process {pid} died (killed or out of memory)"
                else:
                    reason = f"worker lost: worker process {run.worker_id} died"
                outcome = job_queries.release_attempt(
                    session=session, job_id=run.job_id, attempt=run.attempt, reason=reason
                )
                if outcome is not None:
                    logger.warning("job %s: %s -> %s", run.job_id, reason, outcome.status)
                    released.append(outcome)
            # A dead worker's row is what lets a later sweep find its jobs by pid: keep it
            # while one of them could not be taken back (its row was locked, e.g. by the
            # dying pool child's last transaction), or only the lease would free that job.
            unreleased = {
                run.worker_id
                for run in job_queries.list_running_attempts(
                    session=session, worker_ids=dead_workers
                )
            }
            job_queries.forget_workers(
                session=session, worker_ids=[w for w in dead_workers if w not in unreleased]
            )
        return released

    def expire_leases(self) -> list[job_queries.Released]:
        with self.session_factory() as session, session.begin():
            released = job_queries.expire_leases(session=session, now=utcnow())
        for r in released:
            logger.warning(
                "job %s: lease of attempt %d expired -> %s", r.job_id, r.attempt, r.status
            )
        return released


_reconciler: Reconciler | None = None
_pool_is_solo = False


@worker_init.connect
def _name_this_worker(sender: Any = None, **_: Any) -> None:
    # Before the pool starts: forked children inherit the id.
    global WORKER_ID, MAIN_PID, _pool_is_solo
    WORKER_ID, MAIN_PID = new_worker_id(), os.getpid()
    pool_cls = getattr(sender, "pool_cls", None)
    _pool_is_solo = "solo" in str(getattr(pool_cls, "__name__", pool_cls) or "").lower()


@worker_ready.connect
def _start_reconciler(**_: Any) -> None:
    global _reconciler
    from worker.tasks import session_factory_for

    settings = get_settings()
    _reconciler = Reconciler(
        settings,
        session_factory_for(settings),
        worker_id=WORKER_ID or new_worker_id(),
        queues=settings.worker_queues,
    )
    _reconciler.start()


@worker_process_shutdown.connect
def _pool_child_exited(**_: Any) -> None:
    # In the main process, whenever a pool child exits: if it died training, free its
    # job now rather than at the next sweep.
    if _reconciler is not None:
        _reconciler.wake()


@worker_shutting_down.connect
def _stop_running_jobs_gracefully(sig: str = "", how: str = "", **_: Any) -> None:
    """SIGTERM (warm shutdown): the running jobs checkpoint at their next step and are
    requeued, instead of finishing or being killed at the end of a grace period."""
    from billiard.process import active_children

    from worker.tasks import SUSPEND

    SUSPEND.set()  # the solo pool trains in this very process
    if _reconciler is not None:
        _reconciler.stopping.set()
    if _pool_is_solo:
        return
    for child in _children_running_jobs(active_children()):
        with contextlib.suppress(ProcessLookupError):
            os.kill(child.pid, signal.SIGTERM)
    logger.info("%s (%s): asked the pool's running jobs to checkpoint and requeue", sig, how)


def _children_running_jobs(children: Sequence[BaseProcess]) -> list[BaseProcess]:
    """The pool children that hold a job. An idle child is left to the pool's own
    shutdown: SIGTERM would kill it, Celery would log that as an error and fork a
    replacement in the middle of stopping. While a job is on its way to a child that has
    not yet said which one it is, every child is asked, as a busy one would be."""
    from celery.worker import state

    requests = [*state.reserved_requests, *state.active_requests]
    if any(request.worker_pid is None for request in requests):
        return list(children)
    busy = {request.worker_pid for request in requests}
    return [child for child in children if child.pid in busy]


@worker_shutdown.connect
def _stop_reconciler(**_: Any) -> None:
    if _reconciler is not None:
        _reconciler.stop()
