"""ORM models: one table per stored concept, singular snake_case names.

Float columns are double precision, except the layer statistics (single precision, see
LayerStat). PostgreSQL stores NaN and ±Infinity; SQLite stores ±Infinity but turns NaN
into NULL (the API then returns null), which is accepted.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    CheckConstraint,
    Column,
    Double,
    ForeignKey,
    Index,
    Integer,
    LargeBinary,
    SmallInteger,
    String,
    Table,
    Text,
    UniqueConstraint,
    text,
)
from sqlalchemy.dialects.postgresql import JSONB
from sqlalchemy.orm import Mapped, mapped_column
from sqlalchemy.types import REAL

from service.db.base import Base, UTCDateTime, utcnow
from service.vocabulary import (
    DATA_LAYOUTS,
    FINISHED_STATUSES,
    JOB_STATUSES,
    LAYER_KINDS,
    DataLayout,
    JobStatus,
    LayerKind,
    sql_in,
)

# Same names and order as worker.engine.events.STAT_NAMES (the service must not import
# the worker; tests check that the two agree).
LAYER_STAT_COLUMNS: tuple[str, ...] = (
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


# The longest string a job_field row keeps (a spec's name is at most this long).
JOB_FIELD_STRING_MAX = 200

# A document filtered and sorted on by its fields: JSONB on PostgreSQL (binary, indexable).
JSON_DOCUMENT = JSON().with_variant(JSONB(), "postgresql")


def _job_fk() -> ForeignKey:
    return ForeignKey("job.id", ondelete="CASCADE")


class Job(Base):
    __tablename__ = "job"
    __table_args__ = (
        CheckConstraint(sql_in("status", JOB_STATUSES), name="status"),
        Index("ix_job_status_created_at", "status", "created_at"),
        Index("ix_job_created_at_id", "created_at", "id"),
        Index("ix_job_status_heartbeat_at", "status", "heartbeat_at"),
        Index("ix_job_status_lease_expires_at", "status", "lease_expires_at"),
        Index("ix_job_status_enqueued_at", "status", "enqueued_at"),
        # Lists of one owner's jobs, and the count of its active ones (quota at submit).
        Index("ix_job_owner_created_at_id", "owner", "created_at", "id"),
        Index("ix_job_owner_status", "owner", "status"),
        # An Idempotency-Key is one owner's: another key's equal string is another job.
        UniqueConstraint("owner", "idempotency_key", name="uq_job_owner_idempotency_key"),
        # Search by spec and result fields: GIN (jsonb_path_ops) on PostgreSQL, where they
        # are JSONB; plain (and unused) on SQLite, so one schema describes both backends.
        Index(
            "ix_job_spec",
            "spec",
            postgresql_using="gin",
            postgresql_ops={"spec": "jsonb_path_ops"},
        ),
        Index(
            "ix_job_result",
            "result",
            postgresql_using="gin",
            postgresql_ops={"result": "jsonb_path_ops"},
        ),
    )

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    # The principal whose API key made it (service.keys); "anonymous" with keys off.
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="", index=True)
    tags: Mapped[list[str]] = mapped_column(JSON, default=list)
    status: Mapped[JobStatus] = mapped_column(String(16), default="queued")
    spec: Mapped[dict[str, Any]] = mapped_column(JSON_DOCUMENT)
    queue: Mapped[str] = mapped_column(String(32))
    epoch: Mapped[int] = mapped_column(Integer, default=0)
    epochs: Mapped[int] = mapped_column(Integer, default=0)
    step: Mapped[int] = mapped_column(Integer, default=0)
    total_steps: Mapped[int] = mapped_column(Integer, default=0)
    # Final figures (train/val loss and accuracy, epochs, steps, ...) and, when the spec
    # asked for one, a few numbers about the loss landscape; its grid is in ``landscape``.
    result: Mapped[dict[str, Any] | None] = mapped_column(JSON_DOCUMENT, nullable=True)
    error: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    started_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Written by the worker while it trains; a running job whose heartbeat stops was lost
    # with its worker (killed, out of memory, machine gone).
    heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    worker: Mapped[str | None] = mapped_column(String(200), nullable=True)
    device: Mapped[str | None] = mapped_column(String(64), nullable=True)
    cancel_requested: Mapped[bool] = mapped_column(Boolean, default=False)
    idempotency_key: Mapped[str | None] = mapped_column(String(200), nullable=True)
    request_hash: Mapped[str | None] = mapped_column(String(64), nullable=True)
    # Set for the jobs of a sweep: which sweep, and the grid point's values by field path.
    sweep_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("sweep.id", ondelete="SET NULL"), nullable=True, index=True
    )
    grid_point: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    # Durability. ``attempt`` counts runs started (0 while never claimed): each run writes
    # under its own number, so a run that lost its lease cannot write any more.
    # ``preemptions`` counts graceful stops, which do not use up ``max_attempts``.
    attempt: Mapped[int] = mapped_column(Integer, default=0)
    max_attempts: Mapped[int] = mapped_column(Integer, default=3)
    preemptions: Mapped[int] = mapped_column(Integer, default=0)
    # Renewed by the running attempt's heartbeat; past it the job is requeued.
    lease_expires_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # Last time the job's id reached the broker; null: it never did (send it again).
    enqueued_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)
    # The worker process (worker_node.id) and the pid of the process training the job.
    worker_id: Mapped[str | None] = mapped_column(String(100), nullable=True)
    worker_pid: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # File name of the newest checkpoint a run recorded (service.checkpoints).
    checkpoint: Mapped[str | None] = mapped_column(String(200), nullable=True)
    # The job this one retried with a changed spec (POST /v1/jobs/{id}/retry-with).
    parent_id: Mapped[str | None] = mapped_column(
        String(32), ForeignKey("job.id", ondelete="SET NULL"), nullable=True, index=True
    )
    # The diagnosis in brief ([{code, severity, summary}], most severe first), recomputed
    # by the worker after every epoch and at the end; null until the first epoch.
    findings: Mapped[list[dict[str, Any]] | None] = mapped_column(JSON, nullable=True)

    @property
    def is_finished(self) -> bool:
        return self.status in FINISHED_STATUSES


class WorkerNode(Base):
    """One live worker process (a Celery main process), beating while it runs.

    The API's /readyz reads it (is any worker alive?), and a worker finds the jobs of a
    dead worker on its own host by its pid.
    """

    __tablename__ = "worker_node"

    id: Mapped[str] = mapped_column(String(100), primary_key=True)
    hostname: Mapped[str] = mapped_column(String(200), index=True)
    pid: Mapped[int] = mapped_column(Integer)
    queues: Mapped[str] = mapped_column(String(200), default="")
    started_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
    heartbeat_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)


class Sweep(Base):
    """A base spec and a grid of spec-field values; its jobs point back with sweep_id."""

    __tablename__ = "sweep"
    __table_args__ = (Index("ix_sweep_owner_created_at_id", "owner", "created_at", "id"),)

    id: Mapped[str] = mapped_column(String(32), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200), default="")
    base: Mapped[dict[str, Any]] = mapped_column(JSON)
    # {"model.activation": ["sigmoid", "relu"], ...}: the values as validated.
    grid: Mapped[dict[str, list[Any]]] = mapped_column(JSON)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    # train.seed values each grid point runs with (one job per point and seed); null: one
    # job per point, with the base's seed.
    seeds: Mapped[list[int] | None] = mapped_column(JSON, nullable=True)


class JobTag(Base):
    __tablename__ = "job_tag"

    job_id: Mapped[str] = mapped_column(String(32), _job_fk(), primary_key=True)
    tag: Mapped[str] = mapped_column(String(64), primary_key=True, index=True)


class JobField(Base):
    """One scalar of a job's spec or result, by the name search gives it (``train.lr``,
    ``result.val_acc``): written when the job is created and when its result is stored,
    so that range filters and sorts on any field read one ordered index instead of every
    job's document. Numbers (not booleans, not NaN: it is stored as "NaN") go in
    ``number``, strings of up to ``JOB_FIELD_STRING_MAX`` characters in ``string``; other
    values (booleans, nulls, lists) are not kept: equality filters serve them."""

    __tablename__ = "job_field"
    __table_args__ = (
        # Partial: each row has one of the two values, and sits in that value's index.
        Index(
            "ix_job_field_owner_path_number_job_id",
            "owner",
            "path",
            "number",
            "job_id",
            postgresql_where=text("number IS NOT NULL"),
            sqlite_where=text("number IS NOT NULL"),
        ),
        Index(
            "ix_job_field_owner_path_string_job_id",
            "owner",
            "path",
            "string",
            "job_id",
            postgresql_where=text("string IS NOT NULL"),
            sqlite_where=text("string IS NOT NULL"),
        ),
    )

    job_id: Mapped[str] = mapped_column(String(32), _job_fk(), primary_key=True)
    path: Mapped[str] = mapped_column(String(200), primary_key=True)
    # The job's owner, copied: every search is one owner's, and leads its index.
    owner: Mapped[str] = mapped_column(String(64))
    number: Mapped[float | None] = mapped_column(Double, nullable=True)
    string: Mapped[str | None] = mapped_column(String(JOB_FIELD_STRING_MAX), nullable=True)


class EpochMetric(Base):
    __tablename__ = "epoch_metric"

    job_id: Mapped[str] = mapped_column(String(32), _job_fk(), primary_key=True)
    epoch: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    train_loss: Mapped[float | None] = mapped_column(Double)
    train_acc: Mapped[float | None] = mapped_column(Double)
    val_loss: Mapped[float | None] = mapped_column(Double)
    val_acc: Mapped[float | None] = mapped_column(Double)
    lr: Mapped[float | None] = mapped_column(Double)
    seconds: Mapped[float | None] = mapped_column(Double)


class Layer(Base):
    __tablename__ = "layer"
    __table_args__ = (CheckConstraint(sql_in("kind", LAYER_KINDS), name="kind"),)

    job_id: Mapped[str] = mapped_column(String(32), _job_fk(), primary_key=True)
    index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    name: Mapped[str] = mapped_column(String(300))
    kind: Mapped[LayerKind] = mapped_column(String(64))
    params: Mapped[int] = mapped_column(Integer)
    shape: Mapped[list[int]] = mapped_column(JSON)
    activation: Mapped[str | None] = mapped_column(String(64), nullable=True)


# Consecutive rows of one layer that one rollup row summarizes (at most; a write of fewer
# steps makes a shorter segment): the recorder writes them beside the raw rows.
ROLLUP_ROWS = 32


class StatJob(Base):
    """A job as the statistics tables know it: a small integer ``key`` that their rows
    carry instead of the 32-character job id, and facts kept up to date at ingest, so that
    reads never scan a job's rows for them."""

    __tablename__ = "stat_job"

    # A table of its own rather than a column of job: SQLite numbers only a primary key.
    key: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=True)
    job_id: Mapped[str] = mapped_column(String(32), _job_fk(), unique=True)
    rows: Mapped[int] = mapped_column(Integer, default=0)
    first_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    last_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    max_layer_index: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # The first step at which any layer counted a NaN or Inf in its gradients.
    first_nonfinite_step: Mapped[int | None] = mapped_column(Integer, nullable=True)
    # Set when retention dropped the raw rows: reads then come from the rollup.
    raw_pruned_at: Mapped[datetime | None] = mapped_column(UTCDateTime, nullable=True)


