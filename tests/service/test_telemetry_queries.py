"""Telemetry queries (service.db.repository.telemetry): run plans and bulk statistics."""

from __future__ import annotations

import math

import numpy as np
import pytest
from sqlalchemy import insert, select
from sqlalchemy.orm import Session

from service.db.models import LAYER_STAT_COLUMNS, Job, JobTag, Layer, LayerStat, StatJob
from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from service.kit import rollup
from tests.service.conftest import stored_job


def test_save_run_plan_can_be_repeated(session: Session) -> None:
    job_id = stored_job(session)
    layer = {
        "index": 0,
        "name": "l",
        "kind": "linear",
        "params": 3,
        "shape": (3, 1),
        "activation": None,
    }
    for _ in range(2):
        telemetry_queries.save_run_plan(
            session=session, job_id=job_id, layers=[layer], total_steps=9, epochs=3, device="cuda"
        )
    session.commit()
    assert len(telemetry_queries.list_layers(session=session, job_id=job_id)) == 1
    job = job_queries.get_job(session=session, job_id=job_id, owner=None)
    assert job is not None and (job.total_steps, job.device) == (9, "cuda")


def test_layer_stats_accept_numpy_scalars_and_missing_stats(session: Session) -> None:
    np = pytest.importorskip("numpy")
    job_id = stored_job(session)
    rows = [
        {
            "layer_index": np.int64(1),
            "step": np.int64(5),
            "epoch": np.int64(1),
            "grad_norm": np.float64(0.5),
            "unknown_key": 1.0,
        }
    ]
    assert telemetry_queries.add_layer_stats(session=session, job_id=job_id, rows=rows) == 1
    assert telemetry_queries.add_layer_stats(session=session, job_id=job_id, rows=[]) == 0
    session.commit()
    stat = session.scalars(select(LayerStat)).one()
    assert (stat.layer_index, stat.step, stat.grad_norm, stat.act_mean) == (1, 5, 0.5, None)


def test_deleting_a_job_cascades_to_its_rows(session: Session) -> None:
    job_id = stored_job(session, tags=["t"])
    layer = {
        "index": 0,
        "name": "l",
        "kind": "linear",
        "params": 1,
        "shape": [1],
        "activation": None,
    }
    telemetry_queries.save_run_plan(
        session=session, job_id=job_id, layers=[layer], total_steps=1, epochs=1, device="cpu"
    )
    telemetry_queries.add_layer_stats(
        session=session, job_id=job_id, rows=[{"layer_index": 0, "step": 0, "epoch": 1}]
    )
    session.commit()
    session.delete(session.get(Job, job_id))
    session.commit()
    for model in (JobTag, Layer, LayerStat):
        assert session.scalars(select(model)).all() == []


def _stored_stats(session: Session, job_id: str) -> list[tuple[object, ...]]:
    rows = session.execute(
        select(LayerStat.layer_index, LayerStat.step, LayerStat.epoch, *_stat_columns())
        .join(StatJob, StatJob.key == LayerStat.job_key)
        .where(StatJob.job_id == job_id)
        .order_by(LayerStat.layer_index, LayerStat.step)
    ).all()
    # NaN != NaN: compare its text instead.
    return [tuple(repr(v) if isinstance(v, float) else v for v in row) for row in rows]


def _stat_columns() -> list[object]:
    return [getattr(LayerStat, name) for name in LAYER_STAT_COLUMNS]


def test_the_bulk_write_stores_what_an_insert_stores(session: Session) -> None:
    """COPY (PostgreSQL) / executemany (SQLite) against SQLAlchemy's INSERT of the same
    rows: NaN, ±inf, absent values, several layers and steps in any order."""
    rng = np.random.default_rng(3)
    rows = []
    for step in (7, 3, 5):
        for layer in (2, 0, 1):
            values: list[float | None] = rng.lognormal(size=len(LAYER_STAT_COLUMNS)).tolist()
            values[0] = math.nan if step == 5 else values[0]
            values[1] = math.inf if layer == 1 else values[1]
            values[2] = -math.inf if layer == 2 else values[2]
            values[9] = None if layer == 0 else values[9]
            rows.append((layer, step, 1, *values))
    copied, inserted = stored_job(session), stored_job(session)
    telemetry_queries.add_layer_stat_rows(session=session, job_id=copied, rows=rows)
    facts = StatJob(job_id=inserted, rows=0)
    session.add(facts)
    session.flush()
    names = ("layer_index", "step", "epoch", *LAYER_STAT_COLUMNS)
    session.execute(
        insert(LayerStat),
        [{"job_key": facts.key, **dict(zip(names, row, strict=True))} for row in rows],
    )
    session.commit()
    assert len(_stored_stats(session, copied)) == 9
    assert _stored_stats(session, copied) == _stored_stats(session, inserted)


