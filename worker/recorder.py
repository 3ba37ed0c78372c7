"""Turns engine events into bulk database writes, off the training thread.

The engine calls ``Recorder.handle`` from its loop; the recorder only puts the event on a
queue. A writer thread drains it in order, coalesces progress updates and writes layer
statistics in bulk (binary COPY on PostgreSQL), the batches that waited together joined
into one block per transaction, so a slow database never stalls a training step.

Every transaction of the writer starts with the attempt's guard (``guard_attempt``): a
run that lost its lease writes nothing more, and is told to stop (``stale``). Through a
database outage the writer keeps what it could not write and retries with backoff; the
training thread goes on. Only when what it holds passes ``buffer_bytes`` does the next
``handle`` raise :class:`RecorderOverflowError`, which fails the attempt (it is then retried).

Checkpoints go through the same queue, so a checkpoint is recorded only once everything
reported before it is committed: a resume that deletes what came after its checkpoint
never leaves a hole.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import numpy as np
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from service import checkpoints as files
from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from service.errors import StaleAttempt
from worker.engine.checkpoint import TrainState
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
# Errors of an unreachable or timed-out database: worth retrying. Anything else (a
# constraint violated, a bug) fails the attempt at once.
TRANSIENT_ERRORS: tuple[type[BaseException], ...] = (
    sa_exc.OperationalError,
    sa_exc.InterfaceError,
    sa_exc.DisconnectionError,
    sa_exc.TimeoutError,
)
FIRST_BACKOFF_S = 0.05
MAX_BACKOFF_S = 2.0
SMALL_EVENT_BYTES = 256
# Statistics batches that wait together are written as one block per transaction (one
# COPY of raw rows, one of rollup segments, one facts update) up to this many rows: the
# joined copy (~120 B a row, a few times over while it is packed) stays a few MiB.
BLOCK_ROWS = 32_768


class RecorderOverflowError(RuntimeError):
    """The database stayed unreachable until the buffered events passed their budget."""


def is_transient(exc: BaseException) -> bool:
    """An unreachable, cut or timed-out database, whatever the driver called it."""
    if isinstance(exc, TRANSIENT_ERRORS):
        return True
    return isinstance(exc, sa_exc.DBAPIError) and exc.connection_invalidated


def retry_transient(
    write: Callable[[], Any], *, what: str, give_up_after_s: float | None = None
) -> Any:
    """Run ``write`` until it succeeds, backing off while the database is unreachable
    (re-raising its error after ``give_up_after_s``, if given). Other errors
    (StaleAttempt included) propagate at once."""
    backoff = FIRST_BACKOFF_S
    deadline = None if give_up_after_s is None else time.monotonic() + give_up_after_s
    while True:
        try:
            return write()
        except Exception as exc:
            if not is_transient(exc) or (deadline is not None and time.monotonic() >= deadline):
                raise
            logger.warning("%s: database unreachable, retrying in %.2f s", what, backoff)
        time.sleep(backoff)
        backoff = min(backoff * 2, MAX_BACKOFF_S)


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


_ABSENT_WHEN_NAN = [STAT_NAMES.index(name) for name in telemetry_queries.ABSENT_WHEN_NAN]


def absent_stats(batch: LayerStatsBatch) -> np.ndarray:
    """Which values are absent, stored as NULL: an activation statistic is NaN when the
    layer has no counted activation; any other NaN is a real one and is kept."""
    absent = np.zeros(batch.values.shape, dtype=bool)
    absent[:, :, _ABSENT_WHEN_NAN] = np.isnan(batch.values[:, :, _ABSENT_WHEN_NAN])
    return absent


def _block_rows(batch: LayerStatsBatch) -> int:
    n_steps, n_layers, _ = batch.values.shape
    return int(n_steps * n_layers)


def join_batches(batches: list[LayerStatsBatch]) -> LayerStatsBatch:
    """One batch of consecutive ones (the same layers), in their order."""
    if len(batches) == 1:
        return batches[0]
    return LayerStatsBatch(
        steps=np.concatenate([b.steps for b in batches]),
        epochs=np.concatenate([b.epochs for b in batches]),
        values=np.concatenate([b.values for b in batches], axis=0),
        histograms=[h for b in batches for h in b.histograms],
    )


def join_stat_batches(events: Sequence[object], *, max_rows: int = BLOCK_ROWS) -> list[object]:
    """``events`` to write in one transaction, with the statistics batches joined into
    blocks of at most ``max_rows`` rows (a single larger batch stays whole). A block never
    spans a ``RunStarted``: what it discards must be what came before it; the other
    events write other tables, so their order beside the blocks does not matter."""
    joined: list[object] = []
    block: list[LayerStatsBatch] = []
    rows = 0
    for event in events:
        if isinstance(event, LayerStatsBatch):
            fits = rows + _block_rows(event) <= max_rows
            if block and (not fits or event.values.shape[1:] != block[0].values.shape[1:]):
                joined.append(join_batches(block))
                block, rows = [], 0
            block.append(event)
            rows += _block_rows(event)
            continue
        if isinstance(event, RunStarted) and block:
            joined.append(join_batches(block))
            block, rows = [], 0
        joined.append(event)
    if block:
        joined.append(join_batches(block))
    return joined


def histogram_rows(batch: LayerStatsBatch) -> list[dict[str, Any]]:
    return [
        {"layer_index": h.layer_index, "step": h.step, "lo": h.lo, "hi": h.hi, "counts": h.counts}
        for h in batch.histograms
    ]


def event_bytes(event: object) -> int:
    """What an event holds in memory, roughly: the budget's unit."""
    if isinstance(event, LayerStatsBatch):
        counts = sum(len(h.counts) * 8 + 64 for h in event.histograms)
        return int(event.values.nbytes + event.steps.nbytes + event.epochs.nbytes + counts)
    if isinstance(event, TrainState):
        return event.nbytes
    if isinstance(event, StepProgress):
        return 0  # kept in one slot, not queued
    return SMALL_EVENT_BYTES