def _stat_job_fk() -> ForeignKey:
    return ForeignKey("stat_job.key", ondelete="CASCADE")


class LayerStat(Base):
    """One row per layer and telemetry step; the primary key order serves range reads.

    Compact on purpose (~110 B a row on PostgreSQL, half what it was): the integer job
    key, a small layer index and epoch, statistics as single-precision ``REAL`` (what
    the device computes them from is float32; values past its range are stored as
    ±Infinity), and NULL, not NaN, for a statistic the layer does not have.
    """

    __tablename__ = "layer_stat"

    job_key: Mapped[int] = mapped_column(
        Integer, _stat_job_fk(), primary_key=True, autoincrement=False
    )
    layer_index: Mapped[int] = mapped_column(SmallInteger, primary_key=True, autoincrement=False)
    step: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    epoch: Mapped[int] = mapped_column(SmallInteger)
    grad_norm: Mapped[float | None] = mapped_column(REAL)
    grad_mean: Mapped[float | None] = mapped_column(REAL)
    grad_std: Mapped[float | None] = mapped_column(REAL)
    grad_abs_max: Mapped[float | None] = mapped_column(REAL)
    grad_zero_frac: Mapped[float | None] = mapped_column(REAL)
    weight_norm: Mapped[float | None] = mapped_column(REAL)
    update_ratio: Mapped[float | None] = mapped_column(REAL)
    nan_count: Mapped[float | None] = mapped_column(REAL)
    inf_count: Mapped[float | None] = mapped_column(REAL)
    act_mean: Mapped[float | None] = mapped_column(REAL)
    act_std: Mapped[float | None] = mapped_column(REAL)
    act_saturation: Mapped[float | None] = mapped_column(REAL)
    preact_mean: Mapped[float | None] = mapped_column(REAL)
    preact_std: Mapped[float | None] = mapped_column(REAL)
    # Fraction of units (features or channels) dead for every example of the batch.
    act_dead_frac: Mapped[float | None] = mapped_column(REAL)


