"""Readiness: one round trip that proves the database answers."""

from __future__ import annotations

from sqlalchemy import select
from sqlalchemy.orm import Session


def ping(*, session: Session) -> None:
    session.execute(select(1))
