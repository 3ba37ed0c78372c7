"""``trainlab keys``: make an API key and the settings entry that accepts it.

The service stores only the key's hash; the key itself is printed once, here.
"""

from __future__ import annotations

import json
import sys
from typing import Annotated

import typer

from service import keys

app = typer.Typer(help="API keys: make one, or hash an existing one.", no_args_is_help=True)

NameOpt = Annotated[
    str | None,
    typer.Option(
        help="The principal's name (owner of what the key creates); default: "
        "derived from the key's hash. Give an old and a new key one name to rotate."
    ),
]
AdminOpt = Annotated[bool, typer.Option(help="An admin key: sees every owner's work.")]
AlgorithmOpt = Annotated[str, typer.Option(help=f"One of {', '.join(keys.ALGORITHMS)}.")]


def _entry(key: str, name: str | None, algorithm: str) -> str:
    entry = keys.hash_key(key, algorithm)
    entry = f"{name}={entry}" if name else entry
    try:
        keys.parse_key_entry(entry)  # the name's spelling, checked as the server will
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--name") from exc
    return entry


def _print(entry: str, admin: bool) -> None:
    variable = "TRAINLAB_ADMIN_KEYS" if admin else "TRAINLAB_API_KEYS"
    principal = keys.parse_key_entry(entry).principal
    typer.echo(f"principal: {principal}")
    typer.echo("settings (add the entry to the list if there is one):")
    typer.echo(f"  {variable}='{json.dumps([entry])}'")


@app.command("new")
def new(name: NameOpt = None, admin: AdminOpt = False, algorithm: AlgorithmOpt = "sha256") -> None:
    """Print a fresh key (give it to its user; it is not stored) and its settings line."""
    if algorithm not in keys.ALGORITHMS:
        raise typer.BadParameter(f"use one of {', '.join(keys.ALGORITHMS)}")
    key = keys.new_key()
    entry = _entry(key, name, algorithm)
    typer.echo(f"key: {key}")
    _print(entry, admin)


@app.command("hash")
def hash_(
    name: NameOpt = None, admin: AdminOpt = False, algorithm: AlgorithmOpt = "sha256"
) -> None:
    """Read a key on standard input and print its settings line (to move a plaintext key
    from an older configuration to its hash)."""
    if algorithm not in keys.ALGORITHMS:
        raise typer.BadParameter(f"use one of {', '.join(keys.ALGORITHMS)}")
    key = sys.stdin.readline().rstrip("\r\n")
    if not key:
        raise typer.BadParameter("give the key on standard input")
    _print(_entry(key, name, algorithm), admin)
