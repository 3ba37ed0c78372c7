"""Job search at 20,000 jobs: filters and sorts on spec and result fields through
``repository.jobs.list_jobs``, with the field index (``job_field``, migration 0011: range
filters and sorts of one owner read one ordered index range) beside the documents'
path it replaced (0010: JSONB with GIN indexes, typed jsonpath predicates, the sort
computed over every matching job), in the same run on the same tables.

Loads the jobs itself (one bulk INSERT of the jobs and of their ``job_field`` rows). The
documents' path is the same function with the field index turned off (its two entry
points patched to "not indexed"), so both load the same ORM rows (one page of 50 + 1)
and must return the same ids in the same order. Rounds alternate the two; prints the
median and p90 per query.

    .venv/bin/python bench/bench_search.py                       # PostgreSQL and SQLite
    .venv/bin/python bench/bench_search.py --jobs 20000 --backends postgres --rounds 9
"""

from __future__ import annotations

import argparse
import contextlib
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Iterator, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any
from unittest import mock

import psycopg
from sqlalchemy import insert, text
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service import search
from service.db.migrate import upgrade_database
from service.db.models import Job, JobField
from service.db.repository import jobs as job_queries
from service.db.session import make_engine, make_session_factory
from service.keys import ANONYMOUS
from service.kit.pagination import Position
from service.specs import ExperimentSpec

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PAGE = 51
ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu")
LRS = (0.001, 0.003, 0.01, 0.03, 0.1)
DEPTHS = (2, 4, 8, 12, 20)


def _rows(n: int) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """The jobs and their job_field rows."""
    rng = random.Random(0)
    base = ExperimentSpec.model_validate({"name": "bench"}).model_dump(mode="json")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    jobs, fields = [], []
    for i in range(n):
        spec = {**base, "name": f"job-{i}"}
        spec["model"] = {
            **base["model"],
            "activation": rng.choice(ACTIVATIONS),
            "depth": rng.choice(DEPTHS),
        }
        spec["train"] = {**base["train"], "lr": rng.choice(LRS), "seed": i}
        finished = rng.random() < 0.8
        result = (
            {"val_acc": round(rng.random(), 4), "val_loss": rng.random() * 3, "steps": 240}
            if finished
            else None
        )
        job_id = uuid.uuid4().hex
        jobs.append(
            {
                "id": job_id,
                "owner": ANONYMOUS,
                "name": spec["name"],
                "tags": [],
                "status": "succeeded" if finished else "queued",
                "spec": spec,
                "queue": "cpu",
                "epochs": 3,
                "result": result,
                "created_at": start + timedelta(seconds=i),
                "cancel_requested": False,
                "attempt": 1 if finished else 0,
                "max_attempts": 3,
                "preemptions": 0,
            }
        )
        fields += job_queries.job_field_rows(
            job_id=job_id, owner=ANONYMOUS, document=spec, prefix=""
        )
        if result is not None:
            fields += job_queries.job_field_rows(
                job_id=job_id, owner=ANONYMOUS, document=result, prefix=job_queries.RESULT_FIELD
            )
    return jobs, fields


def _load(session: Session, url: str, n: int) -> None:
    started = time.perf_counter()
    jobs, fields = _rows(n)
    session.execute(insert(Job), jobs)
    session.commit()
    if not url.startswith("postgresql"):
        session.execute(insert(JobField), fields)
        session.commit()
        session.execute(text("ANALYZE"))
        session.commit()
    else:
        # COPY on a connection of its own: the service's engine has a statement timeout.
        columns = ("job_id", "path", "owner", "number", "string")
        dsn = url.replace("postgresql+psycopg://", "postgresql://")
        with psycopg.connect(dsn, autocommit=True) as conn:
            with (
                conn.cursor() as cursor,
                cursor.copy(f"COPY job_field ({', '.join(columns)}) FROM STDIN") as copy,
            ):
                for row in fields:
                    copy.write_row([row[c] for c in columns])
            # As autovacuum leaves tables that stopped changing: statistics, visibility map.
            conn.execute("VACUUM ANALYZE")
    elapsed = time.perf_counter() - started
    print(f"  loaded {n} jobs and {len(fields)} job_field rows in {elapsed:.1f} s", flush=True)


