"""Train dictionaries on a harvested store: the glue between `activation_cache` and `dictionaries`.

The store supplies two batch sources over one hook: the training split and the held-out
split (whole documents, so no text is on both sides). Every dictionary is trained on the
same stream of batches, and each saved dictionary records where its data came from.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

import dictionaries as D
from activation_cache import ActivationStore, ShuffledBatches, Split
from interp_sae.errors import ConfigError
from interp_sae.provenance import data_provenance
from interp_sae.runtime import resolve_device

DEFAULT_ARCHITECTURES = ["vaease"]
DEFAULT_LATENTS = 300  # κ, the VAEase authors' LLM setting


class TrainSetupError(ConfigError):
    """The store and the requested dictionaries do not fit together."""


def choose_hook(store: ActivationStore, hook: str | None) -> str:
    if hook is None:
        if len(store.hooks) != 1:
            raise TrainSetupError(f"{store.root} holds several hooks {store.hooks}; pass --hook NAME")
        return store.hooks[0]
    store.manifest.hook(hook)  # raises naming the hooks the store holds
    return hook


def parse_overrides(settings: list[str]) -> dict[str, dict[str, Any]]:
    """``["sae_topk.k=32", "wsae.estimator=kurtosis"]`` → ``{"sae_topk": {"k": 32}, "wsae": {...}}``.
    Values are read as JSON when they parse (numbers, booleans, null), else as strings."""
    overrides: dict[str, dict[str, Any]] = {}
    for setting in settings:
        key, sep, raw = setting.partition("=")
        arch, dot, field = key.partition(".")
        if not (sep and dot and arch and field):
            raise TrainSetupError(f"--set {setting!r}: expected ARCH.FIELD=VALUE, e.g. sae_topk.k=32")
        try:
            value = json.loads(raw)
        except json.JSONDecodeError:
            value = raw
        overrides.setdefault(arch, {})[field] = value
    return overrides


def dictionary_configs(
    architectures: list[str], latents: list[int], d: int, overrides: dict[str, dict[str, Any]] | None = None
) -> dict[str, D.DictionaryConfig]:
    """One config per (architecture, size); named ``arch`` or ``arch-κ`` when sizes vary."""
    overrides = overrides or {}
    unknown = sorted((set(architectures) | set(overrides)) - set(D.REGISTRY))
    if unknown:
        raise TrainSetupError(f"unknown architecture(s) {unknown}; choose from {sorted(D.REGISTRY)}")
    unused = sorted(set(overrides) - set(architectures))
    if unused:
        raise TrainSetupError(f"--set names {unused}, which this run does not train (--arch {architectures})")
    configs = {}
    for arch in architectures:
        for n_latents in latents:
            name = arch if len(latents) == 1 else f"{arch}-{n_latents}"
            try:
                configs[name] = D.make_config(arch, d=d, n_latents=n_latents, **overrides.get(arch, {}))
            except TypeError as exc:
                raise TrainSetupError(f"--set for {arch}: {exc}") from exc
    return configs


@dataclass(kw_only=True)
class DataConfig:
    """Which vectors of a store to train on, and how many per step."""

    hook: str | None = None
    """Hook to train on; default: the store's only hook."""
    batch_size: int = 2048
    """Vectors per step (the VAEase authors' 2048)."""
    split: Split = field(default_factory=Split)
    """The held-out split by document; recorded in every dictionary and reused by later stages."""


def train_from_store(
    store_path: str | Path,
    configs: dict[str, D.DictionaryConfig],
    out: str | Path,
    train_config: D.TrainConfig,
    data: DataConfig | None = None,
) -> D.TrainResult:
    data = data or DataConfig()
    store = ActivationStore(store_path)
    hook = choose_hook(store, data.hook)
    d = store.d(hook)
    for name, config in configs.items():
        if config.d != d:
            raise TrainSetupError(
                f"dictionary {name!r} takes d={config.d} inputs but {hook} in {store.root} has d={d}; "
                f"build it with d={d}"
            )
    device = resolve_device(train_config.device)  # under torchrun: this rank's GPU
    sides = {
        side: ShuffledBatches(
            store, hook, data.batch_size, side=side, split=data.split, seed=train_config.seed, device=device
        )
        for side in ("train", "validation")
    }
    empty = [side for side, source in sides.items() if len(source) == 0]
    if empty:
        raise TrainSetupError(empty_side_message(store, empty[0], data.split))
    metadata = data_provenance(store, hook, data.split)
    return D.train(configs, sides["train"], out, train_config, sides["validation"], metadata=metadata)


def empty_side_message(store: ActivationStore, side: str, split: Split) -> str:
    """Why one side of the split holds nothing, and what to do about it."""
    documents = len(
        {int(doc) for i in range(store.num_shards) for doc in np.unique(store.tokens(i).doc_ids) if doc >= 0}
    )
    fix = (
        "raise --val-fraction or harvest more documents"
        if side == "validation"
        else "lower --val-fraction or harvest more documents"
    )
    return (
        f"the {side} side of {store.root}'s held-out split is empty: the store holds {documents} document(s), and "
        f"the split keeps whole documents on one side (val_fraction {split.val_fraction}, seed {split.seed}). "
        f"{fix.capitalize()}. A local .txt file is one document: split a long text into several files (a folder "
        "of .txt files) or a .jsonl file with one document per line."
    )
