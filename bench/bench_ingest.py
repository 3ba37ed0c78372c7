"""How fast do layer statistics reach the database, and what does recording cost training?

Interleaved rounds (every variant once per round, in rotating order) over the same rows
(100 layers x 32 steps per batch, like one engine flush of a 100-layer model), one
transaction per batch, into a throwaway database migrated to head. Prints the median
rows/s of each variant, its spread (min..max of the rounds) and its ratio to plain
binary COPY.

  recorder    worker.recorder.Recorder end to end: handle() on the calling thread, the
              writer thread's guarded transaction (guard_attempt), tuples built from the
              batch's arrays, the repository's bulk write (binary COPY / executemany)
  repository  add_layer_stat_block in a guarded transaction (raw rows, their rollup
              segments and the job's facts)
  copy-binary psycopg COPY ... (FORMAT BINARY) of the same raw rows, as tuples built
              beforehand (set_types), no rollup
  copy-text   psycopg COPY ... (text) of the same tuples
  copy-packed COPY ... (FORMAT BINARY) of the same raw rows packed into one buffer
              beforehand (numpy), written with one Copy.write: the database's own speed,
              no client work at all
  copy-blocks copy-packed with the batches joined as the recorder joins them (one COPY
              and one commit per BLOCK_ROWS rows): the recorder's like-for-like floor
  insert      the old path: SQLAlchemy insert(LayerStat) with one dict per row
  mlflow      MlflowClient.log_batch (one metric per statistic), when mlflow is installed

Then training steps/s of a small MLP (telemetry every step) with the recorder writing to
PostgreSQL vs with statistics discarded (a no-op event sink).

    .venv/bin/python bench/bench_ingest.py                      # PostgreSQL at 127.0.0.1
    .venv/bin/python bench/bench_ingest.py --backend sqlite
    .venv/bin/python bench/bench_ingest.py --rounds 7 --batches 32 --train-rounds 5
"""

from __future__ import annotations

import argparse
import contextlib
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from sqlalchemy import insert, text
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service.db.migrate import upgrade_database
from service.db.models import LAYER_STAT_COLUMNS, LayerStat, StatJob
from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from service.db.session import make_engine, make_session_factory
from service.kit import rollup
from service.specs import ExperimentSpec
from worker.engine.events import LayerStatsBatch
from worker.engine.loop import train
from worker.recorder import Recorder, absent_stats, join_stat_batches

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
LAYERS = 100
STEPS_PER_BATCH = 32


