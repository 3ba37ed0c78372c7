"""The ``trainlab`` command: run the service, a worker, migrations, and talk to the API.

The server commands never import ``worker`` or torch here: a worker is started as its own
``celery`` process, so this process (the API) does not compete for torch's threads.
"""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer
import uvicorn

from service.stack import API_GRACE_S, WORKER_GRACE_S, Supervisor, die_with_parent

app = typer.Typer(help="trainlab: train deep nets and see why they fail.", no_args_is_help=True)

DEFAULT_URL = "http://127.0.0.1:8000"
TERMINAL = {"succeeded", "failed", "cancelled"}

HostOpt = Annotated[str, typer.Option(help="Interface the API listens on.")]
PortOpt = Annotated[int, typer.Option(help="Port the API listens on.")]
DataDirOpt = Annotated[
    Path | None,
    typer.Option(help="Embedded mode's folder (SQLite, broker, caches). [env TRAINLAB_DATA_DIR]"),
]
UrlOpt = Annotated[str, typer.Option(envvar="TRAINLAB_URL", help="The API's base URL.")]


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


@app.command()
def migrate(data_dir: DataDirOpt = None) -> None:
    """Bring the database schema up to date (Alembic upgrade head)."""
    _set_data_dir(data_dir)
    from service.config import get_settings
    from service.db.migrate import upgrade_database

    url = get_settings().resolved_database_url
    upgrade_database(url)
    typer.echo(f"database at head: {url.split('@')[-1]}")


@app.command()
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
    command = _worker_command(queues, concurrency, pool, loglevel)
    os.execv(command[0], command)


@app.command()
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
    server_config = uvicorn.Config(
        "service.api.app:create_app",
        factory=True,
        host=host,
        port=port,
        # Open event streams (the dashboard's) must not hold a stop up forever.
        timeout_graceful_shutdown=API_GRACE_S,
    )
    supervisor = Supervisor(
        server_config=server_config, worker_command=worker_command, worker_grace_s=worker_grace
    )
    base = f"http://{host}:{port}"
    typer.echo(f"API docs on {base}/docs, dashboard on {base}/dashboard")
    code = supervisor.run()
    typer.echo(f"stopped; data kept in {settings.data_dir}")
    raise typer.Exit(code)


def _client(url: str) -> httpx.Client:
    headers = {"X-API-Key": key} if (key := os.environ.get("TRAINLAB_API_KEY")) else {}
    return httpx.Client(base_url=url, headers=headers, timeout=30)


def _check(response: httpx.Response) -> Any:
    if response.is_error:
        typer.echo(f"error {response.status_code}: {response.text}", err=True)
        raise typer.Exit(1)
    return response.json()


def _progress_line(job: dict[str, Any]) -> str:
    progress = job.get("progress") or {}
    result = job.get("result") or {}
    fraction = progress.get("fraction") or 0.0
    line = f"{job['id']}  {job['status']:<9}  {fraction:6.1%}  epoch {progress.get('epoch', 0)}"
    if "val_acc" in result:
        line += f"  val_acc {result['val_acc']:.3f}"
    return line


@app.command()
def submit(
    spec_file: Annotated[Path, typer.Argument(help="An ExperimentSpec as JSON ('-' for stdin).")],
    url: UrlOpt = DEFAULT_URL,
    wait: Annotated[bool, typer.Option(help="Poll until the job finishes.")] = False,
) -> None:
    """Submit an experiment and print the job id."""
    text = sys.stdin.read() if str(spec_file) == "-" else spec_file.read_text()
    with _client(url) as client:
        job = _check(client.post("/v1/jobs", json=json.loads(text)))
        typer.echo(job["id"])
        while wait and job["status"] not in TERMINAL:
            time.sleep(1.0)
            job = _check(client.get(f"/v1/jobs/{job['id']}"))
            typer.echo(_progress_line(job), err=True)
    if wait and job["status"] != "succeeded":
        typer.echo(job.get("error") or job["status"], err=True)
        raise typer.Exit(1)


@app.command()
def status(job_id: str, url: UrlOpt = DEFAULT_URL) -> None:
    """Show a job as JSON."""
    with _client(url) as client:
        typer.echo(json.dumps(_check(client.get(f"/v1/jobs/{job_id}")), indent=2))


@app.command()
def jobs(
    url: UrlOpt = DEFAULT_URL,
    limit: int = 20,
    status_filter: Annotated[str | None, typer.Option("--status")] = None,
) -> None:
    """List recent jobs, one line each."""
    params: dict[str, Any] = {"limit": limit}
    if status_filter:
        params["status"] = status_filter
    with _client(url) as client:
        page = _check(client.get("/v1/jobs", params=params))
    for job in page["items"]:
        typer.echo(_progress_line(job))


@app.command()
def cancel(job_id: str, url: UrlOpt = DEFAULT_URL) -> None:
    """Cancel a queued or running job."""
    with _client(url) as client:
        typer.echo(_progress_line(_check(client.post(f"/v1/jobs/{job_id}/cancel"))))


if __name__ == "__main__":
    app()
