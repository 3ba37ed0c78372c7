"""The keyset condition behind every paginated list (see ``service.kit.pagination``)."""

from __future__ import annotations

from typing import Any

from sqlalchemy import ColumnElement, SQLColumnExpression, and_, or_

from service.kit.pagination import Position


def after(
    *,
    key: SQLColumnExpression[Any],
    row_id: SQLColumnExpression[Any],
    position: Position,
    descending: bool,
) -> ColumnElement[bool]:
    """Rows strictly after ``position`` in the order (key, id), ascending or descending."""
    if descending:
        return or_(key < position.key, and_(key == position.key, row_id < position.id))
    return or_(key > position.key, and_(key == position.key, row_id > position.id))


def order(
    *, key: SQLColumnExpression[Any], row_id: SQLColumnExpression[Any], descending: bool
) -> tuple[Any, ...]:
    return (key.desc(), row_id.desc()) if descending else (key.asc(), row_id.asc())
