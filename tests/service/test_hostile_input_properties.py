"""Hypothesis on the inputs Schemathesis does not generate: any text, NUL and lone
surrogates included, in bodies, queries and paths; any integer in a spec filter. On both
backends no request answers 5xx (tests/integration/test_fuzz.py fuzzes the schema)."""

from __future__ import annotations

import json
from typing import Any
from urllib.parse import quote

from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

JSON = {"Content-Type": "application/json"}
# Every code point, lone surrogates (category Cs) and NUL among them.
ANY_TEXT = st.text(st.characters(codec=None, categories=None), max_size=20)
PROPERTY = settings(
    max_examples=40, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
)
INT_FILTERS = ["train.seed", "data.train_size", "model.depth", "telemetry.every_n_steps"]


def _body(document: Any) -> bytes:
    # ensure_ascii: lone surrogates go out as \ud800 escapes, as a hostile client sends them
    return json.dumps(document, ensure_ascii=True).encode()


@PROPERTY
@given(name=ANY_TEXT, tags=st.lists(ANY_TEXT, max_size=3), key=ANY_TEXT)
def test_any_text_in_a_job_body_is_never_a_server_error(
    client: TestClient, name: str, tags: list[str], key: str
) -> None:
    for document in ({"name": name, "tags": tags}, {key: 1}, {"data": {"dataset": name}}):
        response = client.post("/v1/jobs", content=_body(document), headers=JSON)
        assert response.status_code < 500, (document, response.text)
        response.json()


@PROPERTY
@given(name=ANY_TEXT, field=ANY_TEXT)
def test_any_text_in_a_sweep_body_is_never_a_server_error(
    client: TestClient, name: str, field: str
) -> None:
    for document in ({"name": name, "grid": {"model.depth": [1]}}, {"grid": {field: [name]}}):
        response = client.post("/v1/sweeps", content=_body(document), headers=JSON)
        assert response.status_code < 500, (document, response.text)


@PROPERTY
@given(value=ANY_TEXT, param=st.sampled_from(["name", "tag", "cursor", "model.activation"]))
def test_any_text_in_a_query_is_never_a_server_error(
    client: TestClient, value: str, param: str
) -> None:
    encoded = quote(value.encode("utf-8", "surrogatepass"), safe="")
    response = client.get(f"/v1/jobs?{param}={encoded}")
    assert response.status_code < 500, (param, value, response.text)


@PROPERTY
@given(job_id=ANY_TEXT.filter(bool))
def test_any_text_as_an_id_is_a_4xx(client: TestClient, job_id: str) -> None:
    encoded = quote(job_id.encode("utf-8", "surrogatepass"), safe="")
    for path in (f"/v1/jobs/{encoded}", f"/v1/sweeps/{encoded}", f"/v1/datasets/{encoded}"):
        response = client.get(path)
        assert 400 <= response.status_code < 500, (path, response.text)


@PROPERTY
@given(field=st.sampled_from(INT_FILTERS), value=st.integers())
def test_any_integer_in_a_spec_filter_is_never_a_server_error(
    client: TestClient, field: str, value: int
) -> None:
    response = client.get(f"/v1/jobs?{field}={value}")
    assert response.status_code in (200, 422), (field, value, response.text)
