"""Sweeps: a base spec and a grid of spec-field values, one job per grid point.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27 22:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0003"
down_revision: str | Sequence[str] | None = "0002"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "sweep",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("base", sa.JSON(), nullable=False),
        sa.Column("grid", sa.JSON(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_sweep"),
    )
    op.create_index("ix_sweep_created_at", "sweep", ["created_at"])
    # Batch mode: SQLite cannot add a foreign key to an existing table in place.
    with op.batch_alter_table("job") as batch:
        batch.add_column(sa.Column("sweep_id", sa.String(32), nullable=True))
        batch.add_column(sa.Column("grid_point", sa.JSON(), nullable=True))
        batch.create_foreign_key(
            "fk_job_sweep_id_sweep", "sweep", ["sweep_id"], ["id"], ondelete="SET NULL"
        )
        batch.create_index("ix_job_sweep_id", ["sweep_id"])


def downgrade() -> None:
    with op.batch_alter_table("job") as batch:
        batch.drop_index("ix_job_sweep_id")
        batch.drop_constraint("fk_job_sweep_id_sweep", type_="foreignkey")
        batch.drop_column("grid_point")
        batch.drop_column("sweep_id")
    op.drop_index("ix_sweep_created_at", table_name="sweep")
    op.drop_table("sweep")
