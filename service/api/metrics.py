"""Prometheus collectors computed at scrape time (``/metrics``)."""

from __future__ import annotations

import logging
import math
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily, HistogramMetricFamily
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.orm import Session, sessionmaker

from service import jobs

logger = logging.getLogger(__name__)


class JobCountCollector:
    """``trainlab_jobs{status}``: computed from the database at scrape time."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def describe(self) -> list[GaugeMetricFamily]:
        return [GaugeMetricFamily("trainlab_jobs", "Jobs by status", labels=["status"])]

    def collect(self) -> Iterator[GaugeMetricFamily]:
        gauge = GaugeMetricFamily("trainlab_jobs", "Jobs by status", labels=["status"])
        try:
            with self.factory() as session:
                counts = jobs.job_counts(session=session)
        except SQLAlchemyError:
            logger.warning("job counts unavailable", exc_info=True)
            return
        for status, count in counts.items():
            gauge.add_metric([status], count)
        yield gauge


# Histograms over the newest jobs that ran (not since the process started): the API
# process never sees a job run, the database does.
RUN_WINDOW = 1000
DURATION_BUCKETS = (1.0, 5.0, 15.0, 60.0, 300.0, 900.0, 3600.0, 4 * 3600.0, math.inf)
STEPS_PER_S_BUCKETS = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 1000.0, math.inf)


def _histogram(
    family: HistogramMetricFamily, label: str, values: list[float], bounds: tuple[float, ...]
) -> None:
    buckets = [(_bound(b), float(sum(1 for v in values if v <= b))) for b in bounds]
    family.add_metric([label], buckets, sum_value=float(sum(values)))


def _bound(value: float) -> str:
    return "+Inf" if math.isinf(value) else f"{value:g}"


class QueueAndRunCollector:
    """``trainlab_queue_depth{queue}``, ``trainlab_job_duration_seconds{status}`` and
    ``trainlab_job_steps_per_second{status}``, from the database at scrape time."""

    def __init__(self, factory: sessionmaker[Session]) -> None:
        self.factory = factory

    def describe(self) -> list[GaugeMetricFamily | HistogramMetricFamily]:
        return list(self._families())

    def _families(self) -> tuple[GaugeMetricFamily, HistogramMetricFamily, HistogramMetricFamily]:
        return (
            GaugeMetricFamily(
                "trainlab_queue_depth", "Queued jobs no worker has claimed", labels=["queue"]
            ),
            HistogramMetricFamily(
                "trainlab_job_duration_seconds",
                f"Wall time of the newest {RUN_WINDOW} jobs that ran, start to end",
                labels=["status"],
            ),
            HistogramMetricFamily(
                "trainlab_job_steps_per_second",
                f"Training steps per second of the newest {RUN_WINDOW} jobs that ran",
                labels=["status"],
            ),
        )

    def collect(self) -> Iterator[GaugeMetricFamily | HistogramMetricFamily]:
        depth, duration, speed = self._families()
        try:
            with self.factory() as session:
                depths = jobs.queue_depths(session=session)
                runs = jobs.recent_run_times(session=session, limit=RUN_WINDOW)
        except SQLAlchemyError:
            logger.warning("queue and run metrics unavailable", exc_info=True)
            return
        for queue in sorted(set(depths) | {"cpu", "gpu"}):
            depth.add_metric([queue], depths.get(queue, 0))
        for status in sorted({run.status for run in runs}):
            mine = [run for run in runs if run.status == status]
            _histogram(duration, status, [r.seconds for r in mine], DURATION_BUCKETS)
            rates = [r.steps / r.seconds for r in mine if r.seconds > 0]
            _histogram(speed, status, rates, STEPS_PER_S_BUCKETS)
        yield from (depth, duration, speed)