@contextlib.contextmanager
def database(backend: str) -> Iterator[str]:
    """A migrated throwaway database (dropped afterwards); its SQLAlchemy URL."""
    if backend == "sqlite":
        with tempfile.TemporaryDirectory() as folder:
            url = f"sqlite:///{folder}/bench.db"
            upgrade_database(url)
            yield url
        return
    name = f"trainlab_bench_{uuid.uuid4().hex[:10]}"
    with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
        conn.execute(f'CREATE DATABASE "{name}"')
    try:
        url = f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}"
        upgrade_database(url)
        yield url
    finally:
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def make_batches(n_batches: int, seed: int = 0) -> list[LayerStatsBatch]:
    """Batches as the engine flushes them: lognormal gradients, an occasional NaN."""
    rng = np.random.default_rng(seed)
    batches = []
    for b in range(n_batches):
        steps = np.arange(b * STEPS_PER_BATCH, (b + 1) * STEPS_PER_BATCH, dtype=np.int64)
        values = rng.lognormal(-3, 1, size=(STEPS_PER_BATCH, LAYERS, len(LAYER_STAT_COLUMNS)))
        values[0, 0, 0] = np.nan if b % 7 == 3 else values[0, 0, 0]
        batches.append(LayerStatsBatch(steps=steps, epochs=steps // 100, values=values))
    return batches


def running_job(factory: sessionmaker[Session]) -> tuple[str, int]:
    with factory() as session, session.begin():
        job = job_queries.create_job(
            session=session, owner="bench", spec=ExperimentSpec(), queue="cpu"
        )
        job_id = job.id
    with factory() as session, session.begin():
        claimed = job_queries.claim_job(session=session, job_id=job_id, worker="bench")
        assert claimed is not None
        return job_id, claimed.attempt


def stored_rows(batch: LayerStatsBatch, key: int) -> list[tuple[Any, ...]]:
    """The rows the repository writes for ``batch``, as tuples, (layer, step) order."""
    n_steps, n_layers, width = batch.values.shape
    values = batch.values.transpose(1, 0, 2).reshape(-1, width).tolist()
    layers = np.repeat(np.arange(n_layers), n_steps).tolist()
    steps = np.tile(batch.steps, n_layers).tolist()
    epochs = np.tile(batch.epochs, n_layers).tolist()
    return [
        (key, layer, step, epoch, *row)
        for layer, step, epoch, row in zip(layers, steps, epochs, values, strict=True)
    ]


def packed_rows(batch: LayerStatsBatch, key: int) -> bytes:
    """The binary COPY data of ``stored_rows(batch, key)``, signature and trailer included."""
    n_steps, n_layers, width = batch.values.shape
    values = batch.values.transpose(1, 0, 2).reshape(-1, width)
    n = values.shape[0]
    columns = [
        np.full(n, key),
        np.repeat(np.arange(n_layers), n_steps),
        np.tile(batch.steps, n_layers),
        np.tile(batch.epochs, n_layers),
        *values.T,
    ]
    absent = np.zeros((n, len(columns)), dtype=bool)
    payload = rollup.binary_copy_rows(columns, telemetry_queries.LAYER_STAT_ROW_TYPES, absent)
    return rollup.COPY_SIGNATURE + payload + rollup.COPY_TRAILER


def keyed_job(factory: sessionmaker[Session]) -> tuple[str, int]:
    """A running job and its statistics key, for the plain COPY and INSERT variants."""
    job_id, _ = running_job(factory)
    with factory() as session, session.begin():
        facts = StatJob(job_id=job_id, rows=0)
        session.add(facts)
        session.flush()
        return job_id, facts.key


def variants(url: str, batches: list[LayerStatsBatch]) -> dict[str, Callable[[], float]]:
    """Each variant writes every batch once into a fresh job and returns its seconds."""
    engine = make_engine(url)
    factory = make_session_factory(engine)
    columns = ", ".join(telemetry_queries.LAYER_STAT_ROW_COLUMNS)

    def recorder() -> float:
        job_id, attempt = running_job(factory)
        start = time.perf_counter()
        with Recorder(factory, job_id, attempt=attempt, progress_interval_s=3600) as rec:
            for batch in batches:
                rec.handle(batch)
        return time.perf_counter() - start

    def repository() -> float:
        job_id, attempt = running_job(factory)
        start = time.perf_counter()
        for batch in batches:
            with factory() as session, session.begin():
                job_queries.guard_attempt(session=session, job_id=job_id, attempt=attempt)
                telemetry_queries.add_layer_stat_block(
                    session=session,
                    job_id=job_id,
                    steps=batch.steps,
                    epochs=batch.epochs,
                    values=batch.values,
                    absent=absent_stats(batch),
                )
        return time.perf_counter() - start

    def copy(binary: bool) -> Callable[[], float]:
        def run() -> float:
            _, key = keyed_job(factory)
            with_job = [stored_rows(batch, key) for batch in batches]
            start = time.perf_counter()
            for rows in with_job:
                with engine.begin() as conn:
                    raw = conn.connection.dbapi_connection
                    assert isinstance(raw, psycopg.Connection)
                    fmt = " (FORMAT BINARY)" if binary else ""
                    sql = f"COPY layer_stat ({columns}) FROM STDIN{fmt}"
                    with raw.cursor() as cursor, cursor.copy(sql) as out:
                        if binary:
                            out.set_types(telemetry_queries.LAYER_STAT_ROW_TYPES)
                        for row in rows:
                            out.write_row(row)
            return time.perf_counter() - start

        return run

    def copy_packed(joined: bool) -> Callable[[], float]:
        def run() -> float:
            _, key = keyed_job(factory)
            blocks = join_stat_batches(batches) if joined else batches
            payloads = [packed_rows(b, key) for b in blocks if isinstance(b, LayerStatsBatch)]
            return write_packed(payloads)

        return run

    def write_packed(payloads: list[bytes]) -> float:
        start = time.perf_counter()
        for payload in payloads:
            with engine.begin() as conn:
                raw = conn.connection.dbapi_connection
                assert isinstance(raw, psycopg.Connection)
                sql = f"COPY layer_stat ({columns}) FROM STDIN (FORMAT BINARY)"
                with raw.cursor() as cursor, cursor.copy(sql) as out:
                    out.write(payload)
        return time.perf_counter() - start

    def old_insert() -> float:
        _, key = keyed_job(factory)
        names = telemetry_queries.LAYER_STAT_ROW_COLUMNS
        dicts = [
            [dict(zip(names, row, strict=True)) for row in stored_rows(batch, key)]
            for batch in batches
        ]
        start = time.perf_counter()
        for rows in dicts:
            with factory() as session, session.begin():
                session.execute(insert(LayerStat), rows)
        return time.perf_counter() - start

    found: dict[str, Callable[[], float]] = {"recorder": recorder, "repository": repository}
    if engine.dialect.name == "postgresql":
        found["copy-binary"] = copy(True)
        found["copy-text"] = copy(False)
        found["copy-packed"] = copy_packed(False)
        found["copy-blocks"] = copy_packed(True)
    found["insert"] = old_insert
    return found


def mlflow_rows_per_s(rows: int) -> float | None:
    """MLflow's log_batch of ``rows`` statistic rows (15 metrics each) into a SQLite store."""
    try:
        from mlflow.entities import Metric
        from mlflow.tracking import MlflowClient
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as folder:
        client = MlflowClient(tracking_uri=f"sqlite:///{folder}/mlflow.db")
        run = client.create_run(client.create_experiment("bench"))
        now = int(time.time() * 1000)
        metrics = [
            Metric(f"layer{i % LAYERS}.{name}", float(i), now, i // LAYERS)
            for i in range(rows)
            for name in LAYER_STAT_COLUMNS
        ]
        start = time.perf_counter()
        for first in range(0, len(metrics), 1000):  # log_batch's limit per call
            client.log_batch(run.info.run_id, metrics=metrics[first : first + 1000])
        return rows / (time.perf_counter() - start)


def training_steps_per_s(url: str, rounds: int) -> dict[str, list[float]]:
    spec = ExperimentSpec.model_validate(
        {
            "data": {"dataset": "moons", "train_size": 8192, "val_size": 64},
            "model": {"depth": 8, "width": 64},
            "train": {"epochs": 2, "batch_size": 32},
            "telemetry": {"every_n_steps": 1},
        }
    )
    factory = make_session_factory(make_engine(url))
    results: dict[str, list[float]] = {"recorder": [], "discarded": []}

    def discard(event: object) -> None:
        del event

    train(spec, on_event=discard)  # warm-up: the process's first run took ~10 s here
    for r in range(rounds):
        for name in ("recorder", "discarded") if r % 2 == 0 else ("discarded", "recorder"):
            if name == "recorder":
                job_id, attempt = running_job(factory)  # the job's creation is not timed
                start = time.perf_counter()
                with Recorder(factory, job_id, attempt=attempt) as rec:
                    result = train(spec, on_event=rec.handle)
            else:
                start = time.perf_counter()
                result = train(spec, on_event=discard)
            results[name].append(result.steps / (time.perf_counter() - start))
    return results


def summary(values: list[float]) -> str:
    return f"{statistics.median(values):>10,.0f}  ({min(values):,.0f}..{max(values):,.0f})"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--backend", choices=("postgresql", "sqlite"), default="postgresql")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--batches", type=int, default=32, help="batches of 3,200 rows per round")
    parser.add_argument("--train-rounds", type=int, default=3, help="0 skips the training run")
    parser.add_argument("--mlflow-rows", type=int, default=2_000)
    args = parser.parse_args()
    batches = make_batches(args.batches)
    rows = len(batches) * STEPS_PER_BATCH * LAYERS
    with database(args.backend) as url:
        runs = variants(url, batches)
        rates: dict[str, list[float]] = {name: [] for name in runs}
        names = list(runs)
        for r in range(args.rounds):
            for name in names[r % len(names) :] + names[: r % len(names)]:
                rates[name].append(rows / runs[name]())
            with make_engine(url).begin() as conn:  # the same table size every round
                conn.execute(text("DELETE FROM layer_stat"))
                conn.execute(text("DELETE FROM layer_stat_rollup"))
        print(f"{args.backend}: {rows:,} rows per variant per round, {args.rounds} rounds")
        base = statistics.median(rates.get("copy-binary", rates["insert"]))
        label = "copy-binary" if "copy-binary" in rates else "insert"
        packed = statistics.median(rates["copy-packed"]) if "copy-packed" in rates else None
        header = f"{'variant':<12} {'rows/s median':>14}  (min..max)        x {label}"
        print(header + ("  x copy-packed" if packed else ""))
        for name, values in rates.items():
            line = f"{name:<12} {summary(values)}  {statistics.median(values) / base:6.2f}"
            print(line + (f"  {statistics.median(values) / packed:13.2f}" if packed else ""))
        if "copy-blocks" in rates:
            ratio = statistics.median(rates["recorder"]) / statistics.median(rates["copy-blocks"])
            print(f"recorder / copy-blocks (the same transactions): {ratio:.2f}")
        mlflow = mlflow_rows_per_s(args.mlflow_rows)
        if mlflow is None:
            print("mlflow       not installed (pip install -e '.[bench]'): skipped")
        else:
            print(f"mlflow       {mlflow:>10,.0f}  log_batch, {args.mlflow_rows:,} rows")
        if args.train_rounds:
            steps = training_steps_per_s(url, args.train_rounds)
            print("training steps/s (MLP 8x64, telemetry every step, batch 32, 512 steps a run)")
            for name, values in steps.items():
                print(f"{name:<12} {summary(values)}")
            ratio = statistics.median(steps["recorder"]) / statistics.median(steps["discarded"])
            print(f"recorder / discarded: {ratio:.3f}")


if __name__ == "__main__":
    main()