@dataclass(frozen=True)
class CheckpointStore:
    """Where checkpoints go and how many stay."""

    root: Path
    keep: int = 2


class Recorder:
    """Writes one attempt's events. Use as a context manager around ``train``."""

    def __init__(
        self,
        session_factory: SessionFactory,
        job_id: str,
        *,
        attempt: int,
        progress_interval_s: float = 0.5,
        buffer_bytes: int = 256 * 2**20,
        store: CheckpointStore | None = None,
        after_epoch: Callable[[Session, int], None] | None = None,
    ) -> None:
        self._session_factory = session_factory
        # Called after an epoch's metrics are committed, with a guarded session (the live
        # diagnosis).
        self._after_epoch = after_epoch
        self._job_id = job_id
        self._attempt = attempt
        self._progress_interval_s = progress_interval_s
        self._budget = buffer_bytes
        self._store = store
        self._events: queue.Queue[object] = queue.Queue()
        self._writer = threading.Thread(target=self._drain, name=f"recorder-{job_id}", daemon=True)
        self._lock = threading.Lock()
        self._buffered = 0  # bytes handed over and not yet written
        self._error: BaseException | None = None
        self._stale = threading.Event()
        self._abandon = threading.Event()
        self._retrying_since: float | None = None
        self.rows_written = 0
        self.last_progress: StepProgress | None = None
        self.last_checkpoint: str | None = None

    def __enter__(self) -> Recorder:
        self._writer.start()
        return self

    def __exit__(self, exc_type: object, exc: object, tb: object) -> None:
        # Past its budget the attempt fails: what waits is dropped, not waited for.
        self.close(abandon=isinstance(exc, RecorderOverflowError))

    @property
    def stale(self) -> bool:
        """The attempt lost its lease: everything since was discarded; stop training."""
        return self._stale.is_set()

    def handle(self, event: Event) -> None:
        """Called by the engine on the training thread: must stay cheap, never block."""
        self._raise_if_failed()
        if isinstance(event, StepProgress):
            self.last_progress = event  # only the newest matters: written by the writer
            return
        self._put(event, event_bytes(event))

    def checkpoint(self, state: TrainState) -> None:
        """Called by the engine with a snapshot; written after everything before it."""
        self._raise_if_failed()
        self._put(state, event_bytes(state))

    def _put(self, item: object, size: int) -> None:
        with self._lock:
            self._buffered += size
            over = self._buffered > self._budget
        self._events.put(item)
        if over:
            outage = time.monotonic() - (self._retrying_since or time.monotonic())
            self._error = RecorderOverflowError(
                f"recording failed: the database was unreachable for {outage:.0f} s and "
                f"{self._buffered / 2**20:.1f} MiB of statistics waited to be written, over "
                f"the recorder's budget of {self._budget / 2**20:.0f} MiB"
            )
            raise self._error

    def _raise_if_failed(self) -> None:
        if self._stale.is_set():
            raise StaleAttempt(self._job_id, self._attempt)
        if self._error is not None:
            # Losing statistics silently would be worse than failing the attempt.
            raise RuntimeError(f"recording failed: {self._error}") from self._error

    def close(self, *, abandon: bool = False) -> None:
        """Write everything handed over (waiting out a database outage), then stop;
        ``abandon`` drops what could not be written yet instead."""
        if abandon:
            self._abandon.set()
        if self._writer.is_alive():
            self._events.put(_STOP)
            self._writer.join()
        if not abandon:
            self._raise_if_failed()

    @property
    def buffered_bytes(self) -> int:
        return self._buffered

    # --- the writer thread ----------------------------------------------------------

    @contextmanager
    def _session(self) -> Iterator[Session]:
        with self._session_factory() as session, session.begin():
            job_queries.guard_attempt(session=session, job_id=self._job_id, attempt=self._attempt)
            yield session

    def _drain(self) -> None:
        pending: list[object] = []
        last_progress_write = 0.0
        written_progress: StepProgress | None = None
        stopping = False
        try:
            while not (stopping and not pending) and not self._abandon.is_set():
                timeout = self._progress_interval_s if not pending else 0.0
                try:
                    item = self._events.get(timeout=timeout) if not stopping else None
                except queue.Empty:
                    item = None
                if item is _STOP:
                    stopping = True
                elif item is not None:
                    pending.append(item)
                    while not self._events.empty():  # take what else waits: fewer commits
                        more = self._events.get_nowait()
                        if more is _STOP:
                            stopping = True
                            break
                        pending.append(more)
                pending = self._coalesce_checkpoints(pending)
                progress = self.last_progress
                due = time.monotonic() - last_progress_write >= self._progress_interval_s
                if progress is not written_progress and (due or stopping):
                    pending.append(progress)
                    written_progress = progress
                    last_progress_write = time.monotonic()
                pending = self._write_pending(pending)
        except StaleAttempt:
            logger.warning(
                "job %s: attempt %d is no longer current; discarding its writes",
                self._job_id,
                self._attempt,
            )
            self._stale.set()
        except BaseException as exc:  # surfaced to the training thread by handle()/close()
            logger.exception("recorder for job %s failed", self._job_id)
            self._error = exc

    @staticmethod
    def _coalesce_checkpoints(pending: list[object]) -> list[object]:
        """Of several checkpoints waiting (a database outage), only the newest matters."""
        states = [i for i, item in enumerate(pending) if isinstance(item, TrainState)]
        drop = set(states[:-1])
        return [item for i, item in enumerate(pending) if i not in drop]

    def _write_pending(self, pending: list[object]) -> list[object]:
        """Write what waits, in order; keep what could not be written (retried later)."""
        while pending:
            split = next(
                (i for i, item in enumerate(pending) if isinstance(item, TrainState)),
                len(pending),
            )
            events, rest = pending[:split], pending[split:]
            try:
                if events:
                    self._write_events(events)
                    pending = rest
                    self._written(events)
                    continue
                state = pending[0]
                assert isinstance(state, TrainState)
                self._write_checkpoint(state)
                pending = pending[1:]
                self._written([state])
            except Exception as exc:
                if not is_transient(exc):
                    raise
                self._back_off()
                return pending
        self._retrying_since = None
        return pending

    def _written(self, items: list[object]) -> None:
        size = sum(event_bytes(item) for item in items if item is not None)
        with self._lock:
            self._buffered -= size

    def _back_off(self) -> None:
        now = time.monotonic()
        if self._retrying_since is None:
            self._retrying_since = now
            self._backoff = FIRST_BACKOFF_S
            logger.warning("job %s: database unreachable; buffering statistics", self._job_id)
        else:
            self._backoff = min(self._backoff * 2, MAX_BACKOFF_S)
        time.sleep(self._backoff)

    def _write_events(self, events: list[object]) -> None:
        rows = 0
        with self._session() as session:
            for event in join_stat_batches(events):
                rows += self._write(session, event)
        self.rows_written += rows
        epochs = [event.epoch for event in events if isinstance(event, EpochEnd)]
        if epochs and self._after_epoch is not None:
            self._run_after_epoch(epochs[-1])

    def _run_after_epoch(self, epoch: int) -> None:
        """After the epoch's rows are committed, in a guarded transaction of its own: its
        reads do not hold SQLite's write lock, and a failure costs this refresh only
        (the rows above must not be written twice)."""
        assert self._after_epoch is not None
        try:
            with self._session() as session:
                self._after_epoch(session, epoch)
        except StaleAttempt:
            raise
        except Exception:
            logger.warning("job %s: after epoch %d failed", self._job_id, epoch, exc_info=True)

    def _write(self, session: Session, event: object) -> int:
        if isinstance(event, StepProgress):
            job_queries.update_progress(
                session=session, job_id=self._job_id, epoch=event.epoch, step=event.step
            )
        elif isinstance(event, RunStarted):
            # A resumed attempt records again what came after its checkpoint; a fresh
            # one (0, 0) everything: delete first, then plain inserts.
            telemetry_queries.discard_after(
                session=session,
                job_id=self._job_id,
                step=event.resumed_step,
                epoch=event.resumed_epochs,
            )
            telemetry_queries.save_run_plan(
                session=session,
                job_id=self._job_id,
                layers=[asdict(layer) for layer in event.layers],
                total_steps=event.total_steps,
                epochs=event.total_steps // max(event.steps_per_epoch, 1),
                device=event.device,
            )
        elif isinstance(event, LayerStatsBatch):
            written = telemetry_queries.add_layer_stat_block(
                session=session,
                job_id=self._job_id,
                steps=event.steps,
                epochs=event.epochs,
                values=event.values,
                absent=absent_stats(event),
            )
            if event.histograms:
                telemetry_queries.add_histograms(
                    session=session, job_id=self._job_id, rows=histogram_rows(event)
                )
            return written
        elif isinstance(event, EpochEnd):
            telemetry_queries.add_epoch_metric(
                session=session, job_id=self._job_id, metric=asdict(event)
            )
        return 0

    def _write_checkpoint(self, state: TrainState) -> None:
        """The file under a temporary name, then, inside the guarded transaction, its
        final name and the job's pointer to it: a stale attempt's file never appears."""
        if self._store is None:
            return
        root = self._store.root
        name = files.checkpoint_name(step=state.step, attempt=self._attempt)
        final = files.checkpoint_path(root, self._job_id, name)
        temp = files.write_temp(final, state.to_bytes())
        try:
            with self._session() as session:
                temp.replace(final)
                job_queries.record_checkpoint(session=session, job_id=self._job_id, name=name)
        except BaseException:
            files.discard(temp)
            raise
        self.last_checkpoint = name
        files.prune(root, self._job_id, current=name, keep=self._store.keep)
        logger.info("job %s: checkpoint %s", self._job_id, name)
