# ruff: noqa: N818  (error names follow the HTTP vocabulary: JobNotFound, Forbidden...)
"""Typed errors of the service. One handler (``service.api.app``) renders them all.

Use cases raise these; routes declare them in ``responses=``; nothing else builds an
error response by hand.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from service.kit import specpath
from service.kit.jsonnum import json_safe
from service.specs import SpecIssue


@dataclass(frozen=True)
class ErrorItem:
    """One entry of FastAPI's 422 ``detail`` list; ``loc`` is the full path."""

    loc: tuple[str | int, ...]
    msg: str
    input: Any = None
    type: str = "value_error"

    def as_detail(self) -> dict[str, Any]:
        return {
            "type": self.type,
            "loc": list(self.loc),
            "msg": self.msg,
            "input": json_safe(self.input),
        }


class ServiceError(Exception):
    status_code: int = 500
    headers: dict[str, str] | None = None

    def __init__(self, message: str, status_code: int | None = None) -> None:
        super().__init__(message)
        self.message = message
        if status_code is not None:
            self.status_code = status_code

    def detail(self) -> Any:
        return self.message


class JobNotFound(ServiceError):
    status_code = 404

    def __init__(self, job_id: str) -> None:
        super().__init__(f"no job with id {job_id!r}")


class LandscapeNotAvailable(ServiceError):
    status_code = 404

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(
            f"job {job_id!r} ({status}) has no landscape: set telemetry.landscape in its spec "
            "and let it finish (cancelled and diverged runs get none)"
        )


class DatasetNotFound(ServiceError):
    status_code = 404

    def __init__(self, dataset_id: str) -> None:
        super().__init__(f"no dataset with id {dataset_id!r}")


class SweepNotFound(ServiceError):
    status_code = 404

    def __init__(self, sweep_id: str) -> None:
        super().__init__(f"no sweep with id {sweep_id!r}")


class IllegalStateChange(ServiceError):
    status_code = 409


class IdempotencyConflict(ServiceError):
    status_code = 409

    def __init__(self, key: str) -> None:
        super().__init__(
            f"Idempotency-Key {key!r} was already used with a different request body; "
            "use a new key for a new job"
        )


class PayloadTooLarge(ServiceError):
    status_code = 413

    def __init__(self, limit: int) -> None:
        super().__init__(f"request body larger than {limit} bytes")


class Unauthorized(ServiceError):
    status_code = 401

    def __init__(self) -> None:
        super().__init__("missing X-API-Key header")
        self.headers = {"WWW-Authenticate": "X-API-Key"}


class Forbidden(ServiceError):
    status_code = 403

    def __init__(self) -> None:
        super().__init__("invalid API key")


class TooManyRequests(ServiceError):
    """429: a rate limit or a quota. ``retry_after`` (seconds) when it is known."""

    status_code = 429

    def __init__(self, message: str, retry_after: int | None = None) -> None:
        super().__init__(message)
        if retry_after is not None:
            self.headers = {"Retry-After": str(retry_after)}


class DatasetInUse(ServiceError):
    status_code = 409

    def __init__(self, dataset_id: str, jobs: int) -> None:
        super().__init__(
            f"dataset {dataset_id!r} is used by {jobs} queued or running job(s); "
            "cancel them or wait for them to finish"
        )


class CheckpointNotFound(ServiceError):
    status_code = 404

    def __init__(self, job_id: str, status: str) -> None:
        super().__init__(
            f"job {job_id!r} ({status}) has no final weights: they are kept once a job "
            "succeeds with train.checkpoint_every > 0"
        )


class DatabaseUnavailable(ServiceError):
    """The database did not answer in time or refused: try again shortly."""

    status_code = 503
    retry_after_s = 5

    def __init__(self, message: str = "the database is unavailable; try again shortly") -> None:
        super().__init__(message)
        self.headers = {"Retry-After": str(self.retry_after_s)}


class StaleAttempt(ServiceError):
    """A worker's attempt is no longer the job's current one: it must stop writing.

    Raised by the guard that opens every write transaction of a worker, when its lease
    expired and the job was requeued, finished or cancelled meanwhile.
    """

    status_code = 409

    def __init__(self, job_id: str, attempt: int) -> None:
        super().__init__(f"attempt {attempt} of job {job_id} is no longer current")
        self.job_id = job_id
        self.attempt = attempt


class InvalidRequest(ServiceError):
    """422 in FastAPI's own format, for checks a field validator cannot express."""

    status_code = 422

    def __init__(self, items: Sequence[ErrorItem]) -> None:
        super().__init__("; ".join(f"{'.'.join(map(str, i.loc))}: {i.msg}" for i in items))
        self.items = list(items)

    def detail(self) -> Any:
        return [item.as_detail() for item in self.items]

    @classmethod
    def single(cls, loc: tuple[str | int, ...], msg: str, value: Any = None) -> InvalidRequest:
        return cls([ErrorItem(loc=loc, msg=msg, input=value)])


class SpecInvalid(InvalidRequest):
    """Cross-field spec problems (``check_spec``), located inside the request body."""

    def __init__(self, issues: Sequence[SpecIssue], spec: dict[str, Any] | None = None) -> None:
        super().__init__(
            [
                ErrorItem(
                    loc=("body", *i.loc), msg=i.msg, input=specpath.value_at(spec, i.loc, None)
                )
                for i in issues
            ]
        )
        self.issues = list(issues)
