"""The broker contract: task and queue names, the Celery configuration, sending by name.

Both sides use it: the API sends the training task by name (it never imports ``worker``
or torch), and the worker's Celery app (``worker.celery_app``) takes its configuration
from :func:`broker_config`, so the two cannot disagree about where messages go.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery

from service.config import Settings

logger = logging.getLogger(__name__)

TRAIN_TASK = "trainlab.train_job"
CPU_QUEUE = "cpu"
GPU_QUEUE = "gpu"


def broker_config(settings: Settings) -> dict[str, Any]:
    """Celery settings shared by the API's client and the worker."""
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
        options = {"visibility_timeout": 7 * 24 * 3600}
        if settings.broker_key_prefix:
            options["global_keyprefix"] = settings.broker_key_prefix
    return {
        "broker_url": settings.resolved_broker_url,
        "broker_transport_options": options,
        "broker_connection_retry_on_startup": True,
        "task_serializer": "json",
        "accept_content": ["json"],
        "result_serializer": "json",
        # Job state lives in the database; Celery results would be a second copy.
        "task_ignore_result": True,
        "task_default_queue": CPU_QUEUE,
        "task_acks_late": True,
        "task_reject_on_worker_lost": True,
        "worker_prefetch_multiplier": 1,
        "worker_hijack_root_logger": False,
        "broker_heartbeat": 0 if settings.uses_embedded_broker else 120,
    }


_clients: dict[tuple[str, str, str], Celery] = {}


def _client(settings: Settings) -> Celery:
    key = (settings.resolved_broker_url, str(settings.broker_folder), settings.broker_key_prefix)
    if key not in _clients:
        app = Celery("trainlab-api")
        app.conf.update(broker_config(settings))
        _clients[key] = app
    return _clients[key]


def queue_for(device: str) -> str:
    """Specs that demand CUDA go to GPU workers; cpu and auto go anywhere on ``cpu``."""
    return GPU_QUEUE if device == "cuda" else CPU_QUEUE


def enqueue_training(settings: Settings, *, job_id: str, queue: str) -> None:
    """Send the training task. Call only after the job's row is committed."""
    _client(settings).send_task(TRAIN_TASK, args=[job_id], queue=queue)
    logger.info("enqueued job %s on queue %s", job_id, queue)


def broker_reachable(settings: Settings) -> bool:
    try:
        with _client(settings).connection_for_write() as conn:
            conn.ensure_connection(max_retries=1, timeout=2)
    except Exception:  # any transport error means "not ready"
        logger.warning("broker not reachable", exc_info=True)
        return False
    return True
