"""Celery tasks. ``train_job(job_id)``: claim an attempt, resume or start, train, finish.

``run_job`` holds the logic without Celery, so tests can call it directly. A task
delivered twice is harmless: only a ``queued`` job is claimed, and each claim is a new
attempt whose writes are fenced by its number (``guard_attempt``).
"""

from __future__ import annotations

import contextlib
import io
import logging
import os
import signal
import socket
import threading
import time
import traceback
from collections.abc import Callable, Iterator
from dataclasses import asdict
from functools import lru_cache
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy.orm import Session, sessionmaker

from service import checkpoints as files
from service import diagnosis
from service.config import Settings, get_settings
from service.db.models import Job
from service.db.repository import datasets as dataset_queries
from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from service.db.session import engine_for, make_session_factory
from service.errors import StaleAttempt
from service.queue import TRAIN_TASK
from service.specs import ExperimentSpec
from service.vocabulary import STOPPED_ON_FINDING, JobStatus
from worker import logs, supervision
from worker.celery_app import app, configure_torch
from worker.engine.checkpoint import TrainState
from worker.engine.events import TrainResult
from worker.live_diagnosis import LiveDiagnosis
from worker.recorder import (
    CheckpointStore,
    Recorder,
    RecorderOverflowError,
    SessionFactory,
    is_transient,
    retry_transient,
)

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 8_000
# Set when this process is asked to stop (SIGTERM): the running job checkpoints at its
# next step boundary and goes back to the queue.
SUSPEND = threading.Event()
# Returned by run_job when the attempt lost its lease and stopped without writing.
STALE = "stale"


@lru_cache(maxsize=8)
def _cached_factory(
    pid: int, url: str, connect_s: int, statement_s: float
) -> sessionmaker[Session]:
    settings = Settings(
        _env_file=None,
        database_url=url,
        database_connect_timeout_s=connect_s,
        database_statement_timeout_s=statement_s,
    )
    return make_session_factory(engine_for(settings))


def session_factory_for(settings: Settings) -> sessionmaker[Session]:
    """This process's session factory for ``settings``' database.

    Keyed by pid: a pool child forked after the main process (its reconciler) opened
    connections inherits them, and two processes on one PostgreSQL socket corrupt each
    other's conversations. The inherited engine is left alone (psycopg never closes a
    connection from a process other than the one that opened it).
    """
    return _cached_factory(
        os.getpid(),
        settings.resolved_database_url,
        settings.database_connect_timeout_s,
        settings.database_statement_timeout_s,
    )


class JobWatcher:
    """Off the training thread: polls the job's cancel flag and renews its lease.

    A step never waits on SQL. The lease tells every worker's reconciler that this
    attempt is alive; when renewing finds the attempt is no longer the job's running
    one (it was requeued while this process was paused or cut off), ``stale`` is set
    and training stops.
    """

    def __init__(
        self,
        session_factory: SessionFactory,
        job_id: str,
        *,
        attempt: int,
        poll_s: float,
        heartbeat_s: float,
        lease_s: float,
    ) -> None:
        self._session_factory = session_factory
        self._job_id = job_id
        self._attempt = attempt
        self._poll_s = poll_s
        self._heartbeat_s = heartbeat_s
        self._lease_s = lease_s
        self._requested = threading.Event()
        self._stale = threading.Event()
        self._done = threading.Event()
        self._thread = threading.Thread(target=self._run, name=f"watch-{job_id}", daemon=True)

    def __enter__(self) -> JobWatcher:
        self._thread.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._done.set()
        self._thread.join()

    def cancel_requested(self) -> bool:
        return self._requested.is_set()

    @property
    def stale(self) -> bool:
        return self._stale.is_set()

    def _run(self) -> None:
        last_beat = time.monotonic()
        while not self._done.wait(self._poll_s):
            try:
                with self._session_factory() as session, session.begin():
                    if not self._requested.is_set() and job_queries.is_cancel_requested(
                        session=session, job_id=self._job_id
                    ):
                        self._requested.set()
                    if time.monotonic() - last_beat >= self._heartbeat_s:
                        if not job_queries.renew_lease(
                            session=session,
                            job_id=self._job_id,
                            attempt=self._attempt,
                            lease_s=self._lease_s,
                        ):
                            logger.warning(
                                "job %s: attempt %d lost its lease; stopping",
                                self._job_id,
                                self._attempt,
                            )
                            self._stale.set()
                            return
                        last_beat = time.monotonic()
            except Exception:  # a transient DB error must not kill the job
                logger.warning("watching job %s failed", self._job_id, exc_info=True)


