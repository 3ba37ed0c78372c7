"""Landscape slices get their own table; layer kinds and dataset layouts are checked.

The grid of a loss-landscape slice moves out of ``job.result["landscape"]`` into
``landscape`` (one row per job), and the result keeps a small summary in its place
(dims, points, roughness, sharpness, local_minima), so job reads and lists never carry
the grid. Downgrading puts the grids back into the results.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-01 22:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence
from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from alembic import op

revision: str = "0004"
down_revision: str | Sequence[str] | None = "0003"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# Frozen copies: a migration must not change when the code's vocabulary later grows.
LAYER_KINDS = (
    "linear",
    "conv1d",
    "conv2d",
    "batchnorm",
    "layernorm",
    "groupnorm",
    "projection",
    "output",
)
DATA_LAYOUTS = ("table", "seq", "image")
SUMMARY_KEYS = ("dims", "roughness", "sharpness", "local_minima")

job = sa.table(
    "job",
    sa.column("id", sa.String),
    sa.column("result", sa.JSON),
    sa.column("finished_at", sa.DateTime(timezone=True)),
)
landscape = sa.table(
    "landscape",
    sa.column("job_id", sa.String),
    sa.column("dims", sa.Integer),
    sa.column("alphas", sa.JSON),
    sa.column("losses", sa.JSON),
    sa.column("roughness", sa.Float),
    sa.column("sharpness", sa.Float),
    sa.column("local_minima", sa.Integer),
    sa.column("examples", sa.Integer),
    sa.column("created_at", sa.DateTime(timezone=True)),
)


def _in(column: str, values: tuple[str, ...]) -> str:
    return f"{column} IN ({', '.join(repr(v) for v in values)})"


def _number(value: Any) -> float | None:
    # Stored results spell non-finite numbers as strings ("NaN", "Infinity").
    return float(value) if isinstance(value, int | float | str) else None


def _stored_time(moment: datetime | None, dialect: str) -> datetime:
    """As service.db.base.UTCDateTime stores a time: naive UTC on SQLite, aware elsewhere."""
    moment = moment or datetime.now(UTC)
    moment = (moment if moment.tzinfo else moment.replace(tzinfo=UTC)).astimezone(UTC)
    return moment.replace(tzinfo=None) if dialect == "sqlite" else moment


def summary_of(grid: dict[str, Any]) -> dict[str, Any]:
    summary = {key: grid.get(key) for key in SUMMARY_KEYS}
    summary["points"] = len(grid.get("alphas") or [])
    return summary


def upgrade() -> None:
    op.create_table(
        "landscape",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("dims", sa.Integer(), nullable=False),
        sa.Column("alphas", sa.JSON(), nullable=False),
        sa.Column("losses", sa.JSON(), nullable=False),
        sa.Column("roughness", sa.Double(), nullable=True),
        sa.Column("sharpness", sa.Double(), nullable=True),
        sa.Column("local_minima", sa.Integer(), nullable=False),
        sa.Column("examples", sa.Integer(), nullable=False),
        sa.Column("created_at", sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.id"], name="fk_landscape_job_id_job", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", name="pk_landscape"),
    )
    connection = op.get_bind()
    rows = connection.execute(sa.select(job.c.id, job.c.result, job.c.finished_at)).all()
    for job_id, result, finished_at in rows:
        grid = (result or {}).get("landscape")
        if not isinstance(grid, dict) or "losses" not in grid:
            continue
        connection.execute(
            landscape.insert().values(
                job_id=job_id,
                dims=int(grid["dims"]),
                alphas=grid["alphas"],
                losses=grid["losses"],
                roughness=_number(grid.get("roughness")),
                sharpness=_number(grid.get("sharpness")),
                local_minima=int(grid.get("local_minima") or 0),
                examples=int(grid.get("examples") or 0),
                created_at=_stored_time(finished_at, connection.dialect.name),
            )
        )
        result = {**result, "landscape": summary_of(grid)}
        connection.execute(job.update().where(job.c.id == job_id).values(result=result))
    with op.batch_alter_table("layer") as batch:
        batch.create_check_constraint("ck_layer_kind", _in("kind", LAYER_KINDS))
    with op.batch_alter_table("dataset") as batch:
        batch.create_check_constraint("ck_dataset_layout", _in("layout", DATA_LAYOUTS))


def downgrade() -> None:
    with op.batch_alter_table("dataset") as batch:
        batch.drop_constraint("ck_dataset_layout", type_="check")
    with op.batch_alter_table("layer") as batch:
        batch.drop_constraint("ck_layer_kind", type_="check")
    connection = op.get_bind()
    grids = connection.execute(sa.select(landscape)).mappings().all()
    for grid in grids:
        result = connection.execute(
            sa.select(job.c.result).where(job.c.id == grid["job_id"])
        ).scalar_one()
        restored = {key: grid[key] for key in ("dims", "alphas", "losses", "local_minima")}
        restored |= {"roughness": grid["roughness"], "sharpness": grid["sharpness"]}
        restored["examples"] = grid["examples"]
        result = {**(result or {}), "landscape": restored}
        connection.execute(job.update().where(job.c.id == grid["job_id"]).values(result=result))
    op.drop_table("landscape")
