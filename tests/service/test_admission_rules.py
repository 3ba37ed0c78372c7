"""The cost estimates behind admission control, on specs whose costs are known by hand."""

from __future__ import annotations

from service.admission import (
    AdmissionLimits,
    Estimate,
    builtin_data_shape,
    check,
    estimate,
    uploaded_data_shape,
)
from service.specs import ExperimentSpec

UNLIMITED = AdmissionLimits(10**18, 10**18, 10**18, 10**18, 1e18)


def _estimate(**spec: object) -> Estimate:
    parsed = ExperimentSpec.model_validate(spec)
    return estimate(parsed, builtin_data_shape(parsed), flops_per_second=1e9)


def test_default_spec_costs() -> None:
    spec = ExperimentSpec()
    found = estimate(spec, builtin_data_shape(spec), flops_per_second=1e9)
    # 40*128+128 + 3*(128*128+128) + 128*10+10
    assert found.parameters == 5248 + 3 * 16512 + 1290
    # 4000/128 -> 32 steps x 5 epochs, a telemetry step every 10: 16 x 5 tracked layers
    assert found.total_steps == 160
    assert found.telemetry_rows == 16 * 5
    # 4000 + 1000 mnist1d examples of 40 float32 and an int64 label
    assert found.dataset_bytes == 5000 * (40 * 4 + 8)
    assert check(found, UNLIMITED) == []


def test_histograms_double_the_telemetry_rows_and_zero_turns_them_off() -> None:
    plain = _estimate(telemetry={"every_n_steps": 1})
    with_histograms = _estimate(telemetry={"every_n_steps": 1, "histogram_bins": 32})
    assert with_histograms.telemetry_rows == 2 * plain.telemetry_rows
    assert _estimate(telemetry={"every_n_steps": 0}).telemetry_rows == 0


def test_activations_grow_with_the_batch_until_the_training_set_ends() -> None:
    small = _estimate(train={"batch_size": 100})
    large = _estimate(train={"batch_size": 1000})
    capped = _estimate(train={"batch_size": 65_536})  # mnist1d has 4000 training examples
    assert large.activation_bytes == 10 * small.activation_bytes
    assert capped.activation_bytes == 40 * small.activation_bytes


def test_run_time_grows_with_epochs_and_the_landscape() -> None:
    one, ten = _estimate(train={"epochs": 1}), _estimate(train={"epochs": 10})
    assert ten.run_seconds == 10 * one.run_seconds
    sliced = _estimate(train={"epochs": 1}, telemetry={"landscape": {"dims": 2, "points": 101}})
    assert sliced.run_seconds > one.run_seconds


def test_uploaded_datasets_are_loaded_whole_and_split_like_the_engine() -> None:
    spec = ExperimentSpec.model_validate({"data": {"dataset": "ds_0123456789ab"}})
    shape = uploaded_data_shape(spec, x_shape=[1000, 8, 8], num_classes=4)
    assert (shape.input_shape, shape.n_train, shape.n_val, shape.n_loaded) == (
        (1, 8, 8),
        800,
        200,
        1000,
    )


def test_each_limit_names_its_field() -> None:
    spec = ExperimentSpec()
    found = estimate(spec, builtin_data_shape(spec), flops_per_second=1e9)
    issues = check(found, AdmissionLimits(1, 1, 1, 1, 1e-9))
    assert [i.loc for i in issues] == [
        ("model",),
        ("train", "batch_size"),
        ("telemetry", "every_n_steps"),
        ("data", "dataset"),
        ("train", "epochs"),
    ]
