"""Engine tests run on one CPU thread: on the shared 2-core machine more threads
oversubscribe (see docs/DESIGN.md), and saturated sigmoids make slow denormals."""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import pytest
import torch

from worker.engine.data import mnist1d_pools


@pytest.fixture(autouse=True, scope="session")
def _one_thread_no_denormals() -> Iterator[None]:
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    torch.set_flush_denormal(True)
    yield
    torch.set_flush_denormal(False)
    torch.set_num_threads(threads)


@pytest.fixture(scope="session")
def mnist1d_cache(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A cache folder holding MNIST-1D, generated once per session (about 3 s)."""
    path = tmp_path_factory.mktemp("mnist1d-cache")
    mnist1d_pools(path)
    return path
