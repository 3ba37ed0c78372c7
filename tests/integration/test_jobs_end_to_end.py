"""A spec goes in over HTTP, a real Celery worker trains it, statistics come out."""

from __future__ import annotations

import copy
import io
import json
import os
import signal
import subprocess
import time
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from service.specs import EXAMPLE_SPEC
from tests.integration.conftest import TRAINLAB, Stack

pytestmark = [pytest.mark.integration, pytest.mark.timeout(600)]


def _submit(stack: Stack, spec: dict[str, Any]) -> dict[str, Any]:
    response = stack.client.post("/v1/jobs", json=spec)
    assert response.status_code == 201, response.text
    job: dict[str, Any] = response.json()
    assert response.headers["location"].endswith(f"/v1/jobs/{job['id']}")
    return job


def _long_job(stack: Stack) -> dict[str, Any]:
    spec = copy.deepcopy(EXAMPLE_SPEC)
    spec["model"]["depth"] = 4
    spec["train"]["epochs"] = 500
    return _submit(stack, spec)


def _wait_until_training(stack: Stack, job: dict[str, Any]) -> dict[str, Any]:
    """Poll until the job runs and has taken at least one step."""
    deadline = time.monotonic() + 120
    while job["status"] != "running" or job["progress"]["step"] == 0:
        assert time.monotonic() < deadline and job["status"] in {"queued", "running"}, job
        time.sleep(0.1)
        job = stack.client.get(f"/v1/jobs/{job['id']}").json()
    return job


def test_design_example_trains_and_records_every_layer(stack: Stack) -> None:
    job = _submit(stack, EXAMPLE_SPEC)
    assert job["status"] == "queued"

    seen_running = False
    deadline = time.monotonic() + 240
    while job["status"] not in {"succeeded", "failed", "cancelled"}:
        assert time.monotonic() < deadline, stack.logs()
        time.sleep(0.1)
        job = stack.client.get(f"/v1/jobs/{job['id']}").json()
        seen_running |= job["status"] == "running"
    assert job["status"] == "succeeded", (job["error"], stack.logs())
    assert seen_running or job["started_at"] is not None
    assert job["worker"]
    assert job["progress"]["fraction"] == pytest.approx(1.0)
    assert job["progress"]["epoch"] == job["progress"]["epochs"] == 2
    assert 0.0 <= job["result"]["val_acc"] <= 1.0

    metrics = stack.client.get(f"/v1/jobs/{job['id']}/metrics").json()
    assert [row["epoch"] for row in metrics] == [1, 2]
    assert all(row["seconds"] > 0 for row in metrics)

    layers = stack.client.get(f"/v1/jobs/{job['id']}/layers").json()
    weight_layers = [layer for layer in layers if layer["kind"] in {"linear", "output"}]
    assert len(weight_layers) == 21  # 20 hidden layers + the output layer
    assert [layer["index"] for layer in layers] == list(range(len(layers)))

    gradients = stack.client.get(f"/v1/jobs/{job['id']}/gradients").json()
    series = {s["layer_index"]: s["points"] for s in gradients["series"]}
    assert set(series) == {layer["index"] for layer in layers}
    total_steps = job["progress"]["total_steps"]
    expected_steps = list(range(10, total_steps + 1, 10))
    for points in series.values():
        assert [p["step"] for p in points] == expected_steps
    # The lesson this spec exists for: sigmoid gradients vanish towards the input.
    first, last = series[0][-1]["grad_norm"], series[max(series) - 1][-1]["grad_norm"]
    assert first < last / 100

    diagnosis = stack.client.get(f"/v1/jobs/{job['id']}/diagnosis").json()
    vanishing = [f for f in diagnosis["findings"] if f["code"] == "vanishing_gradient"]
    assert vanishing and 0 in vanishing[0]["layers"], diagnosis


def test_training_error_fails_the_job_with_its_message(stack: Stack) -> None:
    spec = copy.deepcopy(EXAMPLE_SPEC)
    spec["train"]["device"] = "cuda"  # no GPU on the CI machines: training raises
    spec["model"]["depth"] = 2
    job = stack.wait_for(_submit(stack, spec)["id"], {"succeeded", "failed"})
    if job["status"] == "succeeded":
        pytest.skip("this machine has a CUDA device")
    assert "cuda" in job["error"].lower()
    assert job["finished_at"] is not None


def test_cancel_stops_running_job(stack: Stack) -> None:
    job = _wait_until_training(stack, _long_job(stack))

    response = stack.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert response.status_code in (200, 202), response.text
    job = stack.wait_for(job["id"], {"cancelled", "failed", "succeeded"}, timeout=30)
    assert job["status"] == "cancelled", job
    assert job["result"]["cancelled"] is True
    assert job["progress"]["step"] < job["progress"]["total_steps"]
    assert stack.client.post(f"/v1/jobs/{job['id']}/cancel").status_code == 409


