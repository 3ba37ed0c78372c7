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
# How often the supervisor looks at the API thread while it waits for a signal.
WATCH_INTERVAL_S = 0.5


class Supervisor:
    """Runs the API server and one worker process until SIGINT or SIGTERM, then stops both.

    The loop in ``run`` is the one place that watches the stack, so a later restart of a
    dead worker belongs there. The worker must be started from the main thread: the
    kernel's parent-death signal fires when the *thread* that forked the worker ends.
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
                pass
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
        logger.info("worker started (pid %d)", worker.pid)
        return worker

    def _stop(self, api: threading.Thread) -> None:
        """Stop the API and the worker together; past the grace, or on a second signal, kill."""
        deadline = time.monotonic() + self.worker_grace_s
        self.server.should_exit = True
        # Celery's warm shutdown: stop consuming, let the running task finish.
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