def _load_uploaded_arrays(
    session_factory: SessionFactory, dataset_id: str
) -> tuple[np.ndarray, np.ndarray]:
    with session_factory() as session:
        content = dataset_queries.get_dataset_content(session=session, dataset_id=dataset_id)
    if content is None:
        raise LookupError(f"dataset {dataset_id} no longer exists")
    with np.load(io.BytesIO(content), allow_pickle=False) as archive:
        return archive["x"], archive["y"]


def load_resume_state(root: Path, job: Job) -> TrainState | None:
    """The checkpoint the job row names (or, if that one is unreadable, an older one
    beside it); None starts the run afresh."""
    if job.checkpoint is None:
        return None
    recorded = files.step_of(job.checkpoint)
    older = [n for n in files.list_checkpoints(root, job.id) if files.step_of(n) < recorded]
    for name in [job.checkpoint, *reversed(older)]:
        try:
            return TrainState.from_bytes(files.checkpoint_path(root, job.id, name).read_bytes())
        except Exception:  # missing, truncated or foreign: try the next one
            logger.warning("job %s: checkpoint %s unreadable", job.id, name, exc_info=True)
    return None


def _finish(
    session_factory: SessionFactory,
    job_id: str,
    *,
    attempt: int,
    status: JobStatus,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    landscape: dict[str, Any] | None = None,
    weights: bytes | None = None,
    root: Path | None = None,
) -> None:
    """Record the outcome under the attempt's guard; the final weights appear (by
    rename) inside the same transaction, so a stale attempt never replaces them."""
    final = files.final_weights_path(root, job_id) if weights and root else None
    temp = files.write_temp(final, weights) if final and weights else None

    def write() -> None:
        with session_factory() as session, session.begin():
            job_queries.guard_attempt(session=session, job_id=job_id, attempt=attempt)
            if landscape is not None:
                telemetry_queries.save_landscape(session=session, job_id=job_id, grid=landscape)
            if temp is not None and final is not None and temp.exists():
                temp.replace(final)
            job_queries.finish_job(
                session=session, job_id=job_id, status=status, result=result, error=error
            )
            diagnosis.refresh_findings(session=session, job_id=job_id)  # of the job as it ended

    try:
        retry_transient(write, what=f"finishing job {job_id}")
    finally:
        if temp is not None:
            files.discard(temp)


def _release(
    settings: Settings, job_id: str, *, attempt: int, reason: str, counted: bool
) -> job_queries.Released | None:
    """Give the attempt back to the queue now, rather than at lease expiry.

    The job is marked never sent, and the next sweep of a live worker's reconciler sends
    it (the next ``trainlab up``'s, in embedded mode): a stopping worker's own consumer
    must not take it back.
    """
    session_factory = session_factory_for(settings)

    def write() -> job_queries.Released | None:
        with session_factory() as session, session.begin():
            return job_queries.release_attempt(
                session=session, job_id=job_id, attempt=attempt, reason=reason, counted=counted
            )

    released: job_queries.Released | None = retry_transient(write, what=f"releasing {job_id}")
    return released


def result_summary(result: TrainResult, *, layer_stat_rows: int) -> dict[str, Any]:
    """What ``job.result`` keeps: the run's figures and, instead of the landscape grid
    (stored in its own table), a few numbers about it."""
    summary = asdict(result) | {"layer_stat_rows": layer_stat_rows}
    summary.pop("weights")
    grid = summary.pop("landscape")
    if grid is not None:
        summary["landscape"] = {
            "dims": grid["dims"],
            "points": len(grid["alphas"]),
            "roughness": grid["roughness"],
            "sharpness": grid["sharpness"],
            "local_minima": grid["local_minima"],
        }
    return summary


