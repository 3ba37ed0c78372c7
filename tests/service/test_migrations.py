"""The Alembic history builds, tears down and rebuilds the schema the ORM expects."""

from __future__ import annotations

import json
import math
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

from service.db.base import Base
from service.db.migrate import downgrade_database, upgrade_database
from service.db.session import make_engine
from tests.service.conftest import create_pg_database, drop_pg_database

TABLES = {
    "job",
    "job_tag",
    "epoch_metric",
    "layer",
    "layer_stat",
    "layer_histogram",
    "dataset",
    "sweep",
    "landscape",
    "worker_node",
    "stat_job",
    "layer_stat_rollup",
    "job_field",
}


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def empty_db(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[str]:
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path / 'fresh.db'}"
        return
    url = create_pg_database()
    try:
        yield url
    finally:
        drop_pg_database(url)


def _tables(url: str) -> set[str]:
    engine = make_engine(url)
    try:
        return set(inspect(engine).get_table_names()) - {"alembic_version"}
    finally:
        engine.dispose()


def _schema_diff(url: str) -> list[object]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            context = MigrationContext.configure(conn, opts={"compare_type": True})
            return list(compare_metadata(context, Base.metadata))
    finally:
        engine.dispose()


def test_upgrade_downgrade_upgrade(empty_db: str) -> None:
    upgrade_database(empty_db)
    assert _tables(empty_db) == TABLES
    downgrade_database(empty_db)
    assert _tables(empty_db) == set()
    upgrade_database(empty_db)
    assert _tables(empty_db) == TABLES


def test_migrated_schema_matches_the_orm(empty_db: str) -> None:
    upgrade_database(empty_db)
    assert _schema_diff(empty_db) == []


def test_revision_files_are_dated() -> None:
    versions = Path(__file__).resolve().parents[2] / "migrations" / "versions"
    names = sorted(p.name for p in versions.glob("*.py"))
    assert names
    assert all(name[:4].isdigit() and name[4] == "_" for name in names), names


GRID = {
    "dims": 1,
    "alphas": [-1.0, 0.0, 1.0],
    "losses": [3.0, 1.0, "NaN"],
    "roughness": 0.5,
    "sharpness": 0.25,
    "local_minima": 1,
    "examples": 64,
}


def _job_results(url: str) -> dict[str, Any]:
    engine = make_engine(url)
    try:
        with engine.connect() as conn:
            rows = conn.execute(text("SELECT id, result FROM job")).all()
    finally:
        engine.dispose()
    return {job_id: json.loads(r) if isinstance(r, str) else r for job_id, r in rows}


def test_landscape_grids_move_to_their_table_and_back(empty_db: str) -> None:
    upgrade_database(empty_db, "0003")
    now = datetime.now(UTC)
    job = {
        "name": "",
        "tags": "[]",
        "status": "succeeded",
        "spec": "{}",
        "queue": "cpu",
        "epoch": 1,
        "epochs": 1,
        "step": 1,
        "total_steps": 1,
        "created_at": now,
        "finished_at": now,
        "cancel_requested": False,
    }
    with_grid = json.dumps({"val_acc": 0.5, "landscape": GRID})
    engine = make_engine(empty_db)
    insert = text(
        "INSERT INTO job (id, name, tags, status, spec, queue, epoch, epochs, step, "
        "total_steps, result, created_at, finished_at, cancel_requested) VALUES (:id, :name, "
        ":tags, :status, :spec, :queue, :epoch, :epochs, :step, :total_steps, :result, "
        ":created_at, :finished_at, :cancel_requested)"
    )
    with engine.begin() as conn:
        conn.execute(insert, {**job, "id": "with", "result": with_grid})
        conn.execute(insert, {**job, "id": "without", "result": json.dumps({"val_acc": 0.1})})
    upgrade_database(empty_db)
    with engine.connect() as conn:
        stored = conn.execute(text("SELECT job_id, dims, losses, examples FROM landscape")).all()
    assert [(r[0], r[1], r[3]) for r in stored] == [("with", 1, 64)]
    results = _job_results(empty_db)
    assert results["with"] == {
        "val_acc": 0.5,
        "landscape": {
            "dims": 1,
            "points": 3,
            "roughness": 0.5,
            "sharpness": 0.25,
            "local_minima": 1,
        },
    }
    assert results["without"] == {"val_acc": 0.1}
    downgrade_database(empty_db, "0003")
    engine.dispose()
    assert _job_results(empty_db)["with"] == {"val_acc": 0.5, "landscape": GRID}


