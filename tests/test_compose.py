"""docker-compose.yml, checked without Docker: a CPU-only `docker compose up` reserves no
GPU, the API is on localhost with an API key unless the operator says otherwise."""

from __future__ import annotations

import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest
import yaml

from service.keys import hash_key

COMPOSE = Path(__file__).resolve().parents[1] / "docker-compose.yml"


@pytest.fixture(scope="module")
def compose() -> dict[str, Any]:
    document: dict[str, Any] = yaml.safe_load(COMPOSE.read_text())
    return document


def test_gpu_worker_is_behind_the_gpu_profile(compose: dict[str, Any]) -> None:
    services = compose["services"]
    reserving = [n for n, s in services.items() if "deploy" in s and "gpu" in str(s["deploy"])]
    assert reserving == ["worker-gpu"]
    assert services["worker-gpu"]["profiles"] == ["gpu"]
    default = [n for n, s in services.items() if not s.get("profiles")]
    assert {"postgres", "redis", "migrate", "api", "worker-cpu"} <= set(default)


def test_api_binds_localhost_with_an_api_key_by_default(compose: dict[str, Any]) -> None:
    api = compose["services"]["api"]
    assert api["ports"] == ["${TRAINLAB_API_BIND:-127.0.0.1}:${TRAINLAB_API_PORT:-8000}:8000"]
    keys = api["environment"]["TRAINLAB_API_KEYS"]
    # compose refuses to start without one, and the server is given only the key's hash
    assert keys.startswith('["${TRAINLAB_API_KEY_HASH:?')
    assert api["environment"]["TRAINLAB_DATABASE_URL"].startswith("postgresql+psycopg://")


def test_every_service_shares_the_database_and_broker(compose: dict[str, Any]) -> None:
    for name in ("migrate", "api", "worker-cpu", "worker-gpu"):
        env = compose["services"][name]["environment"]
        assert env["TRAINLAB_BROKER_URL"] == "redis://redis:6379/0", name


def test_docker_compose_config_accepts_it(tmp_path: Path) -> None:
    docker = shutil.which("docker")
    if (
        docker is None
        or subprocess.run([docker, "compose", "version"], capture_output=True).returncode
    ):
        pytest.skip("docker compose is not installed here; the YAML checks above still run")
    env = {"TRAINLAB_API_KEY_HASH": hash_key("test-key"), "PATH": str(Path(docker).parent)}
    done = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"], env=env, capture_output=True
    )
    assert done.returncode == 0, done.stderr
    missing = subprocess.run(
        [docker, "compose", "-f", str(COMPOSE), "config", "--quiet"],
        env={"PATH": env["PATH"]},
        capture_output=True,
    )
    assert missing.returncode != 0 and b"TRAINLAB_API_KEY_HASH" in missing.stderr
