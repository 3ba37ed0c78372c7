"""Submit every spec in examples/ to a running trainlab and print the figure each lesson
is about, read back through the API (the table in examples/README.md).

    .venv/bin/trainlab up &                       # or make run
    .venv/bin/python bench/examples.py [--url http://127.0.0.1:8000] [--plots docs/img]

Jobs run one after another on the embedded worker; about 2 minutes on 2 cores.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import time
from pathlib import Path
from typing import Any

import httpx

EXAMPLES = Path(__file__).resolve().parents[1] / "examples"
WEIGHT_KINDS = {"linear", "conv1d", "conv2d"}
# Lesson -> the figure it is about.
FIGURES = {
    "vanishing": "ratio",
    "relu": "ratio",
    "he-init": "ratio",
    "batchnorm": "ratio",
    "degradation-plain": "train_loss",
    "degradation-skip": "train_loss",
    "landscape-plain": "landscape",
    "landscape-skip": "landscape",
    "landscape-2d": "landscape",
}
PLOTS = {  # README images: (example, plot name)
    "vanishing-gradient-flow.png": ("vanishing", "gradient-flow"),
    "he-init-gradient-flow.png": ("he-init", "gradient-flow"),
    "vanishing-activations.png": ("vanishing", "activations"),
    "overfitting-loss.png": ("overfitting", "loss"),
    "overfit-dropout-loss.png": ("overfit-dropout", "loss"),
    "batchnorm-update-ratio.png": ("batchnorm", "update-ratio"),
    "landscape-2d.png": ("landscape-2d", "landscape"),
}


def first_last_ratio(client: httpx.Client, job_id: str) -> float:
    """Median over the last half of the steps of grad_norm(first weight layer) /
    grad_norm(last hidden weight layer), as the diagnosis reads it."""
    body = client.get(f"/v1/jobs/{job_id}/gradients", params={"stat": "grad_norm"}).json()
    weights = [s for s in body["series"] if s["kind"] in WEIGHT_KINDS]
    first, last = weights[0]["points"], weights[-1]["points"]
    by_step = {p["step"]: p["grad_norm"] for p in last}
    ratios = [
        p["grad_norm"] / by_step[p["step"]]
        for p in first[len(first) // 2 :]
        if by_step.get(p["step"])
    ]
    return float(statistics.median(ratios))


def figure(client: httpx.Client, name: str, job: dict[str, Any]) -> str:
    kind = FIGURES.get(name, "gap")
    result = job["result"] or {}
    if kind == "ratio":
        return f"grad norm first/last hidden layer {first_last_ratio(client, job['id']):.2g}"
    if kind == "train_loss":
        return f"final train loss {result['train_loss']:.2f}"
    if kind == "landscape":
        land = client.get(f"/v1/jobs/{job['id']}/landscape").json()
        return f"roughness {land['roughness']:.3g}, sharpness {land['sharpness']:.3g}"
    return f"val - train loss {result['val_loss'] - result['train_loss']:.2f}"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--url", default="http://127.0.0.1:8000")
    parser.add_argument("--plots", type=Path, help="save the README's plots here")
    args = parser.parse_args()
    client = httpx.Client(base_url=args.url, timeout=60)
    jobs: dict[str, dict[str, Any]] = {}
    for path in sorted(EXAMPLES.glob("*.json")):
        spec = json.loads(path.read_text())
        if "grid" in spec:
            continue
        started = time.monotonic()
        job = client.post("/v1/jobs", json=spec).raise_for_status().json()
        while job["status"] in ("queued", "running"):
            time.sleep(0.5)
            job = client.get(f"/v1/jobs/{job['id']}").json()
        findings = client.get(f"/v1/jobs/{job['id']}/diagnosis").json()["findings"]
        codes = ", ".join(f"{f['code']} ({f['severity']})" for f in findings) or "—"
        jobs[path.stem] = job
        seconds = time.monotonic() - started
        print(
            f"| `{path.name}` | {figure(client, path.stem, job)} | {codes} | {seconds:.0f} s |",
            flush=True,
        )
    if args.plots:
        args.plots.mkdir(parents=True, exist_ok=True)
        for file, (example, plot) in PLOTS.items():
            url = f"/v1/jobs/{jobs[example]['id']}/plots/{plot}.png"
            image = client.get(url, params={"size": "900x420", "dpi": 100}).raise_for_status()
            (args.plots / file).write_bytes(image.content)
            print(f"saved {args.plots / file} <- GET {url}", file=sys.stderr)


if __name__ == "__main__":
    main()
