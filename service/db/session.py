"""Engine and session factories, with timeouts that hold on a frozen database.

SQLite (the embedded default) runs in WAL mode so the API can read while a worker
writes; ``busy_timeout`` makes a writer wait for the lock instead of failing at once.

PostgreSQL gets a connect timeout, a server-side ``statement_timeout`` and an
``idle_in_transaction_session_timeout``: a process paused (SIGSTOP, a frozen VM) inside a
transaction would otherwise hold its row locks for as long as it sleeps — a paused
worker's lock on its job row hid the job from the reconciler that expires leases (it
skips locked rows). Our transactions never wait on anything but the database, so a
session idle in one for longer than a few statements' time is a stuck one, and the server
ends it. Neither timeout helps
when the server (or the network to it) is frozen: the server never answers, and the
kernel keeps acknowledging what the client sends. So every call that waits on the
server (execute, commit, rollback, the pool's ping) also runs under a client-side
deadline: past it, :class:`Watchdog` shuts the connection's socket down, the blocked
call fails at once with a disconnect error, and SQLAlchemy drops that connection.

A pooled PostgreSQL connection is pinged when it is checked out (``ping="always"``, the
default: the worker's writes never meet a dead connection), or, for the API
(``ping="idle"``), only after sitting idle for ``IDLE_PING_AFTER_S``: a ping costs one
round trip per request, a quarter of a job read. A connection in steady use needs no
ping: if the server restarted under it, its next statement fails as a disconnect,
SQLAlchemy discards every connection of the pool made before that moment, and the
request is a 503 with Retry-After like any other outage. The pool is LIFO, so that under
light load the same few connections stay warm and the rest go idle (and get pinged).
"""

from __future__ import annotations

import contextlib
import heapq
import itertools
import logging
import os
import socket
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Literal

from sqlalchemy import Engine, create_engine, event
from sqlalchemy.engine import make_url
from sqlalchemy.exc import DisconnectionError, SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker
from sqlalchemy.pool import ConnectionPoolEntry

from service.config import Settings

logger = logging.getLogger(__name__)

SQLITE_BUSY_TIMEOUT_MS = 10_000
# The client-side cut comes this much after the server's own statement_timeout, so a
# merely slow statement gets the server's clean cancel and only a frozen one is cut.
CLIENT_DEADLINE_MARGIN_S = 0.5
# A session idle inside a transaction for this many statement timeouts is ended by the
# server (releasing its locks): well past any pause between two statements of ours.
IDLE_IN_TRANSACTION_STATEMENTS = 4
# A pooled connection idle for longer than this is pinged before use (see above).
IDLE_PING_AFTER_S = 5.0
# Connections older than this are replaced (server-side idle timeouts, load balancers).
POOL_RECYCLE_S = 1800


@dataclass(frozen=True)
class DatabaseTimeouts:
    connect_s: int = 3
    statement_s: float = 5.0

    @property
    def idle_in_transaction_s(self) -> float:
        return IDLE_IN_TRANSACTION_STATEMENTS * self.statement_s


@dataclass
class _Armed:
    # A duplicate of the connection's socket, owned by the guard: if the driver closes
    # its own descriptor during the call, the number can be handed to another socket
    # at once (an HTTP client's, say); the duplicate still names the database's.
    fd: int
    cut: bool = False


