"""The repository's own words point at files it contains."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _tracked_text_files() -> list[Path]:
    names = subprocess.run(
        ["git", "ls-files", "*.py", "*.md", "*.toml", "Makefile"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    return [ROOT / name for name in names]


def test_every_reference_to_a_design_note_names_a_file_that_exists() -> None:
    missing = []
    for path in _tracked_text_files():
        if path == Path(__file__).resolve():
            continue  # its patterns name what they look for
        for line_no, line in enumerate(path.read_text().splitlines(), start=1):
            for ref in re.findall(r"(?<![\w/.])((?:docs|bench)/[\w./-]+\.(?:md|py))", line):
                if not (ROOT / ref).is_file():
                    missing.append(f"{path.relative_to(ROOT)}:{line_no}: {ref}")
            if re.search(r"(?<![\w/])DESIGN\.md", line) and path.parts[-2:] != (
                "docs",
                "DESIGN.md",
            ):
                missing.append(f"{path.relative_to(ROOT)}:{line_no}: a design note outside docs/")
    assert missing == []
