"""Retry-with: run a job again with a changed spec, as one call ("try the fix").

The change is a patch of dotted spec paths (``{"model.activation": "relu"}``), the
diagnosis' suggested patches (``apply="suggested"``: every current finding's, in rank
order, the cause before its symptoms), or both (the explicit patch wins). The new job is
submitted like any other (validation, admission, quota, idempotency) and linked to the
one it retries by ``parent_id``.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any, Literal

from pydantic import ValidationError
from sqlalchemy.orm import Session

from service import diagnosis, jobs
from service.config import Settings
from service.db.models import Job
from service.errors import ErrorItem, InvalidRequest, SpecInvalid
from service.keys import Principal
from service.kit import specpath
from service.specs import ExperimentSpec
from service.sweeps import NAME_MAX, SWEEP_TAG_PREFIX, point_label

Apply = Literal["suggested"]
PATCH_LOC: tuple[str, ...] = ("body", "patch")


def planned_patch(
    *, session: Session, job: Job, patch: Mapping[str, Any] | None, apply: Apply | None
) -> dict[str, Any]:
    """The changes to make: the suggested ones (if asked for), then ``patch`` over them."""
    if not patch and apply is None:
        raise InvalidRequest.single(
            ("body",), 'give a non-empty "patch" or "apply": "suggested"', dict(patch or {})
        )
    merged: dict[str, Any] = {}
    if apply == "suggested":
        findings = diagnosis.diagnose_job(session=session, job=job)
        merged = diagnosis.merged_patch(findings)
        if not merged:
            codes = ", ".join(f.code for f in findings) or "none"
            msg = f"no finding of job {job.id} suggests a spec change (findings: {codes})"
            raise InvalidRequest.single(("body", "apply"), msg, apply)
    return merged | dict(patch or {})


def _check_paths(patch: Mapping[str, Any]) -> None:
    items: list[ErrorItem] = []
    for key, value in patch.items():
        if key == "name":
            continue  # a retry may be renamed
        try:
            specpath.scalar_annotation(specpath.parse(key))
        except specpath.UnknownSpecFieldError as exc:
            msg = (
                f"unknown spec field {key!r} ({exc.reason}): use the dotted name of a scalar "
                "field of the experiment spec, e.g. model.activation, train.lr"
            )
            items.append(ErrorItem((*PATCH_LOC, key), msg, value))
    if items:
        raise InvalidRequest(items)


def _patch_loc(patch: Mapping[str, Any], loc: tuple[str | int, ...]) -> tuple[str | int, ...]:
    """Where in the request a problem at spec path ``loc`` lies: the patch entry that set
    it, else the patch as a whole (a field it left alone that the change made invalid)."""
    key = specpath.dotted(tuple(map(str, loc)))
    return (*PATCH_LOC, key) if key in patch else PATCH_LOC


def patched_spec(parent: Job, patch: Mapping[str, Any]) -> ExperimentSpec:
    """The parent's spec with ``patch`` applied, validated as a POST /v1/jobs body is."""
    _check_paths(patch)
    document = dict(parent.spec)
    # A retry is not a point of the parent's sweep (it has no sweep_id): its tag goes.
    document["tags"] = [t for t in document.get("tags", []) if not t.startswith(SWEEP_TAG_PREFIX)]
    if parent.sweep_id is not None and "name" not in patch:
        # A sweep job's name spells its grid point, which the patch may contradict: say
        # what changed (a job submitted by hand keeps the name its author gave it).
        changed = point_label({k: v for k, v in patch.items() if k != "name"})
        document["name"] = f"{parent.name or ''} → {changed}".strip()[:NAME_MAX]
    try:
        return ExperimentSpec.model_validate(specpath.with_values(document, patch))
    except ValidationError as exc:
        raise InvalidRequest(
            [
                ErrorItem(
                    _patch_loc(patch, tuple(e["loc"])),
                    f"{specpath.dotted(tuple(map(str, e['loc'])))}: {e['msg']}",
                    e.get("input"),
                )
                for e in exc.errors()
            ]
        ) from exc


def retry_with(
    *,
    session: Session,
    settings: Settings,
    principal: Principal,
    job: Job,
    patch: Mapping[str, Any] | None = None,
    apply: Apply | None = None,
    idempotency_key: str | None = None,
) -> tuple[Job, bool]:
    """Submit ``job``'s spec with the changes as a new job of ``principal`` whose
    ``parent_id`` is ``job``. Returns (new job, created), as ``jobs.submit_job``."""
    changes = planned_patch(session=session, job=job, patch=patch, apply=apply)
    spec = patched_spec(job, changes)
    try:
        return jobs.submit_job(
            session=session,
            settings=settings,
            principal=principal,
            spec=spec,
            idempotency_key=idempotency_key,
            parent_id=job.id,
        )
    except SpecInvalid as exc:  # cross-field rules and limits: located in the patch
        items = [
            ErrorItem(
                _patch_loc(changes, issue.loc),
                f"{specpath.dotted(issue.loc)}: {issue.msg}",
                specpath.value_at(spec.model_dump(mode="json"), issue.loc, None),
            )
            for issue in exc.issues
        ]
        raise InvalidRequest(items) from exc