class Watchdog:
    """Shuts down the socket of any database call that outlives its deadline.

    One thread per process serves every engine; ``guard`` arms a deadline around one call
    and disarms it when the call returns. A fork gets a fresh watchdog (threads do not
    survive it).
    """

    def __init__(self) -> None:
        self._pid = -1
        self._tokens = itertools.count()

    def _ensure_started(self) -> None:
        if self._pid == os.getpid():
            return
        self._pid = os.getpid()
        self._cond = threading.Condition()
        self._armed: dict[int, _Armed] = {}
        self._deadlines: list[tuple[float, int]] = []  # heap of (deadline, token)
        thread = threading.Thread(target=self._run, name="db-watchdog", daemon=True)
        thread.start()

    @contextlib.contextmanager
    def guard(self, fd: int, seconds: float) -> Iterator[_Armed]:
        """Arm a deadline around one call; the value says afterwards whether it was cut."""
        self._ensure_started()
        token, armed = next(self._tokens), _Armed(os.dup(fd))
        deadline = time.monotonic() + seconds
        with self._cond:
            self._armed[token] = armed
            # The watchdog sleeps until the earliest deadline it holds, so only an earlier
            # one needs to wake it. Deadlines mostly come in order; waking it for each
            # call was a thread switch per call (three per job read on PostgreSQL).
            if not self._deadlines or deadline < self._deadlines[0][0]:
                self._cond.notify()
            heapq.heappush(self._deadlines, (deadline, token))
        try:
            yield armed
        finally:
            with self._cond:  # after this, the watchdog can no longer cut through it
                self._armed.pop(token, None)
            os.close(armed.fd)

    def _run(self) -> None:
        with self._cond:
            while True:
                while self._deadlines and self._deadlines[0][1] not in self._armed:
                    heapq.heappop(self._deadlines)  # disarmed in time
                if not self._deadlines:
                    self._cond.wait()
                    continue
                deadline, token = self._deadlines[0]
                wait = deadline - time.monotonic()
                if wait > 0:
                    self._cond.wait(wait)
                    continue
                heapq.heappop(self._deadlines)
                # Still armed under the lock, so the guard has not closed its duplicate.
                armed = self._armed.pop(token)
                armed.cut = True
                self._cut(armed.fd)

    @staticmethod
    def _cut(fd: int) -> None:
        logger.warning("database call over its deadline: cutting its connection")
        try:
            with socket.socket(fileno=os.dup(fd)) as sock:
                sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            logger.warning("could not cut a database connection", exc_info=True)


WATCHDOG = Watchdog()
_local = threading.local()


@contextlib.contextmanager
def statement_deadline(seconds: float) -> Iterator[None]:
    """Within this block, this thread's PostgreSQL calls get ``seconds`` at most
    (e.g. a readiness probe, which must answer within a second)."""
    previous = getattr(_local, "deadline_s", None)
    _local.deadline_s = seconds
    try:
        yield
    finally:
        _local.deadline_s = previous


def _guarded(
    method: Callable[..., Any],
    fd_of: Callable[..., int],
    default_s: float,
    disconnected: type[Exception],
) -> Any:
    def call(*args: Any, **kwargs: Any) -> Any:
        seconds = getattr(_local, "deadline_s", None) or default_s
        with WATCHDOG.guard(fd_of(*args), seconds) as armed:
            try:
                return method(*args, **kwargs)
            except Exception as exc:
                if not armed.cut:
                    raise
                # Whatever the driver made of the cut (in pipeline mode psycopg may say
                # InternalError), it is a lost connection: SQLAlchemy drops it, and
                # callers see the OperationalError of an unreachable database.
                raise disconnected(
                    f"no answer within {seconds:g} s; the connection was cut"
                ) from exc

    return call


def _cursor_fd(cursor: Any, *_: Any) -> int:
    return int(cursor.connection.fileno())


def _connection_fd(dbapi_connection: Any, *_: Any) -> int:
    return int(dbapi_connection.fileno())


def _guard_postgres_calls(engine: Engine, deadline_s: float) -> None:
    dialect: Any = engine.dialect
    disconnected = dialect.loaded_dbapi.OperationalError
    for names, fd_of in (
        (("do_execute", "do_executemany", "do_execute_no_params"), _cursor_fd),
        (("do_commit", "do_rollback", "do_ping"), _connection_fd),
    ):
        for name in names:
            method = _guarded(getattr(dialect, name), fd_of, deadline_s, disconnected)
            setattr(dialect, name, method)


def _ping_idle_connections(engine: Engine) -> None:
    def checked_in(_dbapi_connection: Any, record: ConnectionPoolEntry) -> None:
        record.info["idle_since"] = time.monotonic()

    def checked_out(dbapi_connection: Any, record: ConnectionPoolEntry, _proxy: Any) -> None:
        idle_since = record.info.pop("idle_since", None)
        if idle_since is None or time.monotonic() - idle_since < IDLE_PING_AFTER_S:
            return
        try:
            engine.dialect.do_ping(dbapi_connection)  # under the watchdog's deadline
        except Exception as exc:
            # The pool discards this connection and checks out a fresh one.
            raise DisconnectionError("idle pooled connection failed its ping") from exc

    event.listen(engine, "checkin", checked_in)
    event.listen(engine, "checkout", checked_out)


