"""Job use cases: submit (commit, then enqueue), cancel, and the read models behind the API.

Mutating use cases commit themselves: a job must be durable before its id is sent to the
broker, and a response must never report a state that was then rolled back.
"""

from __future__ import annotations

import base64
import binascii
import hashlib
import json
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from pydantic import BaseModel, TypeAdapter, ValidationError
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from service import diagnosis, queue
from service.config import Settings
from service.db import repository
from service.db.models import LAYER_STAT_COLUMNS, Job, Layer, LayerHistogram
from service.errors import (
    BrokerUnavailable,
    IdempotencyConflict,
    IllegalStateChange,
    InvalidRequest,
    JobNotFound,
    SpecInvalid,
)
from service.specs import ExperimentSpec, SpecIssue, check_spec

logger = logging.getLogger(__name__)

LIST_PARAMS: frozenset[str] = frozenset({"status", "tag", "name", "sort", "limit", "cursor"})
MAX_SQL_INT = 2**63 - 1


# --- submit and cancel ----------------------------------------------------------------


def request_hash(spec: ExperimentSpec) -> str:
    """Hash of the normalized spec: bodies that differ only in defaults are the same."""
    canonical = json.dumps(spec.model_dump(mode="json"), sort_keys=True, separators=(",", ":"))
    return hashlib.sha256(canonical.encode()).hexdigest()


def validate_spec(*, session: Session, settings: Settings, spec: ExperimentSpec) -> None:
    """Cross-field rules, operator limits and the existence of an uploaded dataset."""
    uploaded_ndim: int | None = None
    issues: list[SpecIssue] = []
    if spec.data.is_uploaded:
        dataset = repository.get_dataset(session=session, dataset_id=spec.data.dataset)
        if dataset is None:
            msg = f"no uploaded dataset with id {spec.data.dataset!r} (POST /v1/datasets first)"
            issues.append(SpecIssue(("data", "dataset"), msg))
        else:
            uploaded_ndim = len(dataset.x_shape)
    issues.extend(check_spec(spec, settings.spec_limits, uploaded_ndim=uploaded_ndim))
    if issues:
        raise SpecInvalid(issues, spec.model_dump(mode="json"))


def _replay(job: Job, body_hash: str, key: str) -> Job:
    if job.request_hash != body_hash:
        raise IdempotencyConflict(key)
    return job


