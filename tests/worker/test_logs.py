"""Worker log lines name their job, from every thread of the process that trains it."""

from __future__ import annotations

import io
import json
import logging
import threading

from worker import logs


def _logger(stream: io.StringIO, *, as_json: bool) -> logging.Logger:
    logger = logging.getLogger(f"test-logs-{as_json}")
    logger.handlers = [logging.StreamHandler(stream)]
    logger.setLevel(logging.INFO)
    logger.propagate = False
    logs.install(logger, as_json=as_json)
    return logger


def test_every_line_carries_the_job_id_including_other_threads() -> None:
    stream = io.StringIO()
    logger = _logger(stream, as_json=False)
    logger.info("before")
    with logs.job_context("job123"):
        logger.info("training")
        thread = threading.Thread(target=lambda: logger.info("recorder thread"))
        thread.start()
        thread.join()
    logger.info("after")
    lines = stream.getvalue().splitlines()
    assert [line.split(" job=")[1].split()[0] for line in lines] == ["-", "job123", "job123", "-"]


def test_json_lines_when_asked() -> None:
    stream = io.StringIO()
    logger = _logger(stream, as_json=True)
    with logs.job_context("abc"):
        logger.warning("slow step")
    entry = json.loads(stream.getvalue())
    assert (entry["job_id"], entry["level"], entry["message"]) == ("abc", "WARNING", "slow step")


def test_a_task_s_job_stays_named_until_the_next_task() -> None:
    stream = io.StringIO()
    logger = _logger(stream, as_json=False)
    logs.set_job("first")
    with logs.job_context("first"):
        logger.info("training")
    logger.info("Task trainlab.train_job[...] succeeded")  # Celery's line, after the task
    logs.set_job(logs.NO_JOB)
    assert [line.split(" job=")[1].split()[0] for line in stream.getvalue().splitlines()] == [
        "first",
        "first",
    ]
