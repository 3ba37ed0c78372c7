"""Chaos fixtures: stacks whose broker and database link a test may break.

Never the machine's own services: each stack gets its own ``redis-server`` on a free port
(stopped, started, frozen with SIGSTOP), and reaches the machine's PostgreSQL through a
TCP proxy of its own (:class:`TcpProxy`) that the test can cut (connections closed, new
ones refused) or stall (bytes held, as a frozen server or network would). Intervals are
shortened through settings (leases of 6 s, sweeps every 0.5 s), so that each scenario
takes seconds; waits are on conditions with generous deadlines, never on timings.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest

from tests.integration.conftest import (
    PG_ADMIN_URL,
    TRAINLAB,
    Stack,
    _base_env,
    _descendants,
    _drop_database,
    _free_port,
    _share_cache,
    _start,
    _wait_ready,
    mnist1d_cache,
)

__all__ = ["mnist1d_cache"]

REDIS_SERVER = shutil.which("redis-server") or "/usr/bin/redis-server"
PG_PORT = 5432
# Shortened for the tests (README "Settings" has the defaults).
CHAOS_ENV = {
    "TRAINLAB_HEARTBEAT_INTERVAL_S": "0.5",
    "TRAINLAB_LEASE_S": "6",
    "TRAINLAB_RECONCILE_INTERVAL_S": "0.5",
    "TRAINLAB_RESEND_AFTER_S": "3",
    "TRAINLAB_DATABASE_CONNECT_TIMEOUT_S": "2",
    "TRAINLAB_DATABASE_STATEMENT_TIMEOUT_S": "3",
    "TRAINLAB_BROKER_TIMEOUT_S": "0.5",
    "TRAINLAB_BROKER_POLLING_INTERVAL": "0.1",
}
# A request that takes longer than this has hung (the API's own bound on a frozen
# database: a 3.5 s cut of the pool's ping, then a 2 s connect timeout).
REQUEST_TIMEOUT_S = 8.0
# A job of 20 epochs of 40 steps, about a second an epoch here: it is still training
# when each fault strikes, and it checkpoints every epoch.
EPOCHS = 12
STEPS = EPOCHS * 40
CHAOS_SPEC: dict[str, Any] = {
    "name": "chaos",
    "data": {"dataset": "mnist1d", "train_size": 4000, "val_size": 500},
    "model": {"depth": 6, "width": 512},
    "train": {"epochs": EPOCHS, "batch_size": 100},
    "telemetry": {"every_n_steps": 10},
}
# A job that is over in a second or two (the extra jobs of the broker scenarios).
SMALL_SPEC: dict[str, Any] = {
    "name": "chaos-small",
    "data": {"dataset": "spirals", "train_size": 200, "val_size": 50},
    "model": {"depth": 1, "width": 8},
    "train": {"epochs": 2, "batch_size": 50},
}


class RedisServer:
    """A private ``redis-server`` that a test may stop, start again and freeze."""

    def __init__(self, log_dir: Path) -> None:
        self.port = _free_port()
        self.log = log_dir / "redis.log"
        self.process: subprocess.Popen[bytes] | None = None
        self.start()

    @property
    def url(self) -> str:
        return f"redis://127.0.0.1:{self.port}/0"

    def start(self) -> None:
        command = [REDIS_SERVER, "--port", str(self.port), "--bind", "127.0.0.1"]
        command += ["--save", "", "--appendonly", "no"]
        self.process = subprocess.Popen(
            command, stdout=self.log.open("ab"), stderr=subprocess.STDOUT
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            with (
                contextlib.suppress(OSError),
                socket.create_connection(("127.0.0.1", self.port), timeout=1) as conn,
            ):
                conn.sendall(b"PING\r\n")
                if conn.recv(16).startswith(b"+PONG"):
                    return
            time.sleep(0.1)
        raise RuntimeError("redis-server did not start")

    def stop(self) -> None:
        """Gone, with every message it held (no persistence)."""
        if self.process is not None:
            self.process.kill()
            self.process.wait()
            self.process = None

    def freeze(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGSTOP)

    def thaw(self) -> None:
        assert self.process is not None
        self.process.send_signal(signal.SIGCONT)


class TcpProxy:
    """127.0.0.1:port -> 127.0.0.1:target, in an asyncio loop on its own thread.

    ``cut()`` closes every connection and refuses new ones; ``stall()`` stops moving
    bytes (connections stay open, as with a frozen server); ``restore()`` undoes both.
    """

    def __init__(self, target_port: int) -> None:
        self.target_port = target_port
        self.port = _free_port()
        self.stalled = False
        self._writers: set[asyncio.StreamWriter] = set()
        self._server: asyncio.AbstractServer | None = None
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._loop.run_forever, daemon=True)
        self._thread.start()
        self._call(self._listen())

    def _call(self, coroutine: Any) -> Any:
        return asyncio.run_coroutine_threadsafe(coroutine, self._loop).result(timeout=10)

    async def _listen(self) -> None:
        self._server = await asyncio.start_server(self._handle, "127.0.0.1", self.port)

    async def _handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            up_reader, up_writer = await asyncio.open_connection("127.0.0.1", self.target_port)
        except OSError:
            writer.close()
            return
        self._writers |= {writer, up_writer}
        await asyncio.gather(
            self._pipe(reader, up_writer), self._pipe(up_reader, writer), return_exceptions=True
        )
        for w in (writer, up_writer):
            self._writers.discard(w)
            w.close()

    async def _pipe(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        while data := await reader.read(65536):
            while self.stalled:
                await asyncio.sleep(0.05)
            writer.write(data)
            await writer.drain()
        writer.close()

    def cut(self) -> None:
        async def cut() -> None:
            assert self._server is not None
            self._server.close()
            for w in list(self._writers):
                w.transport.abort()

        self._call(cut())

    def stall(self) -> None:
        self.stalled = True

    def restore(self) -> None:
        self.stalled = False
        if self._server is not None and not self._server.is_serving():
            self._call(self._listen())

    def close(self) -> None:
        self.cut()

        async def finish() -> None:
            tasks = [t for t in asyncio.all_tasks() if t is not asyncio.current_task()]
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)

        self._call(finish())
        self._loop.call_soon_threadsafe(self._loop.stop)


@dataclass
class Probe:
    """Requests an API every half second while a fault lasts, and keeps every answer:
    no request may take longer than its timeout or answer 5xx other than a 503 that
    says when to try again."""

    client: httpx.Client
    paths: list[str]
    answers: list[tuple[str, int | str, float]] = field(default_factory=list)
    _stop: threading.Event = field(default_factory=threading.Event)

    def __post_init__(self) -> None:
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self) -> None:
        while not self._stop.wait(0.5):
            for path in self.paths:
                self.request("GET", path)

    def request(self, method: str, path: str, **kwargs: Any) -> httpx.Response | None:
        started = time.monotonic()
        try:
            response = self.client.request(method, path, timeout=REQUEST_TIMEOUT_S, **kwargs)
        except httpx.HTTPError as exc:
            self.answers.append(
                (f"{method} {path}", type(exc).__name__, time.monotonic() - started)
            )
            return None
        elapsed = time.monotonic() - started
        ok_503 = response.status_code == 503 and (
            "retry-after" in response.headers or path == "/readyz"
        )
        code: int | str = response.status_code if not ok_503 else 503
        if response.status_code >= 500 and not ok_503:
            code = f"{response.status_code} {response.text[:200]}"
        self.answers.append((f"{method} {path}", code, elapsed))
        return response

    def stop(self) -> None:
        self._stop.set()
        self._thread.join(timeout=REQUEST_TIMEOUT_S + 2)

    def assert_no_failures(self) -> None:
        bad = [a for a in self.answers if not isinstance(a[1], int) or a[2] > REQUEST_TIMEOUT_S]
        bad += [a for a in self.answers if isinstance(a[1], int) and a[1] >= 500 and a[1] != 503]
        assert not bad, bad[:10]


@dataclass
class ChaosStack(Stack):
    """A stack with its own Redis (cluster) and a cuttable link to PostgreSQL."""

    env: dict[str, str] = field(default_factory=dict)
    redis: RedisServer | None = None
    proxy: TcpProxy | None = None
    workers: list[subprocess.Popen[bytes]] = field(default_factory=list)
    direct_db_url: str = ""  # PostgreSQL without the proxy (the test's own look-ups)

    def training_pid(self, job_id: str) -> int:
        """The pid of the process that claimed the job's running attempt."""
        import psycopg

        url = self.direct_db_url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(url) as conn:
            row = conn.execute("SELECT worker_pid FROM job WHERE id = %s", (job_id,)).fetchone()
        assert row is not None and row[0], row
        return int(row[0])

    def start_worker(self) -> subprocess.Popen[bytes]:
        log = self.log_dir / f"worker-{len(self.workers)}.log"
        worker = _start([TRAINLAB, "worker", "--queues", "cpu,gpu"], self.env, log)
        self.workers.append(worker)
        return worker

    def submit(self, spec: dict[str, Any] | None = None) -> str:
        response = self.client.post("/v1/jobs", json=spec or CHAOS_SPEC)
        assert response.status_code == 201, response.text
        return str(response.json()["id"])

    def job(self, job_id: str) -> dict[str, Any]:
        return self.client.get(f"/v1/jobs/{job_id}", timeout=REQUEST_TIMEOUT_S).json()  # type: ignore[no-any-return]

    def wait_job(
        self, job_id: str, condition: Callable[[dict[str, Any]], bool], timeout: float = 180
    ) -> dict[str, Any]:
        """Poll until ``condition(job)``; transport errors and 503s are waited out."""
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            with contextlib.suppress(httpx.HTTPError, ValueError):
                response = self.client.get(f"/v1/jobs/{job_id}", timeout=REQUEST_TIMEOUT_S)
                if response.status_code == 200:
                    job = response.json()
                    if condition(job):
                        return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id}: condition not met; last {job}\n{self.logs()}")

    def pool_pid_training(self) -> int:
        pool = self.worker_pool_pids()
        assert pool, f"no pool process\n{self.logs()}"
        return pool[0]

    def worker_main_pids(self) -> list[int]:
        roots = [self.root_pid] if not self.workers else [w.pid for w in self.workers]
        family = [pid for r in roots for pid in (r, *_descendants(r))]
        pool = set(self.worker_pool_pids())
        return [pid for pid in family if pid not in pool and b"celery" in _cmd(pid)]