# One row per segment of at most ROLLUP_ROWS consecutive rows of one layer, written with
# them: for each statistic its last value and the segment's min and max (a spike, an inf
# or a NaN is never averaged away: NaN counts as the largest value, as PostgreSQL orders
# it). ``step`` is the segment's last step. A Core table: its 45 statistic columns are
# generated, and only the repository reads it.
layer_stat_rollup = Table(
    "layer_stat_rollup",
    Base.metadata,
    Column("job_key", Integer, _stat_job_fk(), primary_key=True, autoincrement=False),
    Column("layer_index", SmallInteger, primary_key=True, autoincrement=False),
    Column("step", Integer, primary_key=True, autoincrement=False),
    Column("first_step", Integer, nullable=False),
    Column("epoch", SmallInteger, nullable=False),
    Column("rows", SmallInteger, nullable=False),
    *(
        Column(f"{name}{suffix}", REAL, nullable=True)
        for name in LAYER_STAT_COLUMNS
        for suffix in ("", "_min", "_max")
    ),
)


class LayerHistogram(Base):
    __tablename__ = "layer_histogram"

    job_id: Mapped[str] = mapped_column(String(32), _job_fk(), primary_key=True)
    layer_index: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    step: Mapped[int] = mapped_column(Integer, primary_key=True, autoincrement=False)
    lo: Mapped[float] = mapped_column(Double)
    hi: Mapped[float] = mapped_column(Double)
    counts: Mapped[list[int]] = mapped_column(JSON)