def test_owners_arrive_without_losing_rows(empty_db: str) -> None:
    """0007: existing jobs, sweeps and datasets belong to ``anonymous``; their child rows
    survive (SQLite recreates ``job`` in batch mode); idempotency keys become per owner."""
    upgrade_database(empty_db, "0004")
    now = datetime.now(UTC)
    engine = make_engine(empty_db)
    job = text(
        "INSERT INTO job (id, name, tags, status, spec, queue, epoch, epochs, step, "
        "total_steps, created_at, cancel_requested, idempotency_key) VALUES (:id, '', '[]', "
        "'queued', '{}', 'cpu', 0, 1, 0, 0, :now, :false, :key)"
    )
    with engine.begin() as conn:
        conn.execute(job, {"id": "j1", "now": now, "false": False, "key": "k"})
        conn.execute(
            text("INSERT INTO layer_stat (job_id, layer_index, step, epoch) VALUES ('j1', 0, 1, 0)")
        )
        conn.execute(
            text(
                "INSERT INTO dataset (id, name, created_at, n_examples, x_shape, num_classes, "
                "layout, size_bytes, content) VALUES ('ds_1', 'd', :now, 10, '[10, 2]', 2, "
                "'table', 1, :blob)"
            ),
            {"now": now, "blob": b"x"},
        )
    upgrade_database(empty_db)
    with engine.begin() as conn:
        assert conn.execute(text("SELECT owner FROM job")).scalars().all() == ["anonymous"]
        assert conn.execute(text("SELECT owner FROM dataset")).scalars().all() == ["anonymous"]
        assert conn.execute(text("SELECT count(*) FROM layer_stat")).scalar() == 1
        # the same Idempotency-Key under another owner is another job now
        conn.execute(
            text(
                "INSERT INTO job (id, owner, name, tags, status, spec, queue, epoch, epochs, "
                "step, total_steps, created_at, cancel_requested, idempotency_key) VALUES "
                "('j2', 'alice', '', '[]', 'queued', '{}', 'cpu', 0, 1, 0, 0, :now, :false, 'k')"
            ),
            {"now": now, "false": False},
        )
    downgrade_database(empty_db, "0004")
    with engine.connect() as conn:
        keys = conn.execute(text("SELECT id, idempotency_key FROM job ORDER BY id")).all()
        assert [tuple(row) for row in keys] == [("j1", "k"), ("j2", None)]
        assert conn.execute(text("SELECT count(*) FROM layer_stat")).scalar() == 1
    engine.dispose()