def test_facts_kept_at_ingest(session: Session) -> None:
    job_id = stored_job(session)
    rows = [
        {"layer_index": i, "step": s, "epoch": 1, "nan_count": 0.0}
        for i in (0, 1)
        for s in range(10)
    ]
    rows[13]["nan_count"] = 4.0  # layer 1, step 3
    telemetry_queries.add_layer_stats(session=session, job_id=job_id, rows=rows)
    session.commit()
    assert telemetry_queries.first_nonfinite_step(session=session, job_id=job_id) == 3
    facts = session.scalars(select(StatJob).where(StatJob.job_id == job_id)).one()
    assert (facts.rows, facts.first_step, facts.last_step, facts.max_layer_index) == (20, 0, 9, 1)
    telemetry_queries.discard_after(session=session, job_id=job_id, step=2, epoch=0)
    session.commit()
    assert telemetry_queries.first_nonfinite_step(session=session, job_id=job_id) is None
    assert (facts.rows, facts.last_step) == (6, 2)
    points = telemetry_queries.list_layer_stat_points(
        session=session, job_id=job_id, stats=["nan_count"], max_points=500
    )
    assert [(p[0], p[1]) for p in points] == [(0, 0), (0, 1), (0, 2), (1, 0), (1, 1), (1, 2)]


def test_null_patterns_group_rows_by_their_nulls() -> None:
    rng = np.random.default_rng(5)
    absent = rng.random((500, 19)) < 0.1
    patterns, which = rollup.null_patterns(absent)
    assert (patterns[which] == absent).all()
    assert len(patterns) == len(np.unique(absent, axis=0))
    same, none = rollup.null_patterns(np.zeros((4, 3), dtype=bool))
    assert same.tolist() == [[False] * 3] and none.tolist() == [0] * 4


def test_the_bulk_write_keeps_every_pattern_of_nulls(
    session: Session, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Rows with many different sets of absent statistics, in any order: each stored
    with its own NULLs (binary COPY packs each pattern of NULLs as its own record layout,
    chunk by chunk: here 5 rows a chunk)."""
    monkeypatch.setattr(telemetry_queries, "COPY_CHUNK_ROWS", 5)
    rng = np.random.default_rng(11)
    rows = []
    for step in range(12, 0, -1):
        for layer in range(4):
            values: list[float | None] = rng.normal(size=len(LAYER_STAT_COLUMNS)).tolist()
            for k in np.flatnonzero(rng.random(len(LAYER_STAT_COLUMNS)) < 0.3).tolist():
                values[k] = None
            rows.append((layer, step, 1, *values))
    copied, inserted = stored_job(session), stored_job(session)
    telemetry_queries.add_layer_stat_rows(session=session, job_id=copied, rows=rows)
    facts = StatJob(job_id=inserted, rows=0)
    session.add(facts)
    session.flush()
    names = ("layer_index", "step", "epoch", *LAYER_STAT_COLUMNS)
    session.execute(
        insert(LayerStat),
        [{"job_key": facts.key, **dict(zip(names, row, strict=True))} for row in rows],
    )
    session.commit()
    assert len(_stored_stats(session, copied)) == 48
    assert _stored_stats(session, copied) == _stored_stats(session, inserted)


def test_facts_add_up_over_ingests(session: Session) -> None:
    """Each ingest folds its rows into the job's facts: counts add up, the first steps
    are the smallest seen (a batch without a non-finite value keeps the known one), and a
    StatJob the session already holds shows the new facts."""
    job_id = stored_job(session)

    def ingest(steps: range, layers: int, nan_at: int | None) -> None:
        rows = [
            {"layer_index": i, "step": s, "epoch": 1, "nan_count": 2.0 if s == nan_at else 0.0}
            for i in range(layers)
            for s in steps
        ]
        telemetry_queries.add_layer_stats(session=session, job_id=job_id, rows=rows)

    ingest(range(10, 20), 2, nan_at=15)
    facts = session.scalars(select(StatJob).where(StatJob.job_id == job_id)).one()
    assert (facts.rows, facts.first_nonfinite_step) == (20, 15)
    ingest(range(20, 30), 3, nan_at=None)
    ingest(range(5, 8), 1, nan_at=6)
    ingest(range(30, 31), 1, nan_at=30)
    assert (facts.rows, facts.first_step, facts.last_step) == (54, 5, 30)
    assert (facts.max_layer_index, facts.first_nonfinite_step) == (2, 6)
    session.commit()
    assert telemetry_queries.first_nonfinite_step(session=session, job_id=job_id) == 6
