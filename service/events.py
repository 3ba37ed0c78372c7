"""Event-stream use cases: what changed in a job or a sweep, read from the database.

The API polls the database every ``events_poll_interval_s`` (the worker writes there; no
broker round trip) and emits only changes: status, progress, epoch metrics and new
diagnosis findings of a job; status and progress of each job of a sweep. Every event
carries an id that encodes how far the stream got (a cursor), so a client that
reconnects with ``Last-Event-ID`` gets exactly what it had not seen. A stream ends after
its job (every job of its sweep) has finished.
"""

from __future__ import annotations

import dataclasses
import math
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import anyio
from sqlalchemy.orm import Session, sessionmaker

from service import diagnosis, jobs, sweeps
from service.db.models import EpochMetric, Job, Sweep
from service.db.repository import jobs as job_queries
from service.db.repository import sweeps as sweep_queries
from service.db.repository import telemetry as telemetry_queries
from service.db.repository.telemetry import EPOCH_METRIC_COLUMNS
from service.kit.jsonnum import json_number, json_safe
from service.vocabulary import FINISHED_STATUSES, JOB_STATUSES

# A running job is diagnosed at most this often (a few bounded queries each time).
FINDINGS_EVERY_S = 2.0


@dataclass(frozen=True)
class Event:
    event: str  # status, progress, metric, finding, end; a sweep's streams: job, end
    id: str
    data: dict[str, Any]


def progress_of(job: Job) -> dict[str, Any]:
    return {
        "epoch": job.epoch,
        "epochs": job.epochs,
        "step": job.step,
        "total_steps": job.total_steps,
        "fraction": jobs.progress_fraction(job),
    }


def _metric_of(row: EpochMetric) -> dict[str, Any]:
    return {"epoch": row.epoch} | {
        name: json_number(getattr(row, name)) for name in EPOCH_METRIC_COLUMNS
    }


# --- one job ----------------------------------------------------------------------------


@dataclass(frozen=True)
class JobCursor:
    """How far a job's stream got: ``{epoch}.{step}.{status}.{finding codes}``."""

    epoch: int = 0  # the last epoch metric sent
    step: int = -1
    status: str = ""
    findings: tuple[str, ...] = ()  # "code:severity", sorted

    def encode(self) -> str:
        return f"{self.epoch}.{self.step}.{self.status or '-'}.{'+'.join(self.findings)}"

    @classmethod
    def decode(cls, raw: str | None) -> JobCursor:
        """A cursor from ``Last-Event-ID``; an unreadable one starts from the beginning."""
        parts = (raw or "").split(".", 3)
        try:
            epoch, step, status, codes = int(parts[0]), int(parts[1]), parts[2], parts[3]
        except (IndexError, ValueError):
            return cls()
        return cls(
            epoch=epoch,
            step=step,
            status="" if status == "-" else status,
            findings=tuple(c for c in codes.split("+") if c),
        )


def _finding_key(finding: diagnosis.Finding) -> str:
    return f"{finding.code}:{finding.severity}"


def job_changes(
    *, session: Session, job_id: str, cursor: JobCursor, diagnose: bool
) -> tuple[list[Event], JobCursor, bool]:
    """(events since ``cursor``, the new cursor, whether the stream is over)."""
    # owner None: the stream was opened through JobDep, which checked the caller's access.
    job = job_queries.get_job(session=session, job_id=job_id, owner=None)
    if job is None:  # deleted while someone watched it
        return [Event("end", cursor.encode(), {"status": "deleted"})], cursor, True
    out: list[Event] = []

    def emit(event: str, data: dict[str, Any], **changes: Any) -> None:
        nonlocal cursor
        cursor = dataclasses.replace(cursor, **changes)
        out.append(Event(event, cursor.encode(), data))

    finished = job.is_finished
    # A job that started says so before its first metrics; one that finished, after its last.
    if job.status != cursor.status and not finished:
        emit("status", {"status": job.status, "error": job.error}, status=job.status)
    for row in telemetry_queries.list_epoch_metrics(
        session=session, job_id=job.id, after_epoch=cursor.epoch
    ):
        emit("metric", _metric_of(row), epoch=row.epoch)
    if job.step != cursor.step:
        emit("progress", progress_of(job), step=job.step)
    if job.status != cursor.status and finished:
        emit("status", {"status": job.status, "error": job.error}, status=job.status)
    if diagnose or finished:
        seen = set(cursor.findings)
        findings = diagnosis.diagnose_job(session=session, job=job)
        for finding in findings:
            key = _finding_key(finding)
            if key not in seen:
                seen.add(key)
                emit(
                    "finding", json_safe(dataclasses.asdict(finding)), findings=tuple(sorted(seen))
                )
    if finished:
        emit("end", {"status": job.status, "error": job.error, "result": job.result})
    return out, cursor, finished


