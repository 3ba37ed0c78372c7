"""Do reads of a job's statistics stay fast when the job is long? And what does a row cost
on disk?

Loads a throwaway PostgreSQL database itself (no training): 2,000 jobs, one of them long
(100 layers x 10,000 steps = 1 M rows), as many typical ones (21 layers x 240 steps) as
``--rows`` allows, the rest without statistics. The rows go in through the repository's
ingest (binary COPY, rollup, facts), and the same rows into a ``legacy_layer_stat`` table
of the schema before (32-character job id, double precision, NaN for absent activation
statistics) for the old queries. Then interleaved rounds, median (min..max) in ms:

  gradients    all layers' /v1/jobs/{id}/gradients?stat=grad_norm&max_points=500, the
               whole request (TestClient), in the point form ("api", the default) and
               the columnar one ("columns api", format=columns), beside the old query
               alone (window functions over the job's rows) and the new queries alone
  gradients-9  the dashboard's ask: 9 statistics, max_points=300, both forms
  diagnosis    /v1/jobs/{id}/diagnosis, beside the old bounded window + the full scan
               for the first non-finite step
  dashboard    a job page's load: /v1/jobs/{id}, /metrics, /layers, gradients-9 and
               /diagnosis, one after another (the browser sends them at once), with the
               point form ("api") and with the columnar one the dashboard now asks for
               ("columns api"); "step refresh": what it fetches when a running job
               moved on a step (/v1/jobs/{id}, gradients-9 as columns, /diagnosis);
               "page load" / "page refresh": the same with what the dashboard sends
               now instead of gradients-9 (views/job.js statistics(): 4 statistics
               over steps, then the 5 activation statistics at the last step and at
               the last step with a finite gradient norm, one row per layer each)
        page-statistics  that statistics() part alone, beside gradients-9 columns
  typical      the same on a 21 x 240 job

Then bytes per statistic row: pg_total_relation_size (heap, index, TOAST) / rows, for
layer_stat, its rollup and the legacy table.

    .venv/bin/python bench/bench_reads.py                    # 3 M rows (~5 min here)
    .venv/bin/python bench/bench_reads.py --rows 10000000    # the issue's 10 M rows
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from collections.abc import Callable
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import psycopg
from fastapi.testclient import TestClient
from sqlalchemy import (
    Column,
    Double,
    Integer,
    MetaData,
    String,
    Table,
    func,
    or_,
    select,
    text,
)
from sqlalchemy.orm import Session, sessionmaker

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
sys.path.insert(0, str(Path(__file__).resolve().parent))

from bench_ingest import database

from service.api.app import create_app
from service.config import Settings
from service.db.models import LAYER_STAT_COLUMNS
from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from service.db.session import DatabaseTimeouts, make_engine, make_session_factory
from service.diagnosis import DIAGNOSIS_STATS
from service.kit import rollup
from service.specs import ExperimentSpec

LONG = (100, 10_000)
TYPICAL = (21, 240)
STEPS_PER_BATCH = 32
COLUMNS = "&format=columns"
ABSENT = [LAYER_STAT_COLUMNS.index(n) for n in telemetry_queries.ABSENT_WHEN_NAN]

legacy_metadata = MetaData()
legacy = Table(
    "legacy_layer_stat",
    legacy_metadata,
    Column("job_id", String(32), primary_key=True),
    Column("layer_index", Integer, primary_key=True, autoincrement=False),
    Column("step", Integer, primary_key=True, autoincrement=False),
    Column("epoch", Integer),
    *(Column(name, Double) for name in LAYER_STAT_COLUMNS),
)


def job_values(rng: np.random.Generator, layers: int, steps: int, *, nan_at: int | None) -> Any:
    """(steps, layers, stats): lognormal statistics; the output layer has no activation
    statistics (NaN, as the engine reports them); a NaN burst from ``nan_at`` on."""
    values = rng.lognormal(-3, 1, size=(steps, layers, len(LAYER_STAT_COLUMNS)))
    values[:, :, LAYER_STAT_COLUMNS.index("nan_count")] = 0.0
    values[:, :, LAYER_STAT_COLUMNS.index("inf_count")] = 0.0
    values[:, -1, ABSENT] = np.nan
    if nan_at is not None:
        values[nan_at:, :, 0] = np.nan
        values[nan_at:, :, LAYER_STAT_COLUMNS.index("nan_count")] = 12.0
    return values


def plan(layers: int) -> list[dict[str, Any]]:
    return [
        {
            "index": i,
            "name": f"hidden.{i}.linear" if i < layers - 1 else "output",
            "kind": "linear" if i < layers - 1 else "output",
            "params": 4160,
            "shape": [64, 64],
            "activation": "relu" if i < layers - 1 else None,
        }
        for i in range(layers)
    ]


def legacy_copy(conn: psycopg.Connection[Any], job_id: str, values: Any) -> None:
    steps, layers, width = values.shape
    n = steps * layers
    flat = values.transpose(1, 0, 2).reshape(n, width)
    columns = [
        np.full(n, job_id.encode(), dtype="S32"),
        np.repeat(np.arange(layers), steps),
        np.tile(np.arange(steps), layers),
        np.tile(np.arange(steps) // 100, layers),
        *flat.T,
    ]
    types = ["text", "int4", "int4", "int4", *["float8"] * width]
    payload = rollup.binary_copy_rows(columns, types, np.zeros((n, 4 + width), dtype=bool))
    names = ", ".join(c.name for c in legacy.columns)
    with (
        conn.cursor() as cursor,
        cursor.copy(f"COPY legacy_layer_stat ({names}) FROM STDIN (FORMAT BINARY)") as copy,
    ):
        copy.write(rollup.COPY_SIGNATURE + payload + rollup.COPY_TRAILER)


def load(url: str, rows: int, jobs: int) -> tuple[str, str]:
    """(long job id, a typical job id) after loading everything."""
    factory = make_session_factory(make_engine(url))
    legacy_metadata.create_all(make_engine(url))
    rng = np.random.default_rng(0)
    typical_rows = TYPICAL[0] * TYPICAL[1]
    with_stats = 1 + max(0, (rows - LONG[0] * LONG[1]) // typical_rows)
    ids: list[str] = []
    with factory() as session:
        for i in range(jobs):
            job = job_queries.create_job(
                session=session, owner="anonymous", spec=ExperimentSpec(), queue="cpu"
            )
            ids.append(job.id)
            if i % 200 == 0:
                session.commit()
        session.commit()
    raw = psycopg.connect(url.replace("postgresql+psycopg", "postgresql"), autocommit=False)
    start = time.perf_counter()
    for i, job_id in enumerate(ids[: min(with_stats, jobs)]):
        layers, steps = LONG if i == 0 else TYPICAL
        values = job_values(rng, layers, steps, nan_at=7_000 if i == 0 else None)
        absent = np.zeros(values.shape, dtype=bool)
        absent[:, :, ABSENT] = np.isnan(values[:, :, ABSENT])
        with factory() as session:
            job_queries.claim_job(session=session, job_id=job_id, worker="bench")
            telemetry_queries.save_run_plan(
                session=session,
                job_id=job_id,
                layers=plan(layers),
                total_steps=steps,
                epochs=steps // 100,
                device="cpu",
            )
            session.commit()
            for first in range(0, steps, STEPS_PER_BATCH):
                block = slice(first, first + STEPS_PER_BATCH)
                step_range = np.arange(steps)[block]
                telemetry_queries.add_layer_stat_block(
                    session=session,
                    job_id=job_id,
                    steps=step_range,
                    epochs=step_range // 100,
                    values=values[block],
                    absent=absent[block],
                )
                session.commit()
            job_queries.finish_job(session=session, job_id=job_id, status="succeeded", result={})
            session.commit()
        legacy_copy(raw, job_id, values)
        raw.commit()
        if i % 100 == 0:
            print(f"  loaded {i + 1} jobs, {time.perf_counter() - start:.0f} s", flush=True)
    raw.execute("ANALYZE")
    raw.commit()
    raw.close()
    return ids[0], ids[1]


# --- the queries before (service/db/repository/telemetry.py at df36d48) ----------------


def old_layer_stats(session: Session, job_id: str, stats: list[str], max_points: int) -> list[Any]:
    c = legacy.c
    inner = (
        select(
            c.layer_index,
            c.step,
            c.epoch,
            *(c[name] for name in stats),
            func.row_number().over(partition_by=c.layer_index, order_by=c.step).label("rn"),
            func.count().over(partition_by=c.layer_index).label("n"),
        )
        .where(c.job_id == job_id)
        .subquery()
    )
    rn, n = inner.c.rn, inner.c.n
    stride = (n - 2) // (max_points - 1) + 1
    keep = or_(n <= max_points, (rn - 1) % stride == 0, rn == n)
    stmt = (
        select(inner.c.layer_index, inner.c.step, inner.c.epoch, *(inner.c[s] for s in stats))
        .where(keep)
        .order_by(inner.c.layer_index, inner.c.step)
    )
    return list(session.execute(stmt).all())


def old_diagnosis_reads(session: Session, job_id: str, stats: list[str]) -> Any:
    c = legacy.c
    midpoint = (
        select((func.min(c.step) + func.max(c.step)) // 2).where(c.job_id == job_id)
    ).scalar_subquery()
    ranked = (
        select(
            c.layer_index,
            c.step,
            *(c[name] for name in stats),
            func.dense_rank().over(order_by=c.step.desc()).label("r"),
        )
        .where(c.job_id == job_id, c.step >= midpoint)
        .subquery()
    )
    counted = select(ranked, func.max(ranked.c.r).over().label("n")).subquery()
    stride = (counted.c.n - 1) // 2000 + 1
    rows = session.execute(
        select(counted.c.layer_index, counted.c.step, *(counted.c[s] for s in stats))
        .where((counted.c.r - 1) % stride == 0)
        .order_by(counted.c.step, counted.c.layer_index)
    ).all()
    first = session.scalar(
        select(func.min(c.step)).where(c.job_id == job_id, or_(c.nan_count > 0, c.inf_count > 0))
    )
    return rows, first


def new_layer_stats(session: Session, job_id: str, stats: list[str], max_points: int) -> Any:
    return telemetry_queries.list_layer_stat_points(
        session=session, job_id=job_id, stats=stats, max_points=max_points
    )


def new_layer_arrays(session: Session, job_id: str, stats: list[str], max_points: int) -> Any:
    return telemetry_queries.list_layer_stat_runs(
        session=session, job_id=job_id, stats=stats, max_points=max_points
    )


PAGE_STEP_STATS = ["grad_norm", "update_ratio", "nan_count", "inf_count"]
PAGE_ACTIVATION_STATS = ["act_saturation", "act_mean", "act_std", "preact_mean", "preact_std"]


def activation_steps(answer: dict[str, Any]) -> set[int]:
    """The steps views/job.js asks the activation statistics at: each layer's last step
    and its last step with a finite gradient norm (a non-finite one is a string)."""
    steps: set[int] = set()
    for series in answer["series"]:
        columns = series["columns"]
        if columns["step"]:
            steps.add(columns["step"][-1])
        finite = [
            step
            for step, value in zip(columns["step"], columns["grad_norm"], strict=True)
            if isinstance(value, int | float)
        ]
        if finite:
            steps.add(finite[-1])
    return steps


def timed(run: Callable[[], object]) -> float:
    start = time.perf_counter()
    run()
    return (time.perf_counter() - start) * 1000


def variants(
    client: TestClient, factory: sessionmaker[Session], long_id: str, typical_id: str
) -> dict[str, Callable[[], object]]:
    nine = ["grad_norm", "update_ratio", "act_saturation", "act_mean", "act_std"]
    nine += ["preact_mean", "preact_std", "nan_count", "inf_count"]
    nine_query = "&".join(f"stat={s}" for s in nine)
    # The dashboard's page (views/job.js): four statistics over steps, the activation
    # statistics at the steps it draws them.
    page_steps_query = "&".join(f"stat={s}" for s in PAGE_STEP_STATS) + "&max_points=300"
    page_activations_query = "&".join(f"stat={s}" for s in PAGE_ACTIVATION_STATS)

    def get(path: str) -> Callable[[], object]:
        def run() -> object:
            response = client.get(path)
            assert response.status_code == 200, response.text[:200]
            return response

        return run

    def session_run(body: Callable[[Session], object]) -> Callable[[], object]:
        def run() -> object:
            with factory() as session:
                return body(session)

        return run

    def dashboard(job_id: str, form: str) -> Callable[[], object]:
        paths = [
            f"/v1/jobs/{job_id}",
            f"/v1/jobs/{job_id}/metrics",
            f"/v1/jobs/{job_id}/layers",
            f"/v1/jobs/{job_id}/gradients?{nine_query}&max_points=300{form}",
            f"/v1/jobs/{job_id}/diagnosis",
        ]
        return lambda: [get(p)() for p in paths]

    def step_refresh(job_id: str) -> Callable[[], object]:
        paths = [
            f"/v1/jobs/{job_id}",
            f"/v1/jobs/{job_id}/gradients?{nine_query}&max_points=300{COLUMNS}",
            f"/v1/jobs/{job_id}/diagnosis",
        ]
        return lambda: [get(p)() for p in paths]

    def page_statistics(job_id: str) -> Callable[[], object]:
        """What views/job.js statistics() sends: the step statistics, then the
        activation statistics at each step the page draws them at. Those steps are read
        from the first answer once, before the rounds: parsing its JSON is the browser's
        work, not the server's, and no other variant times a client's parse."""
        steps_path = f"/v1/jobs/{job_id}/gradients?{page_steps_query}{COLUMNS}"
        steps = sorted(activation_steps(client.get(steps_path).raise_for_status().json()))
        paths = [steps_path] + [
            f"/v1/jobs/{job_id}/gradients?{page_activations_query}"
            f"&from_step={step}&to_step={step}&max_points=2{COLUMNS}"
            for step in steps
        ]
        return lambda: [get(p)() for p in paths]

    def page_load(job_id: str) -> Callable[[], object]:
        statistics_of_page = page_statistics(job_id)
        paths = [f"/v1/jobs/{job_id}", f"/v1/jobs/{job_id}/metrics", f"/v1/jobs/{job_id}/layers"]
        return lambda: (
            [get(p)() for p in paths],
            statistics_of_page(),
            get(f"/v1/jobs/{job_id}/diagnosis")(),
        )

    def page_refresh(job_id: str) -> Callable[[], object]:
        statistics_of_page = page_statistics(job_id)
        return lambda: (
            get(f"/v1/jobs/{job_id}")(),
            statistics_of_page(),
            get(f"/v1/jobs/{job_id}/diagnosis")(),
        )

    found: dict[str, Callable[[], object]] = {}
    for label, job_id in (("long", long_id), ("typical", typical_id)):
        found[f"{label} gradients api"] = get(
            f"/v1/jobs/{job_id}/gradients?stat=grad_norm&max_points=500"
        )
        found[f"{label} gradients columns api"] = get(
            f"/v1/jobs/{job_id}/gradients?stat=grad_norm&max_points=500{COLUMNS}"
        )
        found[f"{label} gradients new query"] = session_run(
            partial(new_layer_stats, job_id=job_id, stats=["grad_norm"], max_points=500)
        )
        found[f"{label} gradients arrays query"] = session_run(
            partial(new_layer_arrays, job_id=job_id, stats=["grad_norm"], max_points=500)
        )
        found[f"{label} gradients old query"] = session_run(
            partial(old_layer_stats, job_id=job_id, stats=["grad_norm"], max_points=500)
        )
        found[f"{label} gradients-9 api"] = get(
            f"/v1/jobs/{job_id}/gradients?{nine_query}&max_points=300"
        )
        found[f"{label} gradients-9 columns api"] = get(
            f"/v1/jobs/{job_id}/gradients?{nine_query}&max_points=300{COLUMNS}"
        )
        found[f"{label} gradients-9 old query"] = session_run(
            partial(old_layer_stats, job_id=job_id, stats=nine, max_points=300)
        )
        found[f"{label} diagnosis api"] = get(f"/v1/jobs/{job_id}/diagnosis")
        found[f"{label} diagnosis old queries"] = session_run(
            partial(old_diagnosis_reads, job_id=job_id, stats=list(DIAGNOSIS_STATS))
        )
        found[f"{label} dashboard api"] = dashboard(job_id, "")
        found[f"{label} dashboard columns api"] = dashboard(job_id, COLUMNS)
        found[f"{label} dashboard step refresh"] = step_refresh(job_id)
        found[f"{label} page-statistics columns api"] = page_statistics(job_id)
        found[f"{label} dashboard page load"] = page_load(job_id)
        found[f"{label} dashboard page refresh"] = page_refresh(job_id)
        found[f"{label} one layer api"] = get(
            f"/v1/jobs/{job_id}/gradients?layer=0&stat=grad_norm&max_points=500"
        )
    return found


def storage(url: str) -> None:
    with make_engine(url).connect() as conn:
        print("storage on PostgreSQL (pg_total_relation_size / rows)")
        raw_rows = conn.execute(text("SELECT count(*) FROM layer_stat")).scalar() or 1
        for table in ("layer_stat", "layer_stat_rollup", "stat_job", "legacy_layer_stat"):
            size = conn.execute(text(f"SELECT pg_total_relation_size('{table}')")).scalar() or 0
            rows = conn.execute(text(f"SELECT count(*) FROM {table}")).scalar() or 1
            print(
                f"  {table:<18} {rows:>10,} rows {size / 2**20:>8.1f} MiB "
                f"{size / rows:>7.1f} B/row {size / raw_rows:>7.1f} B per statistic row"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rows", type=int, default=3_000_000)
    parser.add_argument("--jobs", type=int, default=2_000)
    parser.add_argument("--rounds", type=int, default=11)
    args = parser.parse_args()
    with database("postgresql") as url:
        start = time.perf_counter()
        long_id, typical_id = load(url, args.rows, args.jobs)
        print(f"loaded in {time.perf_counter() - start:.0f} s")
        storage(url)
        settings = Settings(_env_file=None, database_url=url, database_statement_timeout_s=300.0)
        # The old queries take seconds on a loaded machine: past the service's 5 s limit.
        patient = DatabaseTimeouts(statement_s=300.0)
        factory = make_session_factory(make_engine(url, timeouts=patient))
        with TestClient(create_app(settings)) as client:
            runs = variants(client, factory, long_id, typical_id)
            times: dict[str, list[float]] = {name: [] for name in runs}
            names = list(runs)
            for name in names:  # warm up: plans, caches
                runs[name]()
            for r in range(args.rounds):
                for name in names[r % len(names) :] + names[: r % len(names)]:
                    times[name].append(timed(runs[name]))
        print(f"reads, {args.rounds} rounds, ms: median (min..max)")
        for name, values in times.items():
            print(
                f"  {name:<30} {statistics.median(values):>8.1f} "
                f"({min(values):.1f}..{max(values):.1f})"
            )
        for label in ("long", "typical"):
            for what in ("gradients", "gradients-9"):
                points = statistics.median(times[f"{label} {what} api"])
                columns = statistics.median(times[f"{label} {what} columns api"])
                old = statistics.median(times[f"{label} {what} old query"])
                print(
                    f"  {label} {what}: old query / columns request = {old / columns:.1f}x, "
                    f"points request / columns request = {points / columns:.1f}x"
                )
            points = statistics.median(times[f"{label} dashboard api"])
            columns = statistics.median(times[f"{label} dashboard columns api"])
            nine = statistics.median(times[f"{label} gradients-9 columns api"])
            page_reads = statistics.median(times[f"{label} page-statistics columns api"])
            print(
                f"  {label} statistics: gradients-9 columns / the page's reads = "
                f"{nine / page_reads:.1f}x"
            )
            page = statistics.median(times[f"{label} dashboard page load"])
            print(
                f"  {label} dashboard: points / columns = {points / columns:.1f}x, "
                f"columns (9 statistics) / page load = {columns / page:.1f}x"
            )
            refresh = statistics.median(times[f"{label} dashboard step refresh"])
            page_refresh = statistics.median(times[f"{label} dashboard page refresh"])
            print(f"  {label} refresh: 9 statistics / page refresh = {refresh / page_refresh:.1f}x")


if __name__ == "__main__":
    main()
