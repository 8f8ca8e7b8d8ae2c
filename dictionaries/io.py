"""A dictionary on disk: a folder with `config.json` and `model.safetensors`. No pickle.

config.json = {"format_version": 1, "architecture": "...", "config": {...}, "metadata": {...}};
`metadata` is provenance that does not change the outputs (hook name, model, dataset, context
length, training settings, final metrics), kept on the model as `model.metadata`. The safetensors
file holds every parameter and buffer (including the input scale and any WSAE weights), so a
loaded dictionary reproduces the saved one's outputs exactly.
"""

from __future__ import annotations

import json
from pathlib import Path

import torch
from safetensors.torch import load_file, save_file

from dictionaries.base import Dictionary
from dictionaries.registry import REGISTRY, dictionary_class
from interp_sae.atomic import write_atomic, write_json_atomic
from interp_sae.errors import ConfigError

FORMAT_VERSION = 1
CONFIG_FILE = "config.json"
WEIGHTS_FILE = "model.safetensors"


def save_dictionary(model: Dictionary, path: str | Path, metadata: dict | None = None) -> Path:
    """Write `model` to the folder `path` (created if needed); returns the folder. `metadata`
    (JSON-serialisable) is merged over `model.metadata` and saved with it."""
    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    model.metadata = {**model.metadata, **(metadata or {})}
    header = {
        "format_version": FORMAT_VERSION,
        "architecture": model.architecture,
        "config": model.config.to_dict(),
        "metadata": model.metadata,
    }
    tensors = {name: t.detach().cpu().contiguous() for name, t in model.state_dict().items()}
    meta = {"format_version": str(FORMAT_VERSION), "architecture": model.architecture}
    write_atomic(path / WEIGHTS_FILE, lambda tmp: save_file(tensors, tmp, metadata=meta))
    write_json_atomic(path / CONFIG_FILE, header, indent=2)
    return path


def load_dictionary(path: str | Path, device: str | torch.device = "cpu") -> Dictionary:
    """Load a dictionary folder written by `save_dictionary`, with clear errors for files from
    another format version, an unknown architecture, or weights that do not fit the config."""
    path = Path(path)
    config_path, weights_path = path / CONFIG_FILE, path / WEIGHTS_FILE
    for required in (config_path, weights_path):
        if not required.is_file():
            raise FileNotFoundError(f"{required} not found: a dictionary folder holds {CONFIG_FILE} and {WEIGHTS_FILE}")
    header = json.loads(config_path.read_text())
    version = header.get("format_version")
    if version != FORMAT_VERSION:
        raise ConfigError(
            f"{config_path}: format_version {version!r} is not supported (this interp-sae reads version "
            f"{FORMAT_VERSION}); upgrade interp-sae or re-save the dictionary"
        )
    architecture = header.get("architecture")
    if architecture not in REGISTRY:
        raise ConfigError(f"{config_path}: unknown architecture {architecture!r}; known: {sorted(REGISTRY)}")
    config = dictionary_class(architecture).config_class.from_dict(header["config"])
    model = dictionary_class(architecture)(config)

    tensors = load_file(weights_path)
    expected = model.state_dict()
    missing, unexpected = sorted(set(expected) - set(tensors)), sorted(set(tensors) - set(expected))
    if missing or unexpected:
        raise ConfigError(
            f"{weights_path}: tensors do not match a {architecture} model: missing {missing}, unexpected {unexpected}"
        )
    for name, tensor in tensors.items():
        if tensor.shape != expected[name].shape:
            raise ConfigError(
                f"{weights_path}: {name} has shape {tuple(tensor.shape)} but the config "
                f"(d={config.d}, n_latents={config.n_latents}) needs {tuple(expected[name].shape)}"
            )
    model.load_state_dict(tensors)
    model.metadata = header.get("metadata", {})
    return model.to(device)