def _claim(
    settings: Settings, job_id: str, worker_name: str, worker_id: str | None
) -> tuple[int, dict[str, Any], TrainState | None] | None:
    """Claim the next attempt, waiting out a short database outage (after a long one
    the delivery is dropped: the job is still queued, and sent again later)."""
    return retry_transient(  # type: ignore[no-any-return]
        lambda: _claim_once(settings, job_id, worker_name, worker_id),
        what=f"claiming job {job_id}",
        give_up_after_s=settings.resend_after_s,
    )


def _claim_once(
    settings: Settings, job_id: str, worker_name: str, worker_id: str | None
) -> tuple[int, dict[str, Any], TrainState | None] | None:
    session_factory = session_factory_for(settings)
    with session_factory() as session, session.begin():
        job = job_queries.claim_job(
            session=session,
            job_id=job_id,
            worker=worker_name,
            worker_id=worker_id,
            worker_pid=os.getpid(),
            lease_s=settings.lease_s,
        )
        if job is None:
            return None
        attempt, spec_json = job.attempt, job.spec
        resume = load_resume_state(settings.resolved_checkpoint_dir, job)
    return attempt, spec_json, resume


def run_job(
    job_id: str,
    *,
    settings: Settings,
    worker_name: str,
    worker_id: str | None = None,
    cancel_poll_s: float = 0.25,
    suspend: Callable[[], bool] = SUSPEND.is_set,
) -> str | None:
    """Train one attempt of a job end to end; return the job's status after it (None if
    it was not claimable, "stale" if the attempt lost its lease and stopped)."""
    with logs.job_context(job_id):
        return _run_job(
            job_id,
            settings=settings,
            worker_name=worker_name,
            worker_id=worker_id,
            poll_s=cancel_poll_s,
            suspend=suspend,
        )


