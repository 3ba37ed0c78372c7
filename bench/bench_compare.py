"""Compare 10 jobs: one ``GET /v1/compare`` beside 10 ``/gradients`` calls joined on step
by the client, in the same run, on PostgreSQL and SQLite.

Loads 10 jobs of 21 layers with statistics at every step, of different lengths (240 to
2,400 steps: 277,200 rows), or all of 240 steps with ``--same-length``. Requests go
through the whole API in process (FastAPI's TestClient: no socket, the same stack and
thread hand-offs as a server). Rounds alternate the two ways; prints median and p90.

    .venv/bin/python bench/bench_compare.py
    .venv/bin/python bench/bench_compare.py --backends sqlite --rounds 9 --same-length
"""

from __future__ import annotations

import argparse
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path
from typing import Any

import psycopg
from fastapi.testclient import TestClient

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.api.app import create_app
from service.config import Settings
from service.db.migrate import upgrade_database
from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from service.db.session import make_engine, make_session_factory
from service.keys import ANONYMOUS
from service.specs import ExperimentSpec

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
LAYERS = 21
JOBS = 10


def _load(url: str, *, same_length: bool) -> list[str]:
    engine = make_engine(url)
    factory = make_session_factory(engine)
    started, rows_written, ids = time.perf_counter(), 0, []
    spec = ExperimentSpec.model_validate({"name": "compared"})
    try:
        with factory() as session:
            for j in range(JOBS):
                steps = 240 if same_length else 240 * (j + 1)
                job = job_queries.create_job(
                    session=session, owner=ANONYMOUS, spec=spec, queue="cpu"
                )
                layers = [
                    {"index": i, "name": f"layer.{i}", "kind": "linear", "params": 1, "shape": [1]}
                    for i in range(LAYERS)
                ]
                telemetry_queries.save_run_plan(
                    session=session,
                    job_id=job.id,
                    layers=layers,
                    total_steps=steps,
                    epochs=3,
                    device="cpu",
                )
                rows = [
                    {
                        "layer_index": i,
                        "step": step,
                        "epoch": 1 + 3 * step // (steps + 1),
                        "grad_norm": 0.1 / (1 + i) * (1 + step / steps),
                        "weight_norm": 3.0,
                    }
                    for i in range(LAYERS)
                    for step in range(steps)
                ]
                rows_written += telemetry_queries.add_layer_stats(
                    session=session, job_id=job.id, rows=rows
                )
                ids.append(job.id)
                session.commit()
    finally:
        engine.dispose()
    print(f"  loaded {JOBS} jobs, {rows_written} rows in {time.perf_counter() - started:.1f} s")
    return ids


def _one_call(client: TestClient, ids: list[str]) -> int:
    response = client.get(f"/v1/compare?jobs={','.join(ids)}&stat=grad_norm&layer=0")
    response.raise_for_status()
    return len(response.json()["x"])


def _client_join(client: TestClient, ids: list[str]) -> int:
    """What a client did before /v1/compare: one call per job, then a join on step."""
    by_job: dict[str, dict[int, Any]] = {}
    for job_id in ids:
        response = client.get(f"/v1/jobs/{job_id}/gradients?layer=0&stat=grad_norm")
        response.raise_for_status()
        points = response.json()["series"][0]["points"]
        by_job[job_id] = {p["step"]: p["grad_norm"] for p in points}
    x = sorted({step for series in by_job.values() for step in series})
    aligned = [[by_job[job_id].get(step) for step in x] for job_id in ids]
    return len(aligned[0])


def _timed(
    call: Callable[[TestClient, list[str]], int], client: TestClient, ids: list[str]
) -> float:
    started = time.perf_counter()
    call(client, ids)
    return (time.perf_counter() - started) * 1000


def _run(url: str, *, rounds: int, same_length: bool, data_dir: Path) -> None:
    upgrade_database(url)
    ids = _load(url, same_length=same_length)
    settings = Settings(
        _env_file=None, data_dir=data_dir, database_url=url, rate_limit="1000000/minute"
    )
    with TestClient(create_app(settings)) as client:
        ways = {"GET /v1/compare (one query)": _one_call, "10 x /gradients + join": _client_join}
        times: dict[str, list[float]] = {name: [] for name in ways}
        points = _one_call(client, ids)  # warm up
        _client_join(client, ids)
        for round_no in range(rounds):
            order = list(ways.items())
            for name, call in order[round_no % 2 :] + order[: round_no % 2]:
                times[name].append(_timed(call, client, ids))
    backend = url.split(":", 1)[0]
    lengths = "240 steps each" if same_length else "240..2400 steps"
    print(f"\n{backend}: {JOBS} jobs x {LAYERS} layers ({lengths}), layer 0 grad_norm")
    print(f"{rounds} rounds, x of {points} points")
    print("| way | median ms | p90 ms |")
    print("|---|---|---|")
    for name, values in times.items():
        p90 = statistics.quantiles(values, n=10)[-1]
        print(f"| {name} | {statistics.median(values):.1f} | {p90:.1f} |")
    one, ten = (statistics.median(v) for v in times.values())
    print(f"client join / one call: {ten / one:.1f}x")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--backends", default="postgres,sqlite")
    parser.add_argument("--same-length", action="store_true")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        with tempfile.TemporaryDirectory() as folder:
            if backend == "sqlite":
                url = f"sqlite:///{folder}/bench.db"
                _run(url, rounds=args.rounds, same_length=args.same_length, data_dir=Path(folder))
                continue
            name = f"trainlab_bench_{uuid.uuid4().hex[:10]}"
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'CREATE DATABASE "{name}"')
            try:
                url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
                _run(url, rounds=args.rounds, same_length=args.same_length, data_dir=Path(folder))
            finally:
                with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                    conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
