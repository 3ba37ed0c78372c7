"""Statistics at scale: an integer job key (stat_job), compact single-precision layer_stat
rows with NULL for absent statistics, and the layer_stat_rollup written beside them.

Existing rows are moved: every job with statistics gets its key and facts, its rows are
copied into the new layer_stat (activation statistics stored as NaN become NULL, values
outside single precision become ±Infinity or 0), and its rollup is computed from them.

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-04 01:40:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009"
down_revision: str | Sequence[str] | None = "0008"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# As in service.db.models at this revision (a migration must not import the ORM).
STATS: tuple[str, ...] = (
    "grad_norm",
    "grad_mean",
    "grad_std",
    "grad_abs_max",
    "grad_zero_frac",
    "weight_norm",
    "update_ratio",
    "nan_count",
    "inf_count",
    "act_mean",
    "act_std",
    "act_saturation",
    "preact_mean",
    "preact_std",
    "act_dead_frac",
)
# The engine marks a layer without a counted activation with NaN: absent, now NULL.
ACTIVATION_STATS = frozenset(
    ("act_mean", "act_std", "act_saturation", "preact_mean", "preact_std", "act_dead_frac")
)
ROLLUP_ROWS = 32


def _is_postgres() -> bool:
    return op.get_bind().dialect.name == "postgresql"


def _single(name: str, table: str) -> str:
    """A double as a REAL takes it without PostgreSQL's overflow/underflow errors."""
    column = f"{table}.{name}"
    if not _is_postgres():
        return column  # SQLite's REAL is a double; NaN is already NULL there
    value = f"NULLIF({column}, 'NaN')" if name in ACTIVATION_STATS else column
    return (
        f"CASE WHEN {value} = 'NaN' THEN 'NaN'::real "
        f"WHEN {value} > 3.4028234e38 THEN 'Infinity'::real "
        f"WHEN {value} < -3.4028234e38 THEN '-Infinity'::real "
        f"WHEN abs({value}) < 1e-45 THEN 0::real ELSE {value}::real END"
    )


def _stat_columns() -> list[sa.Column[float]]:
    return [sa.Column(name, sa.REAL(), nullable=True) for name in STATS]


def upgrade() -> None:
    op.create_table(
        "stat_job",
        sa.Column("key", sa.Integer(), primary_key=True, autoincrement=True),
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("rows", sa.Integer(), nullable=False),
        sa.Column("first_step", sa.Integer(), nullable=True),
        sa.Column("last_step", sa.Integer(), nullable=True),
        sa.Column("max_layer_index", sa.Integer(), nullable=True),
        sa.Column("first_nonfinite_step", sa.Integer(), nullable=True),
        sa.Column("raw_pruned_at", sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.id"], name="fk_stat_job_job_id_job", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("key", name="pk_stat_job"),
        sa.UniqueConstraint("job_id", name="uq_stat_job_job_id"),
    )
    op.execute(
        "INSERT INTO stat_job (job_id, rows, first_step, last_step, max_layer_index, "
        "first_nonfinite_step) "
        "SELECT job_id, count(*), min(step), max(step), max(layer_index), "
        "min(CASE WHEN nan_count > 0 OR inf_count > 0 THEN step END) "
        "FROM layer_stat GROUP BY job_id ORDER BY job_id"
    )
    op.rename_table("layer_stat", "layer_stat_old")
    if _is_postgres():  # index names are global there; the new table takes the old name
        op.execute("ALTER INDEX pk_layer_stat RENAME TO pk_layer_stat_old")
    op.create_table(
        "layer_stat",
        sa.Column("job_key", sa.Integer(), nullable=False),
        sa.Column("layer_index", sa.SmallInteger(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.SmallInteger(), nullable=False),
        *_stat_columns(),
        sa.ForeignKeyConstraint(
            ["job_key"], ["stat_job.key"], name="fk_layer_stat_job_key_stat_job", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_key", "layer_index", "step", name="pk_layer_stat"),
    )
    columns = ", ".join(STATS)
    converted = ", ".join(_single(name, "o") for name in STATS)
    op.execute(
        f"INSERT INTO layer_stat (job_key, layer_index, step, epoch, {columns}) "
        f"SELECT s.key, o.layer_index, o.step, o.epoch, {converted} "
        "FROM layer_stat_old o JOIN stat_job s ON s.job_id = o.job_id"
    )
    op.drop_table("layer_stat_old")
    op.create_table(
        "layer_stat_rollup",
        sa.Column("job_key", sa.Integer(), nullable=False),
        sa.Column("layer_index", sa.SmallInteger(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("first_step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.SmallInteger(), nullable=False),
        sa.Column("rows", sa.SmallInteger(), nullable=False),
        *(
            sa.Column(f"{name}{suffix}", sa.REAL(), nullable=True)
            for name in STATS
            for suffix in ("", "_min", "_max")
        ),
        sa.ForeignKeyConstraint(
            ["job_key"],
            ["stat_job.key"],
            name="fk_layer_stat_rollup_job_key_stat_job",
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("job_key", "layer_index", "step", name="pk_layer_stat_rollup"),
    )
    # Segments of ROLLUP_ROWS consecutive rows per layer, as the recorder writes them.
    aggregates = ", ".join(f"min({n}) AS {n}_min, max({n}) AS {n}_max" for n in STATS)
    picked = ", ".join(f"l.{n}, g.{n}_min, g.{n}_max" for n in STATS)
    names = ", ".join(f"{n}, {n}_min, {n}_max" for n in STATS)
    op.execute(
        f"INSERT INTO layer_stat_rollup (job_key, layer_index, step, first_step, epoch, rows, "
        f"{names}) "
        f"WITH ranked AS (SELECT *, (row_number() OVER (PARTITION BY job_key, layer_index "
        f"ORDER BY step) - 1) / {ROLLUP_ROWS} AS segment FROM layer_stat), "
        f"g AS (SELECT job_key, layer_index, max(step) AS last_step, min(step) AS first_step, "
        f"count(*) AS n, {aggregates} FROM ranked GROUP BY job_key, layer_index, segment) "
        f"SELECT g.job_key, g.layer_index, g.last_step, g.first_step, l.epoch, g.n, {picked} "
        "FROM g JOIN layer_stat l ON l.job_key = g.job_key AND l.layer_index = g.layer_index "
        "AND l.step = g.last_step"
    )


def downgrade() -> None:
    op.drop_table("layer_stat_rollup")
    op.rename_table("layer_stat", "layer_stat_new")
    if _is_postgres():
        op.execute("ALTER INDEX pk_layer_stat RENAME TO pk_layer_stat_new")
    op.create_table(
        "layer_stat",
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.Column("layer_index", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        *(sa.Column(name, sa.Double(), nullable=True) for name in STATS),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.id"], name="fk_layer_stat_job_id_job", ondelete="CASCADE"
        ),
        sa.PrimaryKeyConstraint("job_id", "layer_index", "step", name="pk_layer_stat"),
    )
    columns = ", ".join(STATS)
    widened = ", ".join(f"n.{name}" for name in STATS)
    op.execute(
        f"INSERT INTO layer_stat (job_id, layer_index, step, epoch, {columns}) "
        f"SELECT s.job_id, n.layer_index, n.step, n.epoch, {widened} "
        "FROM layer_stat_new n JOIN stat_job s ON s.key = n.job_key"
    )
    op.drop_table("layer_stat_new")
    op.drop_table("stat_job")
