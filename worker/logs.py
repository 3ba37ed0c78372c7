"""Worker log lines that name their job: ``job=<id>`` on every line (or a ``job_id`` key
in JSON, with ``TRAINLAB_LOG_JSON=true``).

A prefork child (or a solo worker) trains one job at a time, so the current job is a
process-wide value: the recorder's and the watcher's threads log under it too, which a
context variable (not inherited by new threads) would miss.
"""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from contextlib import contextmanager
from datetime import UTC, datetime

NO_JOB = "-"
TEXT_FORMAT = "[%(asctime)s: %(levelname)s/%(processName)s] job=%(job_id)s %(name)s: %(message)s"

_current_job = NO_JOB


def set_job(job_id: str) -> None:
    """The job this process now works on, until the next one: Celery's own line about a
    task's end comes after the task function returned, and still names its job."""
    global _current_job
    _current_job = job_id


@contextmanager
def job_context(job_id: str) -> Iterator[None]:
    global _current_job
    previous, _current_job = _current_job, job_id
    try:
        yield
    finally:
        _current_job = previous


class JobIdFilter(logging.Filter):
    def filter(self, record: logging.LogRecord) -> bool:
        if not hasattr(record, "job_id"):
            record.job_id = _current_job
        return True


class JsonFormatter(logging.Formatter):
    """One JSON object per line: time, level, process, job_id, logger, message."""

    def format(self, record: logging.LogRecord) -> str:
        entry = {
            "time": datetime.fromtimestamp(record.created, UTC).isoformat(),
            "level": record.levelname,
            "process": record.processName,
            "job_id": getattr(record, "job_id", NO_JOB),
            "logger": record.name,
            "message": record.getMessage(),
        }
        if record.exc_info:
            entry["exception"] = self.formatException(record.exc_info)
        return json.dumps(entry)


def install(logger: logging.Logger, *, as_json: bool) -> None:
    """Every handler of ``logger`` tags records with the job and uses our format."""
    formatter: logging.Formatter = JsonFormatter() if as_json else logging.Formatter(TEXT_FORMAT)
    for handler in logger.handlers:
        handler.addFilter(JobIdFilter())
        handler.setFormatter(formatter)
