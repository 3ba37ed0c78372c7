"""The ``trainlab`` command. Server commands (up, worker, migrate, prune) live in ``server``,
client commands (submit, jobs, show, compare, cancel, retry, plot, status) in ``client``,
and ``trainlab keys new`` (an API key and its settings line) in ``keys``: one module per
side."""

from __future__ import annotations

from collections.abc import Callable

import typer

from service.cli import client, keys, server

app = typer.Typer(
    help="trainlab: train deep nets and see why they fail. Client commands talk to the API "
    "at --url, TRAINLAB_URL, or where `trainlab up` says it listens.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
)

COMMANDS: tuple[Callable[..., None], ...] = (
    server.up,
    server.worker,
    server.migrate,
    server.prune,
    client.submit,
    client.jobs,
    client.show,
    client.compare,
    client.cancel,
    client.retry,
    client.plot,
    client.status,
)
for command in COMMANDS:
    app.command()(command)
# ``retry`` by the name of its endpoint: trainlab retry-with JOB --suggested | --set f=v.
app.command("retry-with")(client.retry)
app.add_typer(keys.app, name="keys")
