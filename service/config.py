"""Settings: the only place that reads the environment (``TRAINLAB_*`` variables)."""

from __future__ import annotations

import os
from functools import lru_cache
from pathlib import Path

from pydantic import Field, model_validator
from pydantic_settings import BaseSettings, SettingsConfigDict

from service.specs import SpecLimits


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

    api_keys: list[str] = Field(
        default_factory=list, description="When set, every /v1 request needs X-API-Key."
    )
    max_body_bytes: int = Field(1_000_000, ge=1_000)
    max_upload_bytes: int = Field(20_000_000, ge=1_000)

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
        10.0, gt=0, description="Seconds between a training worker's heartbeats."
    )
    stale_job_after_s: float = Field(
        120.0,
        gt=0,
        description="A running job without a heartbeat for this long is failed as lost.",
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

    @model_validator(mode="after")
    def _heartbeats_fit_in_the_stale_window(self) -> Settings:
        if self.stale_job_after_s < 3 * self.heartbeat_interval_s:
            raise ValueError(
                "stale_job_after_s must be at least 3 heartbeat intervals, or a slow "
                "database write would fail a healthy job"
            )
        return self

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
        )

    @property
    def resolved_torch_threads(self) -> int:
        return self.torch_threads or max(1, _cpu_share() // self.worker_concurrency)


@lru_cache
def get_settings() -> Settings:
    return Settings()
