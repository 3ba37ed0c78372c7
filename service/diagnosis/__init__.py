"""Diagnosis: what went wrong in a training run, and what to change.

``rules`` holds the rules: pure functions over arrays of statistics (no SQL, no web, no
torch), with their thresholds. This module is the use case: it loads a job's stored
rows through bounded queries and hands them to the rules.
"""

from __future__ import annotations

from sqlalchemy.orm import Session

from service.db.models import Job
from service.db.repository import telemetry as telemetry_queries
from service.diagnosis import rules
from service.diagnosis.rules import Finding

__all__ = ["DIAGNOSIS_MAX_STEPS", "DIAGNOSIS_STATS", "Finding", "diagnose_job"]

DIAGNOSIS_STATS: tuple[str, ...] = ("grad_norm", "update_ratio", "act_saturation")
DIAGNOSIS_MAX_STEPS = 2000


def diagnose_job(*, session: Session, job: Job) -> list[Finding]:
    """Findings from the job's stored rows: four bounded queries, then pure rules."""
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
    rows = telemetry_queries.list_late_layer_stats(
        session=session, job_id=job.id, stats=DIAGNOSIS_STATS, max_steps=DIAGNOSIS_MAX_STEPS
    )
    stats = rules.LayerStats.from_rows(
        (tuple(row) for row in rows),
        names=DIAGNOSIS_STATS,
        first_nonfinite_step=telemetry_queries.first_nonfinite_step(session=session, job_id=job.id),
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
    )
