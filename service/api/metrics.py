"""Prometheus collectors computed at scrape time (``/metrics``)."""

from __future__ import annotations

import logging
from collections.abc import Iterator

from prometheus_client.core import GaugeMetricFamily
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
