"""ASGI middleware of the API: body limits and read timeouts, input hygiene, metrics.

Plain ASGI classes rather than Starlette's BaseHTTPMiddleware: they wrap ``receive`` and
``send`` without buffering responses, so streamed responses (event streams) pass through.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Awaitable, Callable, MutableMapping
from email.message import Message as MimeHeader
from typing import Any
from urllib.parse import parse_qsl

from fastapi.responses import JSONResponse
from prometheus_client import CollectorRegistry, Counter, Histogram

from service.errors import ErrorItem
from service.kit import strictjson, text

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

UPLOAD_PREFIX = "/v1/datasets"
BODY_METHODS = frozenset({"POST", "PUT", "PATCH"})


class BodyTimeoutError(Exception):
    """The client stopped sending its body (or never sent what it promised)."""


class BodyLimitMiddleware:
    """413 for bodies over the limit (by Content-Length and by the bytes actually sent),
    408 for bodies that do not arrive in time.

    The body is read here (at most ``limit`` bytes are kept) and replayed to the app, so
    a chunked request cannot get past the limit. Each receive waits at most
    ``read_timeout_s`` and the whole body at most ``total_timeout_s``: a Content-Length
    that promises more than is sent, a huge chunk size, or a trickle of bytes is
    answered 408 and its connection closed, instead of holding a connection forever.
    """

    def __init__(
        self,
        app: ASGIApp,
        *,
        max_body: int,
        max_upload: int,
        read_timeout_s: float,
        total_timeout_s: float,
    ) -> None:
        self.app, self.max_body, self.max_upload = app, max_body, max_upload
        self.read_timeout_s, self.total_timeout_s = read_timeout_s, total_timeout_s

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http" or not _may_have_body(scope):
            await self.app(scope, receive, send)
            return
        limit = self.max_upload if scope["path"].startswith(UPLOAD_PREFIX) else self.max_body
        headers = dict(scope.get("headers") or [])
        declared = headers.get(b"content-length", b"0")
        if declared.isdigit() and int(declared) > limit:
            await _too_large(limit)(scope, receive, send)
            return
        try:
            body = await _read_body(
                receive, limit, read_timeout=self.read_timeout_s, total_timeout=self.total_timeout_s
            )
        except BodyTimeoutError as exc:
            await _closing(408, str(exc))(scope, receive, send)
            return
        if body is None:
            await _too_large(limit)(scope, receive, send)
            return
        await self.app(scope, _replay(body, receive), send)


def _may_have_body(scope: Scope) -> bool:
    if scope["method"] in BODY_METHODS:
        return True
    names = {name for name, _ in scope.get("headers") or []}
    return b"content-length" in names or b"transfer-encoding" in names


def _closing(status: int, detail: str) -> JSONResponse:
    # The rest of the body may still be on its way: the connection cannot be reused.
    return JSONResponse({"detail": detail}, status, headers={"Connection": "close"})


def _too_large(limit: int) -> JSONResponse:
    return _closing(413, f"request body larger than {limit} bytes")


async def _read_body(
    receive: Receive, limit: float, *, read_timeout: float, total_timeout: float
) -> bytes | None:
    chunks: list[bytes] = []
    size = 0
    deadline = time.monotonic() + total_timeout
    while True:
        wait = min(read_timeout, deadline - time.monotonic())
        try:
            message = await asyncio.wait_for(receive(), timeout=max(wait, 0.0))
        except TimeoutError:
            raise BodyTimeoutError(
                f"request body not received in time ({size} bytes came; each part must "
                f"arrive within {read_timeout:g} s and the whole body within "
                f"{total_timeout:g} s)"
            ) from None
        if message["type"] != "http.request":
            break
        chunk = message.get("body", b"")
        size += len(chunk)
        if size > limit:
            return None
        chunks.append(chunk)
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


async def _read_all(receive: Receive) -> bytes:
    """The whole body, already bounded and timed by BodyLimitMiddleware further out."""
    chunks: list[bytes] = []
    while True:
        message = await receive()
        if message["type"] != "http.request":
            break
        chunks.append(message.get("body", b""))
        if not message.get("more_body", False):
            break
    return b"".join(chunks)


def _replay(body: bytes, receive: Receive) -> Receive:
    sent = False

    async def replay() -> Message:
        nonlocal sent
        if sent:
            return await receive()
        sent = True
        return {"type": "http.request", "body": body, "more_body": False}

    return replay


class InputGuardMiddleware:
    """What no route should see: NUL or lone surrogates anywhere, and duplicate JSON keys.

    A path holding NUL names nothing (404); a query parameter holding it, or a JSON body
    with a duplicate key or a NUL or lone surrogate in any string, is a 422 located like
    FastAPI's own (``["query", "name"]``, ``["body", "model", "depth"]``). Every JSON body
    of every route passes here, so no route can forget the check.
    """

    def __init__(self, app: ASGIApp) -> None:
        self.app = app

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        if text.has_forbidden_chars(str(scope["path"])):
            await JSONResponse({"detail": "Not Found"}, 404)(scope, receive, send)
            return
        items = _query_problems(bytes(scope.get("query_string") or b""))
        if items:
            await _unprocessable(items)(scope, receive, send)
            return
        if not _is_json(scope):
            await self.app(scope, receive, send)
            return
        body = await _read_all(receive)
        try:
            found = strictjson.problems(body) if body else []
        except strictjson.NotJsonError:
            found = []  # FastAPI answers a body that is not JSON with its own 422
        if found:
            await _unprocessable([ErrorItem(p.loc, p.msg, p.input) for p in found])(
                scope, receive, send
            )
            return
        await self.app(scope, _replay(body, receive), send)


def _query_problems(query_string: bytes) -> list[ErrorItem]:
    # Decoded as Starlette decodes it (invalid UTF-8 becomes U+FFFD, so only NUL remains).
    pairs = parse_qsl(query_string.decode("latin-1"), keep_blank_values=True)
    return [
        ErrorItem(("query", text.printable(key)), text.FORBIDDEN_MESSAGE, text.printable(value))
        for key, value in pairs
        if text.has_forbidden_chars(key) or text.has_forbidden_chars(value)
    ]


def _is_json(scope: Scope) -> bool:
    if scope["method"] not in BODY_METHODS:
        return False
    content_type = dict(scope.get("headers") or []).get(b"content-type")
    if content_type is None:
        return True  # FastAPI reads a body without a content type as JSON
    header = MimeHeader()
    header["content-type"] = content_type.decode("latin-1")
    subtype = header.get_content_subtype()
    return header.get_content_maintype() == "application" and (
        subtype == "json" or subtype.endswith("+json")
    )


def _unprocessable(items: list[ErrorItem]) -> JSONResponse:
    return JSONResponse({"detail": [item.as_detail() for item in items]}, 422)


class MetricsMiddleware:
    """Request counts and latency by route template and status."""

    def __init__(self, app: ASGIApp, *, registry: CollectorRegistry) -> None:
        self.app = app
        self.requests = Counter(
            "trainlab_http_requests",
            "HTTP requests",
            ["method", "route", "status"],
            registry=registry,
        )
        self.latency = Histogram(
            "trainlab_http_request_duration_seconds",
            "HTTP request latency",
            ["method", "route"],
            registry=registry,
        )

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        status = 500
        start = time.perf_counter()

        async def send_wrapper(message: Message) -> None:
            nonlocal status
            if message["type"] == "http.response.start":
                status = int(message["status"])
            await send(message)

        try:
            await self.app(scope, receive, send_wrapper)
        finally:
            route = _route_template(scope)
            method = str(scope["method"])
            self.requests.labels(method, route, str(status)).inc()
            self.latency.labels(method, route).observe(time.perf_counter() - start)


def _route_template(scope: Scope) -> str:
    """The matched route's template (``/v1/jobs/{job_id}``): a label of low cardinality."""
    if scope.get("route") is None:
        return "unmatched"
    names = {str(v): k for k, v in (scope.get("path_params") or {}).items()}
    parts = str(scope["path"]).split("/")
    return "/".join(f"{{{names[p]}}}" if p in names else p for p in parts)
