"""Architecture name → Dictionary class. A new architecture is one file that uses `@register`."""

from __future__ import annotations

from typing import Any

import torch

from dictionaries.base import Dictionary, DictionaryConfig
from interp_sae.errors import ConfigError

REGISTRY: dict[str, type[Dictionary]] = {}


def register(cls: type[Dictionary]) -> type[Dictionary]:
    name = cls.config_class.architecture
    if name in REGISTRY and REGISTRY[name] is not cls:
        raise ConfigError(f"architecture {name!r} is already registered by {REGISTRY[name].__qualname__}")
    REGISTRY[name] = cls
    return cls


def dictionary_class(architecture: str) -> type[Dictionary]:
    try:
        return REGISTRY[architecture]
    except KeyError:
        raise ConfigError(f"unknown architecture {architecture!r}; known: {sorted(REGISTRY)}") from None


def make_config(architecture: str, **fields: Any) -> DictionaryConfig:
    """Config of a named architecture, e.g. make_config("vaease", d=512, n_latents=300)."""
    return dictionary_class(architecture).config_class.from_dict(fields)


def create(config: DictionaryConfig, seed: int | None = None) -> Dictionary:
    """Build a freshly initialised dictionary; `seed` makes the initialisation reproducible
    without touching the caller's global RNG."""
    cls = dictionary_class(config.architecture)
    if seed is None:
        return cls(config)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        return cls(config)
