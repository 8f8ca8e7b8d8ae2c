"""Training checkpoints: one safetensors file (tensors + a JSON state in its metadata), written
atomically (temporary file, fsync, os.replace), so a kill at any moment leaves either the previous
checkpoint or the new one. No pickle: optimiser state is flattened into named tensors.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from interp_sae.atomic import write_atomic

_STATE_KEY = "state"


def save_checkpoint(path: str | Path, tensors: dict[str, torch.Tensor], state: dict[str, Any]) -> None:
    flat = {k: t.detach().cpu().contiguous() for k, t in tensors.items()}
    write_atomic(path, lambda tmp: save_file(flat, tmp, metadata={_STATE_KEY: json.dumps(state)}))


def load_checkpoint(path: str | Path) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    with safe_open(str(path), framework="pt") as f:
        state = json.loads(f.metadata()[_STATE_KEY])
        tensors = {k: f.get_tensor(k) for k in f.keys()}  # noqa: SIM118 (a safetensors handle, not a dict)
    return tensors, state


def optimizer_to_flat(optimizer: torch.optim.Optimizer, prefix: str) -> tuple[dict[str, torch.Tensor], list[dict]]:
    """Split an optimiser's state_dict into named tensors and JSON-able param groups."""
    sd = optimizer.state_dict()
    tensors = {}
    for index, entries in sd["state"].items():
        for key, value in entries.items():
            if not isinstance(value, torch.Tensor):
                raise TypeError(f"optimizer state {key!r} is not a tensor; it cannot be checkpointed")
            tensors[f"{prefix}{index}.{key}"] = value
    return tensors, sd["param_groups"]


def optimizer_from_flat(
    optimizer: torch.optim.Optimizer, tensors: dict[str, torch.Tensor], prefix: str, param_groups: list[dict]
) -> None:
    state: dict[int, dict[str, torch.Tensor]] = {}
    for name, value in tensors.items():
        if name.startswith(prefix):
            index, key = name[len(prefix) :].split(".", 1)
            state.setdefault(int(index), {})[key] = value
    groups = [{k: tuple(v) if k == "betas" else v for k, v in group.items()} for group in param_groups]
    optimizer.load_state_dict({"state": state, "param_groups": groups})
