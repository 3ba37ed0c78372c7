"""Initial schema: jobs, their tags, metrics, layers, layer statistics, histograms, datasets.

Revision ID: 0001
Revises:
Create Date: 2026-11-27 00:00:00+00:00
"""

from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0001"
down_revision: str | Sequence[str] | None = None
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

STAT_COLUMNS = (
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
)


def _ts(name: str, nullable: bool = False) -> sa.Column[object]:
    return sa.Column(name, sa.DateTime(timezone=True), nullable=nullable)


def _job_id(table: str) -> list[sa.Column[str] | sa.ForeignKeyConstraint]:
    return [
        sa.Column("job_id", sa.String(32), nullable=False),
        sa.ForeignKeyConstraint(
            ["job_id"], ["job.id"], name=f"fk_{table}_job_id_job", ondelete="CASCADE"
        ),
    ]


def upgrade() -> None:
    op.create_table(
        "job",
        sa.Column("id", sa.String(32), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("tags", sa.JSON(), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("spec", sa.JSON(), nullable=False),
        sa.Column("queue", sa.String(32), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        sa.Column("epochs", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("total_steps", sa.Integer(), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error", sa.Text(), nullable=True),
        _ts("created_at"),
        _ts("started_at", nullable=True),
        _ts("finished_at", nullable=True),
        sa.Column("worker", sa.String(200), nullable=True),
        sa.Column("device", sa.String(64), nullable=True),
        sa.Column("cancel_requested", sa.Boolean(), nullable=False),
        sa.Column("idempotency_key", sa.String(200), nullable=True),
        sa.Column("request_hash", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("id", name="pk_job"),
        sa.CheckConstraint(
            "status IN ('queued', 'running', 'succeeded', 'failed', 'cancelled')",
            name="ck_job_status",
        ),
        sa.UniqueConstraint("idempotency_key", name="uq_job_idempotency_key"),
    )
    op.create_index("ix_job_name", "job", ["name"])
    op.create_index("ix_job_status_created_at", "job", ["status", "created_at"])
    op.create_index("ix_job_created_at_id", "job", ["created_at", "id"])

    op.create_table(
        "job_tag",
        *_job_id("job_tag"),
        sa.Column("tag", sa.String(64), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "tag", name="pk_job_tag"),
    )
    op.create_index("ix_job_tag_tag", "job_tag", ["tag"])

    op.create_table(
        "epoch_metric",
        *_job_id("epoch_metric"),
        sa.Column("epoch", sa.Integer(), nullable=False),
        *(
            sa.Column(name, sa.Double(), nullable=True)
            for name in ("train_loss", "train_acc", "val_loss", "val_acc", "lr", "seconds")
        ),
        sa.PrimaryKeyConstraint("job_id", "epoch", name="pk_epoch_metric"),
    )

    op.create_table(
        "layer",
        *_job_id("layer"),
        sa.Column("index", sa.Integer(), nullable=False),
        sa.Column("name", sa.String(300), nullable=False),
        sa.Column("kind", sa.String(64), nullable=False),
        sa.Column("params", sa.Integer(), nullable=False),
        sa.Column("shape", sa.JSON(), nullable=False),
        sa.Column("activation", sa.String(64), nullable=True),
        sa.PrimaryKeyConstraint("job_id", "index", name="pk_layer"),
    )

    op.create_table(
        "layer_stat",
        *_job_id("layer_stat"),
        sa.Column("layer_index", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("epoch", sa.Integer(), nullable=False),
        *(sa.Column(name, sa.Double(), nullable=True) for name in STAT_COLUMNS),
        sa.PrimaryKeyConstraint("job_id", "layer_index", "step", name="pk_layer_stat"),
    )

    op.create_table(
        "layer_histogram",
        *_job_id("layer_histogram"),
        sa.Column("layer_index", sa.Integer(), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("lo", sa.Double(), nullable=False),
        sa.Column("hi", sa.Double(), nullable=False),
        sa.Column("counts", sa.JSON(), nullable=False),
        sa.PrimaryKeyConstraint("job_id", "layer_index", "step", name="pk_layer_histogram"),
    )

    op.create_table(
        "dataset",
        sa.Column("id", sa.String(15), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        _ts("created_at"),
        sa.Column("n_examples", sa.Integer(), nullable=False),
        sa.Column("x_shape", sa.JSON(), nullable=False),
        sa.Column("num_classes", sa.Integer(), nullable=False),
        sa.Column("layout", sa.String(16), nullable=False),
        sa.Column("size_bytes", sa.Integer(), nullable=False),
        sa.Column("content", sa.LargeBinary(), nullable=False),
        sa.PrimaryKeyConstraint("id", name="pk_dataset"),
    )
    op.create_index("ix_dataset_created_at", "dataset", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_dataset_created_at", table_name="dataset")
    op.drop_table("dataset")
    op.drop_table("layer_histogram")
    op.drop_table("layer_stat")
    op.drop_table("layer")
    op.drop_table("epoch_metric")
    op.drop_index("ix_job_tag_tag", table_name="job_tag")
    op.drop_table("job_tag")
    op.drop_index("ix_job_created_at_id", table_name="job")
    op.drop_index("ix_job_status_created_at", table_name="job")
    op.drop_index("ix_job_name", table_name="job")
    op.drop_table("job")
