"""Where a job's checkpoints and final weights live: paths only, no torch.

One folder per job under the checkpoint root (``Settings.resolved_checkpoint_dir``: the
data dir, or a folder every node of a cluster shares). A checkpoint is one safetensors
file named by the step it covers and the attempt that wrote it; the job row names the
newest one a current attempt recorded (``job.checkpoint``), which is the only one a
resume trusts. Files appear whole: written to a temporary name, then ``os.replace``d.
The worker writes (worker.checkpoints), the API reads the final weights, and deleting
a job removes its folder (:func:`remove_job_files`).
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import uuid
from pathlib import Path

FINAL_WEIGHTS = "weights.safetensors"
_CHECKPOINT = re.compile(r"^step-(\d{9})-attempt-(\d{4})\.safetensors$")
_JOB_ID = re.compile(r"^[0-9a-zA-Z_-]{1,64}$")


def job_folder(root: Path, job_id: str) -> Path:
    if not _JOB_ID.match(job_id):
        raise ValueError(f"not a job id: {job_id!r}")
    return root / job_id


def checkpoint_name(*, step: int, attempt: int) -> str:
    return f"step-{step:09d}-attempt-{attempt:04d}.safetensors"


def step_of(name: str) -> int:
    match = _CHECKPOINT.match(name)
    if match is None:
        raise ValueError(f"not a checkpoint file name: {name!r}")
    return int(match.group(1))


def checkpoint_path(root: Path, job_id: str, name: str) -> Path:
    step_of(name)  # a name from the database must not walk out of the folder
    return job_folder(root, job_id) / name


def final_weights_path(root: Path, job_id: str) -> Path:
    return job_folder(root, job_id) / FINAL_WEIGHTS


def list_checkpoints(root: Path, job_id: str) -> list[str]:
    """The job's checkpoint files, oldest step first."""
    folder = job_folder(root, job_id)
    if not folder.is_dir():
        return []
    names = [p.name for p in folder.iterdir() if _CHECKPOINT.match(p.name)]
    return sorted(names, key=step_of)


def temp_path(final: Path) -> Path:
    """A unique temporary name beside ``final`` (same filesystem, so replace is atomic)."""
    return final.with_name(f".{final.name}.{os.getpid()}-{uuid.uuid4().hex[:8]}.tmp")


def write_temp(final: Path, data: bytes) -> Path:
    """``data`` in a temporary file beside ``final``, flushed to disk; returns its path."""
    final.parent.mkdir(parents=True, exist_ok=True)
    temp = temp_path(final)
    with temp.open("wb") as handle:
        handle.write(data)
        handle.flush()
        os.fsync(handle.fileno())
    return temp


def discard(path: Path) -> None:
    with contextlib.suppress(FileNotFoundError):
        path.unlink()


def prune(root: Path, job_id: str, *, current: str, keep: int) -> list[str]:
    """Delete the job's checkpoints except ``current`` and the ``keep - 1`` newest before
    it; returns the names removed."""
    older = [n for n in list_checkpoints(root, job_id) if step_of(n) < step_of(current)]
    kept = {current, *older[len(older) - (keep - 1) :]} if keep > 1 else {current}
    removed = [n for n in list_checkpoints(root, job_id) if n not in kept]
    for name in removed:
        discard(checkpoint_path(root, job_id, name))
    return removed


def remove_job_files(root: Path, job_id: str) -> None:
    """Delete every checkpoint and the final weights of a job (DELETE /v1/jobs/{id})."""
    shutil.rmtree(job_folder(root, job_id), ignore_errors=True)
