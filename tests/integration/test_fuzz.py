"""Schemathesis against the live OpenAPI schema of both stacks: no input answers 5xx, and
every documented response matches its schema.

The embedded backend (SQLite, filesystem broker) runs open, as the default does; the
cluster backend (PostgreSQL, Redis) runs with API keys on, the fuzzer holding one. The
API runs alone (no worker), so the jobs the fuzzer submits stay queued and cost no CPU.
The event streams are left out: a queued job's stream lasts until the job finishes, which
here is never (tests/service/test_events_api.py holds their events to their schema).
Schemathesis' CLI is driven in a subprocess: its pytest plugin breaks on pytest 9.

A failure prints Schemathesis' report, with a curl line that reproduces each case: make
that case a plain regression test (tests/service/test_hostile_input_api.py) as well.
"""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from service.keys import hash_key
from tests.integration.conftest import api_only

pytestmark = [pytest.mark.integration, pytest.mark.slow]

ST = str(Path(sys.executable).with_name("st"))
FUZZ_KEY = "tlk_fuzzer-key"
CHECKS = "not_a_server_error,response_schema_conformance"
# Enough to reach every operation in every phase; about a minute a stack on this machine.
MAX_EXAMPLES = 25
RUN_LIMIT_S = 240
# The fuzzer sends thousands of requests and submits hundreds of jobs within seconds.
OPEN_LIMITS = {"RATE_LIMIT": "1000000/minute", "MAX_ACTIVE_JOBS": "1000000"}


def _fuzz(url: str, workdir: Path, *headers: str) -> None:
    command = [
        ST,
        "run",
        f"{url}/openapi.json",
        "--checks",
        CHECKS,
        "--max-examples",
        str(MAX_EXAMPLES),
        "--workers",
        "2",
        "--seed",
        "1",
        "--generation-database",
        "none",
        "--request-timeout",
        "30",
        "--no-color",
        "--exclude-path-regex",
        "/events$",
    ]
    for header in headers:
        command += ["--header", header]
    run = subprocess.run(
        command, cwd=workdir, capture_output=True, text=True, timeout=RUN_LIMIT_S, check=False
    )
    assert run.returncode == 0, run.stdout[-20_000:] + run.stderr[-5_000:]
    assert " passed" in run.stdout and "generated" in run.stdout, run.stdout[-5_000:]


def test_fuzz_the_embedded_stack_open(tmp_path: Path) -> None:
    with api_only(tmp_path / "stack", "embedded", **OPEN_LIMITS) as url:
        _fuzz(url, tmp_path)


def test_fuzz_the_cluster_stack_with_keys_on(tmp_path: Path) -> None:
    keys = f'["{hash_key(FUZZ_KEY)}"]'
    with api_only(tmp_path / "stack", "cluster", API_KEYS=keys, **OPEN_LIMITS) as url:
        _fuzz(url, tmp_path, f"X-API-Key: {FUZZ_KEY}")
