"""Each diagnosis code on real CPU runs: a fault injected into a healthy spec must get its
code, the healthy twin (same spec, same seed) nothing at warning or above, and every
suggested patch must give a spec that still validates.

The runs are bench/diagnosis_benchmark.py's (its MLP on digits, the fastest base: ~1-4 s
a run), trained here with the engine and read through the same conversion to the rules'
inputs as the benchmark uses.
"""

from __future__ import annotations

import importlib.util
import sys
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest

from service.diagnosis import rules
from service.specs import ExperimentSpec, check_spec

SEEDS = (0, 1)
BASE = "mlp-digits"
ROOT = Path(__file__).resolve().parents[2]


def _load_benchmark() -> ModuleType:
    spec = importlib.util.spec_from_file_location(
        "diagnosis_benchmark", ROOT / "bench" / "diagnosis_benchmark.py"
    )
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module  # dataclasses look their module up by name
    spec.loader.exec_module(module)
    return module


bench = _load_benchmark()

# fault -> the code it must get (the cause), and codes it must not get.
EXPECTED: dict[str, tuple[str, frozenset[str]]] = {
    "lr_far_too_high": ("lr_too_high", frozenset({"lr_too_low"})),
    "lr_far_too_low": ("lr_too_low", frozenset({"lr_too_high", "exploding_gradient"})),
    "sigmoid_deep": ("vanishing_gradient", frozenset()),
    "tanh_deep": ("saturation", frozenset({"dead_units"})),
    "init_scaled_down": ("poor_initialization", frozenset()),
    "init_scaled_up": ("poor_initialization", frozenset({"lr_too_high"})),
    # The crushed-weights case: big update ratios, but no exploding gradient.
    "l2_far_too_strong": ("over_regularized", frozenset({"exploding_gradient", "lr_too_high"})),
    "dropout_far_too_strong": ("over_regularized", frozenset({"lr_too_low"})),
    "deep_plain_no_skip": ("degradation", frozenset()),
    "train_set_too_small": ("overfitting", frozenset()),
    "too_few_epochs": ("underfitting", frozenset()),
}
SYMPTOMS: dict[str, str] = {  # fault -> a symptom it also shows, naming its cause
    "lr_far_too_high": "dead_units",
    "init_scaled_up": "divergence",
    "lr_far_too_low": "not_learning",
}


@pytest.fixture(scope="module")
def cache_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return tmp_path_factory.mktemp("diagnosis-runs")


@cache
def _cases() -> dict[tuple[str | None, int], Any]:
    return {(c.fault, c.seed): c for c in bench.cases([BASE], SEEDS)}


def diagnose(fault: str | None, seed: int, cache_dir: Path) -> tuple[dict[str, Any], list[Any]]:
    case = _cases()[(fault, seed)]
    recording = bench.record(case.spec, cache_dir)
    spec = ExperimentSpec.model_validate(case.spec).model_dump(mode="json")
    findings = rules.diagnose(**bench.rule_inputs(recording), spec=spec)
    return spec, findings


def alarms(findings: list[rules.Finding]) -> dict[str, rules.Finding]:
    return {f.code: f for f in findings if f.severity in ("warning", "critical")}


def assert_patches_validate(spec: dict[str, Any], findings: list[rules.Finding]) -> None:
    for finding in findings:
        assert finding.suggested_spec_patch, f"{finding.code} says nothing to change"
        patched = bench.apply_patch(spec, finding.suggested_spec_patch)
        validated = ExperimentSpec.model_validate(patched)  # raises on a bad patch
        assert check_spec(validated) == [], finding.code
        for path, value in finding.suggested_spec_patch.items():
            section, *rest = path.split(".")
            node: Any = validated.model_dump(mode="json")[section]
            for key in rest:
                node = node[key]
            assert node == value, path


@pytest.mark.parametrize("seed", SEEDS)
def test_healthy_twin_gets_no_warning(cache_dir: Path, seed: int) -> None:
    _, findings = diagnose(None, seed, cache_dir)
    assert alarms(findings) == {}


@pytest.mark.parametrize("seed", SEEDS)
@pytest.mark.parametrize("fault", list(EXPECTED))
def test_fault_gets_its_cause_and_a_valid_patch(cache_dir: Path, fault: str, seed: int) -> None:
    spec, findings = diagnose(fault, seed, cache_dir)
    found = alarms(findings)
    code, never = EXPECTED[fault]
    assert code in found, f"{fault}: {[(f.code, f.severity) for f in findings]}"
    assert not never & set(found), f"{fault}: {sorted(found)}"
    assert found[code].caused_by is None
    if (symptom := SYMPTOMS.get(fault)) and symptom in found:  # e.g. not every seed diverges
        assert found[symptom].caused_by is not None
        order = [f.code for f in findings]
        assert order.index(found[symptom].caused_by) < order.index(symptom)
    assert_patches_validate(spec, findings)


def test_stuck_run_is_at_least_a_warning_and_says_why(cache_dir: Path) -> None:
    _, findings = diagnose("lr_far_too_low", 0, cache_dir)
    stuck = alarms(findings)["not_learning"]
    assert stuck.severity == "critical"  # it stays at chance
    assert stuck.caused_by == "lr_too_low"
    assert stuck.suggested_spec_patch == alarms(findings)["lr_too_low"].suggested_spec_patch
