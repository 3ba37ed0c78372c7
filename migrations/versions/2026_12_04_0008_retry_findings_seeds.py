"""Retry-with, live findings and sweep seeds: ``job.parent_id`` (the job a retry came
from), ``job.findings`` (the diagnosis in brief, kept up to date while a job runs) and
``sweep.seeds`` (each grid point run once per seed).

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-04 12:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008"
down_revision: str | Sequence[str] | None = "0007"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("parent_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("findings", sa.JSON(), nullable=True))
        batch.create_foreign_key(
            "fk_job_parent_id_job", "job", ["parent_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index("ix_job_parent_id", ["parent_id"])
    with op.batch_alter_table("sweep") as batch:
        batch.add_column(sa.Column("seeds", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("sweep") as batch:
        batch.drop_column("seeds")
    with op.batch_alter_table("job") as batch:
        batch.drop_index("ix_job_parent_id")
        batch.drop_constraint("fk_job_parent_id_job", type_="foreignkey")
        batch.drop_column("findings")
        batch.drop_column("parent_id")
