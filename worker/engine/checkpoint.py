"""A run's resumable state: tensors in one flat dict, everything else as plain JSON.

``TrainState`` is what the training loop hands out at a checkpoint and takes back to
resume: the model, optimizer, schedule and GradScaler states, the RNG states (torch's
global one, the shuffle and augmentation generators, CUDA's), and the loop's counters.
It is a snapshot: its tensors are CPU copies, so training may go on while the worker
writes them. ``to_bytes``/``from_bytes`` give the file format: safetensors for the
tensors with the JSON in its header's metadata, so one file is one checkpoint (and one
``os.replace`` makes it appear whole). No pickle anywhere.
"""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

import torch
from safetensors.torch import load as load_tensors
from safetensors.torch import save as save_tensors

FORMAT = "trainlab-checkpoint-1"
META_KEY = "trainlab"


@dataclass
class TrainState:
    tensors: dict[str, torch.Tensor]
    meta: dict[str, Any] = field(default_factory=dict)

    @property
    def step(self) -> int:
        """Global optimizer steps done."""
        return int(self.meta["counters"]["step"])

    @property
    def epochs_done(self) -> int:
        """Epochs completed (validated and reported); a mid-epoch state is in the next."""
        return int(self.meta["counters"]["epochs_done"])

    @property
    def nbytes(self) -> int:
        return sum(t.numel() * t.element_size() for t in self.tensors.values())

    def to_bytes(self) -> bytes:
        meta = {"format": FORMAT, **self.meta}
        return save_tensors(self.tensors, metadata={META_KEY: json.dumps(meta)})

    @classmethod
    def from_bytes(cls, data: bytes) -> TrainState:
        tensors = load_tensors(data)
        header_len = int.from_bytes(data[:8], "little")
        header = json.loads(data[8 : 8 + header_len])
        meta = json.loads(header["__metadata__"][META_KEY])
        if meta.pop("format", None) != FORMAT:
            raise ValueError("not a trainlab checkpoint")
        return cls(tensors=tensors, meta=meta)


def cpu_copy(tensor: torch.Tensor) -> torch.Tensor:
    # .clone() on the CPU too: training goes on mutating the originals in place.
    return tensor.detach().to("cpu", copy=True).contiguous()


def split_state(prefix: str, state: Mapping[str, Any], tensors: dict[str, torch.Tensor]) -> Any:
    """``state`` as JSON, each tensor replaced by {"tensor": key} and moved to ``tensors``."""

    def walk(value: Any, path: str) -> Any:
        if isinstance(value, torch.Tensor):
            tensors[path] = cpu_copy(value)
            return {"tensor": path}
        if isinstance(value, Mapping):
            # Keys become strings in JSON (optimizer state is keyed by parameter index).
            return {"map": [[k, walk(v, f"{path}.{k}")] for k, v in value.items()]}
        if isinstance(value, list | tuple):
            return {"list": [walk(v, f"{path}.{i}") for i, v in enumerate(value)]}
        return {"value": value}

    return walk(state, prefix)


def join_state(encoded: Any, tensors: Mapping[str, torch.Tensor]) -> Any:
    """The inverse of :func:`split_state` (lists come back as lists)."""
    if "tensor" in encoded:
        return tensors[encoded["tensor"]]
    if "map" in encoded:
        return {k: join_state(v, tensors) for k, v in encoded["map"]}
    if "list" in encoded:
        return [join_state(v, tensors) for v in encoded["list"]]
    return encoded["value"]


def model_weights(model: torch.nn.Module) -> bytes:
    """The final weights as a safetensors file (the model's state dict, CPU copies)."""
    return save_tensors({k: cpu_copy(v) for k, v in model.state_dict().items()})
