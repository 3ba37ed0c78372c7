"""Client commands: submit, status, jobs, cancel: the HTTP API from a terminal."""

from __future__ import annotations

import json
import os
import sys
import time
from pathlib import Path
from typing import Annotated, Any

import httpx
import typer

from service.vocabulary import FINISHED_STATUSES

DEFAULT_URL = "http://127.0.0.1:8000"

UrlOpt = Annotated[str, typer.Option(envvar="TRAINLAB_URL", help="The API's base URL.")]


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
        while wait and job["status"] not in FINISHED_STATUSES:
            time.sleep(1.0)
            job = _check(client.get(f"/v1/jobs/{job['id']}"))
            typer.echo(_progress_line(job), err=True)
    if wait and job["status"] != "succeeded":
        typer.echo(job.get("error") or job["status"], err=True)
        raise typer.Exit(1)


def status(job_id: str, url: UrlOpt = DEFAULT_URL) -> None:
    """Show a job as JSON."""
    with _client(url) as client:
        typer.echo(json.dumps(_check(client.get(f"/v1/jobs/{job_id}")), indent=2))


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


def cancel(job_id: str, url: UrlOpt = DEFAULT_URL) -> None:
    """Cancel a queued or running job."""
    with _client(url) as client:
        typer.echo(_progress_line(_check(client.post(f"/v1/jobs/{job_id}/cancel"))))
