"""Real processes: the API under uvicorn and a Celery worker, over a real broker and DB.

Two stacks: the embedded default (``trainlab up``: SQLite in WAL mode and kombu's
filesystem broker) and the cluster one (PostgreSQL + Redis, as this machine runs them).
The cluster stack is skipped with a reason where the servers are absent, except under
``CI=true``, where their absence is a failure.
"""

from __future__ import annotations

import os
import shutil
import socket
import subprocess
import sys
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import httpx
import pytest

TRAINLAB = str(Path(sys.executable).with_name("trainlab"))
PG_ADMIN_URL = os.environ.get(
    "TRAINLAB_TEST_PG_ADMIN", "postgresql://postgres@127.0.0.1:5432/postgres"
)
REDIS_URL = os.environ.get("TRAINLAB_TEST_REDIS_URL", "redis://127.0.0.1:6379/15")


@dataclass
class Stack:
    url: str
    client: httpx.Client
    log_dir: Path
    root_pid: int  # the process the stack was started as

    def worker_pool_pids(self) -> list[int]:
        """The Celery pool processes that run tasks (children of the worker process)."""
        family = [self.root_pid, *_descendants(self.root_pid)]
        celery = [p for p in family if b"celery" in _cmdline(p)]
        workers = set(celery)
        return [p for p in celery if _parent(p) in workers]

    def wait_for(self, job_id: str, statuses: set[str], timeout: float = 180) -> dict[str, Any]:
        deadline = time.monotonic() + timeout
        job: dict[str, Any] = {}
        while time.monotonic() < deadline:
            job = self.client.get(f"/v1/jobs/{job_id}").raise_for_status().json()
            if job["status"] in statuses:
                return job
            time.sleep(0.2)
        raise AssertionError(f"job {job_id} still {job.get('status')}; logs:\n{self.logs()}")

    def logs(self) -> str:
        return "\n".join(p.read_text()[-4000:] for p in sorted(self.log_dir.glob("*.log")))


def _cmdline(pid: int) -> bytes:
    try:
        return Path(f"/proc/{pid}/cmdline").read_bytes()
    except OSError:
        return b""


def _parent(pid: int) -> int:
    try:
        stat = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return -1
    return int(stat.rsplit(")", 1)[1].split()[1])


def _descendants(root: int) -> list[int]:
    pids = [int(p.name) for p in Path("/proc").iterdir() if p.name.isdigit()]
    parents = {pid: _parent(pid) for pid in pids}
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found.extend(children)
        frontier = children
    return found


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def _start(command: list[str], env: dict[str, str], log: Path) -> subprocess.Popen[bytes]:
    handle = log.open("wb")
    return subprocess.Popen(command, env=env, stdout=handle, stderr=subprocess.STDOUT)


def _stop(processes: list[subprocess.Popen[bytes]]) -> None:
    for process in processes:
        process.terminate()
    for process in processes:
        try:
            process.wait(timeout=20)
        except subprocess.TimeoutExpired:
            process.kill()


def _wait_ready(url: str, processes: list[subprocess.Popen[bytes]], log_dir: Path) -> None:
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        for process in processes:
            if process.poll() is not None:
                logs = "\n".join(p.read_text() for p in log_dir.glob("*.log"))
                raise RuntimeError(f"{process.args!r} exited {process.returncode}:\n{logs}")
        try:
            if httpx.get(f"{url}/readyz", timeout=2).status_code == 200:
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise TimeoutError(f"{url} not ready")


def _base_env(data_dir: Path) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINLAB_")}
    env.update(
        TRAINLAB_DATA_DIR=str(data_dir),
        TRAINLAB_TORCH_THREADS="1",
        # Short enough for the lost-worker test to see its job requeued within seconds.
        TRAINLAB_HEARTBEAT_INTERVAL_S="0.5",
        TRAINLAB_LEASE_S="3",
        TRAINLAB_RECONCILE_INTERVAL_S="0.5",
        PYTHONUNBUFFERED="1",
    )
    return env


@pytest.fixture(scope="session")
def mnist1d_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Both stacks share one generated MNIST-1D, as a deployment's cache would."""
    return tmp_path_factory.mktemp("shared-cache")


def _share_cache(data_dir: Path, cache: Path) -> None:
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / "cache").symlink_to(cache, target_is_directory=True)


def start_up(root: Path, cache: Path, *options: str) -> tuple[subprocess.Popen[bytes], str, Path]:
    """Start ``trainlab up`` with its data and logs under ``root``: (process, URL, log dir).

    The caller waits for it (``_wait_ready``) and stops it.
    """
    data_dir, log_dir = root / "data", root / "logs"
    log_dir.mkdir()
    _share_cache(data_dir, cache)
    port = _free_port()
    command = [TRAINLAB, "up", "--port", str(port), "--data-dir", str(data_dir), *options]
    process = _start(command, _base_env(data_dir), log_dir / "up.log")
    return process, f"http://127.0.0.1:{port}", log_dir


@pytest.fixture(scope="session")
def embedded_stack(
    tmp_path_factory: pytest.TempPathFactory, mnist1d_cache: Path
) -> Iterator[Stack]:
    """Exactly what the README's run command starts: ``trainlab up``."""
    process, url, log_dir = start_up(tmp_path_factory.mktemp("embedded"), mnist1d_cache)
    try:
        _wait_ready(url, [process], log_dir)
        with httpx.Client(base_url=url, timeout=30) as client:
            yield Stack(url=url, client=client, log_dir=log_dir, root_pid=process.pid)
    finally:
        # SIGINT is what a person's Ctrl-C sends: `trainlab up` stops its worker too.
        process.send_signal(2)
        try:
            process.wait(timeout=40)
        except subprocess.TimeoutExpired:
            process.kill()


