"""Turns engine events into bulk database writes, off the training thread.

The engine calls ``Recorder.handle`` from its loop; the recorder only puts the event on a
queue. A writer thread drains it, coalesces progress updates and writes layer statistics
with one multi-row INSERT per batch, so a slow database never stalls a training step.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import asdict
from typing import Any

import numpy as np
from sqlalchemy.orm import Session

from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from worker.engine.events import (
    STAT_NAMES,
    EpochEnd,
    Event,
    LayerStatsBatch,
    RunStarted,
    StepProgress,
)

logger = logging.getLogger(__name__)

SessionFactory = Callable[[], Session]
_STOP = object()


def layer_stat_rows(batch: LayerStatsBatch) -> list[dict[str, Any]]:
    """One row per (step, layer); NaN and inf are kept as floats, never dropped."""
    n_steps, n_layers, _ = batch.values.shape
    values = batch.values.astype(np.float64, copy=False)
    rows: list[dict[str, Any]] = []
    for i in range(n_steps):
        step, epoch = int(batch.steps[i]), int(batch.epochs[i])
        for layer_index, layer_values in enumerate(values[i].tolist()):
            row: dict[str, Any] = dict(zip(STAT_NAMES, layer_values, strict=True))
            row.update(layer_index=layer_index, step=step, epoch=epoch)
            rows.append(row)
    assert len(rows) == n_steps * n_layers
    return rows


def histogram_rows(batch: LayerStatsBatch) -> list[dict[str, Any]]:
    return [
        {"layer_index": h.layer_index, "step": h.step, "lo": h.lo, "hi": h.hi, "counts": h.counts}
        for h in batch.histograms
    ]


class Recorder:
    """Writes one job's events. Use as a context manager around ``train``."""

    def __init__(
        self,
        session_factory: SessionFactory,
        job_id: str,
        *,
        progress_interval_s: float = 0.5,
    ) -> None:
        self._session_factory = session_factory
        self._job_id = job_id
        self._progress_interval_s = progress_interval_s
        self._events: queue.Queue[object] = queue.Queue()
        self._writer = threading.Thread(target=self._drain, name=f"recorder-{job_id}", daemon=True)
        self._error: BaseException | None = None
        self.rows_written = 0
        self.last_progress: StepProgress | None = None

    def __enter__(self) -> Recorder:
        self._writer.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def handle(self, event: Event) -> None:
        """Called by the engine on the training thread: must stay cheap."""
        if self._error is not None:
            # Losing statistics silently would be worse than failing the job.
            raise RuntimeError("recording failed; stopping the job") from self._error
        self._events.put(event)

    def close(self) -> None:
        if self._writer.is_alive():
            self._events.put(_STOP)
            self._writer.join()
        if self._error is not None:
            raise RuntimeError(f"recording failed: {self._error}") from self._error

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._session_factory() as session, session.begin():
            yield session

    def _drain(self) -> None:
        last_progress_write = 0.0
        try:
            while True:
                event = self._events.get()
                if event is _STOP:
                    break
                if isinstance(event, StepProgress):
                    self.last_progress = event
                    now = time.monotonic()
                    if now - last_progress_write >= self._progress_interval_s:
                        self._write_progress(event)
                        last_progress_write = now
                    continue
                self._write(event)
            if self.last_progress is not None:
                self._write_progress(self.last_progress)
        except BaseException as exc:  # surfaced to the training thread by handle()/close()
            logger.exception("recorder for job %s failed", self._job_id)
            self._error = exc

    def _write_progress(self, event: StepProgress) -> None:
        with self._session() as session:
            job_queries.update_progress(
                session=session, job_id=self._job_id, epoch=event.epoch, step=event.step
            )

    def _write(self, event: object) -> None:
        with self._session() as session:
            if isinstance(event, RunStarted):
                telemetry_queries.save_run_plan(
                    session=session,
                    job_id=self._job_id,
                    layers=[asdict(layer) for layer in event.layers],
                    total_steps=event.total_steps,
                    epochs=event.total_steps // max(event.steps_per_epoch, 1),
                    device=event.device,
                )
            elif isinstance(event, LayerStatsBatch):
                self.rows_written += telemetry_queries.add_layer_stats(
                    session=session, job_id=self._job_id, rows=layer_stat_rows(event)
                )
                if event.histograms:
                    telemetry_queries.add_histograms(
                        session=session, job_id=self._job_id, rows=histogram_rows(event)
                    )
            elif isinstance(event, EpochEnd):
                telemetry_queries.add_epoch_metric(
                    session=session, job_id=self._job_id, metric=asdict(event)
                )
