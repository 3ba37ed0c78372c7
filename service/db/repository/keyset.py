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


def after_nulls_last(
    *,
    key: SQLColumnExpression[Any],
    row_id: SQLColumnExpression[Any],
    position: Position,
    descending: bool,
) -> ColumnElement[bool]:
    """As ``after`` for a nullable key whose NULLs come last in either direction
    (``order_nulls_last``): past a NULL key only NULL keys remain, ordered by id."""
    later_id = row_id < position.id if descending else row_id > position.id
    if position.key is None:
        return and_(key.is_(None), later_id)
    beyond = key < position.key if descending else key > position.key
    return or_(beyond, and_(key == position.key, later_id), key.is_(None))


def order_nulls_last(
    *, key: SQLColumnExpression[Any], row_id: SQLColumnExpression[Any], descending: bool
) -> tuple[Any, ...]:
    if descending:
        return (key.desc().nulls_last(), row_id.desc())
    return (key.asc().nulls_last(), row_id.asc())
