"""The `trainlab` client commands, run as a person runs them, against a live stack."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path

import pytest

from tests.integration.conftest import TRAINLAB, Stack

pytestmark = pytest.mark.integration

EXAMPLES = Path(__file__).resolve().parents[2] / "examples"


def trainlab(
    *args: str, url: str | None, stdin: str | None = None, timeout: float = 240
) -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("TRAINLAB_")}
    if url is not None:
        env["TRAINLAB_URL"] = url
    return subprocess.run(
        [TRAINLAB, *args], env=env, input=stdin, capture_output=True, text=True, timeout=timeout
    )


def test_submit_watch_shows_the_vanishing_gradient(embedded_stack: Stack) -> None:
    done = trainlab("submit", str(EXAMPLES / "vanishing.json"), "--watch", url=embedded_stack.url)
    assert done.returncode == 0, done.stdout + done.stderr
    out = done.stdout
    job_id = out.splitlines()[0].strip()
    assert len(job_id) == 32
    assert "epoch 1/2" in out and "epoch 2/2" in out and "val loss" in out
    assert "gradient flow" in out and "hidden.0.linear" in out
    assert "critical" in out and "vanishing_gradient" in out and "fix:" in out
    assert out.rstrip().splitlines()[-1].startswith("succeeded")

    listed = trainlab("jobs", url=embedded_stack.url)
    assert listed.returncode == 0, listed.stderr
    header = listed.stdout.splitlines()[1].split()
    assert header[:6] == ["id", "name", "status", "progress", "val", "acc"]
    row = next(line for line in listed.stdout.splitlines() if job_id[:8] in line)
    assert "vanishing-sigmoid-depth-20" in row and "vanishing_gradient" in row

    only = trainlab(
        "jobs",
        "--finding",
        "vanishing_gradient",
        "--where",
        "model.depth=20",
        url=embedded_stack.url,
    )
    assert job_id[:8] in only.stdout

    shown = trainlab("show", job_id[:8], url=embedded_stack.url)  # a prefix is enough
    assert shown.returncode == 0, shown.stderr
    assert job_id in shown.stdout and "hidden.19.linear" in shown.stdout


def test_compare_and_plot(embedded_stack: Stack, tmp_path: Path) -> None:
    ids = []
    for example in ("vanishing.json", "he-init.json"):
        done = trainlab("submit", str(EXAMPLES / example), "--watch", url=embedded_stack.url)
        assert done.returncode == 0, done.stderr
        ids.append(done.stdout.splitlines()[0].strip())
    by_epoch = trainlab("compare", *ids, url=embedded_stack.url)
    assert by_epoch.returncode == 0, by_epoch.stderr
    assert "val_loss by epoch" in by_epoch.stdout and "relu-he-init-depth-20" in by_epoch.stdout
    by_step = trainlab(
        "compare", *ids, "--stat", "grad_norm", "--layer", "0", url=embedded_stack.url
    )
    assert "grad_norm of layer 0 by step" in by_step.stdout
    lines = [line.split() for line in by_step.stdout.splitlines() if line.strip()[:1].isdigit()]
    vanishing, healthy = float(lines[-1][1]), float(lines[-1][2])
    assert vanishing < 1e-6 * healthy

    target = tmp_path / "flow.png"
    plotted = trainlab("plot", ids[0], "gradient-flow", "-o", str(target), url=embedded_stack.url)
    assert plotted.returncode == 0, plotted.stderr
    assert target.read_bytes().startswith(b"\x89PNG")


def test_a_failed_job_exits_non_zero_with_its_error(embedded_stack: Stack) -> None:
    # CUDA asked for on a machine without it: the worker fails the job.
    spec = {"data": {"dataset": "moons"}, "train": {"epochs": 1, "device": "cuda"}}
    done = trainlab("submit", "-", "--watch", url=embedded_stack.url, stdin=json.dumps(spec))
    if done.returncode == 0:
        pytest.skip("this machine has CUDA: the job did not fail")
    assert done.returncode == 1
    assert "failed" in done.stdout and "Traceback" not in done.stdout + done.stderr


def test_yaml_spec_from_stdin(embedded_stack: Stack) -> None:
    spec = "name: yaml-spec\ndata: {dataset: moons}\ntrain: {epochs: 1}\n"
    done = trainlab("submit", "-", url=embedded_stack.url, stdin=spec)
    assert done.returncode == 0, done.stderr
    job = embedded_stack.client.get(f"/v1/jobs/{done.stdout.strip()}").json()
    assert job["name"] == "yaml-spec"


def test_errors_are_one_clear_line(embedded_stack: Stack, tmp_path: Path) -> None:
    down = trainlab("jobs", url="http://127.0.0.1:9")
    assert down.returncode == 1
    assert down.stderr.count("\n") == 1, down.stderr
    assert "http://127.0.0.1:9" in down.stderr and "trainlab up" in down.stderr

    missing = trainlab("submit", str(tmp_path / "nope.json"), url=embedded_stack.url)
    assert (missing.returncode, missing.stderr.strip()) == (
        1,
        f"trainlab: no such file: {tmp_path / 'nope.json'}",
    )

    bad = tmp_path / "bad.json"
    bad.write_text('{"model": {"depth": 3,}}')
    broken = trainlab("submit", str(bad), url=embedded_stack.url)
    assert broken.returncode == 1 and "invalid JSON at line 1 column 23" in broken.stderr
    assert "Traceback" not in broken.stderr

    invalid = json.dumps({"model": {"depth": 0}, "train": {"optimizer": "nope"}})
    rejected = trainlab("submit", "-", url=embedded_stack.url, stdin=invalid)
    assert rejected.returncode == 1
    assert "model.depth: Input should be greater than or equal to 1" in rejected.stderr
    assert "train.optimizer: Input should be 'sgd', 'adam' or 'adamw'" in rejected.stderr
    assert "{" not in rejected.stderr  # no raw JSON
    assert "invalid request (2 errors)" in rejected.stderr
    one = trainlab("submit", "-", url=embedded_stack.url, stdin='{"model": {"depth": 0}}')
    assert "invalid request (1 error):" in one.stderr

    unknown = trainlab("show", "0123456789abcdef0123456789abcdef", url=embedded_stack.url)
    assert unknown.returncode == 1 and "no job with id" in unknown.stderr


def test_up_tells_clients_where_it_listens(embedded_stack: Stack) -> None:
    log = (embedded_stack.log_dir / "up.log").read_text()
    assert f"export TRAINLAB_URL={embedded_stack.url}" in log
    assert f"{embedded_stack.url}/dashboard" in log
    data_dir = embedded_stack.log_dir.parent / "data"
    assert (data_dir / "api-url").read_text().strip() == embedded_stack.url
    # Without --url or TRAINLAB_URL the client finds the port `trainlab up` was given.
    listed = trainlab("jobs", "--data-dir", str(data_dir), url=None)
    assert listed.returncode == 0, listed.stderr