# name -> (filters, sort)
CASES: dict[str, tuple[list[str], str]] = {
    "spec equality  model.activation=relu": (["model.activation=relu"], "-created_at"),
    "spec range     train.lr>=0.01": (["train.lr>=0.01"], "-created_at"),
    "result range   result.val_acc>0.9": (["result.val_acc>0.9"], "-created_at"),
    "rare range     result.val_acc>0.999": (["result.val_acc>0.999"], "-created_at"),
    "rare equality  model.depth=20 & activation=gelu & lr=0.1": (
        ["model.depth=20", "model.activation=gelu", "train.lr=0.1"],
        "-created_at",
    ),
    "sort           -result.val_acc": ([], "-result.val_acc"),
    "sort           train.lr": ([], "train.lr"),
    "sort (string)  -model.activation": ([], "-model.activation"),
    "filter + sort  train.lr>=0.01, -result.val_acc": (["train.lr>=0.01"], "-result.val_acc"),
    "rare + sort    result.val_acc>0.999, -train.lr": (["result.val_acc>0.999"], "-train.lr"),
    # After the largest lr: only jobs without one would be left (there are none).
    "last page      train.lr": ([], "train.lr"),
}
LAST_PAGE = Position(key=max(LRS), id="f" * 32)


@contextlib.contextmanager
def _documents_only() -> Iterator[None]:
    """list_jobs as it was before job_field: no range filter is found selective in the
    field index, and no sort has an indexed column."""
    with (
        mock.patch.object(job_queries, "_selective_matches", lambda *_: None),
        mock.patch.object(job_queries, "_field_column", lambda _: None),
    ):
        yield


def _page(session: Session, filters: Sequence[str], sort: str, after: Position | None) -> list[str]:
    parsed = [search.parse_filter(f, loc=("query", "where")) for f in filters]
    rows = job_queries.list_jobs(
        session=session,
        owner=ANONYMOUS,
        filters=parsed,
        sort=search.parse_sort(sort),
        after=after,
        limit=PAGE,
    )
    return [job.id for job in rows]


def _timed(
    session: Session, name: str, filters: Sequence[str], sort: str, *, indexed: bool
) -> tuple[float, list[str]]:
    with contextlib.nullcontext() if indexed else _documents_only():
        started = time.perf_counter()
        ids = _page(session, filters, sort, LAST_PAGE if name.startswith("last page") else None)
        elapsed = (time.perf_counter() - started) * 1000
    session.rollback()
    return elapsed, ids


def _run(url: str, n: int, rounds: int) -> None:
    upgrade_database(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    try:
        with factory() as session:
            _load(session, url, n)
        dialect = engine.dialect.name
        print(f"\n{dialect}, {n} jobs, page of {PAGE}, {rounds} rounds (ms: median / p90)")
        print("| query | rows | documents median | p90 | job_field median | p90 | ratio |")
        print("|---|---|---|---|---|---|---|")
        for name, (filters, sort) in CASES.items():
            documents_ms, indexed_ms = [], []
            with factory() as session:
                _timed(session, name, filters, sort, indexed=True)  # warm the statement caches
                _timed(session, name, filters, sort, indexed=False)
                for _ in range(rounds):
                    ms, found_indexed = _timed(session, name, filters, sort, indexed=True)
                    indexed_ms.append(ms)
                    ms, found_documents = _timed(session, name, filters, sort, indexed=False)
                    documents_ms.append(ms)
            assert found_indexed == found_documents, name
            documents_p50, indexed_p50 = (
                statistics.median(documents_ms),
                statistics.median(indexed_ms),
            )
            documents_p90 = statistics.quantiles(documents_ms, n=10)[-1]
            indexed_p90 = statistics.quantiles(indexed_ms, n=10)[-1]
            print(
                f"| {name} | {len(found_indexed)} | {documents_p50:.1f} | {documents_p90:.1f} | "
                f"{indexed_p50:.1f} | {indexed_p90:.1f} | {documents_p50 / indexed_p50:.1f}x |",
                flush=True,
            )
    finally:
        engine.dispose()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--jobs", type=int, default=20_000)
    parser.add_argument("--rounds", type=int, default=15)
    parser.add_argument("--backends", default="postgres,sqlite")
    args = parser.parse_args()
    for backend in args.backends.split(","):
        if backend == "sqlite":
            with tempfile.TemporaryDirectory() as folder:
                _run(f"sqlite:///{folder}/bench.db", args.jobs, args.rounds)
            continue
        name = f"trainlab_bench_{uuid.uuid4().hex[:10]}"
        with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
            conn.execute(f'CREATE DATABASE "{name}"')
        try:
            _run(f"postgresql+psycopg://postgres@127.0.0.1:5432/{name}", args.jobs, args.rounds)
        finally:
            with psycopg.connect(PG_ADMIN, autocommit=True) as conn:
                conn.execute(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


if __name__ == "__main__":
    main()