def _cmd(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def assert_recorded_once(stack: ChaosStack, job_id: str) -> None:
    """Epoch metrics 1..N exactly once; every layer has each telemetry step once."""
    metrics = stack.client.get(f"/v1/jobs/{job_id}/metrics").json()
    assert [m["epoch"] for m in metrics] == list(range(1, EPOCHS + 1)), metrics
    params: dict[str, str | int] = {"stat": "grad_norm", "max_points": 10_000}
    series = stack.client.get(f"/v1/jobs/{job_id}/gradients", params=params).json()["series"]
    expected = list(range(10, STEPS + 1, 10))
    assert series and all([p["step"] for p in s["points"]] == expected for s in series)


def _create_database() -> str:
    import psycopg

    database = f"trainlab_chaos_{uuid.uuid4().hex[:10]}"
    try:
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
    except Exception as exc:
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"PostgreSQL must be reachable under CI: {exc}") from exc
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} unreachable: {exc}")
    return database


def _pg_url(database: str, port: int) -> str:
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base.rsplit(':', 1)[0]}:{port}/{database}"


@pytest.fixture(scope="module")
def cluster(tmp_path_factory: pytest.TempPathFactory, mnist1d_cache: Path) -> Iterator[ChaosStack]:
    """PostgreSQL (through a proxy) + a private Redis + one worker + the API, shared by
    a module's scenarios: each one leaves the stack whole (faults undone, a dead worker
    replaced) for the next."""
    tmp_path = tmp_path_factory.mktemp("chaos-cluster")
    if not Path(REDIS_SERVER).exists():
        if os.environ.get("CI") == "true":
            pytest.fail("redis-server is needed for the chaos tests under CI")
        pytest.skip("no redis-server binary")
    database = _create_database()
    data_dir, log_dir = tmp_path / "data", tmp_path / "logs"
    log_dir.mkdir()
    _share_cache(data_dir, mnist1d_cache)
    redis, proxy = RedisServer(log_dir), TcpProxy(PG_PORT)
    env = _base_env(data_dir) | CHAOS_ENV
    env |= {
        "TRAINLAB_DATABASE_URL": _pg_url(database, proxy.port),
        "TRAINLAB_BROKER_URL": redis.url,
    }
    direct = env | {"TRAINLAB_DATABASE_URL": _pg_url(database, PG_PORT)}
    subprocess.run([TRAINLAB, "migrate"], env=direct, check=True, capture_output=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    api_command = [sys.executable, "-m", "uvicorn", "service.api.app:create_app", "--factory"]
    api = _start([*api_command, "--port", str(port)], env, log_dir / "api.log")
    stack: ChaosStack | None = None
    try:
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
            stack = ChaosStack(
                url=url,
                client=client,
                log_dir=log_dir,
                root_pid=api.pid,
                env=env,
                redis=redis,
                proxy=proxy,
                direct_db_url=_pg_url(database, PG_PORT),
            )
            worker = stack.start_worker()
            stack.root_pid = worker.pid
            _wait_ready(url, [api, worker], log_dir)
            yield stack
    finally:
        processes = [api, *(stack.workers if stack else [])]
        for process in processes:
            with contextlib.suppress(ProcessLookupError):
                process.kill()
        for process in processes:
            process.wait()
        if stack is not None:
            for pid in _descendants(os.getpid()):
                if b"celery" in _cmd(pid):
                    with contextlib.suppress(ProcessLookupError):
                        os.kill(pid, signal.SIGKILL)
        redis.stop()
        proxy.close()
        _drop_database(_pg_url(database, PG_PORT))


def start_embedded(
    root: Path, cache: Path, log_name: str = "up.log"
) -> tuple[subprocess.Popen[bytes], str, dict[str, str], Path]:
    """``trainlab up`` on ``root``/data (started again on the same folder, it finds what
    the last one left): (process, URL, environment, log dir)."""
    data_dir, log_dir = root / "data", root / "logs"
    log_dir.mkdir(exist_ok=True)
    if not (data_dir / "cache").exists():
        _share_cache(data_dir, cache)
    env = _base_env(data_dir) | CHAOS_ENV
    port = _free_port()
    command = [TRAINLAB, "up", "--port", str(port), "--data-dir", str(data_dir)]
    return _start(command, env, log_dir / log_name), f"http://127.0.0.1:{port}", env, log_dir


@pytest.fixture(scope="module")
def embedded(tmp_path_factory: pytest.TempPathFactory, mnist1d_cache: Path) -> Iterator[ChaosStack]:
    """``trainlab up`` (SQLite, filesystem broker), with the chaos settings."""
    process, url, env, log_dir = start_embedded(
        tmp_path_factory.mktemp("chaos-embedded"), mnist1d_cache
    )
    try:
        _wait_ready(url, [process], log_dir)
        with httpx.Client(base_url=url, timeout=REQUEST_TIMEOUT_S) as client:
            yield ChaosStack(url=url, client=client, log_dir=log_dir, root_pid=process.pid, env=env)
    finally:
        family = _descendants(process.pid)
        process.kill()
        process.wait()
        for pid in family:
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)
