"""Celery tasks. ``train_job(job_id)``: load, mark running, run the engine, persist, finish.

``run_job`` holds the logic without Celery, so tests can call it directly. A task
delivered twice is harmless: only a ``queued`` job is claimed.
"""

from __future__ import annotations

import io
import logging
import socket
import threading
import time
import traceback
from dataclasses import asdict
from datetime import UTC, datetime, timedelta
from functools import lru_cache
from typing import Any

import numpy as np
from celery.signals import worker_ready, worker_shutdown
from sqlalchemy.orm import Session, sessionmaker

from service.config import Settings, get_settings
from service.db.repository import datasets as dataset_queries
from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from service.db.session import make_engine, make_session_factory
from service.queue import TRAIN_TASK
from service.specs import ExperimentSpec
from service.vocabulary import JobStatus
from worker import logs
from worker.celery_app import app, configure_torch
from worker.engine.events import TrainResult
from worker.recorder import Recorder, SessionFactory

logger = logging.getLogger(__name__)

MAX_ERROR_CHARS = 8_000


@lru_cache(maxsize=4)
def _session_factory(url: str) -> sessionmaker[Session]:
    # Created lazily in the process that uses it: never share a pool across a fork.
    return make_session_factory(make_engine(url))


class JobWatcher:
    """Off the training thread: polls the job's cancel flag and writes its heartbeat.

    A step never waits on SQL; the heartbeat lets any worker's reaper tell a job whose
    worker died (killed, out of memory) from one that is still training.
    """

    def __init__(
        self,
        session_factory: SessionFactory,
        job_id: str,
        *,
        poll_s: float,
        heartbeat_s: float,
    ) -> None:
        self._session_factory = session_factory
        self._job_id = job_id
        self._poll_s = poll_s
        self._heartbeat_s = heartbeat_s
        self._requested = threading.Event()
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
                        job_queries.record_heartbeat(session=session, job_id=self._job_id)
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


def _finish(
    session_factory: SessionFactory,
    job_id: str,
    *,
    status: JobStatus,
    result: dict[str, Any] | None = None,
    error: str | None = None,
    landscape: dict[str, Any] | None = None,
) -> None:
    with session_factory() as session, session.begin():
        if landscape is not None:
            telemetry_queries.save_landscape(session=session, job_id=job_id, grid=landscape)
        job_queries.finish_job(
            session=session, job_id=job_id, status=status, result=result, error=error
        )


def result_summary(result: TrainResult, *, layer_stat_rows: int) -> dict[str, Any]:
    """What ``job.result`` keeps: the run's figures and, instead of the landscape grid
    (stored in its own table), a few numbers about it."""
    summary = asdict(result) | {"layer_stat_rows": layer_stat_rows}
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


def run_job(
    job_id: str,
    *,
    settings: Settings,
    worker_name: str,
    cancel_poll_s: float = 0.25,
) -> str | None:
    """Train one job end to end; return its final status (None if it was not claimable)."""
    with logs.job_context(job_id):
        return _run_job(job_id, settings=settings, worker_name=worker_name, poll_s=cancel_poll_s)


def _run_job(job_id: str, *, settings: Settings, worker_name: str, poll_s: float) -> str | None:
    from worker.engine.loop import train  # torch loads here, in the worker process only

    session_factory = _session_factory(settings.resolved_database_url)
    with session_factory() as session, session.begin():
        job = job_queries.claim_job(session=session, job_id=job_id, worker=worker_name)
        spec_json = job.spec if job is not None else None
    if spec_json is None:
        logger.info("job %s is not queued any more; nothing to do", job_id)
        return None

    try:
        spec = ExperimentSpec.model_validate(spec_json)
        arrays = (
            _load_uploaded_arrays(session_factory, spec.data.dataset)
            if spec.data.is_uploaded
            else None
        )
        with (
            Recorder(session_factory, job_id) as recorder,
            JobWatcher(
                session_factory,
                job_id,
                poll_s=poll_s,
                heartbeat_s=settings.heartbeat_interval_s,
            ) as watcher,
        ):
            result = train(
                spec,
                on_event=recorder.handle,
                should_stop=watcher.cancel_requested,
                cache_dir=settings.cache_dir,
                arrays=arrays,
                flush_every=settings.telemetry_flush_steps,
            )
        status: JobStatus = "cancelled" if result.cancelled else "succeeded"
        summary = result_summary(result, layer_stat_rows=recorder.rows_written)
        _finish(session_factory, job_id, status=status, result=summary, landscape=result.landscape)
        logger.info("job %s %s: %s", job_id, status, summary)
        return status
    except BaseException as exc:
        # Whatever happened, the job must not stay "running".
        logger.exception("job %s failed", job_id)
        text = "".join(traceback.format_exception_only(exc)).strip()
        _finish(session_factory, job_id, status="failed", error=text[:MAX_ERROR_CHARS])
        if not isinstance(exc, Exception):
            raise
        return "failed"


def fail_stale_jobs(settings: Settings) -> list[str]:
    """Fail running jobs whose heartbeat stopped: their worker is gone."""
    stale_before = datetime.now(UTC) - timedelta(seconds=settings.stale_job_after_s)
    session_factory = _session_factory(settings.resolved_database_url)
    with session_factory() as session, session.begin():
        job_ids = job_queries.fail_stale_jobs(session=session, stale_before=stale_before)
    for job_id in job_ids:
        logger.warning("job %s failed: its worker stopped sending heartbeats", job_id)
    return job_ids


class StaleJobReaper:
    """Runs in each worker's main process, which outlives the children that train."""

    def __init__(self, settings: Settings) -> None:
        self._settings = settings
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="stale-job-reaper", daemon=True)

    def start(self) -> None:
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()

    def _run(self) -> None:
        interval = max(self._settings.stale_job_after_s / 4, 0.5)
        while not self._stop.wait(interval):
            try:
                fail_stale_jobs(self._settings)
            except Exception:
                logger.warning("stale-job sweep failed", exc_info=True)


_reaper: StaleJobReaper | None = None


@worker_ready.connect
def _start_reaper(**_: Any) -> None:
    global _reaper
    _reaper = StaleJobReaper(get_settings())
    _reaper.start()


@worker_shutdown.connect
def _stop_reaper(**_: Any) -> None:
    if _reaper is not None:
        _reaper.stop()


@app.task(name=TRAIN_TASK, bind=True, acks_late=True, ignore_result=True)
def train_job(self: Any, job_id: str) -> str | None:
    logs.set_job(job_id)
    configure_torch()
    worker_name = str(self.request.hostname or socket.gethostname())
    return run_job(job_id, settings=get_settings(), worker_name=worker_name)
