"""The service's parameter formula (service.admission, no torch) against the engine's model."""

from __future__ import annotations

from typing import Any

import pytest

from service.admission import model_cost, parameter_count
from service.specs import ModelSpec
from worker.engine.models import build_model, count_parameters

SEQ, IMAGE, TABLE = (1, 40), (1, 8, 8), (2,)

CASES: list[tuple[dict[str, Any], tuple[int, ...], int]] = [
    (arch | shape_kw | extra, shape, classes)
    for arch, shape_kw, shape, classes in (
        ({"arch": "mlp"}, {}, SEQ, 10),
        ({"arch": "mlp"}, {}, IMAGE, 10),
        ({"arch": "mlp"}, {}, TABLE, 3),
        ({"arch": "cnn"}, {}, SEQ, 10),
        ({"arch": "cnn"}, {"kernel_size": 3}, IMAGE, 10),
    )
    for extra in (
        {"depth": 3, "width": 8},
        {"depth": 3, "width": 8, "norm": "batch"},
        {"depth": 3, "width": 8, "norm": "layer", "dropout": 0.2},
        {"depth": 4, "width": 8, "skip": True},
        {"depth": 4, "width": 8, "skip": True, "norm": "batch"},
        {"depth": 6, "width": 5, "skip": True, "norm": "layer", "dropconnect": 0.3},
        {"depth": 2, "width": 1, "skip": True},  # a projection even for one channel
        {"depth": 1, "width": 40},  # width equal to an MLP's input: no projection
        {"depth": 2, "width": 40, "skip": True},
    )
]


@pytest.mark.parametrize(("kw", "input_shape", "classes"), CASES)
def test_parameter_formula_matches_the_engine(
    kw: dict[str, Any], input_shape: tuple[int, ...], classes: int
) -> None:
    spec = ModelSpec(**kw)
    built = build_model(spec, input_shape=input_shape, num_classes=classes)
    assert parameter_count(spec, input_shape=input_shape, num_classes=classes) == (
        count_parameters(built.module)
    )
    cost = model_cost(spec, input_shape=input_shape, num_classes=classes)
    assert cost.tracked_layers == len(built.layers)
