"""``trainlab keys new`` and ``trainlab keys hash``: the printed line is what the server
accepts, and the printed key is the one it lets in."""

from __future__ import annotations

import json
import re
from pathlib import Path

from fastapi.testclient import TestClient
from typer.testing import CliRunner

from service.api.app import create_app
from service.cli import app
from tests.service.conftest import make_settings

runner = CliRunner()


def _settings_line(output: str, variable: str) -> list[str]:
    match = re.search(rf"{variable}='(.+)'", output)
    assert match, output
    entries: list[str] = json.loads(match.group(1))
    return entries


def test_keys_new_prints_a_key_the_server_then_accepts(tmp_path: Path, db_url: str) -> None:
    result = runner.invoke(app, ["keys", "new", "--name", "alice"])
    assert result.exit_code == 0, result.output
    key = re.search(r"^key: (tlk_\S+)$", result.output, re.M)
    assert key, result.output
    entries = _settings_line(result.output, "TRAINLAB_API_KEYS")
    assert entries[0].startswith("alice=sha256:")
    assert key.group(1) not in entries[0]  # only its hash is configured
    settings = make_settings(tmp_path, db_url, api_keys=entries)
    with TestClient(create_app(settings)) as client:
        job = client.post("/v1/jobs", json={}, headers={"X-API-Key": key.group(1)})
        assert job.status_code == 201 and job.json()["owner"] == "alice"
        assert client.get("/v1/jobs", headers={"X-API-Key": "tlk_other"}).status_code == 403


def test_keys_are_fresh_each_time() -> None:
    outputs = [runner.invoke(app, ["keys", "new"]).output for _ in range(2)]
    assert outputs[0] != outputs[1]


def test_keys_hash_reads_an_existing_key_for_the_admin_list() -> None:
    result = runner.invoke(app, ["keys", "hash", "--admin", "--algorithm", "sha512"], input="k1\n")
    assert result.exit_code == 0, result.output
    entries = _settings_line(result.output, "TRAINLAB_ADMIN_KEYS")
    assert entries[0].startswith("sha512:") and len(entries[0]) == len("sha512:") + 128


def test_a_bad_name_is_refused() -> None:
    result = runner.invoke(app, ["keys", "new", "--name", "no spaces"])
    assert result.exit_code != 0
