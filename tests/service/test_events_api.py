"""GET /v1/jobs/{id}/events and /v1/sweeps/{id}/events: Server-Sent Events of what changed,
resumable with Last-Event-ID, ending when the job (every job of the sweep) has finished."""

from __future__ import annotations

import json
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session

from service.api.app import create_app
from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from service.events import JobCursor, SweepCursor
from tests.service.conftest import make_settings, recorded_job


@dataclass
class Sse:
    event: str
    id: str
    data: dict[str, Any]


def _events(lines: Iterator[str], comments: bool = False) -> Iterator[Sse]:
    """Parsed events; with ``comments``, each comment line as an Sse named ":"."""
    fields: dict[str, str] = {}
    for line in lines:
        if line.startswith(":"):
            if comments:
                yield Sse(":", "", {"text": line})
            continue
        if not line:
            if "data" in fields:
                yield Sse(
                    fields.get("event", "message"), fields.get("id", ""), json.loads(fields["data"])
                )
            fields = {}
            continue
        key, _, value = line.partition(":")
        fields[key] = value.removeprefix(" ")


def _read_all(client: TestClient, url: str, **headers: str) -> list[Sse]:
    with client.stream("GET", url, headers=headers) as response:
        assert response.status_code == 200
        assert response.headers["content-type"].startswith("text/event-stream")
        return list(_events(response.iter_lines()))


@pytest.fixture
def fast_client(tmp_path: Path, db_url: str) -> Iterator[TestClient]:
    settings = make_settings(tmp_path, db_url, events_poll_interval_s=0.05, events_keepalive_s=0.2)
    with TestClient(create_app(settings)) as client:
        yield client


def test_finished_job_streams_its_story_then_ends(
    fast_client: TestClient, session: Session
) -> None:
    job_id = recorded_job(fast_client, session, depth=4, vanishing=True, epochs=3)
    events = _read_all(fast_client, f"/v1/jobs/{job_id}/events")
    names = [e.event for e in events]
    assert names[:5] == ["metric", "metric", "metric", "progress", "status"]
    assert events[4].data["status"] == "succeeded"
    assert [e.data["epoch"] for e in events if e.event == "metric"] == [1, 2, 3]
    assert "progress" in names
    findings = [e.data for e in events if e.event == "finding"]
    assert "vanishing_gradient" in {f["code"] for f in findings}
    assert {"remedy", "evidence", "layers"} <= set(findings[0])
    assert names[-1] == "end" and events[-1].data["status"] == "succeeded"
    # Each id is the stream's position after that event (``end`` changes nothing).
    assert all(e.id for e in events) and len({e.id for e in events[:-1]}) == len(events) - 1


def test_last_event_id_resumes_after_that_event(fast_client: TestClient, session: Session) -> None:
    job_id = recorded_job(fast_client, session, epochs=3)
    first = _read_all(fast_client, f"/v1/jobs/{job_id}/events")
    second_metric = [e for e in first if e.event == "metric"][1]
    resumed = _read_all(
        fast_client, f"/v1/jobs/{job_id}/events", **{"Last-Event-ID": second_metric.id}
    )
    after = first[first.index(second_metric) + 1 :]
    assert [(e.event, e.data) for e in resumed] == [(e.event, e.data) for e in after]


