"""``trainlab up`` stops as a whole: no worker (main or pool child) outlives it.

systemd, ``docker stop`` and ``kill`` send SIGTERM, a person's Ctrl-C SIGINT; a worker
left behind would run beside the next ``trainlab up``'s on the same data dir.
"""

from __future__ import annotations

import contextlib
import os
import signal
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from service.stack import WORKER_GRACE_S
from tests.integration.conftest import Stack, _descendants, _wait_ready, start_up
from tests.integration.test_jobs_end_to_end import _long_job, _wait_until_training

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

# Liveness bounds, not timings: a stop is given the worker's whole grace and then some.
STOP_BOUND_S = WORKER_GRACE_S + 30
SHORT_GRACE_S = 2.0


def _start_time(pid: int) -> str | None:
    """The process's start time (field 22 of /proc/PID/stat); None once it has exited.

    With the pid it names one process even if the pid is reused; a zombie has exited.
    """
    try:
        fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    except OSError:
        return None
    return None if fields[0] == "Z" else fields[19]


class Family:
    """The processes of one ``trainlab up``: itself, its worker and the pool children."""

    def __init__(self, stack: Stack) -> None:
        deadline = time.monotonic() + 120
        # The pool child may fork after the API answers: wait until there is one to watch.
        while not (pool := stack.worker_pool_pids()):
            assert time.monotonic() < deadline, f"no worker pool child:\n{stack.logs()}"
            time.sleep(0.2)
        self.pool = pool
        pids = [stack.root_pid, *_descendants(stack.root_pid)]
        self.started = {pid: start for pid in pids if (start := _start_time(pid)) is not None}

    def alive(self) -> list[int]:
        return [pid for pid, start in self.started.items() if _start_time(pid) == start]

    def kill_survivors(self) -> None:
        """A failing test must not leave its orphans training beside the rest of the suite."""
        for pid in self.alive():
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


@contextlib.contextmanager
def _up(
    tmp_path: Path, cache: Path, *options: str
) -> Iterator[tuple[subprocess.Popen[bytes], Stack, Family]]:
    process, url, log_dir = start_up(tmp_path, cache, *options)
    family: Family | None = None
    try:
        _wait_ready(url, [process], log_dir)
        with httpx.Client(base_url=url, timeout=30) as client:
            stack = Stack(url=url, client=client, log_dir=log_dir, root_pid=process.pid)
            family = Family(stack)
            yield process, stack, family
    finally:
        if process.poll() is None:
            process.kill()
            process.wait()
        if family is not None:
            family.kill_survivors()


@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_stop_signal_stops_the_api_and_every_worker_process(
    signum: signal.Signals, tmp_path: Path, mnist1d_cache: Path
) -> None:
    with _up(tmp_path, mnist1d_cache) as (process, stack, family):
        assert len(family.started) >= 3, family.started  # up, the worker main, a pool child
        process.send_signal(signum)
        assert process.wait(timeout=STOP_BOUND_S) == 0, stack.logs()
        # `trainlab up` reaps its stack before it exits: nothing may be left at that moment.
        assert family.alive() == [], stack.logs()
        assert "stopped; data kept in" in stack.logs()
        # An idle pool child is left to the pool's own shutdown, not killed by a signal
        # (Celery logged that as an error and forked a replacement while stopping).
        assert "exited with 'signal" not in stack.logs(), stack.logs()


def test_sigterm_stops_a_worker_busy_training_within_its_grace(
    tmp_path: Path, mnist1d_cache: Path
) -> None:
    options = ("--worker-grace", str(SHORT_GRACE_S))
    with _up(tmp_path, mnist1d_cache, *options) as (process, stack, family):
        _wait_until_training(stack, _long_job(stack))
        # Celery's warm shutdown would wait for this 500-epoch job; the job checkpoints
        # and requeues at its next step instead, and a worker still busy past the grace
        # would be killed.
        process.send_signal(signal.SIGTERM)
        assert process.wait(timeout=SHORT_GRACE_S + 30) == 0, stack.logs()
        assert family.alive() == [], stack.logs()


def test_worker_dies_with_a_killed_up_process(tmp_path: Path, mnist1d_cache: Path) -> None:
    with _up(tmp_path, mnist1d_cache) as (process, stack, family):
        process.kill()  # SIGKILL: `trainlab up` gets no chance to stop anything itself
        process.wait()
        deadline = time.monotonic() + STOP_BOUND_S
        while family.alive() and time.monotonic() < deadline:
            time.sleep(0.2)
        assert family.alive() == [], stack.logs()
