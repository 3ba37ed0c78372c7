"""Strict reading of JSON request bodies: no duplicate keys, no unstorable strings.

Python's ``json`` keeps the last of two equal keys (``{"depth": 3, "depth": 200}`` is
depth 200) and passes lone surrogates through. :func:`problems` parses a body once and
lists every duplicate key and every string with NUL or a lone surrogate, each located
like a FastAPI 422 error (``["body", "model", "depth"]``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass
from typing import Any

from service.kit import text

MAX_PROBLEMS = 20


class _Object(dict[str, Any]):
    """A parsed JSON object that remembers the keys it had more than once."""

    duplicates: list[str]


def _object(pairs: list[tuple[str, Any]]) -> _Object:
    obj = _Object(pairs)
    obj.duplicates = []
    seen: set[str] = set()
    for key, _ in pairs:
        if key in seen:
            obj.duplicates.append(key)
        seen.add(key)
    return obj


@dataclass(frozen=True)
class Problem:
    loc: tuple[str | int, ...]
    msg: str
    input: Any


class NotJsonError(ValueError):
    """The body is not JSON at all: left to the framework's own 422."""


def problems(body: bytes) -> list[Problem]:
    """Duplicate keys and unstorable strings in ``body`` (NotJsonError if it does not parse)."""
    try:
        document = json.loads(body, object_pairs_hook=_object)
    except RecursionError:
        return [Problem(("body",), "JSON nested too deeply", None)]
    except (ValueError, UnicodeDecodeError) as exc:
        raise NotJsonError(str(exc)) from exc
    found: list[Problem] = []
    # Depth-first without recursion: a deep document must not overflow the stack here.
    stack: list[tuple[tuple[str | int, ...], Any]] = [(("body",), document)]
    while stack and len(found) < MAX_PROBLEMS:
        loc, value = stack.pop()
        if isinstance(value, str):
            reason = text.forbidden_reason(value)
            if reason:
                found.append(Problem(loc, reason, text.printable(value)))
        elif isinstance(value, _Object):
            for key in dict.fromkeys(value.duplicates):
                msg = f"duplicate key {text.printable(key)!r}: each key may appear once"
                found.append(Problem((*loc, text.printable(key)), msg, None))
            for key, item in reversed(value.items()):
                reason = text.forbidden_reason(key)
                if reason:
                    found.append(Problem((*loc, text.printable(key)), f"key {reason}", None))
                stack.append(((*loc, key), item))
        elif isinstance(value, list):
            stack.extend(((*loc, i), item) for i, item in reversed(list(enumerate(value))))
    return found[:MAX_PROBLEMS]