def test_running_job_emits_only_changes_live(fast_client: TestClient, session: Session) -> None:
    job_id = recorded_job(fast_client, session, epochs=1, status=None)
    with fast_client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        stream = _events(response.iter_lines(), comments=True)
        seen = [next(stream) for _ in range(3)]
        assert [e.event for e in seen] == ["status", "metric", "progress"]
        assert seen[0].data["status"] == "running"
        # The findings so far (on a loaded machine a keep-alive may come first); then
        # nothing changes: keep-alive comments, no repeats.
        findings = next(stream)
        for _ in range(20):
            if findings.event != ":":
                break
            findings = next(stream)
        assert findings.event == "finding", findings
        while findings.event == "finding":
            findings = next(stream)
        quiet = [findings, next(stream)]
        assert [e.event for e in quiet] == [":", ":"], quiet
        metric = {"epoch": 2, "train_loss": 1.0, "val_loss": 1.5, "train_acc": 0.6, "val_acc": 0.5}
        telemetry_queries.add_epoch_metric(session=session, job_id=job_id, metric=metric)
        job_queries.update_progress(session=session, job_id=job_id, epoch=2, step=80)
        job_queries.finish_job(session=session, job_id=job_id, status="failed", error="boom")
        session.commit()
        rest = [e for e in stream if e.event != ":"]
    names = [e.event for e in rest]
    assert names[:3] == ["metric", "progress", "status"]
    assert rest[2].data == {"status": "failed", "error": "boom"}
    assert rest[0].data["epoch"] == 2 and rest[1].data["step"] == 80
    assert names[-1] == "end" and rest[-1].data["error"] == "boom"


def test_events_of_unknown_job_or_sweep_are_404(client: TestClient) -> None:
    assert client.get("/v1/jobs/nope/events").status_code == 404
    assert client.get("/v1/sweeps/nope/events").status_code == 404


def test_sweep_stream_tells_each_job_then_ends(fast_client: TestClient, session: Session) -> None:
    body = {"base": {"train": {"epochs": 1}}, "grid": {"model.activation": ["sigmoid", "relu"]}}
    sweep = fast_client.post("/v1/sweeps", json=body).json()
    job_ids = [job["id"] for job in sweep["jobs"]]
    with fast_client.stream("GET", f"/v1/sweeps/{sweep['id']}/events") as response:
        stream = _events(response.iter_lines())
        first = [next(stream), next(stream)]
        assert [e.data["job_id"] for e in first] == job_ids
        assert {e.data["status"] for e in first} == {"queued"}
        for job_id in job_ids:
            job_queries.finish_job(session=session, job_id=job_id, status="cancelled")
        session.commit()
        rest = list(stream)
    assert {e.data["job_id"] for e in rest if e.event == "job"} == set(job_ids)
    assert rest[-1].event == "end" and rest[-1].data["status_counts"]["cancelled"] == 2
    resumed = _read_all(
        fast_client, f"/v1/sweeps/{sweep['id']}/events", **{"Last-Event-ID": rest[-1].id}
    )
    assert [e.event for e in resumed] == ["end"]


def test_cursors_round_trip_and_garbage_starts_over() -> None:
    cursor = JobCursor(epoch=3, step=120, status="running", findings=("a:warning", "b:critical"))
    assert JobCursor.decode(cursor.encode()) == cursor
    assert JobCursor.decode("garbage") == JobCursor()
    sweep = SweepCursor(((1, 40), (2, 100)))
    assert SweepCursor.decode(sweep.encode()) == sweep
    assert SweepCursor.decode("x:y") == SweepCursor()


def test_every_event_matches_the_documented_event_schema(
    fast_client: TestClient, session: Session
) -> None:
    """Schemathesis (tests/integration/test_fuzz.py) reads a stream as events and holds each
    to the documented schema: it found the schema saying "a string" of event objects."""
    import jsonschema_rs

    job_id = recorded_job(fast_client, session, depth=2, vanishing=False, epochs=1)
    schema = fast_client.get("/openapi.json").json()["paths"]["/v1/jobs/{job_id}/events"]["get"]
    event_schema = schema["responses"]["200"]["content"]["text/event-stream"]["schema"]
    with fast_client.stream("GET", f"/v1/jobs/{job_id}/events") as response:
        raw = [
            {"event": e.event, "id": e.id, "data": json.dumps(e.data)}
            for e in _events(response.iter_lines())
        ]
    assert raw
    for event in raw:
        jsonschema_rs.validate(event_schema, event)
        json.loads(event["data"])
