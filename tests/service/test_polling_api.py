"""Status polling: a job read carries an ETag, ``If-None-Match`` gets a 304 with no body
while nothing changed, and the fast read path keeps the key, owner and rate checks."""

from __future__ import annotations

import asyncio
import threading
import time
from collections.abc import Coroutine
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any, TypeVar

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import event
from sqlalchemy.orm import Session

from service import jobs as service_jobs
from service.api import conditional
from service.api.app import create_app
from service.config import Settings
from service.db.repository import jobs as job_queries
from tests.service.conftest import make_settings, stored_job
from tests.service.test_tenants_api import A, B, sha256_entry

T = TypeVar("T")

SPEC = {"name": "polled"}


def _job(client: TestClient, **headers: str) -> str:
    created = client.post("/v1/jobs", json=SPEC, headers=headers)
    assert created.status_code == 201, created.text
    job_id: str = created.json()["id"]
    return job_id


def test_a_job_read_has_an_etag_and_an_unchanged_job_answers_304(client: TestClient) -> None:
    job_id = _job(client)
    first = client.get(f"/v1/jobs/{job_id}")
    assert first.status_code == 200
    etag = first.headers["ETag"]
    assert etag.startswith('"') and etag.endswith('"')
    again = client.get(f"/v1/jobs/{job_id}")
    assert again.headers["ETag"] == etag and again.json() == first.json()
    not_modified = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert not_modified.status_code == 304
    assert not_modified.content == b""
    assert not_modified.headers["ETag"] == etag
    # A weak form of the tag, and a list holding it, match too; another tag does not.
    for header in (f"W/{etag}", f'"other", {etag}', "*"):
        assert (
            client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": header}).status_code == 304
        )
    stale = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": '"stale"'})
    assert stale.status_code == 200 and stale.json() == first.json()


def test_a_changed_job_changes_its_etag(client: TestClient, session: Session) -> None:
    job_id = _job(client)
    etag = client.get(f"/v1/jobs/{job_id}").headers["ETag"]
    job_queries.claim_job(session=session, job_id=job_id, worker="w")
    session.commit()
    claimed = client.get(f"/v1/jobs/{job_id}", headers={"If-None-Match": etag})
    assert claimed.status_code == 200 and claimed.json()["status"] == "running"
    assert claimed.headers["ETag"] != etag
    job_queries.update_progress(session=session, job_id=job_id, epoch=0, step=3)
    session.commit()
    progressed = client.get(
        f"/v1/jobs/{job_id}", headers={"If-None-Match": claimed.headers["ETag"]}
    )
    assert progressed.status_code == 200 and progressed.json()["progress"]["step"] == 3


def test_the_read_is_the_same_job_as_the_list_shows(client: TestClient) -> None:
    job_id = _job(client)
    listed = client.get("/v1/jobs").json()["items"][0]
    assert client.get(f"/v1/jobs/{job_id}").json() == listed


def test_the_fast_read_keeps_key_owner_and_rate_checks(tmp_path: Path, db_url: str) -> None:
    settings = make_settings(
        tmp_path,
        db_url,
        api_keys=[sha256_entry(A["X-API-Key"]), sha256_entry(B["X-API-Key"])],
        rate_limit="4/hour",  # per hour: see test_request_rate_is_limited_per_key...
    )
    with TestClient(create_app(settings)) as client:
        job_id = _job(client, **A)  # 1st request of A
        assert client.get(f"/v1/jobs/{job_id}").status_code == 401
        assert client.get(f"/v1/jobs/{job_id}", headers={"X-API-Key": "wrong"}).status_code == 403
        assert client.get(f"/v1/jobs/{job_id}", headers=B).status_code == 404  # not B's
        answers = [client.get(f"/v1/jobs/{job_id}", headers=A).status_code for _ in range(4)]
        assert answers == [200, 200, 200, 429]
        assert "Retry-After" in client.get(f"/v1/jobs/{job_id}", headers=A).headers


def test_if_none_match_compares_weakly() -> None:
    assert conditional.matches('W/"a"', '"a"')
    assert conditional.matches('"b" , "a"', 'W/"a"')
    assert not conditional.matches('"ab"', '"a"')
    assert not conditional.matches(None, '"a"')


def test_a_job_list_has_an_etag_too(client: TestClient) -> None:
    _job(client)
    first = client.get("/v1/jobs?limit=5")
    etag = first.headers["ETag"]
    assert client.get("/v1/jobs?limit=5", headers={"If-None-Match": etag}).status_code == 304
    _job(client)  # a new job changes the page
    changed = client.get("/v1/jobs?limit=5", headers={"If-None-Match": etag})
    assert changed.status_code == 200 and len(changed.json()["items"]) == 2


def _run_in_a_loop_of_its_own(coroutine: Coroutine[Any, Any, T]) -> T:
    """``asyncio.run`` in a thread of its own: in a full run the browser tests' sync
    Playwright keeps an event loop running in the main thread, where asyncio.run refuses."""
    with ThreadPoolExecutor(max_workers=1) as runner:
        return runner.submit(asyncio.run, coroutine).result()


def test_concurrent_reads_hold_no_more_connections_than_the_pool_keeps(
    settings: Settings, session: Session
) -> None:
    # 50 pollers once reached for up to 40 connections at a time (one per thread of the
    # pool anyio keeps): the pool opened one past its five for each read and closed it
    # after. Each checkout here is held 20 ms, so that the reads overlap.
    job_id = stored_job(session)
    app = create_app(settings)
    pool = app.state.database_reads.engine.pool
    checked_out, most = 0, 0

    def on_checkout(*_: object) -> None:
        nonlocal checked_out, most
        checked_out += 1
        most = max(most, checked_out)
        time.sleep(0.02)

    def on_checkin(*_: object) -> None:
        nonlocal checked_out
        checked_out -= 1

    event.listen(pool, "checkout", on_checkout)
    event.listen(pool, "checkin", on_checkin)

    async def poll() -> list[int]:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            answers = await asyncio.gather(*(client.get(f"/v1/jobs/{job_id}") for _ in range(30)))
        return [answer.status_code for answer in answers]

    assert _run_in_a_loop_of_its_own(poll()) == [200] * 30
    assert 1 <= most <= pool.size()


def test_a_blocked_read_leaves_the_event_loop_free(
    settings: Settings, session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    # A locked SQLite file or a frozen PostgreSQL server blocks the read that meets it:
    # that must be a worker thread, never the event loop that serves every other request.
    job_id = stored_job(session)
    app = create_app(settings)
    loop_ran = threading.Event()
    real_read = service_jobs.read_job

    def blocked_read(**kwargs: Any) -> dict[str, Any]:
        # On the event loop this wait would time out: nothing else could run to set it.
        assert loop_ran.wait(timeout=5), "the read ran on the event loop"
        result: dict[str, Any] = real_read(**kwargs)
        return result

    monkeypatch.setattr(service_jobs, "read_job", blocked_read)

    async def poll_while_the_loop_runs() -> int:
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://test") as client:
            read = asyncio.ensure_future(client.get(f"/v1/jobs/{job_id}"))
            await asyncio.sleep(0.05)
            loop_ran.set()
            return (await read).status_code

    assert _run_in_a_loop_of_its_own(poll_while_the_loop_runs()) == 200
