"""A worker's attempt, for real on both databases: resume from a checkpoint, fencing of a
stale attempt, a recorder that waits out a database outage, run-time limits."""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from safetensors.torch import load as load_weights
from safetensors.torch import load_file
from sqlalchemy import exc as sa_exc
from sqlalchemy import select
from sqlalchemy.orm import Session

from service import checkpoints as files
from service.config import Settings
from service.db.models import EpochMetric, Job, LayerStat, StatJob
from service.db.repository import jobs as job_queries
from service.errors import StaleAttempt
from service.specs import ExperimentSpec
from tests.service.conftest import make_settings, stored_job
from worker.engine.events import EpochEnd, LayerStatsBatch, RunStarted, StepProgress
from worker.engine.loop import train
from worker.recorder import CheckpointStore, Recorder, RecorderOverflowError
from worker.tasks import run_job, session_factory_for

SPEC: dict[str, Any] = {
    "data": {"dataset": "spirals", "train_size": 256, "val_size": 64, "augment": {"noise": 0.1}},
    "model": {"depth": 2, "width": 16, "dropout": 0.2},
    "train": {"epochs": 4, "batch_size": 32, "optimizer": "adam", "lr": 0.01},
    "telemetry": {"every_n_steps": 3},
}
STEPS_PER_EPOCH = 8


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url, heartbeat_interval_s=0.2, lease_s=5)


def _stop_after(steps: int) -> Callable[[], bool]:
    seen = [0]

    def suspend() -> bool:
        seen[0] += 1
        return seen[0] >= steps

    return suspend


def _rows(session: Session, job_id: str) -> tuple[list[int], list[tuple[int, int]]]:
    epochs = session.scalars(
        select(EpochMetric.epoch).where(EpochMetric.job_id == job_id).order_by(EpochMetric.epoch)
    ).all()
    stats = session.execute(
        select(LayerStat.layer_index, LayerStat.step)
        .join(StatJob, StatJob.key == LayerStat.job_key)
        .where(StatJob.job_id == job_id)
    ).all()
    return list(epochs), [(int(a), int(b)) for a, b in stats]


def test_a_stopped_attempt_resumes_to_the_weights_of_an_uninterrupted_run(
    settings: Settings, session: Session
) -> None:
    job_id = stored_job(session, **SPEC)
    # Stopped mid-epoch 3 (step 20 of 32): checkpointed at that step, back in the queue.
    first = run_job(job_id, settings=settings, worker_name="w", suspend=_stop_after(20))
    assert first == "queued"
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None and job.attempt == 1 and job.preemptions == 1
    assert job.checkpoint is not None and files.step_of(job.checkpoint) == 20
    assert run_job(job_id, settings=settings, worker_name="w") == "succeeded"

    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None and job.status == "succeeded" and job.attempt == 2
    epochs, stats = _rows(session, job_id)
    assert epochs == [1, 2, 3, 4]
    assert len(stats) == len(set(stats))  # each (layer, step) once
    assert {step for _, step in stats} == set(range(3, 4 * STEPS_PER_EPOCH + 1, 3))
    root = settings.resolved_checkpoint_dir
    assert len(files.list_checkpoints(root, job_id)) <= settings.checkpoints_kept

    reference = train(ExperimentSpec.model_validate(SPEC), on_checkpoint=lambda _: None)
    assert reference.weights is not None
    expected = load_weights(reference.weights)
    resumed = load_file(files.final_weights_path(root, job_id))
    assert expected.keys() == resumed.keys()
    for name, tensor in expected.items():
        torch.testing.assert_close(resumed[name], tensor, rtol=1e-5, atol=1e-6)