def _require_servers() -> tuple[str, str]:
    """A fresh PostgreSQL database and a Redis URL, or a skip (a failure under CI)."""
    try:
        import psycopg
        import redis

        database = f"trainlab_it_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN_URL, autocommit=True, connect_timeout=3) as conn:
            conn.execute(f'CREATE DATABASE "{database}"')
        redis.Redis.from_url(REDIS_URL, socket_connect_timeout=3).ping()
    except Exception as exc:
        if os.environ.get("CI") == "true":
            raise RuntimeError(f"PostgreSQL/Redis must be reachable under CI: {exc}") from exc
        pytest.skip(f"PostgreSQL at {PG_ADMIN_URL} or Redis at {REDIS_URL} unreachable: {exc}")
    base = PG_ADMIN_URL.rsplit("/", 1)[0].replace("postgresql://", "postgresql+psycopg://")
    return f"{base}/{database}", REDIS_URL


def _delete_keys(url: str, prefix: str) -> None:
    import redis

    client = redis.Redis.from_url(url)
    keys = list(client.scan_iter(match=f"{prefix}*"))
    if keys:
        client.delete(*keys)


def _drop_database(url: str) -> None:
    import psycopg

    database = url.rsplit("/", 1)[1]
    with psycopg.connect(PG_ADMIN_URL, autocommit=True) as conn:
        conn.execute(f'DROP DATABASE IF EXISTS "{database}" WITH (FORCE)')


@pytest.fixture(scope="session")
def cluster_stack(tmp_path_factory: pytest.TempPathFactory, mnist1d_cache: Path) -> Iterator[Stack]:
    """Cluster mode by configuration alone: migrate, a worker, the API as separate processes."""
    database_url, broker_url = _require_servers()
    root = tmp_path_factory.mktemp("cluster")
    data_dir, log_dir = root / "data", root / "logs"
    log_dir.mkdir()
    _share_cache(data_dir, mnist1d_cache)
    # Its own key prefix: test runs sharing the machine's Redis never see each other's
    # messages, and nothing of anybody else's is flushed.
    key_prefix = f"trainlab-it-{uuid.uuid4().hex[:10]}:"
    env = _base_env(data_dir) | {
        "TRAINLAB_DATABASE_URL": database_url,
        "TRAINLAB_BROKER_URL": broker_url,
        "TRAINLAB_BROKER_KEY_PREFIX": key_prefix,
    }
    subprocess.run([TRAINLAB, "migrate"], env=env, check=True, capture_output=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    processes = [
        _start([TRAINLAB, "worker", "--queues", "cpu,gpu"], env, log_dir / "worker.log"),
        _start(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "service.api.app:create_app",
                "--factory",
                "--port",
                str(port),
            ],
            env,
            log_dir / "api.log",
        ),
    ]
    try:
        _wait_ready(url, processes, log_dir)
        with httpx.Client(base_url=url, timeout=30) as client:
            yield Stack(url=url, client=client, log_dir=log_dir, root_pid=processes[0].pid)
    finally:
        _stop(processes)
        _drop_database(database_url)
        _delete_keys(broker_url, key_prefix)
        shutil.rmtree(root, ignore_errors=True)


@contextmanager
def api_only(root: Path, backend: str, **settings: str) -> Iterator[str]:
    """The API alone under uvicorn (no worker: jobs stay queued), on the embedded backend
    (SQLite, filesystem broker) or the cluster one (PostgreSQL, Redis); yields its URL.

    ``settings`` are extra TRAINLAB_* variables, e.g. ``BODY_READ_TIMEOUT_S="1"``.
    """
    data_dir, log_dir = root / "data", root / "logs"
    log_dir.mkdir(parents=True)
    # No worker on purpose: readiness must not wait for one.
    env = _base_env(data_dir) | {"TRAINLAB_READINESS_NEEDS_WORKER": "false"}
    env |= {f"TRAINLAB_{k}": v for k, v in settings.items()}
    database_url = key_prefix = broker_url = None
    if backend == "cluster":
        database_url, broker_url = _require_servers()
        key_prefix = f"trainlab-it-{uuid.uuid4().hex[:10]}:"
        env |= {
            "TRAINLAB_DATABASE_URL": database_url,
            "TRAINLAB_BROKER_URL": broker_url,
            "TRAINLAB_BROKER_KEY_PREFIX": key_prefix,
        }
    subprocess.run([TRAINLAB, "migrate"], env=env, check=True, capture_output=True)
    port = _free_port()
    url = f"http://127.0.0.1:{port}"
    command = [sys.executable, "-m", "uvicorn", "service.api.app:create_app", "--factory"]
    process = _start([*command, "--port", str(port)], env, log_dir / "api.log")
    try:
        _wait_ready(url, [process], log_dir)
        yield url
    finally:
        _stop([process])
        if database_url is not None and broker_url is not None and key_prefix is not None:
            _drop_database(database_url)
            _delete_keys(broker_url, key_prefix)


@pytest.fixture(params=["embedded", "cluster"])
def stack(request: pytest.FixtureRequest) -> Stack:
    return request.getfixturevalue(f"{request.param}_stack")  # type: ignore[no-any-return]
