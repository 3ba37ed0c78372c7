"""Database timeouts that hold when PostgreSQL (or the network to it) freezes."""

from __future__ import annotations

import contextlib
import socket
import time
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
from sqlalchemy import Engine, select, text
from sqlalchemy import exc as sa_exc

from service.db import session as session_module
from service.db.session import (
    DatabaseTimeouts,
    make_engine,
    make_session_factory,
    statement_deadline,
)
from tests.chaos.conftest import TcpProxy

pytestmark = pytest.mark.postgres

# Liveness bound: a cut call returns long before this, even on a loaded machine.
HANG_BOUND_S = 20.0


@pytest.fixture
def proxy() -> Iterator[TcpProxy]:
    proxy = TcpProxy(5432)
    yield proxy
    proxy.close()


def test_a_call_to_a_frozen_server_is_cut_and_the_engine_recovers(
    proxy: TcpProxy, pg_url: str
) -> None:
    url = pg_url.replace(":5432/", f":{proxy.port}/")
    engine = make_engine(url, timeouts=DatabaseTimeouts(connect_s=2, statement_s=1.0))
    try:
        with engine.connect() as conn:
            assert conn.execute(select(1)).scalar() == 1
        proxy.stall()  # the server never answers; the kernel still acknowledges
        started = time.monotonic()
        with pytest.raises(sa_exc.OperationalError), engine.connect() as conn:
            conn.execute(text("SELECT 1"))
        assert time.monotonic() - started < HANG_BOUND_S
        proxy.restore()
        with engine.connect() as conn:  # the cut connection was dropped, a new one works
            assert conn.execute(select(1)).scalar() == 1
    finally:
        proxy.restore()
        engine.dispose()


def test_the_server_cancels_a_slow_statement(pg_url: str) -> None:
    engine = make_engine(pg_url, timeouts=DatabaseTimeouts(connect_s=2, statement_s=0.5))
    try:
        with (
            pytest.raises(sa_exc.OperationalError, match="statement timeout"),
            engine.connect() as conn,
        ):
            conn.execute(text("SELECT pg_sleep(5)"))
        with statement_deadline(5.0), engine.connect() as conn:
            assert conn.execute(select(1)).scalar() == 1
    finally:
        engine.dispose()


def test_a_session_paused_inside_a_transaction_loses_its_locks(pg_url: str) -> None:
    """A process frozen mid-transaction (SIGSTOP) must not hold its row locks for as long
    as it sleeps: the server ends the idle transaction and another session gets the row."""
    timeouts = DatabaseTimeouts(connect_s=2, statement_s=0.5)
    engine = make_engine(pg_url, timeouts=timeouts)
    stack = contextlib.ExitStack()
    try:
        with engine.begin() as conn:
            conn.execute(text("CREATE TABLE IF NOT EXISTS paused_lock (id int PRIMARY KEY)"))
            conn.execute(text("INSERT INTO paused_lock VALUES (1) ON CONFLICT DO NOTHING"))
        paused = stack.enter_context(engine.connect())
        paused.begin()
        paused.execute(text("SELECT id FROM paused_lock WHERE id = 1 FOR UPDATE"))
        time.sleep(timeouts.idle_in_transaction_s + 1.0)  # "paused": idle in its transaction
        with engine.connect() as other:
            locked = other.execute(
                text("SELECT id FROM paused_lock WHERE id = 1 FOR UPDATE SKIP LOCKED")
            ).all()
        assert locked == [(1,)]
        with pytest.raises(sa_exc.DBAPIError):
            paused.execute(text("SELECT 1"))  # it was ended; it learns so when it wakes
        paused.invalidate()
    finally:
        stack.close()
        with engine.begin() as conn:
            conn.execute(text("DROP TABLE IF EXISTS paused_lock"))
        engine.dispose()


def test_a_session_that_cannot_roll_back_on_close_still_closes(
    proxy: TcpProxy, pg_url: str
) -> None:
    # The chaos test's dropped connections: a read finished, then the server froze and the
    # rollback of the session's close was cut. Closing must not raise (the request that
    # read has its answer); the cut connection is discarded, not reused.
    url = pg_url.replace(":5432/", f":{proxy.port}/")
    engine = make_engine(url, timeouts=DatabaseTimeouts(connect_s=2, statement_s=1.0))
    factory = make_session_factory(engine)
    try:
        session = factory()
        assert session.execute(select(1)).scalar() == 1
        proxy.stall()
        started = time.monotonic()
        session.close()  # the rollback is cut by the watchdog: no exception
        assert time.monotonic() - started < HANG_BOUND_S
        proxy.restore()
        with factory() as fresh:
            assert fresh.execute(select(1)).scalar() == 1
    finally:
        proxy.restore()
        engine.dispose()


def _counting_pings(engine: Engine) -> list[int]:
    pings: list[int] = []
    ping = engine.dialect.do_ping

    def counted(dbapi_connection: Any) -> bool:
        pings.append(1)
        return ping(dbapi_connection)

    engine.dialect.do_ping = counted  # type: ignore[method-assign]
    return pings


def test_a_connection_in_steady_use_is_not_pinged(pg_url: str) -> None:
    engine = make_engine(pg_url, ping="idle")
    pings = _counting_pings(engine)
    try:
        for _ in range(5):
            with engine.connect() as conn:
                assert conn.execute(select(1)).scalar() == 1
        assert pings == []  # no round trip of its own per checkout
    finally:
        engine.dispose()


def test_an_idle_connection_that_died_is_replaced_before_use(
    pg_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(session_module, "IDLE_PING_AFTER_S", 0.0)
    engine = make_engine(pg_url, ping="idle")
    pings = _counting_pings(engine)
    try:
        with engine.connect() as conn:
            pid = conn.execute(text("SELECT pg_backend_pid()")).scalar()
        # The server ends it while it sits in the pool (a restart, an idle timeout).
        with psycopg.connect(pg_url.replace("+psycopg", ""), autocommit=True) as admin:
            admin.execute("SELECT pg_terminate_backend(%s)", (pid,))
        with engine.connect() as conn:  # the ping found it dead: a fresh one serves
            assert conn.execute(text("SELECT pg_backend_pid()")).scalar() != pid
        assert pings
    finally:
        engine.dispose()


def test_a_later_deadline_is_kept_while_the_watchdog_sleeps_on_an_earlier_one() -> None:
    # A guard whose deadline is later than one the watchdog already holds does not wake
    # it: the watchdog must still cut it once it wakes for the earlier (here disarmed)
    # one and finds the later one next.
    watchdog = session_module.Watchdog()
    early_a, early_b = socket.socketpair()
    late_a, late_b = socket.socketpair()
    with contextlib.ExitStack() as sockets:
        for sock in (early_a, early_b, late_a, late_b):
            sockets.enter_context(sock)
        with watchdog.guard(early_a.fileno(), 0.3) as early:
            pass  # disarmed at once; its deadline stays in the heap until it passes
        started = time.monotonic()
        with watchdog.guard(late_a.fileno(), 0.6) as late:
            late_a.settimeout(HANG_BOUND_S)
            assert late_a.recv(1) == b""  # the cut ends the wait: end of stream
        assert late.cut and not early.cut
        assert 0.5 <= time.monotonic() - started < HANG_BOUND_S