def test_a_lost_attempt_resumes_from_its_last_epoch_checkpoint(
    settings: Settings, session: Session
) -> None:
    """A crash loses the steps since the last checkpoint, and the rows they wrote are
    replaced: a killed attempt is simulated by dropping it after epoch 2 was recorded."""
    job_id = stored_job(session, **SPEC)

    class Killed(BaseException):
        pass

    def die_in_epoch_three(event: object) -> None:
        if isinstance(event, StepProgress) and event.step == 2 * STEPS_PER_EPOCH + 5:
            raise Killed

    factory = session_factory_for(settings)
    job = job_queries.claim_job(session=session, job_id=job_id, worker="w", lease_s=5)
    session.commit()
    assert job is not None
    with (
        pytest.raises(Killed),
        Recorder(
            factory,
            job_id,
            attempt=1,
            store=CheckpointStore(settings.resolved_checkpoint_dir),
        ) as recorder,
    ):

        def handle(event: Any) -> None:
            recorder.handle(event)
            die_in_epoch_three(event)

        train(
            ExperimentSpec.model_validate(SPEC),
            on_event=handle,
            on_checkpoint=recorder.checkpoint,
            flush_every=1,
        )
    released = job_queries.release_attempt(
        session=session, job_id=job_id, attempt=1, reason="worker lost: killed"
    )
    session.commit()
    assert released is not None and released.status == "queued"
    epochs, stats = _rows(session, job_id)
    assert epochs == [1, 2] and max(step for _, step in stats) > 2 * STEPS_PER_EPOCH

    assert run_job(job_id, settings=settings, worker_name="w") == "succeeded"
    epochs, stats = _rows(session, job_id)
    assert epochs == [1, 2, 3, 4] and len(stats) == len(set(stats))
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None and job.attempt == 2
    assert job.result is not None and job.result["resumed_from_step"] == 2 * STEPS_PER_EPOCH


def test_a_stale_attempt_writes_nothing_more_and_is_told_to_stop(
    settings: Settings, session: Session
) -> None:
    job_id = stored_job(session, **SPEC)
    job_queries.claim_job(session=session, job_id=job_id, worker="paused")
    session.commit()
    recorder = Recorder(session_factory_for(settings), job_id, attempt=1, progress_interval_s=0.01)
    with pytest.raises(StaleAttempt), recorder:
        recorder.handle(EpochEnd(1, 1.0, 0.5, 1.0, 0.5, 0.1, 1.0))
        _wait(lambda: _rows(session, job_id)[0] == [1])
        # Its lease expires while it is paused; another worker takes attempt 2.
        job_queries.release_attempt(session=session, job_id=job_id, attempt=1, reason="lost")
        job_queries.claim_job(session=session, job_id=job_id, worker="other")
        session.commit()
        recorder.handle(EpochEnd(2, 1.0, 0.5, 1.0, 0.5, 0.1, 1.0))
        _wait(lambda: recorder.stale)
        recorder.handle(EpochEnd(3, 1.0, 0.5, 1.0, 0.5, 0.1, 1.0))  # raises: stop training
    assert _rows(session, job_id)[0] == [1]
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None and job.attempt == 2 and job.status == "running"


def test_a_stale_attempt_copies_no_statistics(settings: Settings, session: Session) -> None:
    """The bulk write (COPY on PostgreSQL) runs inside the guarded transaction: once
    another attempt holds the job, the stale one's batch is never written."""
    job_id = stored_job(session, **SPEC)
    job_queries.claim_job(session=session, job_id=job_id, worker="paused")
    session.commit()
    recorder = Recorder(session_factory_for(settings), job_id, attempt=1, progress_interval_s=0.01)
    with pytest.raises(StaleAttempt), recorder:
        recorder.handle(_stats_batch([0, 1]))
        _wait(lambda: len(_rows(session, job_id)[1]) == 6)
        job_queries.release_attempt(session=session, job_id=job_id, attempt=1, reason="lost")
        job_queries.claim_job(session=session, job_id=job_id, worker="other")
        session.commit()
        recorder.handle(_stats_batch([2, 3]))
        _wait(lambda: recorder.stale)
    session.expire_all()
    assert sorted({step for _, step in _rows(session, job_id)[1]}) == [0, 1]