def test_cli_submits_and_waits(embedded_stack: Stack, tmp_path: Path) -> None:
    spec = copy.deepcopy(EXAMPLE_SPEC)
    spec["model"]["depth"] = 2
    spec_file = tmp_path / "spec.json"
    spec_file.write_text(json.dumps(spec))
    url = ["--url", embedded_stack.url]
    submitted = subprocess.run(
        [TRAINLAB, "submit", str(spec_file), "--wait", *url],
        capture_output=True,
        text=True,
        timeout=240,
    )
    assert submitted.returncode == 0, submitted.stderr
    job_id = submitted.stdout.splitlines()[0].strip()  # then the watch and the diagnosis
    listed = subprocess.run([TRAINLAB, "jobs", *url], capture_output=True, text=True)
    row = next(line for line in listed.stdout.splitlines() if job_id[:8] in line)
    assert "succeeded" in row
    shown = subprocess.run([TRAINLAB, "status", job_id, *url], capture_output=True, text=True)
    assert json.loads(shown.stdout)["status"] == "succeeded"


def test_uploaded_dataset_trains_a_cnn(stack: Stack) -> None:
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 3, size=300)
    signals = rng.normal(size=(300, 24)).astype(np.float32) + labels[:, None]
    buffer = io.BytesIO()
    np.savez(buffer, x=signals, y=labels)
    uploaded = stack.client.post(
        "/v1/datasets",
        files={"file": ("signals.npz", buffer.getvalue(), "application/octet-stream")},
        data={"name": "signals"},
    )
    assert uploaded.status_code == 201, uploaded.text
    dataset = uploaded.json()
    spec = {
        "data": {"dataset": dataset["id"], "augment": {"shift": 2}},
        "model": {"arch": "cnn", "depth": 2, "width": 8},
        "train": {"epochs": 2, "batch_size": 32},
        "telemetry": {"every_n_steps": 4, "histogram_bins": 8},
    }
    job = stack.wait_for(_submit(stack, spec)["id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded", job["error"]
    histograms = stack.client.get(f"/v1/jobs/{job['id']}/histograms").json()
    assert histograms and all(sum(h["counts"]) > 0 for h in histograms)


def test_job_of_a_killed_worker_process_runs_again_instead_of_running_forever(
    stack: Stack,
) -> None:
    job = _wait_until_training(stack, _long_job(stack))
    pool = stack.worker_pool_pids()
    assert pool, "no Celery pool process found"
    for pid in pool:
        os.kill(pid, signal.SIGKILL)  # what the kernel's OOM killer does

    deadline = time.monotonic() + 90
    while not (job["status"] == "running" and job["attempt"] == 2):
        assert time.monotonic() < deadline and job["status"] in {"queued", "running"}, job
        time.sleep(0.2)
        job = stack.client.get(f"/v1/jobs/{job['id']}").json()
    assert "worker lost" in job["error"]
    stack.client.post(f"/v1/jobs/{job['id']}/cancel")
    assert stack.wait_for(job["id"], {"cancelled", "failed"}, timeout=60)["status"] == "cancelled"
    # The worker replaced its pool process: the stack still trains.
    small = copy.deepcopy(EXAMPLE_SPEC)
    small["model"]["depth"] = 2
    assert stack.wait_for(_submit(stack, small)["id"], {"succeeded", "failed"})["status"] == (
        "succeeded"
    )


def test_sweep_trains_every_grid_point(stack: Stack) -> None:
    base = copy.deepcopy(EXAMPLE_SPEC)
    base["model"]["depth"] = 2
    base["train"]["epochs"] = 1
    body = {"name": "it-sweep", "base": base, "grid": {"model.activation": ["sigmoid", "relu"]}}
    response = stack.client.post("/v1/sweeps", json=body)
    assert response.status_code == 201, response.text
    sweep_id = response.json()["id"]
    assert response.headers["location"].endswith(f"/v1/sweeps/{sweep_id}")

    deadline = time.monotonic() + 240
    rows: list[dict[str, Any]] = []
    while time.monotonic() < deadline:
        rows = stack.client.get(f"/v1/sweeps/{sweep_id}").raise_for_status().json()["rows"]
        if all(row["status"] in {"succeeded", "failed", "cancelled"} for row in rows):
            break
        time.sleep(0.2)
    assert [row["status"] for row in rows] == ["succeeded", "succeeded"], (rows, stack.logs())
    assert [row["point"] for row in rows] == [
        {"model.activation": "sigmoid"},
        {"model.activation": "relu"},
    ]
    assert all(0.0 <= row["result"]["val_acc"] <= 1.0 for row in rows)
    assert all(isinstance(row["findings"], list) for row in rows)


def test_landscape_slice_is_stored_apart_from_the_result(stack: Stack) -> None:
    spec = copy.deepcopy(EXAMPLE_SPEC)
    spec["model"]["depth"] = 2
    spec["train"]["epochs"] = 1
    spec["telemetry"]["landscape"] = {"points": 5, "max_examples": 64}
    job = stack.wait_for(_submit(stack, spec)["id"], {"succeeded", "failed"})
    assert job["status"] == "succeeded", (job["error"], stack.logs())
    summary = job["result"]["landscape"]
    assert summary["dims"] == 1 and summary["points"] == 5 and "losses" not in summary
    grid = stack.client.get(f"/v1/jobs/{job['id']}/landscape").raise_for_status().json()
    assert len(grid["alphas"]) == len(grid["losses"]) == 5
    assert grid["roughness"] == summary["roughness"]
