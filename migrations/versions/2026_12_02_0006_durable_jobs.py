"""Durable jobs: attempts, leases, delivery stamps, checkpoints and live worker rows.

Jobs running when this migration runs get their heartbeat as lease and count as their
first attempt; queued jobs are marked never sent, so a worker's reconciler sends them.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-02 12:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0006"
down_revision: str | Sequence[str] | None = "0005"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

MAX_ATTEMPTS = 3  # frozen: the setting's default when this revision was written


def upgrade() -> None:
    # Plain ADD COLUMN, no batch mode: on SQLite a batch copy drops and recreates ``job``,
    # and with foreign keys on that would cascade-delete every job's statistics.
    for column in (
        sa.Column("attempt", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("max_attempts", sa.Integer(), nullable=False, server_default=str(MAX_ATTEMPTS)),
        sa.Column("preemptions", sa.Integer(), nullable=False, server_default="0"),
        sa.Column("lease_expires_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("enqueued_at", sa.DateTime(timezone=True), nullable=True),
        sa.Column("worker_id", sa.String(100), nullable=True),
        sa.Column("worker_pid", sa.Integer(), nullable=True),
        sa.Column("checkpoint", sa.String(200), nullable=True),
    ):
        op.add_column("job", column)
    op.create_index("ix_job_status_lease_expires_at", "job", ["status", "lease_expires_at"])
    op.create_index("ix_job_status_enqueued_at", "job", ["status", "enqueued_at"])
    op.execute(
        "UPDATE job SET attempt = 1, lease_expires_at = heartbeat_at WHERE status = 'running'"
    )
    op.execute("UPDATE job SET attempt = 1 WHERE status IN ('succeeded', 'failed')")

    op.create_table(
        "worker_node",
        sa.Column("id", sa.String(100), nullable=False),
        sa.Column("hostname", sa.String(200), nullable=False),
        sa.Column("pid", sa.Integer(), nullable=False),
        sa.Column("queues", sa.String(200), nullable=False),
        sa.Column("started_at", sa.DateTime(timezone=True), nullable=False),
        sa.Column("heartbeat_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_worker_node")),
    )
    op.create_index(op.f("ix_worker_node_hostname"), "worker_node", ["hostname"])
    op.create_index(op.f("ix_worker_node_heartbeat_at"), "worker_node", ["heartbeat_at"])


def downgrade() -> None:
    op.drop_index(op.f("ix_worker_node_heartbeat_at"), table_name="worker_node")
    op.drop_index(op.f("ix_worker_node_hostname"), table_name="worker_node")
    op.drop_table("worker_node")
    op.drop_index("ix_job_status_enqueued_at", table_name="job")
    op.drop_index("ix_job_status_lease_expires_at", table_name="job")
    # SQLite (3.35+) drops a plain column in place, again without recreating the table.
    for column in (
        "checkpoint",
        "worker_pid",
        "worker_id",
        "enqueued_at",
        "lease_expires_at",
        "preemptions",
        "max_attempts",
        "attempt",
    ):
        op.drop_column("job", column)
