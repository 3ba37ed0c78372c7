"""Limits per principal: request rate, failed key guesses, active jobs, stored datasets.

Rates are counted by the ``limits`` library in a moving window, in this process's memory
or in a shared store (``rate_limit_storage_url``: redis:// for several API processes).
Quotas are counted in the database, under a per-owner lock where the backend has one, so
that concurrent submits of one owner cannot pass the limit together.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass

import limits
from limits.storage import MemoryStorage, storage_from_string
from limits.strategies import MovingWindowRateLimiter
from sqlalchemy.orm import Session

from service.db.repository import datasets as dataset_queries
from service.db.repository import jobs as job_queries
from service.errors import TooManyRequests

# Namespaces of the counters in the storage (one storage may serve both).
REQUESTS = "trainlab-requests"
AUTH_FAILURES = "trainlab-auth-failures"


@dataclass(frozen=True)
class RequestLimits:
    """The rate limits of one API process (one storage, one strategy)."""

    limiter: MovingWindowRateLimiter
    requests: tuple[limits.RateLimitItem, ...]
    auth_failures: tuple[limits.RateLimitItem, ...]

    @classmethod
    def from_strings(cls, *, requests: str, auth_failures: str, storage_url: str) -> RequestLimits:
        return cls(
            limiter=MovingWindowRateLimiter(storage_from_string(storage_url)),
            requests=tuple(limits.parse_many(requests)),
            auth_failures=tuple(limits.parse_many(auth_failures)),
        )

    @property
    def in_process(self) -> bool:
        """Whether the counters live in this process's memory: a check does no I/O."""
        return isinstance(self.limiter.storage, MemoryStorage)

    def _retry_after(self, item: limits.RateLimitItem, namespace: str, key: str) -> int:
        reset = self.limiter.get_window_stats(item, namespace, key).reset_time
        return max(1, math.ceil(reset - time.time()))

    def hit_request(self, key: str) -> None:
        """Count one request of ``key``; 429 with Retry-After once a limit is reached."""
        for item in self.requests:
            if not self.limiter.hit(item, REQUESTS, key):
                raise TooManyRequests(
                    f"rate limit reached: {item} requests; slow down",
                    retry_after=self._retry_after(item, REQUESTS, key),
                )

    def check_not_blocked(self, address: str) -> None:
        """429 for an address that sent too many wrong keys lately, before any key is
        compared: a right guess must not be told apart from a wrong one."""
        for item in self.auth_failures:
            if not self.limiter.test(item, AUTH_FAILURES, address):
                raise TooManyRequests(
                    f"too many wrong API keys from this address ({item})",
                    retry_after=self._retry_after(item, AUTH_FAILURES, address),
                )

    def count_auth_failure(self, address: str) -> None:
        for item in self.auth_failures:
            self.limiter.hit(item, AUTH_FAILURES, address)


def check_active_jobs(*, session: Session, owner: str, adding: int, limit: int) -> None:
    """429 unless the owner's queued and running jobs plus ``adding`` stay within ``limit``.

    Call it inside the transaction that stores the new jobs: it takes the owner's lock."""
    job_queries.lock_owner(session=session, owner=owner)
    active = job_queries.count_active_jobs(session=session, owner=owner)
    if active + adding > limit:
        raise TooManyRequests(
            f"this key has {active} queued or running jobs and may have at most {limit}; "
            f"{adding} more would pass it: wait for some to finish, or cancel some"
        )


def check_dataset_quota(
    *, session: Session, owner: str, adding_bytes: int, max_datasets: int, max_bytes: int
) -> None:
    job_queries.lock_owner(session=session, owner=owner)
    count, stored = dataset_queries.dataset_usage(session=session, owner=owner)
    if count + 1 > max_datasets:
        raise TooManyRequests(
            f"this key stores {count} datasets and may store at most {max_datasets}: "
            "DELETE /v1/datasets/{id} one it no longer needs"
        )
    if stored + adding_bytes > max_bytes:
        raise TooManyRequests(
            f"this key stores {stored} bytes of datasets; {adding_bytes} more would pass "
            f"its {max_bytes} bytes: DELETE /v1/datasets/{{id}} one it no longer needs"
        )
