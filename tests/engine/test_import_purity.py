"""worker.engine is pure PyTorch: importing it must not load the service's frameworks."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
FORBIDDEN = ("celery", "sqlalchemy", "fastapi")

SCRIPT = """
import sys
import worker.engine, worker.engine.loop, worker.engine.layer_stats
import worker.engine.models, worker.engine.data, worker.engine.augment
loaded = [m for m in {forbidden!r} if m in sys.modules]
print(",".join(loaded))
"""


def test_engine_imports_no_celery_sqlalchemy_or_fastapi() -> None:
    # A fresh interpreter: this test process may already have them loaded.
    proc = subprocess.run(
        [sys.executable, "-c", SCRIPT.format(forbidden=FORBIDDEN)],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert proc.returncode == 0, proc.stderr
    assert proc.stdout.strip() == "", f"worker.engine loaded {proc.stdout.strip()}"