def submit_job(
    *,
    session: Session,
    settings: Settings,
    spec: ExperimentSpec,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Store and enqueue a job. Returns (job, created); created is False on a replay."""
    body_hash = request_hash(spec)
    if idempotency_key is not None:
        existing = repository.get_job_by_idempotency_key(session=session, key=idempotency_key)
        if existing is not None:
            return _replay(existing, body_hash, idempotency_key), False
    validate_spec(session=session, settings=settings, spec=spec)
    target = queue.queue_for(spec.train.device)
    try:
        job = repository.create_job(
            session=session,
            spec=spec,
            queue=target,
            idempotency_key=idempotency_key,
            request_hash=body_hash,
        )
        session.commit()
    except IntegrityError:
        # A concurrent request with the same key won the race: answer as a replay.
        session.rollback()
        existing = repository.get_job_by_idempotency_key(session=session, key=idempotency_key or "")
        if existing is None or idempotency_key is None:
            raise
        return _replay(existing, body_hash, idempotency_key), False
    _enqueue(session=session, settings=settings, job=job)
    return job, True


def _enqueue(*, session: Session, settings: Settings, job: Job) -> None:
    try:
        queue.enqueue_training(settings, job_id=job.id, queue=job.queue)
    except Exception as exc:  # any broker error: the job must not stay queued forever
        logger.exception("could not enqueue job %s", job.id)
        repository.finish_job(
            session=session, job_id=job.id, status="failed", error=f"could not enqueue: {exc}"
        )
        session.commit()
        raise BrokerUnavailable("the job queue is unavailable; try again later") from exc


def get_job(*, session: Session, job_id: str) -> Job:
    job = repository.get_job(session=session, job_id=job_id)
    if job is None:
        raise JobNotFound(job_id)
    return job


def cancel_job(*, session: Session, job: Job) -> Job:
    """queued -> cancelled now; running -> flagged, the worker stops within one step."""
    if job.is_finished:
        raise IllegalStateChange(
            f"job {job.id} already finished ({job.status}); "
            "only queued or running jobs can be cancelled"
        )
    changed = repository.cancel_queued_job(session=session, job_id=job.id) or (
        repository.request_cancel(session=session, job_id=job.id)
    )
    session.commit()
    session.refresh(job)
    if not changed and job.is_finished and job.status != "cancelled":
        raise IllegalStateChange(f"job {job.id} finished ({job.status}) before it was cancelled")
    return job


# --- listing --------------------------------------------------------------------------


@dataclass(frozen=True)
class JobPage:
    items: Sequence[Job]
    next_cursor: str | None


def encode_cursor(job: Job, sort: str) -> str:
    payload = {"s": sort, "t": job.created_at.isoformat(), "i": job.id}
    raw = json.dumps(payload, separators=(",", ":")).encode()
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode_cursor(cursor: str, sort: str) -> repository.JobCursor:
    try:
        raw = base64.urlsafe_b64decode(cursor + "=" * (-len(cursor) % 4))
        payload = json.loads(raw)
        created_at = datetime.fromisoformat(payload["t"])
        job_id, cursor_sort = str(payload["i"]), payload["s"]
    except (binascii.Error, ValueError, TypeError, KeyError, UnicodeDecodeError) as exc:
        raise InvalidRequest.single(("query", "cursor"), "invalid cursor", cursor) from exc
    if cursor_sort != sort or created_at.tzinfo is None:
        raise InvalidRequest.single(
            ("query", "cursor"), "cursor does not belong to this sort order", cursor
        )
    return repository.JobCursor(created_at=created_at, job_id=job_id)


def _field_annotation(path: Sequence[str]) -> Any:
    model: type[BaseModel] = ExperimentSpec
    annotation: Any = None
    for i, part in enumerate(path):
        field = model.model_fields.get(part)
        if field is None:
            raise KeyError(".".join(path[: i + 1]))
        annotation = field.annotation
        if i < len(path) - 1:
            if not (isinstance(annotation, type) and issubclass(annotation, BaseModel)):
                raise KeyError(".".join(path[: i + 2]))
            model = annotation
    if isinstance(annotation, type) and issubclass(annotation, BaseModel | list):
        raise KeyError(".".join(path))  # not a scalar field (tags: use ?tag=)
    return annotation


def _filter_value(annotation: Any, raw: str) -> str | int | float | bool | None:
    if raw == "null":
        value = TypeAdapter(annotation).validate_python(None)
    else:
        value = TypeAdapter(annotation).validate_python(raw)
    if isinstance(value, int) and not isinstance(value, bool) and abs(value) > MAX_SQL_INT:
        raise ValueError("number too large")
    if isinstance(value, float) and not math.isfinite(value):
        raise ValueError("must be a finite number")
    if value is not None and not isinstance(value, str | int | float | bool):
        raise ValueError("not a scalar field")
    return value


def parse_spec_filters(params: Sequence[tuple[str, str]]) -> list[repository.SpecFilter]:
    """``model.activation=sigmoid`` and friends: each dotted name is a spec field."""
    filters: list[repository.SpecFilter] = []
    for key, raw in params:
        if key in LIST_PARAMS:
            continue
        path = tuple(key.split("."))
        try:
            value = _filter_value(_field_annotation(path), raw)
        except KeyError as exc:
            msg = f"unknown filter {key!r}: not a scalar field of the experiment spec"
            raise InvalidRequest.single(("query", key), msg, raw) from exc
        except (ValidationError, ValueError) as exc:
            msg = f"invalid value for spec field {key!r}: {_first_error(exc)}"
            raise InvalidRequest.single(("query", key), msg, raw) from exc
        filters.append(repository.SpecFilter(path=path, value=value))
    return filters


def _first_error(exc: Exception) -> str:
    if isinstance(exc, ValidationError):
        return str(exc.errors()[0]["msg"])
    return str(exc)


def list_jobs(
    *,
    session: Session,
    statuses: Sequence[str],
    tag: str | None,
    name: str | None,
    sort: str,
    limit: int,
    cursor: str | None,
    params: Sequence[tuple[str, str]],
) -> JobPage:
    after = decode_cursor(cursor, sort) if cursor else None
    jobs = repository.list_jobs(
        session=session,
        statuses=statuses,
        tag=tag,
        name=name,
        spec_filters=parse_spec_filters(params),
        newest_first=sort.startswith("-"),
        after=after,
        limit=limit + 1,
    )
    if len(jobs) > limit:
        return JobPage(items=jobs[:limit], next_cursor=encode_cursor(jobs[limit - 1], sort))
    return JobPage(items=jobs, next_cursor=None)


# --- telemetry ------------------------------------------------------------------------


def resolve_layers(layers: Sequence[Layer], wanted: Sequence[str]) -> list[int] | None:
    """``layer`` query values, each an index or a module name; None means all layers."""
    if not wanted:
        return None
    by_name = {layer.name: layer.index for layer in layers}
    indexes = {layer.index for layer in layers}
    resolved: list[int] = []
    for value in wanted:
        if value.lstrip("-").isdigit() and int(value) in indexes:
            resolved.append(int(value))
        elif value in by_name:
            resolved.append(by_name[value])
        else:
            msg = f"unknown layer {value!r}: give a layer index or name from /layers"
            raise InvalidRequest.single(("query", "layer"), msg, value)
    return resolved


def resolve_stats(wanted: Sequence[str]) -> list[str]:
    if not wanted:
        return list(LAYER_STAT_COLUMNS)
    for value in wanted:
        if value not in LAYER_STAT_COLUMNS:
            msg = f"unknown statistic {value!r}: use one of {', '.join(LAYER_STAT_COLUMNS)}"
            raise InvalidRequest.single(("query", "stat"), msg, value)
    return list(dict.fromkeys(wanted))


@dataclass(frozen=True)
class Series:
    layer_index: int
    name: str
    kind: str
    points: list[dict[str, Any]]


def _json_number(value: Any) -> Any:
    if isinstance(value, float) and not math.isfinite(value):
        return repository.json_safe(value)
    return value


def gradient_series(
    *,
    session: Session,
    job: Job,
    layer: Sequence[str],
    stat: Sequence[str],
    from_step: int | None,
    to_step: int | None,
    max_points: int,
) -> tuple[list[str], list[Series]]:
    layers = repository.list_layers(session=session, job_id=job.id)
    stats = resolve_stats(stat)
    indexes = resolve_layers(layers, layer)
    rows = repository.list_layer_stats(
        session=session,
        job_id=job.id,
        stats=stats,
        layer_indexes=indexes,
        from_step=from_step,
        to_step=to_step,
        max_points=max_points,
    )
    wanted = set(indexes) if indexes is not None else {layer.index for layer in layers}
    series = {
        info.index: Series(info.index, info.name, info.kind, [])
        for info in layers
        if info.index in wanted
    }
    for row in rows:
        cells: tuple[Any, ...] = tuple(row)
        index, step, epoch, values = cells[0], cells[1], cells[2], cells[3:]
        if index not in series:  # statistics without a layer row (plan not saved)
            series[index] = Series(index, str(index), "unknown", [])
        point = {"step": step, "epoch": epoch}
        point.update({name: _json_number(v) for name, v in zip(stats, values, strict=True)})
        series[index].points.append(point)
    return stats, [series[i] for i in sorted(series)]


def histograms(
    *, session: Session, job: Job, layer: Sequence[str], step: int | None
) -> Sequence[LayerHistogram]:
    layers = repository.list_layers(session=session, job_id=job.id)
    return repository.list_histograms(
        session=session, job_id=job.id, layer_indexes=resolve_layers(layers, layer), step=step
    )


# --- diagnosis ------------------------------------------------------------------------

DIAGNOSIS_STATS: tuple[str, ...] = ("grad_norm", "update_ratio", "act_saturation")
DIAGNOSIS_MAX_STEPS = 2000


def diagnose_job(*, session: Session, job: Job) -> list[diagnosis.Finding]:
    """Findings from the job's stored rows: three bounded queries, then pure rules."""
    layers = [
        diagnosis.LayerInfo(
            index=row.index,
            name=row.name,
            kind=row.kind,
            activation=row.activation,
            shape=tuple(row.shape or ()),
        )
        for row in repository.list_layers(session=session, job_id=job.id)
    ]
    rows = repository.list_late_layer_stats(
        session=session, job_id=job.id, stats=DIAGNOSIS_STATS, max_steps=DIAGNOSIS_MAX_STEPS
    )
    stats = diagnosis.LayerStats.from_rows(
        (tuple(row) for row in rows),
        names=DIAGNOSIS_STATS,
        first_nonfinite_step=repository.first_nonfinite_step(session=session, job_id=job.id),
    )
    metrics = [
        diagnosis.EpochRow(
            epoch=m.epoch,
            train_loss=m.train_loss,
            train_acc=m.train_acc,
            val_loss=m.val_loss,
            val_acc=m.val_acc,
        )
        for m in repository.list_epoch_metrics(session=session, job_id=job.id)
    ]
    return diagnosis.diagnose(
        layers=layers,
        stats=stats,
        metrics=metrics,
        job_status=job.status,
        result=job.result,
        spec=job.spec,
    )


def job_counts(*, session: Session) -> Mapping[str, int]:
    return repository.count_jobs_by_status(session=session)
