"""Job search rules: the known result fields are the ones the worker writes."""

from __future__ import annotations

import dataclasses

from service import search
from worker.engine.events import TrainResult

# Not searchable: the weights (never stored in the result) and the landscape section
# (its scalar parts are, as landscape.*).
NOT_SEARCHED = {"weights", "landscape"}


def test_every_scalar_the_worker_writes_to_a_result_is_a_known_field() -> None:
    written = {f.name for f in dataclasses.fields(TrainResult)} - NOT_SEARCHED
    written.add("layer_stat_rows")  # worker.tasks.result_summary adds it
    assert written == {name for name in search.RESULT_FIELDS if "." not in name}


def test_field_kinds_come_from_the_spec_schema() -> None:
    assert search.field_ref("train.lr").kind == "number"
    assert search.field_ref("data.train_size").kind == "number"  # int | None
    assert search.field_ref("model.activation").kind == "string"  # a Literal
    assert search.field_ref("model.skip").kind == "boolean"
    assert search.field_ref("result.diverged").kind == "boolean"
