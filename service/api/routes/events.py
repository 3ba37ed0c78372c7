"""/v1/jobs/{id}/events and /v1/sweeps/{id}/events: live changes as Server-Sent Events."""

from __future__ import annotations

import json
from collections.abc import AsyncIterator
from typing import Annotated, Any

from fastapi import APIRouter, Header
from sse_starlette import EventSourceResponse, ServerSentEvent

from service import events
from service.api.deps import JobDep, SessionFactoryDep, SettingsDep, SweepDep
from service.api.schemas.common import error_responses

router = APIRouter(tags=["events"])

# How long a client waits before it reconnects after the connection dropped.
RETRY_MS = 2000

LastEventIdHeader = Annotated[
    str | None,
    Header(
        alias="Last-Event-ID",
        max_length=4000,
        description="The id of the last event received: the stream resumes after it "
        "(browsers' EventSource sends it when they reconnect). Default: from the start.",
    ),
]

STREAM_RESPONSES: dict[int | str, dict[str, Any]] = {
    200: {
        "description": "A text/event-stream; each event has an `id`, an `event` name and "
        "JSON `data`. Keep-alive comments (`: ping`) come every `events_keepalive_s`.",
        # The schema of one event (as SSE tools such as Schemathesis read the stream):
        # its fields are text, the data a JSON document.
        "content": {
            "text/event-stream": {
                "schema": {
                    "type": "object",
                    "properties": {
                        "event": {"type": "string"},
                        "id": {"type": "string"},
                        "data": {"type": "string", "contentMediaType": "application/json"},
                        "retry": {"type": "integer"},
                    },
                    "required": ["data"],
                }
            }
        },
    },
}


async def _sse(stream: AsyncIterator[events.Event]) -> AsyncIterator[ServerSentEvent]:
    async for event in stream:
        yield ServerSentEvent(
            data=json.dumps(event.data, allow_nan=False),
            event=event.event,
            id=event.id,
            retry=RETRY_MS,
        )


@router.get(
    "/jobs/{job_id}/events",
    response_class=EventSourceResponse,
    responses={**STREAM_RESPONSES, **error_responses(404, 422)},
    summary="A job's live events (Server-Sent Events)",
    description="Events: `status` {status, error}; `metric` (one per finished epoch: epoch, "
    "train_loss, train_acc, val_loss, val_acc, lr, seconds); `progress` {epoch, epochs, step, "
    "total_steps, fraction}; `finding` (a diagnosis finding the first time it appears, as "
    "in /diagnosis); `end` {status, error, result}, after which the stream closes. The first "
    "events tell the current state, so a new client needs no other call.",
)
def job_events(
    job: JobDep,
    factory: SessionFactoryDep,
    settings: SettingsDep,
    last_event_id: LastEventIdHeader = None,
) -> EventSourceResponse:
    stream = events.job_events(
        session_factory=factory,
        job_id=job.id,
        last_event_id=last_event_id,
        poll_s=settings.events_poll_interval_s,
    )
    return EventSourceResponse(_sse(stream), ping=settings.events_keepalive_s)


@router.get(
    "/sweeps/{sweep_id}/events",
    response_class=EventSourceResponse,
    responses={**STREAM_RESPONSES, **error_responses(404, 422)},
    summary="A sweep's live events (Server-Sent Events)",
    description="Events: `job` {job_id, name, point, status, progress, result, error, "
    "findings} whenever a job of the sweep changes status or progress (findings once it "
    "has finished); `end` {status_counts} once every job has finished.",
)
def sweep_events(
    sweep: SweepDep,
    factory: SessionFactoryDep,
    settings: SettingsDep,
    last_event_id: LastEventIdHeader = None,
) -> EventSourceResponse:
    stream = events.sweep_events(
        session_factory=factory,
        sweep_id=sweep.id,
        last_event_id=last_event_id,
        poll_s=settings.events_poll_interval_s,
    )
    return EventSourceResponse(_sse(stream), ping=settings.events_keepalive_s)