def test_statistics_move_to_integer_keys_and_a_rollup(empty_db: str) -> None:
    """0009: each job with statistics gets a key and its facts; its rows move (absent
    activation statistics become NULL, values past single precision ±Infinity or 0) and
    its rollup is computed from them; downgrading brings the rows back."""
    upgrade_database(empty_db, "0007")
    now = datetime.now(UTC)
    engine = make_engine(empty_db)
    postgres = engine.dialect.name == "postgresql"
    with engine.begin() as conn:
        for job_id in ("j1", "j2"):
            conn.execute(
                text(
                    "INSERT INTO job (id, owner, name, tags, status, spec, queue, epoch, epochs, "
                    "step, total_steps, created_at, cancel_requested) VALUES (:id, 'a', '', "
                    "'[]', 'succeeded', '{}', 'cpu', 0, 1, 0, 0, :now, :false)"
                ),
                {"id": job_id, "now": now, "false": False},
            )
        insert_row = text(
            "INSERT INTO layer_stat (job_id, layer_index, step, epoch, grad_norm, nan_count, "
            "act_mean) VALUES (:job, :layer, :step, 0, :norm, :nans, :act)"
        )
        for step in range(40):
            for layer in range(2):
                norm = 1e39 if step == 5 else 1e-50 if step == 6 else float(step)
                conn.execute(
                    insert_row,
                    {
                        "job": "j1",
                        "layer": layer,
                        "step": step,
                        "norm": norm,
                        "nans": 2.0 if step == 30 else 0.0,
                        "act": float("nan") if postgres and layer == 1 else 0.5,
                    },
                )
    upgrade_database(empty_db)
    with engine.connect() as conn:
        facts = conn.execute(
            text(
                "SELECT job_id, rows, first_step, last_step, max_layer_index, "
                "first_nonfinite_step FROM stat_job"
            )
        ).all()
        assert [tuple(row) for row in facts] == [("j1", 80, 0, 39, 1, 30)]
        moved = conn.execute(
            text(
                "SELECT step, grad_norm, act_mean FROM layer_stat WHERE layer_index = 1 "
                "AND step IN (5, 6, 7) ORDER BY step"
            )
        ).all()
        assert [row[0] for row in moved] == [5, 6, 7]
        assert moved[0][1] == (math.inf if postgres else 1e39)
        assert moved[1][1] == (0.0 if postgres else 1e-50)
        assert moved[2][2] == (None if postgres else 0.5)
        segments = conn.execute(
            text(
                "SELECT layer_index, first_step, step, rows, grad_norm, grad_norm_max "
                "FROM layer_stat_rollup WHERE layer_index = 0 ORDER BY step"
            )
        ).all()
        assert [tuple(row[:4]) for row in segments] == [(0, 0, 31, 32), (0, 32, 39, 8)]
        assert segments[0][4] == 31.0 and segments[1][5] == 39.0
        assert segments[0][5] == (math.inf if postgres else 1e39)
    downgrade_database(empty_db, "0007")
    with engine.connect() as conn:
        assert conn.execute(text("SELECT count(*) FROM layer_stat")).scalar() == 80
        back = conn.execute(
            text("SELECT job_id, grad_norm FROM layer_stat WHERE step = 7 AND layer_index = 0")
        ).one()
        assert tuple(back) == ("j1", 7.0)
    engine.dispose()


def test_job_fields_are_backfilled_from_specs_and_results(empty_db: str) -> None:
    """0011: every existing job gets a job_field row per number and string of its spec
    and result (NaN, booleans and nulls none); downgrading drops the table."""
    upgrade_database(empty_db, "0010")
    now = datetime.now(UTC)
    engine = make_engine(empty_db)
    insert_job = text(
        "INSERT INTO job (id, owner, name, tags, status, spec, queue, epoch, epochs, step, "
        "total_steps, created_at, cancel_requested, result) VALUES (:id, :owner, '', '[]', "
        "'succeeded', :spec, 'cpu', 0, 1, 0, 0, :now, :false, :result)"
    )
    spec = {"name": "a", "train": {"lr": 0.01, "nesterov": False, "grad_clip": None}}
    result = {"val_acc": "NaN", "steps": 240, "device": "cpu", "landscape": {"dims": 1}}
    with engine.begin() as conn:
        conn.execute(
            insert_job,
            {
                "id": "j1",
                "owner": "alice",
                "spec": json.dumps(spec),
                "now": now,
                "false": False,
                "result": json.dumps(result),
            },
        )
        conn.execute(
            insert_job,
            {
                "id": "j2",
                "owner": "bob",
                "spec": json.dumps({"train": {"lr": 0.1}}),
                "now": now,
                "false": False,
                "result": None,
            },
        )
    upgrade_database(empty_db)
    with engine.connect() as conn:
        rows = conn.execute(
            text("SELECT job_id, owner, path, number, string FROM job_field ORDER BY job_id, path")
        ).all()
    assert [tuple(row) for row in rows] == [
        ("j1", "alice", "name", None, "a"),
        ("j1", "alice", "result.device", None, "cpu"),
        ("j1", "alice", "result.landscape.dims", 1.0, None),
        ("j1", "alice", "result.steps", 240.0, None),
        ("j1", "alice", "result.val_acc", None, "NaN"),
        ("j1", "alice", "train.lr", 0.01, None),
        ("j2", "bob", "train.lr", 0.1, None),
    ]
    downgrade_database(empty_db, "0010")
    assert "job_field" not in _tables(empty_db)
    engine.dispose()
