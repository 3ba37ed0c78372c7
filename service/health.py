"""Readiness: can this API process reach its database and its broker, and does any
worker live to train what it accepts?

Each check runs in its own thread under its own short deadline, all at once, and the
answer comes within ``readiness_timeout_s`` whatever hangs: a check still running then
counts as failed (it ends by itself, cut off by its own timeout).
"""

from __future__ import annotations

import logging
import socket
from concurrent.futures import Future, ThreadPoolExecutor, wait
from datetime import timedelta
from typing import Any

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service import queue
from service.config import Settings
from service.db.base import utcnow
from service.db.repository import health as health_queries
from service.db.repository import jobs as job_queries
from service.db.session import statement_deadline
from service.kit.processes import process_alive

logger = logging.getLogger(__name__)

OK, UNREACHABLE, NO_WORKER, UNKNOWN = "ok", "unreachable", "none alive", "unknown"
_checks = ThreadPoolExecutor(max_workers=8, thread_name_prefix="readiness")


def live_workers(*, session: Session, settings: Settings) -> int:
    """Workers that beat within a lease; on this host, only those whose process runs (a
    killed worker's row stays until its beats go stale)."""
    here = socket.gethostname()
    recent = utcnow() - timedelta(seconds=settings.lease_s)
    rows = job_queries.list_workers(session=session)
    return sum(
        1 for w in rows if w.heartbeat_at >= recent and (w.hostname != here or process_alive(w.pid))
    )


def _database_and_workers(
    session_factory: sessionmaker[Session], settings: Settings
) -> tuple[str, str]:
    try:
        with statement_deadline(settings.readiness_timeout_s), session_factory() as session:
            health_queries.ping(session=session)
            workers = live_workers(session=session, settings=settings)
    except SQLAlchemyError:
        logger.warning("database not reachable", exc_info=True)
        return UNREACHABLE, UNKNOWN
    return OK, OK if workers else NO_WORKER


def readiness(*, session_factory: sessionmaker[Session], settings: Settings) -> dict[str, str]:
    """``{"database": "ok" | "unreachable", "broker": ..., "workers": "ok" | "none alive"
    | "unknown"}``; ``workers`` only where ``readiness_needs_worker`` is set."""
    timeout = settings.readiness_timeout_s
    database = _checks.submit(_database_and_workers, session_factory, settings)
    broker = _checks.submit(queue.broker_reachable, settings, timeout)
    pending: list[Future[Any]] = [database, broker]
    wait(pending, timeout=timeout)
    db_state, worker_state = database.result() if database.done() else (UNREACHABLE, UNKNOWN)
    checks = {
        "database": db_state,
        "broker": OK if broker.done() and broker.result() else UNREACHABLE,
    }
    if settings.readiness_needs_worker:
        checks["workers"] = worker_state
    return checks
