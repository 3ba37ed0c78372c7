"""Job search by range and sort on any field: ``job_field``, one row per number or string
of a job's spec and result, indexed by (owner, field, value, job id).

A range filter (``result.val_acc>0.999``) or a sort (``-result.val_acc``) on the JSONB
documents reads every job of the owner (the GIN index serves equalities only); here it
reads one ordered index range. Existing jobs are backfilled from their documents.

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-05 21:30:00+00:00
"""

from __future__ import annotations

import json
import math
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0011"
down_revision: str | Sequence[str] | None = "0010"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in service.db.models and repository.jobs at this revision (a migration must not
# import the ORM).
STRING_MAX = 200
RESULT_FIELD = "result."
BACKFILL_BATCH = 1000


def _scalar_fields(document: Mapping[str, Any], prefix: str) -> Iterator[tuple[str, Any]]:
    for key, value in document.items():
        if isinstance(value, Mapping):
            yield from _scalar_fields(value, f"{prefix}{key}.")
        else:
            yield f"{prefix}{key}", value


def _field_rows(job_id: str, owner: str, document: Any, prefix: str) -> list[dict[str, Any]]:
    if isinstance(document, str):  # JSON text on SQLite
        document = json.loads(document)
    if not isinstance(document, Mapping):
        return []
    rows = []
    for path, value in _scalar_fields(document, prefix):
        row: dict[str, Any] = {
            "job_id": job_id,
            "path": path,
            "owner": owner,
            "number": None,
            "string": None,
        }
        if isinstance(value, int | float) and not isinstance(value, bool):
            if not math.isfinite(value):
                continue
            row["number"] = value
        elif isinstance(value, str) and len(value) <= STRING_MAX:
            row["string"] = value
        else:
            continue
        rows.append(row)
    return rows


def upgrade() -> None:
    job_field = op.create_table(
        "job_field",
        sa.Column(
            "job_id", sa.String(32), sa.ForeignKey("job.id", ondelete="CASCADE"), nullable=False
        ),
        sa.Column("path", sa.String(200), nullable=False),
        sa.Column("owner", sa.String(64), nullable=False),
        sa.Column("number", sa.Double(), nullable=True),
        sa.Column("string", sa.String(STRING_MAX), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "path"),
    )
    for column in ("number", "string"):
        op.create_index(
            f"ix_job_field_owner_path_{column}_job_id",
            "job_field",
            ["owner", "path", column, "job_id"],
            postgresql_where=sa.text(f"{column} IS NOT NULL"),
            sqlite_where=sa.text(f"{column} IS NOT NULL"),
        )
    job = sa.table(
        "job", sa.column("id"), sa.column("owner"), sa.column("spec"), sa.column("result")
    )
    bind = op.get_bind()
    last = ""
    while True:
        batch = bind.execute(
            sa.select(job.c.id, job.c.owner, job.c.spec, job.c.result)
            .where(job.c.id > last)
            .order_by(job.c.id)
            .limit(BACKFILL_BATCH)
        ).all()
        if not batch:
            break
        rows = []
        for job_id, owner, spec, result in batch:
            rows += _field_rows(job_id, owner, spec, "")
            rows += _field_rows(job_id, owner, result, RESULT_FIELD)
        if rows:
            bind.execute(sa.insert(job_field), rows)
        last = batch[-1][0]


def downgrade() -> None:
    op.drop_table("job_field")
