"""Readiness: can this API process reach its database and its broker?"""

from __future__ import annotations

import logging

from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session

from service import queue
from service.config import Settings
from service.db.repository import health as health_queries

logger = logging.getLogger(__name__)

OK, UNREACHABLE = "ok", "unreachable"


def readiness(*, session: Session, settings: Settings) -> dict[str, str]:
    """``{"database": "ok" | "unreachable", "broker": ...}``."""
    checks = {"database": OK, "broker": OK}
    try:
        health_queries.ping(session=session)
    except SQLAlchemyError:
        logger.warning("database not reachable", exc_info=True)
        checks["database"] = UNREACHABLE
    if not queue.broker_reachable(settings):
        checks["broker"] = UNREACHABLE
    return checks
