"""Diagnosis: what went wrong in a training run, and what to change.

``rules`` holds the rules: pure functions over arrays of statistics (no SQL, no web, no
torch), with their thresholds. This module is the use case: it loads a job's stored
rows through bounded queries and hands them to the rules.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from sqlalchemy import exc as sa_exc
from sqlalchemy.orm import Session

from service.db.models import Job
from service.db.repository import jobs as job_queries
from service.db.repository import telemetry as telemetry_queries
from service.diagnosis import rules
from service.diagnosis.rules import Finding, SweepRun, sweep_degradation

__all__ = [
    "DIAGNOSIS_MAX_STEPS",
    "DIAGNOSIS_STATS",
    "Finding",
    "SweepRun",
    "brief",
    "diagnose_job",
    "merged_patch",
    "refresh_findings",
    "sweep_degradation",
]

logger = logging.getLogger(__name__)

DIAGNOSIS_STATS: tuple[str, ...] = rules.DIAGNOSIS_STAT_NAMES
DIAGNOSIS_MAX_STEPS = 2000
# Telemetry steps read from the start of the run (poor initialisation shows there).
DIAGNOSIS_EARLY_POINTS = 20


def _every_n_steps(spec: Mapping[str, Any] | None) -> int:
    telemetry = (spec or {}).get("telemetry") or {}
    every = telemetry.get("every_n_steps")
    return every if isinstance(every, int) and not isinstance(every, bool) else 1


def diagnose_job(*, session: Session, job: Job) -> list[Finding]:
    """Findings from the job's stored rows: five bounded queries, then pure rules."""
    layers = [
        rules.LayerInfo(
            index=row.index,
            name=row.name,
            kind=row.kind,
            activation=row.activation,
            shape=tuple(row.shape or ()),
        )
        for row in telemetry_queries.list_layers(session=session, job_id=job.id)
    ]
    # Arrays, not rows: a long job's window is ~10^4 rows x 12 statistics.
    late = telemetry_queries.late_layer_stat_window(
        session=session, job_id=job.id, stats=DIAGNOSIS_STATS, max_steps=DIAGNOSIS_MAX_STEPS
    )
    first_nonfinite = telemetry_queries.first_nonfinite_step(session=session, job_id=job.id)
    stats = rules.LayerStats.from_columns(
        late.layer,
        late.step,
        late.values,
        names=DIAGNOSIS_STATS,
        first_nonfinite_step=first_nonfinite,
    )
    early_stats = None
    if job.total_steps:
        early = telemetry_queries.list_layer_stat_runs(
            session=session,
            job_id=job.id,
            stats=DIAGNOSIS_STATS,
            to_step=rules.early_window_end(job.total_steps, _every_n_steps(job.spec)),
            max_points=DIAGNOSIS_EARLY_POINTS,
        )
        early_stats = (
            rules.LayerStats.empty(first_nonfinite_step=first_nonfinite)
            if early is None
            else rules.LayerStats.from_columns(
                early.layer,
                early.step,
                np.where(early.last_absent, np.nan, early.last),
                names=DIAGNOSIS_STATS,
                first_nonfinite_step=first_nonfinite,
            )
        )
    metrics = [
        rules.EpochRow(
            epoch=m.epoch,
            train_loss=m.train_loss,
            train_acc=m.train_acc,
            val_loss=m.val_loss,
            val_acc=m.val_acc,
        )
        for m in telemetry_queries.list_epoch_metrics(session=session, job_id=job.id)
    ]
    return rules.diagnose(
        layers=layers,
        stats=stats,
        metrics=metrics,
        job_status=job.status,
        result=job.result,
        spec=job.spec,
        early_stats=early_stats,
    )


def brief(findings: Sequence[Finding]) -> list[dict[str, Any]]:
    """What a job read carries of its diagnosis: code, severity and summary, in rank order
    (the evidence and the patch stay at /v1/jobs/{id}/diagnosis)."""
    return [{"code": f.code, "severity": f.severity, "summary": f.summary} for f in findings]


def merged_patch(findings: Sequence[Finding]) -> dict[str, Any]:
    """Every finding's ``suggested_spec_patch`` in one: where two set the same field, the
    higher-ranked finding (the cause, before its symptoms) wins."""
    patch: dict[str, Any] = {}
    for finding in findings:
        for key, value in finding.suggested_spec_patch.items():
            patch.setdefault(key, value)
    return patch


def refresh_findings(*, session: Session, job_id: str) -> list[Finding]:
    """Diagnose the job as it stands in this transaction and keep the brief on its row.

    Inside a savepoint: a diagnosis that fails (a bug in a rule) is logged and leaves the
    caller's transaction, which records training, as it was.
    """
    try:
        with session.begin_nested():
            job = session.get(Job, job_id, populate_existing=True)
            if job is None:
                return []
            findings = diagnose_job(session=session, job=job)
            job_queries.set_findings(session=session, job_id=job_id, findings=brief(findings))
    except (sa_exc.OperationalError, sa_exc.InterfaceError):
        raise  # the database, not the rule, failed: the caller's transaction retries
    except Exception:
        logger.exception("diagnosing job %s failed; its findings are left as they were", job_id)
        return []
    return findings
