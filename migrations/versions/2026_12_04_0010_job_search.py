"""Job search: the spec and result of a job as JSONB on PostgreSQL, with GIN indexes.

Filters on spec and result fields (``train.lr>=0.01``, ``result.val_acc>0.9``) read the
binary JSONB instead of re-parsing JSON text per row, and the GIN indexes
(``jsonb_path_ops``) serve equality filters. SQLite keeps JSON text: the same indexes
exist there as plain indexes so that one ORM schema describes both backends.

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-04 12:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = "0010"
down_revision: str | Sequence[str] | None = "0009"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

DOCUMENTS = ("spec", "result")


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def upgrade() -> None:
    postgres = _is_postgres()
    for column in DOCUMENTS:
        if postgres:
            op.alter_column(
                "job",
                column,
                type_=postgresql.JSONB(),
                existing_type=sa.JSON(),
                postgresql_using=f"{column}::jsonb",
            )
            op.create_index(
                f"ix_job_{column}",
                "job",
                [column],
                postgresql_using="gin",
                postgresql_ops={column: "jsonb_path_ops"},
            )
        else:
            op.create_index(f"ix_job_{column}", "job", [column])


def downgrade() -> None:
    postgres = _is_postgres()
    for column in DOCUMENTS:
        op.drop_index(f"ix_job_{column}", "job")
        if postgres:
            op.alter_column(
                "job",
                column,
                type_=sa.JSON(),
                existing_type=postgresql.JSONB(),
                postgresql_using=f"{column}::json",
            )
