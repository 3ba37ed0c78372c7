"""A job's lifecycle at its end: DELETE /v1/jobs/{id} removes it with everything it
recorded, and raw-statistics retention drops old per-step rows but keeps the rollup."""

from __future__ import annotations

import hashlib
from datetime import timedelta
from pathlib import Path

from fastapi.testclient import TestClient
from pytest import MonkeyPatch
from sqlalchemy import func, select, update
from sqlalchemy.orm import Session
from typer.testing import CliRunner

from service import telemetry
from service.api.app import create_app
from service.cli import app
from service.config import Settings, get_settings
from service.db.base import utcnow
from service.db.models import (
    EpochMetric,
    Job,
    Layer,
    LayerStat,
    StatJob,
    layer_stat_rollup,
)
from tests.service.conftest import make_settings, recorded_job


def _count(session: Session, table: object) -> int:
    return int(session.scalar(select(func.count()).select_from(table)) or 0)  # type: ignore[arg-type]


def test_delete_removes_the_job_its_rows_and_its_checkpoints(
    client: TestClient, session: Session, settings: Settings
) -> None:
    job_id = recorded_job(client, session)
    kept = recorded_job(client, session)
    folder = settings.resolved_checkpoint_dir / job_id
    folder.mkdir(parents=True)
    (folder / "final.safetensors").write_bytes(b"weights")
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 204
    assert client.get(f"/v1/jobs/{job_id}").status_code == 404
    assert client.get(f"/v1/jobs/{job_id}/gradients").status_code == 404
    assert client.delete(f"/v1/jobs/{job_id}").status_code == 404
    assert not folder.exists()
    session.expire_all()
    facts = session.scalars(select(StatJob)).all()
    assert [f.job_id for f in facts] == [kept]
    for model in (LayerStat, layer_stat_rollup, EpochMetric, Layer):
        rows = _count(session, model.__table__ if hasattr(model, "__table__") else model)
        assert rows > 0  # only the other job's
    assert session.scalar(select(func.count()).where(LayerStat.job_key != facts[0].key)) == 0
    points = client.get(f"/v1/jobs/{kept}/gradients?layer=0").json()["series"][0]["points"]
    assert len(points) == 5


def test_a_running_job_must_be_cancelled_before_it_is_deleted(
    client: TestClient, session: Session
) -> None:
    job_id = recorded_job(client, session, status=None)
    response = client.delete(f"/v1/jobs/{job_id}")
    assert response.status_code == 409 and "cancel it first" in response.json()["detail"]
    assert client.get(f"/v1/jobs/{job_id}").status_code == 200


def test_another_keys_job_is_not_found(tmp_path: Path, db_url: str, session: Session) -> None:
    keys = {"alice": "tlk_alice-secret", "bob": "tlk_bob-secret"}
    entries = [f"{n}=sha256:{hashlib.sha256(k.encode()).hexdigest()}" for n, k in keys.items()]
    settings = make_settings(tmp_path, db_url, api_keys=entries)
    with TestClient(create_app(settings)) as client:
        alice, bob = ({"X-API-Key": keys[name]} for name in ("alice", "bob"))
        job_id = client.post("/v1/jobs", json={"name": "t"}, headers=alice).json()["id"]
        client.post(f"/v1/jobs/{job_id}/cancel", headers=alice)
        assert client.delete(f"/v1/jobs/{job_id}", headers=bob).status_code == 404
        assert client.get(f"/v1/jobs/{job_id}", headers=alice).status_code == 200
        assert client.delete(f"/v1/jobs/{job_id}", headers=alice).status_code == 204


def test_retention_drops_old_raw_rows_and_keeps_the_rollup(
    client: TestClient, session: Session, tmp_path: Path, db_url: str
) -> None:
    old, recent = recorded_job(client, session), recorded_job(client, session)
    before = client.get(f"/v1/jobs/{old}/gradients?layer=0&stat=grad_norm").json()
    session.execute(
        update(Job).where(Job.id == old).values(finished_at=utcnow() - timedelta(days=30))
    )
    session.commit()
    assert telemetry.prune_raw_stats(session=session, settings=make_settings(tmp_path, db_url)) == 0
    keep_week = make_settings(tmp_path, db_url, raw_stats_retention_days=7)
    assert telemetry.prune_raw_stats(session=session, settings=keep_week) == 25
    assert telemetry.prune_raw_stats(session=session, settings=keep_week) == 0
    session.expire_all()
    keys = {job_id: key for job_id, key in session.execute(select(StatJob.job_id, StatJob.key))}
    counted = select(LayerStat.job_key, func.count()).group_by(LayerStat.job_key)
    raw = {key: rows for key, rows in session.execute(counted)}
    assert keys[old] not in raw and raw[keys[recent]] == 25
    rollup_rows = session.scalar(
        select(func.count())
        .select_from(layer_stat_rollup)
        .where(layer_stat_rollup.c.job_key == keys[old])
    )
    assert rollup_rows == 5  # one segment per layer: 5 steps each
    # Reads still answer, from the rollup: each segment's last value, min and max.
    after = client.get(f"/v1/jobs/{old}/gradients?layer=0&stat=grad_norm").json()
    (point,) = after["series"][0]["points"]
    last = before["series"][0]["points"][-1]
    assert point["step"] == last["step"] and point["grad_norm"] == last["grad_norm"]
    assert point["grad_norm_min"] == before["series"][0]["points"][0]["grad_norm"]
    assert client.get(f"/v1/jobs/{old}/diagnosis").status_code == 200


def test_trainlab_prune_drops_old_raw_rows_now(
    client: TestClient, session: Session, tmp_path: Path, db_url: str, monkeypatch: MonkeyPatch
) -> None:
    old, recent = recorded_job(client, session), recorded_job(client, session)
    session.execute(
        update(Job).where(Job.id == old).values(finished_at=utcnow() - timedelta(days=30))
    )
    session.commit()
    monkeypatch.setenv("TRAINLAB_DATABASE_URL", db_url)
    monkeypatch.setenv("TRAINLAB_DATA_DIR", str(tmp_path))  # restored after: the CLI sets it
    monkeypatch.delenv("TRAINLAB_RAW_STATS_RETENTION_DAYS", raising=False)
    runner = CliRunner()
    unsaid = runner.invoke(app, ["prune", "--data-dir", str(tmp_path)])
    assert unsaid.exit_code == 2 and "--older-than-days" in unsaid.output
    result = runner.invoke(app, ["prune", "--older-than-days", "7", "--data-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    assert "dropped 25 raw statistic rows" in result.output
    session.expire_all()
    remaining = {key for (key,) in session.execute(select(LayerStat.job_key).distinct())}
    keys = {job_id: key for job_id, key in session.execute(select(StatJob.job_id, StatJob.key))}
    assert remaining == {keys[recent]}
    assert client.get(f"/v1/jobs/{old}/gradients?layer=0").status_code == 200  # from the rollup
    again = runner.invoke(app, ["prune", "--older-than-days", "7", "--data-dir", str(tmp_path)])
    assert "dropped 0 raw" in again.output
    get_settings.cache_clear()  # the next test reads its own environment