SessionFactory = sessionmaker[Session]


async def job_events(
    *,
    session_factory: SessionFactory,
    job_id: str,
    last_event_id: str | None,
    poll_s: float,
) -> AsyncIterator[Event]:
    """A job's changes until it finishes. Each poll runs in a worker thread with a
    session of its own, closed before the stream waits again."""
    cursor = JobCursor.decode(last_event_id)
    diagnosed_at, diagnosed_step = -math.inf, cursor.step

    def poll(diagnose: bool) -> tuple[list[Event], JobCursor, bool]:
        with session_factory() as session:
            return job_changes(session=session, job_id=job_id, cursor=cursor, diagnose=diagnose)

    while True:
        now = time.monotonic()
        diagnose = now - diagnosed_at >= FINDINGS_EVERY_S and cursor.step != diagnosed_step
        events, cursor, finished = await anyio.to_thread.run_sync(poll, diagnose)
        if diagnose:
            diagnosed_at, diagnosed_step = now, cursor.step
        for event in events:
            yield event
        if finished:
            return
        await anyio.sleep(poll_s)


# --- a sweep ----------------------------------------------------------------------------


@dataclass(frozen=True)
class SweepCursor:
    """How far a sweep's stream got: ``{status index}:{step}`` per job, in grid order."""

    states: tuple[tuple[int, int], ...] = field(default_factory=tuple)

    def encode(self) -> str:
        return ",".join(f"{status}:{step}" for status, step in self.states)

    @classmethod
    def decode(cls, raw: str | None) -> SweepCursor:
        try:
            states = tuple(
                (int(status), int(step))
                for status, step in (part.split(":") for part in (raw or "").split(",") if part)
            )
        except ValueError:
            return cls()
        return cls(states)


def _state(job: Job) -> tuple[int, int]:
    return JOB_STATUSES.index(job.status), job.step


def sweep_changes(
    *, session: Session, sweep: Sweep, cursor: SweepCursor
) -> tuple[list[Event], SweepCursor, bool]:
    """One ``job`` event per job whose status or progress changed since ``cursor`` (with
    its findings once it has finished); ``end`` when every job has finished."""
    ordered = sweeps.jobs_in_grid_order(
        sweep, sweep_queries.jobs_of_sweep(session=session, sweep_id=sweep.id)
    )
    states = (
        list(cursor.states) if len(cursor.states) == len(ordered) else [(-1, -1)] * len(ordered)
    )
    out: list[Event] = []
    for i, job in enumerate(ordered):
        if _state(job) == states[i]:
            continue
        states[i] = _state(job)
        findings = diagnosis.diagnose_job(session=session, job=job) if job.is_finished else []
        data = {
            "job_id": job.id,
            "name": job.name,
            "point": job.grid_point or {},
            "status": job.status,
            "progress": progress_of(job),
            "result": job.result,
            "error": job.error,
            "findings": [
                {"code": f.code, "severity": f.severity, "summary": f.summary} for f in findings
            ],
        }
        out.append(Event("job", SweepCursor(tuple(states)).encode(), json_safe(data)))
    cursor = SweepCursor(tuple(states))
    finished = all(job.status in FINISHED_STATUSES for job in ordered)
    if finished:
        counts = {s: sum(1 for j in ordered if j.status == s) for s in JOB_STATUSES}
        out.append(Event("end", cursor.encode(), {"status_counts": counts}))
    return out, cursor, finished


async def sweep_events(
    *,
    session_factory: SessionFactory,
    sweep_id: str,
    last_event_id: str | None,
    poll_s: float,
) -> AsyncIterator[Event]:
    """A sweep's changes until all its jobs have finished."""
    cursor = SweepCursor.decode(last_event_id)

    def poll() -> tuple[list[Event], SweepCursor, bool]:
        with session_factory() as session:
            # owner None: opened through SweepDep, which checked the caller's access.
            sweep = sweep_queries.get_sweep(session=session, sweep_id=sweep_id, owner=None)
            if sweep is None:
                return [Event("end", cursor.encode(), {"status": "deleted"})], cursor, True
            return sweep_changes(session=session, sweep=sweep, cursor=cursor)

    while True:
        events, cursor, finished = await anyio.to_thread.run_sync(poll)
        for event in events:
            yield event
        if finished:
            return
        await anyio.sleep(poll_s)
