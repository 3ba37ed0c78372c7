"""Limits per principal: request rate, failed key guesses, active jobs, stored datasets.

Rates are counted by the ``limits`` library, in this process's memory or in a shared
store (``rate_limit_storage_url``: redis:// for several API processes). Requests are
counted in a sliding window counter: two numbers per key (this window's hits and the
last's, weighted by how much of it the sliding window still covers), so a hit costs the
same at any rate; a moving window keeps one timestamp per hit in a list as long as the
limit and inserts each at its head. The counter may let a client through a little early
or late at a window's edge (it assumes the last window's hits were evenly spread), which
a request budget can afford. Wrong key guesses stay in an exact moving window: they are
rare, and a guess budget must not stretch at a window's edge.

The limiter is ``limits``' asyncio one, awaited on the event loop: its memory storage
expires counters in an asyncio task, where the threaded one started a
``threading.Timer`` thread every 10 ms under load (and the loop waited for each to
start), and Redis is reached without blocking the loop or a worker thread.

Quotas are counted in the database, under a per-owner lock where the backend has one, so
that concurrent submits of one owner cannot pass the limit together.
"""

from __future__ import annotations

import math
import time
from dataclasses import dataclass
from urllib.parse import urlsplit

import limits
from limits.aio.storage import Storage as AsyncStorage
from limits.aio.strategies import MovingWindowRateLimiter, SlidingWindowCounterRateLimiter
from limits.storage import storage_from_string
from sqlalchemy.orm import Session

from service.db.repository import datasets as dataset_queries
from service.db.repository import jobs as job_queries
from service.errors import TooManyRequests

# Namespaces of the counters in the storage (one storage may serve both).
REQUESTS = "trainlab-requests"
AUTH_FAILURES = "trainlab-auth-failures"


def _async_storage(url: str) -> AsyncStorage:
    """``limits``' asyncio storage for a storage URL (memory://, redis://...)."""
    url = url if url.startswith("async+") else f"async+{url}"
    # redis-py's asyncio client (a dependency already, through Celery's Redis transport),
    # not coredis, limits' default.
    options = {"implementation": "redispy"} if "redis" in urlsplit(url).scheme else {}
    storage = storage_from_string(url, **options)
    if not isinstance(storage, AsyncStorage):  # the async+ schemes give asyncio storages
        raise TypeError(f"{url} is not an asyncio storage of limits")
    return storage


@dataclass(frozen=True)
class RequestLimits:
    """The rate limits of one API process (a storage and a strategy for each kind)."""

    request_limiter: SlidingWindowCounterRateLimiter
    auth_failure_limiter: MovingWindowRateLimiter
    requests: tuple[limits.RateLimitItem, ...]
    auth_failures: tuple[limits.RateLimitItem, ...]

    @classmethod
    def from_strings(cls, *, requests: str, auth_failures: str, storage_url: str) -> RequestLimits:
        return cls(
            request_limiter=SlidingWindowCounterRateLimiter(_async_storage(storage_url)),
            # A storage of its own: the memory storage's expiry task visits every key of
            # a moving window in a worker thread, and request counters need none of that.
            auth_failure_limiter=MovingWindowRateLimiter(_async_storage(storage_url)),
            requests=tuple(limits.parse_many(requests)),
            auth_failures=tuple(limits.parse_many(auth_failures)),
        )

    async def hit_request(self, key: str) -> None:
        """Count one request of ``key``; 429 with Retry-After once a limit is reached."""
        for item in self.requests:
            if not await self.request_limiter.hit(item, REQUESTS, key):
                stats = await self.request_limiter.get_window_stats(item, REQUESTS, key)
                raise TooManyRequests(
                    f"rate limit reached: {item} requests; slow down",
                    retry_after=_seconds_until(stats.reset_time),
                )

    async def check_not_blocked(self, address: str) -> None:
        """429 for an address that sent too many wrong keys lately, before any key is
        compared: a right guess must not be told apart from a wrong one."""
        for item in self.auth_failures:
            if not await self.auth_failure_limiter.test(item, AUTH_FAILURES, address):
                limiter = self.auth_failure_limiter
                stats = await limiter.get_window_stats(item, AUTH_FAILURES, address)
                raise TooManyRequests(
                    f"too many wrong API keys from this address ({item})",
                    retry_after=_seconds_until(stats.reset_time),
                )

    async def count_auth_failure(self, address: str) -> None:
        for item in self.auth_failures:
            await self.auth_failure_limiter.hit(item, AUTH_FAILURES, address)


def _seconds_until(reset_time: float) -> int:
    return max(1, math.ceil(reset_time - time.time()))


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
