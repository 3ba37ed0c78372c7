"""Job search at 20,000 jobs: filters and sorts on spec and result fields, this tree's
path (JSONB with GIN indexes on PostgreSQL, typed jsonpath predicates) beside the old
one (JSON text re-parsed per row, ``CAST(spec #>> path AS FLOAT)``) in the same run.

Loads the jobs itself (one bulk INSERT), then copies them into ``bench_job_json``, a
table like ``job`` but with ``json`` columns and no GIN index: the old path's queries
run there, the new path's through ``repository.jobs.list_jobs``; both load ORM rows
(one page of 50 + 1). Rounds alternate the two; prints the median and p90 per query.

    .venv/bin/python bench/bench_search.py                       # PostgreSQL and SQLite
    .venv/bin/python bench/bench_search.py --jobs 2000 --backends postgres --rounds 9
"""

from __future__ import annotations

import argparse
import random
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from pathlib import Path
from typing import Any

import psycopg
from sqlalchemy import insert, select, text
from sqlalchemy.orm import Session

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

from service import search
from service.db.migrate import upgrade_database
from service.db.models import Job
from service.db.repository import jobs as job_queries
from service.db.session import make_engine, make_session_factory
from service.keys import ANONYMOUS
from service.specs import ExperimentSpec

PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/postgres"
PAGE = 51
ACTIVATIONS = ("relu", "sigmoid", "tanh", "gelu")
LRS = (0.001, 0.003, 0.01, 0.03, 0.1)
DEPTHS = (2, 4, 8, 12, 20)


