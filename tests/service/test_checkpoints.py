"""The checkpoint layout (service.checkpoints): names, pruning, removal, no path tricks."""

from __future__ import annotations

from pathlib import Path

import pytest

from service import checkpoints as files


def _write(root: Path, job_id: str, step: int, attempt: int = 1) -> str:
    name = files.checkpoint_name(step=step, attempt=attempt)
    path = files.checkpoint_path(root, job_id, name)
    temp = files.write_temp(path, b"x")
    temp.replace(path)
    return name


def test_prune_keeps_the_current_checkpoint_and_the_one_before(tmp_path: Path) -> None:
    names = [_write(tmp_path, "job1", step) for step in (40, 80, 120, 160)]
    assert files.list_checkpoints(tmp_path, "job1") == names
    removed = files.prune(tmp_path, "job1", current=names[2], keep=2)
    # The newer file (a stale attempt's, never recorded) goes too: only what resumes stays.
    assert sorted(removed) == sorted([names[0], names[3]])
    assert files.list_checkpoints(tmp_path, "job1") == names[1:3]
    assert files.step_of(names[2]) == 120


def test_removing_a_job_removes_its_checkpoints_and_weights(tmp_path: Path) -> None:
    _write(tmp_path, "job1", 40)
    files.final_weights_path(tmp_path, "job1").write_bytes(b"w")
    _write(tmp_path, "job2", 40)
    files.remove_job_files(tmp_path, "job1")
    assert not files.job_folder(tmp_path, "job1").exists()
    assert files.list_checkpoints(tmp_path, "job2") != []
    files.remove_job_files(tmp_path, "never-had-any")  # nothing to do is no error


@pytest.mark.parametrize("bad", ["../etc", "a/b", ""])
def test_names_cannot_walk_out_of_the_folder(tmp_path: Path, bad: str) -> None:
    with pytest.raises(ValueError):
        files.job_folder(tmp_path, bad)
    with pytest.raises(ValueError):
        files.checkpoint_path(tmp_path, "job1", f"{bad}/step-000000001-attempt-0001.safetensors")
