"""The broker contract: task and queue names, the Celery configuration, sending by name.

Both sides use it: the API sends the training task by name (it never imports ``worker``
or torch), and the worker's Celery app (``worker.celery_app``) takes its configuration
from :func:`broker_config`, so the two cannot disagree about where messages go.
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from concurrent.futures import TimeoutError as FutureTimeout
from typing import Any, Literal, TypeVar

from celery import Celery

from service.config import Settings

logger = logging.getLogger(__name__)

TRAIN_TASK = "trainlab.train_job"
CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"
# A consumer's blocking pop waits 1 s on Redis: its socket must wait longer than that.
CONSUMER_SOCKET_TIMEOUT_S = 10.0

T = TypeVar("T")


class BrokerTimeoutError(TimeoutError):
    """A broker call did not finish within its deadline (a frozen broker, a lost network)."""


def broker_config(
    settings: Settings, role: Literal["client", "worker"] = "worker"
) -> dict[str, Any]:
    """Celery settings shared by the senders (API, reconciler) and the worker.

    Senders get short socket timeouts and no publish retries: a submit must answer while
    the broker is down or frozen, and a job that was not sent is sent again later.
    """
    options: dict[str, Any]
    if settings.uses_embedded_broker:
        folder = settings.broker_folder
        for sub in ("queue", "control"):
            (folder / sub).mkdir(parents=True, exist_ok=True)
        options = {
            "data_folder_in": str(folder / "queue"),
            "data_folder_out": str(folder / "queue"),
            "control_folder": str(folder / "control"),
            "polling_interval": settings.broker_polling_interval,
        }
    else:
        # Redis redelivers an unacknowledged message after this long; with acks_late a
        # job that trains longer than the default hour would start a second time.
        socket_timeout = (
            settings.broker_timeout_s if role == "client" else CONSUMER_SOCKET_TIMEOUT_S
        )
        options = {
            "visibility_timeout": 7 * 24 * 3600,
            "socket_timeout": socket_timeout,
            "socket_connect_timeout": settings.broker_timeout_s,
            "socket_keepalive": True,
        }
        if role == "client":
            options["max_retries"] = 0  # default_channel fails at once instead of retrying
        if settings.broker_key_prefix:
            options["global_keyprefix"] = settings.broker_key_prefix
    return {
        "broker_url": settings.resolved_broker_url,
        "broker_transport_options": options,
        "broker_connection_retry_on_startup": True,
        "broker_connection_timeout": settings.broker_timeout_s,
        "task_publish_retry": role != "client",
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # Job state lives in the database; Celery results would be a second copy.
        "task_ignore_result": True,
        "task_default_queue": CPU_QUEUE,
        "task_acks_late": True,
        # A pool child killed mid-job: its worker frees the job in the database and sends
        # it again itself (worker.supervision), so the message is not put back as well.
        "task_reject_on_worker_lost": False,
        # How long the pool waits for a killed child's result before it frees the slot
        # (Celery's default, 10 s, holds the job's new attempt up that long).
        "worker_lost_wait": 1.0,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "broker_heartbeat": 0 if settings.uses_embedded_broker else 120,
    }


_clients: dict[tuple[str, str, str], Celery] = {}


def _client(settings: Settings) -> Celery:
    key = (settings.resolved_broker_url, str(settings.broker_folder), settings.broker_key_prefix)
    if key not in _clients:
        app = Celery("trainlab-client")
        app.conf.update(broker_config(settings, role="client"))
        _clients[key] = app
    return _clients[key]


def queue_for(device: str) -> str:
    """Specs that demand CUDA go to GPU workers; cpu and auto go anywhere on ``cpu``."""
    return GPU_QUEUE if device == "cuda" else CPU_QUEUE


# Broker calls run here so that a caller can stop waiting at its deadline; a call left
# behind ends by itself within its socket timeouts.
_calls = ThreadPoolExecutor(max_workers=4, thread_name_prefix="broker-call")


def _after_fork_in_child() -> None:
    # A forked worker process gets neither the parent's threads nor its broker sockets.
    global _calls
    _calls = ThreadPoolExecutor(max_workers=4, thread_name_prefix="broker-call")
    _clients.clear()


os.register_at_fork(after_in_child=_after_fork_in_child)


def _within(seconds: float, call: Callable[[], T]) -> T:
    future = _calls.submit(call)
    try:
        return future.result(timeout=seconds)
    except FutureTimeout as exc:
        raise BrokerTimeoutError(f"the broker did not answer within {seconds:g} s") from exc


def enqueue_training(settings: Settings, *, job_id: str, queue: str) -> None:
    """Send the training task, waiting ``broker_timeout_s`` at most; raises when the
    broker is unreachable. Call only after the job's row is committed."""
    client = _client(settings)
    _within(
        settings.broker_timeout_s,
        lambda: client.send_task(TRAIN_TASK, args=[job_id], queue=queue, retry=False),
    )
    logger.info("enqueued job %s on queue %s", job_id, queue)


def broker_reachable(settings: Settings, timeout_s: float | None = None) -> bool:
    timeout_s = timeout_s or settings.broker_timeout_s

    def ping() -> None:
        with _client(settings).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=timeout_s)

    try:
        _within(timeout_s, ping)
    except Exception:  # any transport error means "not ready"
        logger.warning("broker not reachable", exc_info=True)
        return False
    return True
