"""Owners: every job, sweep and dataset belongs to the principal whose key made it.

Rows stored before keys were enforced belong to ``anonymous`` (what the open mode calls
its one caller), so nothing is lost and only an admin key sees them once keys are on.
Idempotency keys become unique per owner instead of across the whole service.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-03 12:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from alembic.operations import BatchOperations

revision: str = "0007"
down_revision: str | Sequence[str] | None = "0006"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

ANONYMOUS = "anonymous"  # frozen copy of service.keys.ANONYMOUS


def _add_owner(batch: BatchOperations) -> None:
    # The server default fills the existing rows; the application always sets it.
    batch.add_column(sa.Column("owner", sa.String(64), nullable=False, server_default=ANONYMOUS))


def upgrade() -> None:
    with op.batch_alter_table("job") as batch:
        _add_owner(batch)
    with op.batch_alter_table("job") as batch:
        batch.alter_column("owner", server_default=None)
        batch.drop_constraint("uq_job_idempotency_key", type_="unique")
        batch.create_unique_constraint("uq_job_owner_idempotency_key", ["owner", "idempotency_key"])
        batch.create_index("ix_job_owner_created_at_id", ["owner", "created_at", "id"])
        batch.create_index("ix_job_owner_status", ["owner", "status"])
    for table in ("sweep", "dataset"):
        with op.batch_alter_table(table) as batch:
            _add_owner(batch)
        with op.batch_alter_table(table) as batch:
            batch.alter_column("owner", server_default=None)
            batch.create_index(f"ix_{table}_owner_created_at_id", ["owner", "created_at", "id"])


def downgrade() -> None:
    for table in ("dataset", "sweep"):
        with op.batch_alter_table(table) as batch:
            batch.drop_index(f"ix_{table}_owner_created_at_id")
            batch.drop_column("owner")
    # Keys unique per owner may repeat across owners: one job (the smallest id) keeps it.
    op.execute(
        "UPDATE job SET idempotency_key = NULL WHERE idempotency_key IS NOT NULL AND id NOT IN "
        "(SELECT MIN(id) FROM job WHERE idempotency_key IS NOT NULL GROUP BY idempotency_key)"
    )
    with op.batch_alter_table("job") as batch:
        batch.drop_index("ix_job_owner_status")
        batch.drop_index("ix_job_owner_created_at_id")
        batch.drop_constraint("uq_job_owner_idempotency_key", type_="unique")
        batch.create_unique_constraint("uq_job_idempotency_key", ["idempotency_key"])
        batch.drop_column("owner")
