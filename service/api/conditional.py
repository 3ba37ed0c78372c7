"""Conditional reads: an ``ETag`` on JSON responses, a 304 for ``If-None-Match``.

The ETag is a hash of the response body itself, so any change a client could see
(status, progress, heartbeat, result) changes it, and nothing else does. A polling
dashboard that sends its last ETag back gets a 304 with no body while nothing changed.
"""

from __future__ import annotations

import hashlib

from fastapi import Response
from pydantic import BaseModel

ETAG_BYTES = 16


def etag_of(body: bytes) -> str:
    return f'"{hashlib.blake2b(body, digest_size=ETAG_BYTES).hexdigest()}"'


def matches(if_none_match: str | None, etag: str) -> bool:
    """``If-None-Match`` against ``etag``, by weak comparison (RFC 9110 13.1.2): ``*``,
    or any listed tag equal to it with any ``W/`` prefix ignored."""
    if if_none_match is None:
        return False
    if if_none_match.strip() == "*":
        return True
    bare = etag.removeprefix("W/")
    return any(tag.strip().removeprefix("W/") == bare for tag in if_none_match.split(","))


def json_response(model: BaseModel, if_none_match: str | None) -> Response:
    """``model`` as JSON with its ETag, or a 304 with no body when the client has it."""
    body = model.model_dump_json().encode()
    headers = {"ETag": etag_of(body)}
    if matches(if_none_match, headers["ETag"]):
        return Response(status_code=304, headers=headers)
    return Response(body, media_type="application/json", headers=headers)
