"""The README gallery: each lesson spec and each injected fault, and the diagnosis it got.

    .venv/bin/python bench/gallery.py                 # writes examples/faults/*.json, prints
    .venv/bin/python bench/gallery.py --no-write      # only prints the markdown

Every spec is trained in this process with the engine (CPU, one thread, seed 0) and
diagnosed through bench/diagnosis_benchmark.py's conversion of its statistics into the
rules' inputs, so the gallery shows what a real run gets. The fault specs are the
benchmark's operators applied to its MLP-on-digits base, written to examples/faults/ so
that ``trainlab submit examples/faults/<fault>.json`` submits them as they are.
"""

from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from typing import Any

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import diagnosis_benchmark as bench

from service.diagnosis import rules
from service.specs import ExperimentSpec

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "examples"
FAULT_BASE = "mlp-digits"


def fault_specs() -> dict[str, dict[str, Any]]:
    base = bench.BASES[FAULT_BASE]
    out = {}
    for fault in bench.FAULTS:
        spec = bench.apply_patch(base, fault.patch(base))
        spec = {"name": f"fault-{fault.name.replace('_', '-')}", "tags": ["fault"], **spec}
        out[fault.name] = spec
    return out


def lesson_specs() -> dict[str, dict[str, Any]]:
    specs = {}
    for path in sorted(EXAMPLES.glob("*.json")):
        if path.name.startswith("sweep-"):
            continue  # sweep bodies, not specs
        specs[path.name] = json.loads(path.read_text())
    return specs


def diagnosis_cell(findings: list[rules.Finding]) -> tuple[str, str]:
    shown = [f for f in findings if f.severity != "info"] or findings
    if not shown:
        return "—", "—"
    codes = ", ".join(
        f"`{f.code}` ({f.severity}{', ← ' + f.caused_by if f.caused_by else ''})" for f in shown
    )
    top = shown[0]
    patch = json.dumps(top.suggested_spec_patch) if top.suggested_spec_patch else "—"
    return codes, f"`{patch}`"


def row(label: str, spec: dict[str, Any], cache: Path) -> str:
    seeded = bench.apply_patch(
        spec, {"train.seed": 0, "train.device": "cpu", "train.checkpoint_every": 0}
    )
    recording = bench.record(seeded, cache)
    full = ExperimentSpec.model_validate(seeded).model_dump(mode="json")
    findings = rules.diagnose(**bench.rule_inputs(recording), spec=full)
    last = recording.epochs[-1] if recording.epochs else None
    acc = f"{last.train_acc:.0%} / {last.val_acc:.0%}" if last else "—"
    codes, patch = diagnosis_cell(findings)
    return f"| {label} | {acc} | {codes} | {patch} |"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--no-write", action="store_true", help="do not write examples/faults")
    parser.add_argument("--cache", type=Path, default=Path("/tmp/trainlab-diagnosis-bench"))
    args = parser.parse_args()
    args.cache.mkdir(parents=True, exist_ok=True)
    faults = fault_specs()
    if not args.no_write:
        (EXAMPLES / "faults").mkdir(exist_ok=True)
        for name, spec in faults.items():
            path = EXAMPLES / "faults" / f"{name.replace('_', '-')}.json"
            path.write_text(json.dumps(spec, indent=2) + "\n")
    header = [
        "| spec | train / val acc | diagnosis (warning and above; ← the cause it names) "
        "| suggested patch (first finding) |",
        "|---|---|---|---|",
    ]
    print("\n".join(header))
    for name, spec in lesson_specs().items():
        print(row(f"`examples/{name}`", spec, args.cache))
    for name, spec in faults.items():
        label = f"`examples/faults/{name.replace('_', '-')}.json`"
        print(row(label, spec, args.cache))


if __name__ == "__main__":
    main()
