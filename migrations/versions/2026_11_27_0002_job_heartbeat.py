"""Job heartbeat: running jobs whose worker was lost can be found and failed.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27 20:15:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0002"
down_revision: str | Sequence[str] | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=True))
        batch.create_index("ix_job_status_heartbeat_at", ["status", "heartbeat_at"])
    # Jobs already running when this migration runs get their start as first heartbeat.
    op.execute("UPDATE job SET heartbeat_at = started_at WHERE status = 'running'")


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_index("ix_job_status_heartbeat_at")
        batch.drop_column("heartbeat_at")
