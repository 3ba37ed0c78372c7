"""``trainlab up``'s supervisor: the API server and its worker process stop together.

uvicorn 0.54 re-raises a SIGTERM it caught once its own shutdown is done, which ends the
process before any cleanup after ``server.run()`` (a ``finally`` there runs on SIGINT
only). So the server runs in a thread, where uvicorn installs no signal handlers, and the
main thread owns SIGINT and SIGTERM: either one stops the API and the worker, the
worker's pool children included, within the worker's grace.

Two more guards keep a worker from outliving ``trainlab up``. The worker runs in its own
process group, which is killed whole at the end (an orphaned pool child goes too), and it
asks the kernel to kill it when its parent dies (``die_with_parent``), for the case where
``trainlab up`` itself is killed with no chance to clean up.
"""

from __future__ import annotations

import contextlib
import logging
import os
import queue
import signal
import subprocess
import threading
import time
from collections.abc import Sequence
from types import FrameType

import uvicorn
from billiard.util import set_pdeathsig

logger = logging.getLogger(__name__)

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)
# How long a stopping worker may take to finish or hand back its task before it is killed.
WORKER_GRACE_S = 30.0
# How long the API's open connections (event streams) may hold its shutdown up.
API_GRACE_S = 5
# How often the supervisor looks at the API thread and the worker while it waits.
WATCH_INTERVAL_S = 0.5
# A worker that died is started again after this long, doubling while it keeps dying
# young (a crash loop must not spin), up to the maximum.
RESTART_DELAY_S = 0.5
MAX_RESTART_DELAY_S = 30.0
# A worker that ran this long before it died was healthy: the delay starts over.
HEALTHY_RUN_S = 60.0


class Supervisor:
    """Runs the API server and one worker process until SIGINT or SIGTERM, then stops both.

    The loop in ``run`` is the one place that watches the stack: a worker that died
    (killed, out of memory) is started again there, and its successor's reconciler frees
    the jobs it held at once (the dead worker's pid is gone). The worker must be started
    from the main thread: the kernel's parent-death signal fires when the *thread* that
    forked the worker ends.
    """

    def __init__(
        self,
        *,
        server_config: uvicorn.Config,
        worker_command: Sequence[str],
        worker_grace_s: float = WORKER_GRACE_S,
    ) -> None:
        self.server = uvicorn.Server(server_config)
        self.worker_command = list(worker_command)
        self.worker_grace_s = worker_grace_s
        self.worker: subprocess.Popen[bytes] | None = None
        self.restarts = 0
        self._restart_delay = RESTART_DELAY_S
        self._started_at = 0.0
        self._restart_at: float | None = None
        # SimpleQueue.put is reentrant, so the signal handler may call it at any moment.
        self._signals: queue.SimpleQueue[int] = queue.SimpleQueue()

    def run(self) -> int:
        """Serve until a stop signal (or until the server fails); 0 if it served, else 1."""
        previous = {sig: signal.signal(sig, self._on_signal) for sig in STOP_SIGNALS}
        try:
            self.worker = self._start_worker()
            api = threading.Thread(target=self.server.run, name="api-server")
            api.start()
            while api.is_alive() and self._next_signal(WATCH_INTERVAL_S) is None:
                self._restart_dead_worker()
            self._stop(api)
        finally:
            self._kill_worker_group()
            for sig, handler in previous.items():
                signal.signal(sig, handler)
        return 0 if self.server.started else 1

    def _start_worker(self) -> subprocess.Popen[bytes]:
        # Its own process group: a terminal's Ctrl-C reaches this supervisor alone, which
        # stops the API and the worker in its own order, and the group can be killed whole.
        worker = subprocess.Popen(self.worker_command, process_group=0)
        self._started_at = time.monotonic()
        logger.info("worker started (pid %d)", worker.pid)
        return worker

    def _restart_dead_worker(self) -> None:
        """Start the worker again once it has died (after a delay that grows while it
        keeps dying young)."""
        if self.worker is None or self.worker.poll() is None:
            return
        now = time.monotonic()
        if self._restart_at is None:
            if now - self._started_at >= HEALTHY_RUN_S:
                self._restart_delay = RESTART_DELAY_S
            self._restart_at = now + self._restart_delay
            logger.warning(
                "worker (pid %d) exited with %s; starting a new one in %.1f s",
                self.worker.pid,
                self.worker.returncode,
                self._restart_delay,
            )
            self._restart_delay = min(self._restart_delay * 2, MAX_RESTART_DELAY_S)
        if now < self._restart_at:
            return
        self._restart_at = None
        self._kill_worker_group()  # its pool children, if any outlived it
        self.worker = self._start_worker()
        self.restarts += 1

    def _stop(self, api: threading.Thread) -> None:
        """Stop the API and the worker together; past the grace, or on a second signal, kill."""
        deadline = time.monotonic() + self.worker_grace_s
        self.server.should_exit = True
        # Celery's warm shutdown: it stops consuming, and its running job checkpoints at
        # the next step and goes back to the queue (worker.supervision).
        self._signal_worker(signal.SIGTERM)
        while api.is_alive() or self._worker_running():
            if time.monotonic() >= deadline or self._next_signal(0.1) is not None:
                logger.warning("grace over or a second stop signal: killing the worker")
                self.server.force_exit = True
                break
        self._kill_worker_group()
        api.join()

    def _on_signal(self, signum: int, _frame: FrameType | None) -> None:
        self._signals.put(signum)

    def _next_signal(self, timeout: float) -> int | None:
        try:
            return self._signals.get(timeout=timeout)
        except queue.Empty:
            return None

    def _worker_running(self) -> bool:
        return self.worker is not None and self.worker.poll() is None

    def _signal_worker(self, signum: int) -> None:
        if self._worker_running():
            assert self.worker is not None
            self.worker.send_signal(signum)

    def _kill_worker_group(self) -> None:
        """SIGKILL whatever is left of the worker's process group, then reap the worker."""
        if self.worker is None:
            return
        # ProcessLookupError: the group is empty, everything has stopped already.
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.worker.pid, signal.SIGKILL)
        self.worker.wait()


def die_with_parent(parent_pid: int) -> bool:
    """Have the kernel SIGKILL this process when its parent dies (kept across ``exec``).

    SIGKILL, not SIGTERM: a warm shutdown would let an orphaned worker finish its job
    first, running beside the worker of the next ``trainlab up`` on the same data dir.
    Celery's pool children die with the worker main process in the same way. Linux only;
    elsewhere the supervisor's stop is the only guard. False if the parent is gone already
    (it died before the signal was armed: nobody would ever stop this process).
    """
    try:
        set_pdeathsig(signal.SIGKILL)
    except OSError:
        logger.warning("this platform cannot tie the worker to its parent's life")
    return os.getppid() == parent_pid
