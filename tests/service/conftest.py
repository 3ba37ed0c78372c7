"""Fixtures for service tests: a migrated database per test and an API client over it.

SQLite: Alembic migrates one template file per test session; each test gets a copy
(a file copy is cheaper than a migration and isolates tests fully, WAL included).
PostgreSQL (the ``postgres`` parameter, marked ``pytest.mark.postgres``): one throwaway
database per session, migrated once, with every table truncated before each test. It is
skipped with a reason when no server answers, except under ``CI=true`` where that fails.
"""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import psycopg
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import Engine, text
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.config import Settings
from service.db.base import Base
from service.db.migrate import upgrade_database
from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from service.db.session import make_engine, make_session_factory
from service.keys import ANONYMOUS
from service.specs import ExperimentSpec
from service.vocabulary import JobStatus

PG_HOST = os.environ.get("TRAINLAB_TEST_PG_HOST", "127.0.0.1")
PG_PORT = int(os.environ.get("TRAINLAB_TEST_PG_PORT", "5432"))
PG_USERS = ("postgres", "root")
PG_MAINTENANCE_DBS = ("postgres", "test")


def _pg_admin() -> tuple[str, str]:
    """(user, maintenance database) that accept a connection, or skip/fail."""
    errors: list[str] = []
    for user in PG_USERS:
        for dbname in PG_MAINTENANCE_DBS:
            try:
                with psycopg.connect(
                    host=PG_HOST, port=PG_PORT, user=user, dbname=dbname, connect_timeout=3
                ):
                    return user, dbname
            except psycopg.Error as exc:
                errors.append(f"{user}@{dbname}: {exc}".strip())
    reason = f"PostgreSQL not reachable at {PG_HOST}:{PG_PORT} ({'; '.join(errors)[:300]})"
    if os.environ.get("CI") == "true":
        pytest.fail(reason)
    pytest.skip(reason)


def _admin(sql: str) -> None:
    user, dbname = _pg_admin()
    with psycopg.connect(
        host=PG_HOST, port=PG_PORT, user=user, dbname=dbname, autocommit=True
    ) as conn:
        conn.execute(sql)


def create_pg_database() -> str:
    """A new, empty, uniquely named database; returns its SQLAlchemy URL."""
    user, _ = _pg_admin()
    name = f"trainlab_test_{uuid.uuid4().hex[:12]}"
    _admin(f'CREATE DATABASE "{name}"')
    return f"postgresql+psycopg://{user}@{PG_HOST}:{PG_PORT}/{name}"


def drop_pg_database(url: str) -> None:
    name = url.rsplit("/", 1)[1]
    _admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


