"""One keyset ("cursor") pagination for every list: jobs, sweeps, datasets.

A list is ordered by a sort key and then by id, so the order is total. A page is
fetched with ``limit + 1`` rows: the extra row only says there is a next page, whose
cursor names the last row shown (its sort key and id); the next query asks for rows
strictly after that position. Unlike offsets, a cursor neither skips nor repeats rows
when new ones arrive while a client pages.

A cursor is opaque to clients: URL-safe base64 of ``{"s": sort, "k": key, "i": id}``.
It belongs to one sort order; using it with another is a 422.
"""

from __future__ import annotations

import base64
import binascii
import json
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any, Generic, TypeVar

from service.errors import InvalidRequest
from service.kit import text

T = TypeVar("T")
CURSOR_LOC = ("query", "cursor")
MAX_ID_CHARS = 64


@dataclass(frozen=True)
class Position:
    """Where the next page starts: after the row with this sort key and id."""

    key: Any  # a datetime, str, int, float, bool or None
    id: str


@dataclass(frozen=True)
class Page(Generic[T]):
    items: Sequence[T]
    next_cursor: str | None


def _encode_key(key: Any) -> Any:
    return {"dt": key.isoformat()} if isinstance(key, datetime) else key


def _decode_key(raw: Any) -> Any:
    if isinstance(raw, dict):
        moment = datetime.fromisoformat(raw["dt"])
        if moment.tzinfo is None:
            raise ValueError("naive timestamp")
        return moment
    if raw is None or isinstance(raw, str | int | float | bool):
        return raw
    raise ValueError("not a scalar key")


def encode_cursor(*, sort: str, position: Position) -> str:
    payload = {"s": sort, "k": _encode_key(position.key), "i": position.id}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, *, sort: str, key_type: type | tuple[type, ...]) -> Position:
    """The position a cursor names; a 422 at ``query.cursor`` if it is not one of ours
    or its sort key is not a ``key_type`` (the type of the column the list sorts on)."""
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
        cursor_sort, row_id = payload["s"], payload["i"]
        key = _decode_key(payload["k"])
        if not isinstance(row_id, str) or not 0 < len(row_id) <= MAX_ID_CHARS:
            raise ValueError("bad id")
        if text.has_forbidden_chars(row_id) or (
            isinstance(key, str) and text.has_forbidden_chars(key)
        ):
            raise ValueError("NUL or a lone surrogate in a cursor field")
        if not isinstance(key, key_type):
            raise TypeError("wrong key type")
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise InvalidRequest.single(CURSOR_LOC, "invalid cursor", cursor) from exc
    if cursor_sort != sort:
        msg = f"this cursor belongs to sort={cursor_sort!r}, not sort={sort!r}"
        raise InvalidRequest.single(CURSOR_LOC, msg, cursor)
    return Position(key=key, id=row_id)


def page_of(
    rows: Sequence[T], *, limit: int, sort: str, position_of: Callable[[T], Position]
) -> Page[T]:
    """The page from ``limit + 1`` fetched rows, with the cursor of the next one."""
    if len(rows) <= limit:
        return Page(items=rows, next_cursor=None)
    items = rows[:limit]
    return Page(items=items, next_cursor=encode_cursor(sort=sort, position=position_of(items[-1])))
