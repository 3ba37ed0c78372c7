"""The Celery app of trainlab workers: JSON only, explicit queues, acks_late, prefetch 1.

Start one with ``trainlab worker`` (or ``celery -A worker.celery_app worker``). The broker
settings come from ``service.queue.broker_config`` so API and workers always agree.
"""

from __future__ import annotations

import logging
from typing import Any

from celery import Celery
from celery.signals import after_setup_logger, after_setup_task_logger, worker_process_init

from service.config import get_settings
from service.queue import broker_config
from worker import logs

logger = logging.getLogger(__name__)

app = Celery("trainlab", include=["worker.tasks"])
app.conf.update(broker_config(get_settings()))


_torch_configured = False


def configure_torch() -> None:
    """Size torch's intra-op threads to this process's CPU share.

    On a 2-core machine with the other core busy, 2 OpenMP threads made a 20-layer MLP
    step ~50x slower than 1 thread, so never let torch default to every core.
    """
    global _torch_configured
    if _torch_configured:
        return
    import torch

    threads = get_settings().resolved_torch_threads
    torch.set_num_threads(threads)
    # Saturated sigmoids produce denormals, which are very slow on x86 CPUs.
    torch.set_flush_denormal(True)
    _torch_configured = True
    logger.info("torch intra-op threads: %d", threads)


@worker_process_init.connect
def _on_child_start(**_: Any) -> None:
    # Runs in each prefork child, after the fork: CUDA is never initialised before it.
    configure_torch()


@after_setup_logger.connect
@after_setup_task_logger.connect
def _tag_log_lines(logger: logging.Logger, **_: Any) -> None:
    # Every line a worker writes names the job it is about (job=- outside a job).
    logs.install(logger, as_json=get_settings().log_json)
