"""``train.stop_on`` takes only finding codes the diagnosis knows; the rules emit only
codes the vocabulary lists (so a stop_on can name each of them)."""

from __future__ import annotations

import re
from pathlib import Path

from fastapi.testclient import TestClient

from service.diagnosis import rules
from service.vocabulary import FINDING_CODES


def test_unknown_stop_on_code_is_422_at_its_place_in_the_list(client: TestClient) -> None:
    response = client.post(
        "/v1/jobs", json={"train": {"stop_on": ["divergence", "vanishing_gradients"]}}
    )
    assert response.status_code == 422, response.text
    assert [e["loc"] for e in response.json()["detail"]] == [["body", "train", "stop_on", 1]]
    assert "vanishing_gradient" in response.json()["detail"][0]["msg"]


def test_known_stop_on_codes_are_stored_with_the_spec(client: TestClient) -> None:
    body = {"model": {"depth": 2}, "train": {"stop_on": ["divergence", "not_learning"]}}
    response = client.post("/v1/jobs", json=body)
    assert response.status_code == 201, response.text
    assert response.json()["spec"]["train"]["stop_on"] == ["divergence", "not_learning"]


def test_every_code_the_rules_emit_is_a_known_finding_code() -> None:
    source = Path(rules.__file__).read_text()
    emitted = set(re.findall(r'code="([a-z_]+)"', source))
    assert emitted and emitted <= set(FINDING_CODES)