class FlakyDatabase:
    """A session factory whose database can be taken away and given back."""

    def __init__(self, real: Callable[[], Session]) -> None:
        self.real = real
        self.down = threading.Event()
        self.refused = 0

    def __call__(self) -> Session:
        if self.down.is_set():
            self.refused += 1
            raise sa_exc.OperationalError("connect", {}, ConnectionRefusedError("down"))
        return self.real()


def _wait(condition: Callable[[], object], timeout: float = 30.0) -> None:
    done = threading.Event()
    for _ in range(int(timeout / 0.05)):
        if condition():
            return
        done.wait(0.05)
    raise AssertionError("condition not met in time")


def _stats_batch(steps: list[int], layers: int = 3) -> LayerStatsBatch:
    from worker.engine.events import STAT_NAMES

    values = np.ones((len(steps), layers, len(STAT_NAMES)))
    return LayerStatsBatch(
        steps=np.array(steps), epochs=np.ones(len(steps), dtype=np.int64), values=values
    )


@pytest.fixture
def flaky(settings: Settings, session: Session) -> Iterator[tuple[FlakyDatabase, str]]:
    job_id = stored_job(session, **SPEC)
    job_queries.claim_job(session=session, job_id=job_id, worker="w")
    session.commit()
    yield FlakyDatabase(session_factory_for(settings)), job_id


def test_the_recorder_buffers_through_a_database_outage(
    flaky: tuple[FlakyDatabase, str], session: Session
) -> None:
    database, job_id = flaky
    with Recorder(database, job_id, attempt=1, progress_interval_s=0.01) as recorder:
        recorder.handle(RunStarted([], "cpu", "fp32", 1, 32, 8, 10))
        database.down.set()
        for epoch in range(1, 4):  # the training thread goes on: nothing raises
            recorder.handle(_stats_batch([epoch * 10]))
            recorder.handle(EpochEnd(epoch, 1.0, 0.5, 1.0, 0.5, 0.1, 1.0))
        _wait(lambda: database.refused >= 3)
        assert recorder.buffered_bytes > 0
        database.down.clear()
    epochs, stats = _rows(session, job_id)
    assert epochs == [1, 2, 3] and sorted({s for _, s in stats}) == [10, 20, 30]
    assert recorder.buffered_bytes == 0


def test_the_recorder_fails_the_attempt_past_its_memory_budget(
    flaky: tuple[FlakyDatabase, str],
) -> None:
    database, job_id = flaky
    database.down.set()
    recorder = Recorder(database, job_id, attempt=1, buffer_bytes=2**16)
    with pytest.raises(RecorderOverflowError, match="budget"), recorder:
        for step in range(1, 1000):
            recorder.handle(_stats_batch([step], layers=50))


@pytest.fixture
def optimizer_imports_done() -> None:
    """A process's first torch optimizer imports torch._dynamo: seconds on a loaded
    machine, inside the run's clock (its setup counts against the limit). Done before,
    so that a short limit still leaves time for an epoch or two to be recorded."""
    import torch

    torch.optim.Adam([torch.zeros(1, requires_grad=True)])


@pytest.mark.usefixtures("optimizer_imports_done")
def test_a_run_over_its_time_limit_fails_and_keeps_what_it_recorded(
    settings: Settings, session: Session
) -> None:
    spec = {**SPEC, "train": {**SPEC["train"], "epochs": 10_000, "time_limit_s": 2.0}}
    job_id = stored_job(session, **spec)
    assert run_job(job_id, settings=settings, worker_name="w") == "failed"
    job = session.get(Job, job_id, populate_existing=True)
    assert job is not None and job.status == "failed"
    assert (job.error or "").startswith("time_limit:")
    assert job.result is not None and job.result["timed_out"] is True
    epochs, _ = _rows(session, job_id)
    assert epochs and epochs == list(range(1, len(epochs) + 1)), job.result
