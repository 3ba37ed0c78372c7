"""Server commands: ``trainlab up``, ``trainlab worker``, ``trainlab migrate``,
``trainlab prune``.

They never import ``worker`` or torch here: a worker is started as its own ``celery``
process, so this process (the API) does not compete for torch's threads.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path
from typing import Annotated

import typer
import uvicorn

from service.cli.client import URL_FILE
from service.stack import API_GRACE_S, WORKER_GRACE_S, Supervisor, die_with_parent

HostOpt = Annotated[str, typer.Option(help="Interface the API listens on.")]
PortOpt = Annotated[int, typer.Option(help="Port the API listens on.")]
PRUNE_STATEMENT_TIMEOUT_S = 3600.0
DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="Embedded mode's folder (SQLite, broker, caches). [env TRAINLAB_DATA_DIR]"),
]


def _set_data_dir(data_dir: Path | None) -> None:
    # Settings read the environment; child processes inherit it.
    if data_dir is not None:
        os.environ["TRAINLAB_DATA_DIR"] = str(data_dir.resolve())
    from service.config import get_settings

    get_settings.cache_clear()
    get_settings().data_dir.mkdir(parents=True, exist_ok=True)


def _worker_command(queues: str, concurrency: int, pool: str, loglevel: str) -> list[str]:
    return [
        sys.executable,
        "-m",
        "celery",
        "-A",
        "worker.celery_app",
        "worker",
        "--queues",
        queues,
        "--concurrency",
        str(concurrency),
        "--pool",
        pool,
        "--loglevel",
        loglevel,
        "--without-gossip",
        "--without-mingle",
    ]


def migrate(data_dir: DataDirOpt = None) -> None:
    """Bring the database schema up to date (Alembic upgrade head)."""
    _set_data_dir(data_dir)
    from service.config import get_settings
    from service.db.migrate import upgrade_database

    url = get_settings().resolved_database_url
    upgrade_database(url)
    typer.echo(f"database at head: {url.split('@')[-1]}")


def prune(
    older_than_days: Annotated[
        float | None,
        typer.Option(
            "--older-than-days",
            min=0,
            help="Jobs finished this many days ago or more. "
            "[default: TRAINLAB_RAW_STATS_RETENTION_DAYS]",
        ),
    ] = None,
    data_dir: DataDirOpt = None,
) -> None:
    """Drop the raw per-step statistics of old finished jobs now, as the workers'
    retention does: their downsampled rollup, facts and epoch metrics stay, and reads
    answer from the rollup."""
    _set_data_dir(data_dir)
    from service import telemetry
    from service.config import get_settings
    from service.db.session import DatabaseTimeouts, make_engine, make_session_factory

    settings = get_settings()
    days = older_than_days if older_than_days is not None else settings.raw_stats_retention_days
    if days is None:
        typer.echo(
            "trainlab prune: say how old: --older-than-days N "
            "(or set TRAINLAB_RAW_STATS_RETENTION_DAYS)",
            err=True,
        )
        raise typer.Exit(2)
    # An operator's one-off: a job's millions of rows may take longer to delete than a
    # request's statement timeout allows.
    timeouts = DatabaseTimeouts(
        connect_s=int(settings.database_connect_timeout_s), statement_s=PRUNE_STATEMENT_TIMEOUT_S
    )
    engine = make_engine(settings.resolved_database_url, timeouts=timeouts)
    try:
        with make_session_factory(engine)() as session:
            dropped = telemetry.prune_raw_stats_older_than(session=session, days=days)
    finally:
        engine.dispose()
    typer.echo(f"dropped {dropped:,} raw statistic rows of jobs finished over {days:g} days ago")


def worker(
    data_dir: DataDirOpt = None,
    queues: Annotated[str, typer.Option(help="Queues to consume: cpu, gpu or both.")] = "cpu",
    concurrency: Annotated[int, typer.Option(help="Worker processes.")] = 1,
    pool: Annotated[str, typer.Option(help="prefork, or solo (one process per GPU).")] = "prefork",
    loglevel: str = "INFO",
    parent_pid: Annotated[
        int | None, typer.Option(hidden=True, help="Die with this process (`trainlab up`).")
    ] = None,
) -> None:
    """Join the cluster as a Celery worker (GPU nodes: --queues gpu --pool solo)."""
    if parent_pid is not None and not die_with_parent(parent_pid):
        raise typer.Exit(1)
    _set_data_dir(data_dir)
    os.environ.setdefault("TRAINLAB_WORKER_CONCURRENCY", str(concurrency))
    os.environ["TRAINLAB_WORKER_QUEUES"] = queues
    command = _worker_command(queues, concurrency, pool, loglevel)
    os.execv(command[0], command)


def up(
    host: HostOpt = "127.0.0.1",
    port: PortOpt = 8000,
    data_dir: Annotated[
        Path, typer.Option(help="Folder for the SQLite database, broker and caches.")
    ] = Path(".trainlab"),
    queues: Annotated[str, typer.Option(help="Queues the embedded worker consumes.")] = "cpu,gpu",
    worker_grace: Annotated[
        float,
        typer.Option(min=0, help="Seconds a stopping worker gets to finish its job, then killed."),
    ] = WORKER_GRACE_S,
    access_log: Annotated[
        bool,
        typer.Option(
            help="Log a line per request (uvicorn's access log). Off by default: at a "
            "polling dashboard's rate it floods the terminal and costs a tenth of a job "
            "read's CPU; /metrics counts requests by route and status."
        ),
    ] = False,
) -> None:
    """Run the API and one real Celery worker process: no servers to install.

    SIGINT (Ctrl-C) and SIGTERM both stop the API and the worker.
    """
    _set_data_dir(data_dir)
    from service.config import get_settings

    settings = get_settings()
    if "TRAINLAB_TORCH_THREADS" not in os.environ:
        # Leave one core to the API process on small machines.
        cpus = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else 1
        os.environ["TRAINLAB_TORCH_THREADS"] = str(max(1, cpus - 1))
    migrate(data_dir=None)
    # Through `trainlab worker`, which ties the worker's life to this process's.
    worker_command = [sys.executable, "-m", "service.cli", "worker", "--queues", queues]
    worker_command += ["--parent-pid", str(os.getpid())]
    server_config = api_server_config(host=host, port=port, access_log=access_log)
    supervisor = Supervisor(
        server_config=server_config, worker_command=worker_command, worker_grace_s=worker_grace
    )
    base = f"http://{_client_host(host)}:{port}"
    url_file = settings.data_dir / URL_FILE
    # The client CLI reads it (run from the same folder), so `make run PORT=...` just works.
    url_file.write_text(base + "\n")
    typer.echo(f"trainlab listening on {base}")
    typer.echo(f"  dashboard  {base}/dashboard")
    typer.echo(f"  API docs   {base}/docs")
    typer.echo(f"  clients    export TRAINLAB_URL={base}")
    try:
        code = supervisor.run()
    finally:
        # Unless another `trainlab up` on this folder has written its own URL since.
        if url_file.is_file() and url_file.read_text().strip() == base:
            url_file.unlink()
    typer.echo(f"stopped; data kept in {settings.data_dir}")
    raise typer.Exit(code)


def api_server_config(*, host: str, port: int, access_log: bool = False) -> uvicorn.Config:
    """How ``trainlab up`` serves the API (bench/bench_polling.py serves it so too)."""
    return uvicorn.Config(
        "service.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        # "auto": httptools and uvloop, which uvicorn[standard] installs (pyproject.toml),
        # where the platform has them; pure-Python h11 and asyncio's loop elsewhere.
        http="auto",
        loop="auto",
        access_log=access_log,
        # Open event streams (the dashboard's) must not hold a stop up forever.
        timeout_graceful_shutdown=API_GRACE_S,
    )


def _client_host(host: str) -> str:
    """Where a client on this machine reaches a server bound to ``host``."""
    return "127.0.0.1" if host in ("0.0.0.0", "::", "") else host