class Dataset(Base):
    """An uploaded dataset, stored as a normalized .npz (x float32, y int64)."""

    __tablename__ = "dataset"
    __table_args__ = (
        CheckConstraint(sql_in("layout", DATA_LAYOUTS), name="layout"),
        Index("ix_dataset_owner_created_at_id", "owner", "created_at", "id"),
    )

    id: Mapped[str] = mapped_column(String(15), primary_key=True)
    owner: Mapped[str] = mapped_column(String(64))
    name: Mapped[str] = mapped_column(String(200))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow, index=True)
    n_examples: Mapped[int] = mapped_column(Integer)
    x_shape: Mapped[list[int]] = mapped_column(JSON)
    num_classes: Mapped[int] = mapped_column(Integer)
    layout: Mapped[DataLayout] = mapped_column(String(16))
    size_bytes: Mapped[int] = mapped_column(Integer)
    # Deferred: listing datasets must not load their arrays.
    content: Mapped[bytes] = mapped_column(LargeBinary, deferred=True)


class Landscape(Base):
    """A job's loss-landscape slice (Li et al. 2018): the grid itself, kept out of
    ``job.result`` so that reading or listing jobs never carries it."""

    __tablename__ = "landscape"

    job_id: Mapped[str] = mapped_column(String(32), _job_fk(), primary_key=True)
    dims: Mapped[int] = mapped_column(Integer)
    alphas: Mapped[list[float]] = mapped_column(JSON)
    # 1-D: a list of losses; 2-D: losses[i][j]. Non-finite losses as jsonnum strings.
    losses: Mapped[list[Any]] = mapped_column(JSON)
    roughness: Mapped[float | None] = mapped_column(Double)
    sharpness: Mapped[float | None] = mapped_column(Double)
    local_minima: Mapped[int] = mapped_column(Integer)
    examples: Mapped[int] = mapped_column(Integer)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime, default=utcnow)