def _run_job(
    job_id: str,
    *,
    settings: Settings,
    worker_name: str,
    worker_id: str | None,
    poll_s: float,
    suspend: Callable[[], bool],
) -> str | None:
    from worker.engine.loop import train  # torch loads here, in the worker process only

    if SUSPEND.is_set():
        # This worker is stopping: leave the job to a live one (sent at its next sweep).
        with session_factory_for(settings)() as session, session.begin():
            job_queries.mark_enqueued(session=session, job_ids=[job_id], sent=False)
        logger.info("job %s: not claimed by a stopping worker", job_id)
        return None
    claimed = _claim(settings, job_id, worker_name, worker_id)
    if claimed is None:
        logger.info("job %s is not queued any more; nothing to do", job_id)
        return None
    attempt, spec_json, resume = claimed
    logger.info(
        "job %s: attempt %d%s",
        job_id,
        attempt,
        f", resuming after step {resume.step}" if resume else "",
    )
    session_factory = session_factory_for(settings)
    store = CheckpointStore(settings.resolved_checkpoint_dir, settings.checkpoints_kept)
    try:
        spec = ExperimentSpec.model_validate(spec_json)
        arrays = (
            _load_uploaded_arrays(session_factory, spec.data.dataset)
            if spec.data.is_uploaded
            else None
        )
        limit = min(spec.train.time_limit_s or settings.max_time_limit_s, settings.max_time_limit_s)
        live = LiveDiagnosis(job_id, stop_on=spec.train.stop_on)
        with (
            Recorder(
                session_factory,
                job_id,
                attempt=attempt,
                buffer_bytes=settings.recorder_buffer_bytes,
                store=store,
                after_epoch=live.after_epoch,
            ) as recorder,
            JobWatcher(
                session_factory,
                job_id,
                attempt=attempt,
                poll_s=poll_s,
                heartbeat_s=settings.heartbeat_interval_s,
                lease_s=settings.lease_s,
            ) as watcher,
        ):

            def should_stop() -> bool:
                return (
                    watcher.cancel_requested()
                    or watcher.stale
                    or recorder.stale
                    or live.stop_requested()
                )

            result = train(
                spec,
                on_event=recorder.handle,
                should_stop=should_stop,
                cache_dir=settings.cache_dir,
                arrays=arrays,
                flush_every=settings.telemetry_flush_steps,
                resume=resume if spec.train.checkpoint_every else None,
                on_checkpoint=recorder.checkpoint if spec.train.checkpoint_every else None,
                should_suspend=suspend,
                time_limit_s=limit,
            )
        if watcher.stale or recorder.stale:
            raise StaleAttempt(job_id, attempt)
        summary = result_summary(result, layer_stat_rows=recorder.rows_written)
        if result.suspended:
            released = _release(
                settings,
                job_id,
                attempt=attempt,
                reason=f"attempt {attempt} stopped by its worker's shutdown after step "
                f"{result.steps}, checkpointed",
                counted=False,
            )
            return released.status if released else STALE
        if result.timed_out:
            error = (
                f"time_limit: the run trained {result.seconds:.0f} s in this attempt and hit "
                f"its limit of {limit:g} s (train.time_limit_s); what it recorded is kept"
            )
            _finish(
                session_factory,
                job_id,
                attempt=attempt,
                status="failed",
                result=summary,
                error=error,
            )
            return "failed"
        if live.stopped_by is not None and not watcher.cancel_requested():
            # Stopped by train.stop_on, or ended by the divergence it names: a hopeless
            # run, not a success. The weights are not kept; what it recorded is.
            summary[STOPPED_ON_FINDING] = live.stopped_by.code
            _finish(
                session_factory,
                job_id,
                attempt=attempt,
                status="failed",
                result=summary,
                error=live.reason(),
            )
            return "failed"
        status: JobStatus = "cancelled" if result.cancelled else "succeeded"
        _finish(
            session_factory,
            job_id,
            attempt=attempt,
            status=status,
            result=summary,
            landscape=result.landscape,
            weights=result.weights,
            root=store.root,
        )
        logger.info("job %s %s: %s", job_id, status, summary)
        return status
    except StaleAttempt:
        logger.warning("job %s: attempt %d is stale; it stopped and wrote nothing", job_id, attempt)
        return STALE
    except BaseException as exc:
        if isinstance(exc, RecorderOverflowError) or is_transient(exc):
            # The database, not the job, failed: this attempt ends, the next one resumes.
            logger.error("job %s: attempt %d ends: %s", job_id, attempt, exc)
            reason = str(exc) if isinstance(exc, RecorderOverflowError) else "database unreachable"
            released = _release(settings, job_id, attempt=attempt, reason=reason, counted=True)
            return released.status if released else STALE
        # Whatever happened, the job must not stay "running".
        logger.exception("job %s failed", job_id)
        text = "".join(traceback.format_exception_only(exc)).strip()
        try:
            _finish(
                session_factory,
                job_id,
                attempt=attempt,
                status="failed",
                error=text[:MAX_ERROR_CHARS],
            )
        except StaleAttempt:
            return STALE
        if not isinstance(exc, Exception):
            raise
        return "failed"


def _on_sigterm(signum: int, _frame: object) -> None:
    # Only set a flag: the training loop checkpoints at its next step boundary.
    SUSPEND.set()


@contextlib.contextmanager
def _sigterm_suspends() -> Iterator[None]:
    """In a pool child, while a job trains, SIGTERM (forwarded by the worker's main
    process, worker.supervision) stops it gracefully instead of killing the child.

    Set here, not at the child's start: billiard installs its own exit-on-SIGTERM
    handler after Celery's child initialisation. In the solo pool the task runs in the
    main process, whose SIGTERM is Celery's warm shutdown: left alone.
    """
    if supervision.is_main_process():
        yield
        return
    previous = signal.signal(signal.SIGTERM, _on_sigterm)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@app.task(name=TRAIN_TASK, bind=True, acks_late=True, ignore_result=True)
def train_job(self: Any, job_id: str) -> str | None:
    logs.set_job(job_id)
    configure_torch()
    worker_name = str(self.request.hostname or socket.gethostname())
    with _sigterm_suspends():
        return run_job(
            job_id,
            settings=get_settings(),
            worker_name=worker_name,
            worker_id=supervision.WORKER_ID,
        )


__all__ = ["SUSPEND", "JobWatcher", "load_resume_state", "run_job", "train_job"]
