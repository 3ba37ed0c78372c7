"""Each state and kind is spelled once (service.vocabulary); everything else derives it."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import insert
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import vocabulary
from service.db.models import Dataset, Job, Layer
from service.db.repository import jobs as job_queries
from service.specs import ExperimentSpec

STATIC = Path(__file__).resolve().parents[2] / "service" / "api" / "static"


def _enum(openapi: dict[str, Any], schema: str, field: str) -> list[str]:
    prop = openapi["components"]["schemas"][schema]["properties"][field]
    options = prop.get("anyOf", [prop])
    return next(option["enum"] for option in options if "enum" in option)


def test_openapi_schemas_take_their_enums_from_the_vocabulary(client: TestClient) -> None:
    openapi = client.get("/openapi.json").json()
    assert _enum(openapi, "JobRead", "status") == list(vocabulary.JOB_STATUSES)
    assert _enum(openapi, "LayerRead", "kind") == list(vocabulary.LAYER_KINDS)
    assert _enum(openapi, "DatasetRead", "layout") == list(vocabulary.DATA_LAYOUTS)


def test_database_refuses_a_status_outside_the_vocabulary(session: Session) -> None:
    job = job_queries.create_job(
        session=session, owner="anonymous", spec=ExperimentSpec(), queue="cpu"
    )
    for status in vocabulary.JOB_STATUSES:
        job.status = status
        session.flush()
    session.commit()
    with pytest.raises(IntegrityError):
        session.execute(Job.__table__.update().values(status="paused"))  # type: ignore[attr-defined]
        session.flush()


def test_database_refuses_a_layer_kind_or_layout_outside_the_vocabulary(
    session: Session,
) -> None:
    job = job_queries.create_job(
        session=session, owner="anonymous", spec=ExperimentSpec(), queue="cpu"
    )
    session.commit()
    layer = {"job_id": job.id, "name": "l", "params": 1, "shape": [1], "activation": None}
    for index, kind in enumerate(vocabulary.LAYER_KINDS):
        session.execute(insert(Layer), [{**layer, "index": index, "kind": kind}])
    session.commit()
    with pytest.raises(IntegrityError):
        session.execute(insert(Layer), [{**layer, "index": 99, "kind": "attention"}])
    session.rollback()
    dataset = {
        "id": "ds_000000000001",
        "name": "d",
        "n_examples": 10,
        "x_shape": [10, 2],
        "num_classes": 2,
        "size_bytes": 1,
        "content": b"x",
        "layout": "graph",
    }
    with pytest.raises(IntegrityError):
        session.execute(insert(Dataset), [dataset])


def test_dashboard_reads_the_vocabulary_instead_of_repeating_it(client: TestClient) -> None:
    words = client.get("/dashboard/vocabulary.json").json()
    assert words["job_statuses"] == list(vocabulary.JOB_STATUSES)
    assert set(words["active_statuses"]) == vocabulary.ACTIVE_STATUSES
    assert set(words["finished_statuses"]) == vocabulary.FINISHED_STATUSES
    assert words["success_status"] == vocabulary.SUCCESS_STATUS
    assert words["failure_status"] == vocabulary.FAILURE_STATUS
    scripts = sorted((STATIC / "js").rglob("*.js"))
    assert len(scripts) >= 5
    for path in scripts:
        script = path.read_text()
        spelled = [s for s in vocabulary.JOB_STATUSES if re.search(rf'["\']{s}["\']', script)]
        assert spelled == [], f"{path.name} spells statuses itself: {spelled}"
