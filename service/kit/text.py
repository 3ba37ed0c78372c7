"""Strings the databases cannot store: NUL and lone surrogates.

PostgreSQL refuses NUL in text; a lone surrogate (``"\\ud800"`` in JSON) is no character
at all, cannot be encoded as UTF-8, and breaks SQLite, PostgreSQL and any JSON response
that echoes it. Both are refused at the boundary (422, or 404 in a path).
"""

from __future__ import annotations

import re

_FORBIDDEN = re.compile("[\x00\ud800-\udfff]")
FORBIDDEN_MESSAGE = "text must not contain NUL characters or lone surrogates (U+D800-U+DFFF)"
REPLACEMENT = "\ufffd"


def has_forbidden_chars(value: str) -> bool:
    return _FORBIDDEN.search(value) is not None


def forbidden_reason(value: str) -> str | None:
    """Which of the two a string holds (for the message), or None."""
    match = _FORBIDDEN.search(value)
    if match is None:
        return None
    if match.group() == "\x00":
        return "must not contain NUL characters (\\u0000)"
    return "must not contain lone surrogates (U+D800-U+DFFF): not valid Unicode text"


def printable(value: str) -> str:
    """``value`` with each NUL and lone surrogate replaced by U+FFFD: safe to echo."""
    return _FORBIDDEN.sub(REPLACEMENT, value)
