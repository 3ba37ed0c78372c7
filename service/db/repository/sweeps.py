"""Queries of sweeps: the sweep row, its jobs, and job counts for lists."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from sqlalchemy import func, select
from sqlalchemy.orm import Session

from service.db.base import utcnow
from service.db.models import Job, Sweep
from service.db.repository import keyset
from service.kit.pagination import Position
from service.vocabulary import JOB_STATUSES, JobStatus


def create_sweep(
    *,
    session: Session,
    owner: str,
    sweep_id: str,
    name: str,
    base: Mapping[str, Any],
    grid: Mapping[str, Sequence[Any]],
    seeds: Sequence[int] | None = None,
) -> Sweep:
    """The sweep row; its jobs are added with ``jobs.create_job(..., sweep_id=...)``."""
    sweep = Sweep(
        id=sweep_id,
        owner=owner,
        name=name,
        base=dict(base),
        grid={key: list(values) for key, values in grid.items()},
        created_at=utcnow(),
        seeds=list(seeds) if seeds is not None else None,
    )
    session.add(sweep)
    session.flush()
    return sweep


def get_sweep(*, session: Session, sweep_id: str, owner: str | None) -> Sweep | None:
    """The sweep, if ``owner`` owns it (None: whoever does)."""
    sweep = session.get(Sweep, sweep_id)
    if sweep is None or (owner is not None and sweep.owner != owner):
        return None
    return sweep


def list_sweeps(
    *, session: Session, owner: str | None, after: Position | None = None, limit: int = 50
) -> Sequence[Sweep]:
    """Newest first, keyset pagination on (created_at, id) like the job list."""
    stmt = select(Sweep)
    if owner is not None:
        stmt = stmt.where(Sweep.owner == owner)
    if after is not None:
        stmt = stmt.where(
            keyset.after(key=Sweep.created_at, row_id=Sweep.id, position=after, descending=True)
        )
    order = keyset.order(key=Sweep.created_at, row_id=Sweep.id, descending=True)
    return session.scalars(stmt.order_by(*order).limit(limit)).all()


def jobs_of_sweep(*, session: Session, sweep_id: str) -> Sequence[Job]:
    """All jobs of one sweep in one query (at most the sweep's grid size)."""
    stmt = select(Job).where(Job.sweep_id == sweep_id).order_by(Job.created_at, Job.id)
    return session.scalars(stmt).all()


def count_sweep_jobs_by_status(
    *, session: Session, sweep_ids: Sequence[str]
) -> dict[str, dict[JobStatus, int]]:
    """{sweep_id: {status: n}} for many sweeps in one grouped query (no N+1 in lists)."""
    counts: dict[str, dict[JobStatus, int]] = {
        sweep_id: dict.fromkeys(JOB_STATUSES, 0) for sweep_id in sweep_ids
    }
    if not sweep_ids:
        return counts
    rows = session.execute(
        select(Job.sweep_id, Job.status, func.count())
        .where(Job.sweep_id.in_(sweep_ids))
        .group_by(Job.sweep_id, Job.status)
    ).all()
    for sweep_id, status, n in rows:
        counts[str(sweep_id)][status] = int(n)
    return counts