@pytest.fixture(scope="session")
def sqlite_template(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("template") / "trainlab.db"
    upgrade_database(f"sqlite:///{path}")
    return path


@pytest.fixture(scope="session")
def pg_url() -> Iterator[str]:
    url = create_pg_database()
    try:
        upgrade_database(url)
        yield url
    finally:
        drop_pg_database(url)


def _truncate_all(url: str) -> None:
    engine = make_engine(url)
    tables = ", ".join(f'"{t.name}"' for t in Base.metadata.sorted_tables)
    with engine.begin() as conn:
        conn.execute(text(f"TRUNCATE {tables} CASCADE"))
    engine.dispose()


@pytest.fixture(params=["sqlite", pytest.param("postgres", marks=pytest.mark.postgres)])
def db_url(request: pytest.FixtureRequest, tmp_path: Path, sqlite_template: Path) -> str:
    if request.param == "sqlite":
        path = tmp_path / "trainlab.db"
        shutil.copyfile(sqlite_template, path)
        return f"sqlite:///{path}"
    url: str = request.getfixturevalue("pg_url")
    _truncate_all(url)
    return url


@pytest.fixture
def engine(db_url: str) -> Iterator[Engine]:
    engine = make_engine(db_url)
    yield engine
    engine.dispose()


@pytest.fixture
def session(engine: Engine) -> Iterator[Session]:
    with make_session_factory(engine)() as session:
        yield session


def make_settings(tmp_path: Path, db_url: str, **overrides: object) -> Settings:
    # _env_file=None: a developer's .env must not change what the tests see.
    return Settings(_env_file=None, data_dir=tmp_path, database_url=db_url, **overrides)  # type: ignore[arg-type]


@pytest.fixture
def settings(tmp_path: Path, db_url: str) -> Settings:
    return make_settings(tmp_path, db_url)


@pytest.fixture
def client(settings: Settings) -> Iterator[TestClient]:
    with TestClient(create_app(settings)) as client:
        yield client


@pytest.fixture
def queue_dir(settings: Settings) -> Path:
    return settings.broker_folder / "queue"


def stored_job(session: Session, owner: str = ANONYMOUS, **spec: object) -> str:
    """A queued job stored straight through the repository (no API, no broker)."""
    job = job_queries.create_job(
        session=session, owner=owner, spec=ExperimentSpec.model_validate(spec), queue="cpu"
    )
    session.commit()
    return job.id


def start_running_job(
    client: TestClient, session: Session, layers: Sequence[Mapping[str, Any]]
) -> str:
    """A job submitted over HTTP, claimed by a pretend worker, with its layer plan."""
    job_id: str = client.post("/v1/jobs", json={"name": "t"}).json()["id"]
    job_queries.claim_job(session=session, job_id=job_id, worker="w")
    telemetry_queries.save_run_plan(
        session=session, job_id=job_id, layers=layers, total_steps=100, epochs=2, device="cpu"
    )
    session.commit()
    return job_id


def mlp_layers(depth: int, activation: str = "sigmoid", classes: int = 10) -> list[dict[str, Any]]:
    """The layer table of a ``depth``-hidden-layer MLP on 40 inputs, as the engine plans it."""
    hidden = [
        {
            "index": i,
            "name": f"hidden.{i}.linear",
            "kind": "linear",
            "params": 16 * 17,
            "shape": [16, 40 if i == 0 else 16],
            "activation": activation,
        }
        for i in range(depth)
    ]
    head = {
        "index": depth,
        "name": "output",
        "kind": "output",
        "params": classes * 17,
        "shape": [classes, 16],
        "activation": None,
    }
    return [*hidden, head]


def recorded_job(
    client: TestClient,
    session: Session,
    *,
    depth: int = 4,
    vanishing: bool = True,
    epochs: int = 3,
    steps: int = 40,
    status: JobStatus | None = "succeeded",
) -> str:
    """A job with what a worker records: its layers, per-layer statistics every 10 steps
    and epoch metrics. ``vanishing``: the gradient norm falls 1000x per layer towards the
    input (the sigmoid lesson), else every layer gets about the same norm. ``status`` None
    leaves it running."""
    job_id = start_running_job(client, session, mlp_layers(depth))
    rows = [
        {
            "layer_index": layer,
            "step": step,
            "epoch": 1 + step * epochs // (steps + 1),
            "grad_norm": (1e-3 ** (depth - layer) if vanishing else 0.1) * (1 + step / 100),
            "update_ratio": 1e-3 / (1 + layer),
            "act_saturation": 0.9 if vanishing else 0.2,
            "act_std": 0.05 if vanishing else 0.5,
            "weight_norm": 3.0,
            "nan_count": 0.0,
            "inf_count": 0.0,
        }
        for layer in range(depth + 1)
        for step in range(0, steps + 1, 10)
    ]
    telemetry_queries.add_layer_stats(session=session, job_id=job_id, rows=rows)
    for epoch in range(1, epochs + 1):
        telemetry_queries.add_epoch_metric(
            session=session,
            job_id=job_id,
            metric={
                "epoch": epoch,
                "train_loss": 2.3 - 0.3 * epoch,
                "val_loss": 2.3 - 0.1 * epoch,
                "train_acc": 0.1 + 0.1 * epoch,
                "val_acc": 0.1 + 0.05 * epoch,
                "lr": 0.05,
                "seconds": 0.5,
            },
        )
    job_queries.update_progress(session=session, job_id=job_id, epoch=epochs, step=steps)
    if status is not None:
        result = {"train_loss": 2.3 - 0.3 * epochs, "val_acc": 0.1 + 0.05 * epochs}
        job_queries.finish_job(session=session, job_id=job_id, status=status, result=result)
    session.commit()
    return job_id
