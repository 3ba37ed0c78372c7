"""Settings: the only place that reads the environment (``TRAINLAB_*`` variables)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

import limits
from pydantic import Field, field_validator, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.admission import AdmissionLimits
from service.keys import KeyEntry, parse_key_entries
from service.specs import SpecLimits

MIB = 2**20


def _cpu_share() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


class Settings(BaseSettings):
    model_config = SettingsConfigDict(env_prefix="TRAINLAB_", env_file=".env", extra="ignore")

    data_dir: Path = Field(
        Path(".trainlab"), description="Embedded mode: SQLite file, broker folder, caches."
    )
    database_url: str | None = Field(
        None, description="SQLAlchemy URL; default: SQLite (WAL) in data_dir."
    )
    broker_url: str | None = Field(
        None, description="Celery broker URL; default: kombu's filesystem transport in data_dir."
    )
    broker_key_prefix: str = Field(
        "",
        max_length=100,
        description="Redis broker: a prefix for every key trainlab's queues use, so that "
        "several deployments (or test runs) can share one Redis database.",
    )
    broker_polling_interval: float = Field(
        0.1, gt=0, description="Seconds between polls of a server-less broker."
    )

    # --- who may call, and how often (README "Security") ---
    api_keys: list[str] = Field(
        default_factory=list,
        description="Hashes of the API keys ('sha256:<hex>', optionally 'name=sha256:<hex>'; "
        "`trainlab keys new` makes one). When any key is set, every /v1 request needs "
        "X-API-Key and sees only what its key made.",
    )
    admin_keys: list[str] = Field(
        default_factory=list,
        description="Hashes of admin keys: valid keys that see every owner's jobs, sweeps "
        "and datasets.",
    )
    rate_limit: str = Field(
        "1200/minute",
        description="Requests per principal (or per client address with keys off), in the "
        "`limits` notation ('10/second;600/minute'); over it a 429 with Retry-After.",
    )
    auth_failure_limit: str = Field(
        "10/minute",
        description="Wrong or missing keys per client address; past it every /v1 request "
        "from that address is a 429 until the window passes.",
    )
    rate_limit_storage_url: str = Field(
        "memory://",
        description="Where the rate counters live: memory:// (one API process) or a "
        "redis:// URL shared by several API processes.",
    )
    max_active_jobs: int = Field(
        100, ge=1, description="Queued plus running jobs per principal; over it a 429."
    )
    max_datasets: int = Field(50, ge=1, description="Stored datasets per principal.")
    max_dataset_storage_bytes: int = Field(
        1_000_000_000, ge=1_000, description="Bytes of stored datasets per principal."
    )

    # --- request bodies ---
    max_body_bytes: int = Field(1_000_000, ge=1_000)
    max_upload_bytes: int = Field(20_000_000, ge=1_000)
    max_upload_inflation: int = Field(
        4,
        ge=1,
        le=100,
        description="An uploaded .npz may hold at most this many times max_upload_bytes "
        "once decompressed (checked from the array headers, before anything is allocated).",
    )
    max_concurrent_uploads: int = Field(
        2, ge=1, description="Uploads parsed at once by one API process (memory bound)."
    )
    body_read_timeout_s: float = Field(
        10.0,
        gt=0,
        description="A request whose body sends nothing for this long (or lies about its "
        "length) is answered 408 and its connection closed.",
    )
    body_total_timeout_s: float = Field(
        60.0, gt=0, description="The whole body must arrive within this many seconds."
    )

    # --- admission control at submit: what one job may cost ---
    max_parameters: int = Field(20_000_000, ge=1, description="Trainable parameters.")
    max_activation_bytes: int = Field(
        2048 * MIB, ge=1, description="Estimated activations one training batch keeps."
    )
    max_telemetry_rows: int = Field(
        1_000_000,
        ge=1,
        description="Layer-statistic (and histogram) rows one job may write: tracked "
        "layers x steps / every_n_steps.",
    )
    max_dataset_bytes: int = Field(
        512 * MIB, ge=1, description="A job's dataset as the worker holds it, decompressed."
    )
    assumed_flops_per_s: float = Field(
        5e10,
        gt=0,
        description="Throughput the run-time estimate at submit assumes (high, so that the "
        "estimate errs short and refuses only jobs that could not finish within their "
        "run-time limit, train.time_limit_s or max_time_limit_s).",
    )

    max_depth: int = Field(256, ge=1)
    max_width: int = Field(4096, ge=1)
    max_epochs: int = Field(10_000, ge=1)
    max_train_size: int = Field(1_000_000, ge=1)
    max_batch_size: int = Field(65_536, ge=1)
    max_sweep_points: int = Field(
        64,
        ge=1,
        le=10_000,
        description="Largest grid a sweep may expand to (jobs per sweep). It also bounds "
        "GET /v1/sweeps/{id}, which diagnoses every finished job of the sweep.",
    )

    worker_concurrency: int = Field(1, ge=1, description="Worker processes on this node.")
    torch_threads: int | None = Field(
        None,
        ge=1,
        description="torch intra-op threads per worker process; default: CPU share divided "
        "by worker_concurrency (oversubscribing OpenMP threads makes steps 50x slower).",
    )
    worker_queues: str = Field("cpu", description="Comma-separated queues a worker consumes.")
    heartbeat_interval_s: float = Field(
        10.0,
        gt=0,
        description="Seconds between a training worker's heartbeats; each renews its job's "
        "lease, and each worker process beats its own worker row as often.",
    )
    lease_s: float = Field(
        30.0,
        gt=0,
        description="A running job whose lease was not renewed for this long is requeued "
        "(attempt + 1) or, after its last attempt, failed. At least 3 heartbeats.",
    )
    max_attempts: int = Field(
        3, ge=1, le=100, description="Runs a job gets before a lost worker fails it."
    )
    reconcile_interval_s: float = Field(
        2.0,
        gt=0,
        description="Seconds between a worker's sweeps: expired leases, jobs of dead "
        "workers on this host, and queued jobs to send again.",
    )
    resend_after_s: float = Field(
        60.0,
        gt=0,
        description="A job queued and unclaimed for this long is sent to the broker again "
        "(a message lost with a broker restart); one that never reached it, at once.",
    )
    checkpoint_dir: Path | None = Field(
        None,
        description="Where workers keep checkpoints and final weights (a folder every "
        "worker and the API share in a cluster); default: data_dir/checkpoints.",
    )
    checkpoints_kept: int = Field(
        2, ge=1, le=100, description="Checkpoints kept per job (the newest ones)."
    )
    raw_stats_retention_days: float | None = Field(
        None,
        gt=0,
        description="Drop the raw per-step layer statistics of jobs that finished more "
        "than this many days ago, keeping their downsampled rollup (min, max and last per "
        "32 steps; reads then come from it). A worker's reconciler prunes every "
        "prune_interval_s. Unset: raw rows are kept.",
    )
    prune_interval_s: float = Field(
        600.0, gt=0, description="Seconds between a worker's prunes of raw statistics."
    )
    max_time_limit_s: float = Field(
        7 * 24 * 3600.0,
        gt=0,
        description="The longest run time a job may ask for (train.time_limit_s), and the "
        "limit of a job that asks for none.",
    )
    database_connect_timeout_s: int = Field(
        3, ge=1, le=300, description="Seconds to open a PostgreSQL connection (libpq: at least 2)."
    )
    database_statement_timeout_s: float = Field(
        5.0,
        gt=0,
        le=3600,
        description="Longest a PostgreSQL statement may take, enforced by the server and by "
        "the client (a frozen server or network is cut off after this long).",
    )
    broker_timeout_s: float = Field(
        1.0,
        gt=0,
        le=60,
        description="Socket and connect timeout of broker calls: a submit never waits on a "
        "frozen broker longer than about twice this.",
    )
    readiness_timeout_s: float = Field(
        0.8, gt=0, le=10, description="/readyz answers within this long, whatever hangs."
    )
    readiness_needs_worker: bool = Field(
        True,
        description="/readyz answers 503 while no worker process is alive (beating within "
        "a lease; on the API's own host, with its process running).",
    )
    recorder_buffer_bytes: int = Field(
        256 * 2**20,
        ge=2**16,
        description="Memory a worker's recorder may hold while the database is unreachable; "
        "past it the attempt fails (and is retried).",
    )
    events_poll_interval_s: float = Field(
        0.5,
        gt=0,
        le=60,
        description="Seconds between the database reads of an open event stream "
        "(GET /v1/jobs/{id}/events): the latency of live updates.",
    )
    events_keepalive_s: float = Field(
        15.0,
        gt=0,
        le=300,
        description="Seconds of silence after which an event stream sends a keep-alive "
        "comment, so proxies do not close it.",
    )
    log_json: bool = Field(
        False, description="Worker logs as one JSON object per line instead of text."
    )
    telemetry_flush_steps: int = Field(
        32, ge=1, description="Telemetry steps buffered on the device before one host copy."
    )

    @field_validator("rate_limit", "auth_failure_limit")
    @classmethod
    def _rate_limit_notation(cls, value: str) -> str:
        try:
            limits.parse_many(value)
        except ValueError as exc:
            raise ValueError(f"not a rate limit such as '600/minute': {value!r}") from exc
        return value

    @model_validator(mode="after")
    def _keys_are_hashes(self) -> Settings:
        parse_key_entries(self.api_keys, self.admin_keys)  # ValueError says how to fix
        return self

    @model_validator(mode="after")
    def _heartbeats_fit_in_the_lease(self) -> Settings:
        if self.lease_s < 3 * self.heartbeat_interval_s:
            raise ValueError(
                "lease_s must be at least 3 heartbeat intervals, or a slow database write "
                "would requeue a healthy job"
            )
        return self

    @property
    def resolved_checkpoint_dir(self) -> Path:
        return (self.checkpoint_dir or self.data_dir / "checkpoints").resolve()

    @property
    def resolved_database_url(self) -> str:
        if self.database_url:
            return self.database_url
        return f"sqlite:///{(self.data_dir / 'trainlab.db').resolve()}"

    @property
    def broker_folder(self) -> Path:
        return (self.data_dir / "broker").resolve()

    @property
    def resolved_broker_url(self) -> str:
        # "localhost" only names the (server-less) host, so kombu does not warn about a missing one.
        return self.broker_url or "filesystem://localhost/"

    @property
    def uses_embedded_broker(self) -> bool:
        return self.resolved_broker_url.startswith("filesystem://")

    @property
    def cache_dir(self) -> Path:
        return (self.data_dir / "cache").resolve()

    @property
    def spec_limits(self) -> SpecLimits:
        return SpecLimits(
            max_depth=self.max_depth,
            max_width=self.max_width,
            max_epochs=self.max_epochs,
            max_train_size=self.max_train_size,
            max_batch_size=self.max_batch_size,
            max_time_limit_s=self.max_time_limit_s,
        )

    @property
    def key_entries(self) -> tuple[KeyEntry, ...]:
        return parse_key_entries(self.api_keys, self.admin_keys)

    @property
    def keys_enabled(self) -> bool:
        return bool(self.api_keys or self.admin_keys)

    @property
    def admission_limits(self) -> AdmissionLimits:
        return AdmissionLimits(
            max_parameters=self.max_parameters,
            max_activation_bytes=self.max_activation_bytes,
            max_telemetry_rows=self.max_telemetry_rows,
            max_dataset_bytes=self.max_dataset_bytes,
            max_run_seconds=self.max_time_limit_s,
        )

    @property
    def max_inflated_upload_bytes(self) -> int:
        return self.max_upload_inflation * self.max_upload_bytes

    @property
    def resolved_torch_threads(self) -> int:
        return self.torch_threads or max(1, _cpu_share() // self.worker_concurrency)


@lru_cache
def get_settings() -> Settings:
    return Settings()
