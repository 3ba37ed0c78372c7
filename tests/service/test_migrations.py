"""The Alembic history builds, tears down and rebuilds the schema the ORM expects."""

from __future__ import annotations

import json
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
