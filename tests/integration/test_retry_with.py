"""Try the fix for real: a deep sigmoid net's vanishing gradient, retried with the fix
through a real worker, comes back without the finding."""

from __future__ import annotations

from typing import Any

import pytest

from tests.integration.conftest import Stack
from tests.integration.test_cli import trainlab

pytestmark = [pytest.mark.integration, pytest.mark.timeout(300)]

SIGMOID_DEEP: dict[str, Any] = {
    "name": "vanishing-sigmoid-depth-12",
    "data": {"dataset": "spirals", "train_size": 256, "val_size": 64},
    "model": {"depth": 12, "width": 32, "activation": "sigmoid"},
    "train": {"epochs": 2, "batch_size": 32, "checkpoint_every": 0},
    "telemetry": {"every_n_steps": 2},
}
# What the diagnosis suggests for it; used while a rule has no suggested patch yet.
FIX = {"model.activation": "relu", "model.init": "kaiming"}


def _codes(stack: Stack, job_id: str) -> list[str]:
    body = stack.client.get(f"/v1/jobs/{job_id}/diagnosis").raise_for_status().json()
    return [f["code"] for f in body["findings"]]


def test_retry_with_the_fix_loses_the_vanishing_gradient(cluster_stack: Stack) -> None:
    # One stack is enough: the route and the worker are the same in both (time budget).
    stack = cluster_stack
    parent = stack.client.post("/v1/jobs", json=SIGMOID_DEEP).raise_for_status().json()
    parent = stack.wait_for(parent["id"], {"succeeded", "failed"})
    assert parent["status"] == "succeeded", (parent["error"], stack.logs())
    assert "vanishing_gradient" in [f["code"] for f in parent["findings"]]
    diagnosis = stack.client.get(f"/v1/jobs/{parent['id']}/diagnosis").json()
    suggested = any(f["suggested_spec_patch"] for f in diagnosis["findings"])
    body = {"apply": "suggested"} if suggested else {"patch": FIX}

    response = stack.client.post(f"/v1/jobs/{parent['id']}/retry-with", json=body)
    assert response.status_code == 201, response.text
    child = stack.wait_for(response.json()["id"], {"succeeded", "failed"})
    assert child["status"] == "succeeded", (child["error"], stack.logs())
    assert child["parent_id"] == parent["id"]
    assert child["spec"]["model"]["activation"] != "sigmoid"
    assert "vanishing_gradient" not in _codes(stack, child["id"])
    assert "vanishing_gradient" not in [f["code"] for f in child["findings"]]

    # The CLI's one call: a prefix of the id, and patch values as JSON.
    done = trainlab(
        "retry-with", parent["id"][:10], "--set", "model.activation=gelu", url=stack.url
    )
    assert done.returncode == 0, done.stdout + done.stderr
    cli_child = stack.client.get(f"/v1/jobs/{done.stdout.split()[0]}").raise_for_status().json()
    assert cli_child["parent_id"] == parent["id"]
    assert cli_child["spec"]["model"]["activation"] == "gelu"
    stack.client.post(f"/v1/jobs/{cli_child['id']}/cancel")