def _ensure_sqlite_folder(url: str) -> None:
    database = make_url(url).database
    if database and database != ":memory:" and not database.startswith("file:"):
        Path(database).expanduser().resolve().parent.mkdir(parents=True, exist_ok=True)


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    cursor = dbapi_connection.cursor()
    try:
        cursor.execute("PRAGMA journal_mode=WAL")
        cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
        cursor.execute("PRAGMA foreign_keys=ON")
    finally:
        cursor.close()


def make_engine(
    url: str,
    *,
    timeouts: DatabaseTimeouts | None = None,
    ping: Literal["always", "idle"] = "always",
    **kwargs: Any,
) -> Engine:
    """An engine configured for trainlab's two backends (SQLite and PostgreSQL); ``ping``:
    which pooled PostgreSQL connections are pinged at checkout (see above)."""
    if make_url(url).get_backend_name() == "sqlite":
        _ensure_sqlite_folder(url)
        connect_args = {"check_same_thread": False, **kwargs.pop("connect_args", {})}
        engine = create_engine(url, connect_args=connect_args, **kwargs)
        event.listen(engine, "connect", _sqlite_pragmas)
        return engine
    timeouts = timeouts or DatabaseTimeouts()
    connect_args = {
        "connect_timeout": timeouts.connect_s,
        "options": (
            f"-c statement_timeout={int(timeouts.statement_s * 1000)} "
            f"-c idle_in_transaction_session_timeout={int(timeouts.idle_in_transaction_s * 1000)}"
        ),
        **kwargs.pop("connect_args", {}),
    }
    kwargs.setdefault("pool_timeout", timeouts.statement_s)
    kwargs.setdefault("pool_recycle", POOL_RECYCLE_S)
    kwargs.setdefault("pool_use_lifo", True)
    engine = create_engine(url, pool_pre_ping=ping == "always", connect_args=connect_args, **kwargs)
    _guard_postgres_calls(engine, timeouts.statement_s + CLIENT_DEADLINE_MARGIN_S)
    if ping == "idle":
        _ping_idle_connections(engine)
    return engine


def engine_for(settings: Settings, *, ping: Literal["always", "idle"] = "always") -> Engine:
    """The engine of ``settings``' database, with its configured timeouts."""
    timeouts = DatabaseTimeouts(
        connect_s=settings.database_connect_timeout_s,
        statement_s=settings.database_statement_timeout_s,
    )
    return make_engine(settings.resolved_database_url, timeouts=timeouts, ping=ping)


class QuietCloseSession(Session):
    """A session whose ``close`` never raises.

    Closing rolls back what is still open. On a connection the watchdog has cut (or the
    network dropped) that rollback fails; nothing is lost by it (a commit is its own
    call, which does raise), so the connection is discarded instead of turning a
    request that already has its answer into a dropped connection.
    """

    def close(self) -> None:
        try:
            super().close()
        except SQLAlchemyError:
            logger.warning("closing a session failed; its connections are discarded")
            with contextlib.suppress(SQLAlchemyError):
                self.invalidate()


def reading_engine(engine: Engine) -> Engine:
    """``engine`` for reads whose every statement is consistent on its own, made on bare
    connections (``with engine.connect()``); they must not write. On PostgreSQL its
    connections run outside a transaction (AUTOCOMMIT, same pool), so a one-row read is
    one round trip: no BEGIN before it, no ROLLBACK after. SQLite's driver opens no
    transaction for a SELECT anyway, and switching its isolation level back and forth
    would cost more than it saves, so there it is ``engine`` itself."""
    if engine.dialect.name == "postgresql":
        return engine.execution_options(isolation_level="AUTOCOMMIT")
    return engine


def make_session_factory(engine: Engine) -> sessionmaker[Session]:
    # expire_on_commit=False: objects stay readable after the use case commits
    # (the API serialises them after commit; the worker keeps using them).
    return sessionmaker(bind=engine, expire_on_commit=False, class_=QuietCloseSession)