def _rows(n: int) -> list[dict[str, Any]]:
    rng = random.Random(0)
    base = ExperimentSpec.model_validate({"name": "bench"}).model_dump(mode="json")
    start = datetime(2026, 1, 1, tzinfo=UTC)
    rows = []
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
        rows.append(
            {
                "id": uuid.uuid4().hex,
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
    return rows


def _load(session: Session, n: int) -> None:
    started = time.perf_counter()
    session.execute(insert(Job), _rows(n))
    dialect = session.get_bind().dialect.name
    json_type = "json" if dialect == "postgresql" else "JSON"
    if dialect == "postgresql":
        session.execute(text("CREATE TABLE bench_job_json (LIKE job INCLUDING DEFAULTS)"))
        for column in ("spec", "result", "tags", "grid_point"):
            session.execute(
                text(f"ALTER TABLE bench_job_json ALTER COLUMN {column} TYPE {json_type}")
            )
        session.execute(text("INSERT INTO bench_job_json SELECT * FROM job"))
    else:
        session.execute(text("CREATE TABLE bench_job_json AS SELECT * FROM job"))
    session.execute(
        text("CREATE INDEX ix_bench_job_json_owner ON bench_job_json (owner, created_at, id)")
    )
    session.commit()
    session.execute(text("ANALYZE"))
    session.commit()
    print(f"  loaded {n} jobs in {time.perf_counter() - started:.1f} s", flush=True)


def _old_sql(dialect: str, document: str, path: Sequence[str], as_: str) -> str:
    """The old path's expression: the field as text, cast, from JSON re-parsed per row."""
    if dialect == "postgresql":
        extracted = f"({document} #>> '{{{','.join(path)}}}')"
    else:
        extracted = f"JSON_EXTRACT({document}, '$.{'.'.join(path)}')"
    return f"CAST({extracted} AS {as_})" if as_ != "TEXT" else extracted


# name -> (new: query-string filters and sort, old: WHERE and ORDER BY on bench_job_json)
CASES: dict[str, tuple[list[str], str, Callable[[str], tuple[str, str]]]] = {
    "spec equality  model.activation=relu": (
        ["model.activation=relu"],
        "-created_at",
        lambda d: (f"{_old_sql(d, 'spec', ['model', 'activation'], 'TEXT')} = 'relu'", ""),
    ),
    "spec range     train.lr>=0.01": (
        ["train.lr>=0.01"],
        "-created_at",
        lambda d: (f"{_old_sql(d, 'spec', ['train', 'lr'], 'FLOAT')} >= 0.01", ""),
    ),
    "result range   result.val_acc>0.9": (
        ["result.val_acc>0.9"],
        "-created_at",
        lambda d: (f"{_old_sql(d, 'result', ['val_acc'], 'FLOAT')} > 0.9", ""),
    ),
    "rare range     result.val_acc>0.999 (scans all)": (
        ["result.val_acc>0.999"],
        "-created_at",
        lambda d: (f"{_old_sql(d, 'result', ['val_acc'], 'FLOAT')} > 0.999", ""),
    ),
    "rare equality  model.depth=20 & activation=gelu & lr=0.1": (
        ["model.depth=20", "model.activation=gelu", "train.lr=0.1"],
        "-created_at",
        lambda d: (
            f"{_old_sql(d, 'spec', ['model', 'depth'], 'INTEGER')} = 20 AND "
            f"{_old_sql(d, 'spec', ['model', 'activation'], 'TEXT')} = 'gelu' AND "
            f"{_old_sql(d, 'spec', ['train', 'lr'], 'FLOAT')} = 0.1",
            "",
        ),
    ),
    "sort           -result.val_acc": (
        [],
        "-result.val_acc",
        lambda d: ("1 = 1", f"{_old_sql(d, 'result', ['val_acc'], 'FLOAT')} DESC"),
    ),
    "filter + sort  train.lr>=0.01, -result.val_acc": (
        ["train.lr>=0.01"],
        "-result.val_acc",
        lambda d: (
            f"{_old_sql(d, 'spec', ['train', 'lr'], 'FLOAT')} >= 0.01",
            f"{_old_sql(d, 'result', ['val_acc'], 'FLOAT')} DESC",
        ),
    ),
}


def _new(session: Session, filters: list[str], sort: str) -> int:
    parsed = [search.parse_filter(f, loc=("query", "where")) for f in filters]
    rows = job_queries.list_jobs(
        session=session,
        owner=ANONYMOUS,
        filters=parsed,
        sort=search.parse_sort(sort),
        limit=PAGE,
    )
    return len(rows)


def _old(session: Session, where: str, order: str) -> int:
    nulls = " NULLS LAST" if order else ""
    order_by = f"{order}{nulls}, id DESC" if order else "created_at DESC, id DESC"
    sql = (
        f"SELECT * FROM bench_job_json WHERE owner = :owner AND {where} "
        f"ORDER BY {order_by} LIMIT {PAGE}"
    )
    return len(session.scalars(select(Job).from_statement(text(sql)), {"owner": ANONYMOUS}).all())


def _timed(call: Callable[..., int], *args: Any) -> tuple[float, int]:
    started = time.perf_counter()
    found = call(*args)
    return (time.perf_counter() - started) * 1000, found


def _run(url: str, n: int, rounds: int) -> None:
    upgrade_database(url)
    engine = make_engine(url)
    factory = make_session_factory(engine)
    try:
        with factory() as session:
            _load(session, n)
        dialect = engine.dialect.name
        print(f"\n{dialect}, {n} jobs, page of {PAGE}, {rounds} rounds (ms: median / p90)")
        print("| query | rows | old median | old p90 | new median | new p90 | old/new |")
        print("|---|---|---|---|---|---|---|")
        for name, (filters, sort, old_sql) in CASES.items():
            where, order = old_sql(dialect)
            old_ms, new_ms = [], []
            with factory() as session:
                _new(session, filters, sort)  # warm the statement caches
                _old(session, where, order)
                for _ in range(rounds):
                    ms, found_new = _timed(_new, session, filters, sort)
                    new_ms.append(ms)
                    ms, found_old = _timed(_old, session, where, order)
                    old_ms.append(ms)
                    session.rollback()
            assert found_new == found_old, (name, found_new, found_old)
            old_p50, new_p50 = statistics.median(old_ms), statistics.median(new_ms)
            old_p90 = statistics.quantiles(old_ms, n=10)[-1]
            new_p90 = statistics.quantiles(new_ms, n=10)[-1]
            print(
                f"| {name} | {found_new} | {old_p50:.1f} | {old_p90:.1f} | {new_p50:.1f} | "
                f"{new_p90:.1f} | {old_p50 / new_p50:.1f}x |",
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
