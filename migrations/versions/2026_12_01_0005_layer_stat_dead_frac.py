"""Layer statistics: act_dead_frac, the fraction of units dead for the whole batch.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 22:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005"
down_revision: str | Sequence[str] | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    # Nullable, no backfill: rows recorded before this statistic existed have none. A plain
    # ADD COLUMN (SQLite has it too): no copy of what may be millions of rows.
    op.add_column("layer_stat", sa.Column("act_dead_frac", sa.Double(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("layer_stat") as batch:
        batch.drop_column("act_dead_frac")
