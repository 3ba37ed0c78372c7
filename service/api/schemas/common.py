"""Shared pieces of the HTTP contract: error bodies, pages, JSON floats."""

from __future__ import annotations

from typing import Annotated, Any, Generic, TypeVar

from pydantic import BaseModel, Field, PlainSerializer

from service.kit.jsonnum import json_number

T = TypeVar("T")

# A float that may be non-finite: written as "NaN", "Infinity" or "-Infinity" (see
# service.kit.jsonnum); null where nothing is stored.
JsonFloat = Annotated[
    float | None,
    PlainSerializer(json_number, return_type=float | str | None, when_used="always"),
]


class ErrorBody(BaseModel):
    detail: str | list[dict[str, Any]] = Field(
        description="A message, or FastAPI's list of {type, loc, msg, input} for 422."
    )


ERROR_DESCRIPTIONS: dict[int, str] = {
    401: "Missing API key (X-API-Key)",
    403: "Invalid API key",
    404: "Unknown id",
    409: "Illegal state change or idempotency conflict",
    408: "The request body did not arrive in time",
    413: "Body too large",
    422: "Validation error",
    429: "Rate limit or quota reached (Retry-After says when to try again, where known)",
    503: "Broker or database unavailable",
}


def error_responses(*codes: int) -> dict[int | str, dict[str, Any]]:
    """``responses=`` for a route: each typed error it can raise."""
    return {
        code: {"description": ERROR_DESCRIPTIONS[code], "model": ErrorBody}
        for code in codes
        if code != 422  # FastAPI documents its own 422 schema
    }


class Page(BaseModel, Generic[T]):
    items: list[T]
    next_cursor: str | None = Field(
        description="Pass as ?cursor= for the next page; null on the last page."
    )
