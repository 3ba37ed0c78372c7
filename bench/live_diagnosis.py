"""What the live diagnosis costs a run: ``run_job`` with the per-epoch diagnosis on and
off, interleaved in one process on one SQLite database, and the time of each refresh.

The diagnosis runs on the recorder's writer thread, not the training thread, so the
question is whether a run gets slower at all (2 shared cores here) and how long one
refresh (four bounded queries and the rules) takes as a run's statistics grow::

    .venv/bin/python bench/live_diagnosis.py --rounds 7 --epochs 10
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any
from unittest import mock

from service import diagnosis
from service.config import Settings
from service.db.migrate import upgrade_database
from service.db.repository import jobs as job_queries
from service.specs import ExperimentSpec
from worker.tasks import run_job, session_factory_for


def _spec(epochs: int) -> ExperimentSpec:
    return ExperimentSpec.model_validate(
        {
            "data": {"dataset": "spirals", "train_size": 512, "val_size": 128},
            "model": {"depth": 12, "width": 64, "activation": "sigmoid"},
            "train": {"epochs": epochs, "batch_size": 32, "checkpoint_every": 0},
            "telemetry": {"every_n_steps": 2},
        }
    )


@contextmanager
def _timed_refreshes(times: list[float], *, on: bool) -> Iterator[None]:
    real: Callable[..., Any] = diagnosis.refresh_findings

    def refresh(**kwargs: Any) -> Any:
        if not on:
            return []
        start = time.perf_counter()
        try:
            return real(**kwargs)
        finally:
            times.append(time.perf_counter() - start)

    # live_diagnosis calls diagnosis.refresh_findings through the module: patch it there.
    with mock.patch.object(diagnosis, "refresh_findings", refresh):
        yield


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--epochs", type=int, default=10)
    args = parser.parse_args()
    root = Path(tempfile.mkdtemp(prefix="bench-live-"))
    url = f"sqlite:///{root / 'bench.db'}"
    upgrade_database(url)
    settings = Settings(_env_file=None, data_dir=root, database_url=url)
    factory = session_factory_for(settings)
    spec = _spec(args.epochs)
    walls: dict[str, list[float]] = {"off": [], "on": []}
    refreshes: list[float] = []
    for round_ in range(args.rounds + 1):  # round 0 warms up torch and the caches
        for variant in ("off", "on") if round_ % 2 else ("on", "off"):
            with factory() as session, session.begin():
                job_id = job_queries.create_job(
                    session=session, owner="bench", spec=spec, queue="cpu"
                ).id
            with _timed_refreshes(refreshes if round_ else [], on=variant == "on"):
                start = time.perf_counter()
                assert run_job(job_id, settings=settings, worker_name="bench") == "succeeded"
                wall = time.perf_counter() - start
            if round_:
                walls[variant].append(wall)
    off, on = statistics.median(walls["off"]), statistics.median(walls["on"])
    print(f"{args.rounds} rounds, {args.epochs} epochs of 16 steps, 13 weight layers")
    for name, values in walls.items():
        print(
            f"  run_job, diagnosis {name:>3}: median {statistics.median(values):.3f} s "
            f"(min {min(values):.3f}, max {max(values):.3f})"
        )
    print(f"  on / off: {on / off:.3f}")
    ms = sorted(t * 1000 for t in refreshes)
    print(
        f"  one refresh: median {statistics.median(ms):.1f} ms, max {ms[-1]:.1f} ms "
        f"({len(ms)} refreshes)"
    )


if __name__ == "__main__":
    main()
