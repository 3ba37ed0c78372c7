"""The Alembic history builds, tears down and rebuilds the schema the ORM expects."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

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
