"""The ``trainlab`` command. Server commands (up, worker, migrate) live in ``server``,
client commands (submit, status, jobs, cancel) in ``client``: one module per side."""

from __future__ import annotations

from collections.abc import Callable

import typer

from service.cli import client, server

app = typer.Typer(help="trainlab: train deep nets and see why they fail.", no_args_is_help=True)

COMMANDS: tuple[Callable[..., None], ...] = (
    server.up,
    server.worker,
    server.migrate,
    client.submit,
    client.status,
    client.jobs,
    client.cancel,
)
for command in COMMANDS:
    app.command()(command)
