"""Train dictionaries on a harvested store: the glue between `activation_cache` and `dictionaries`.

The store supplies two batch sources over one hook: the training split and the held-out
split (whole documents, so no text is on both sides). Every dictionary is trained on the
same stream of batches, and each saved dictionary records where its data came from.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import dictionaries as D
from activation_cache import ActivationStore, ShuffledBatches
from dictionaries.distributed import local_device


class TrainSetupError(ValueError):
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


def store_provenance(store: ActivationStore, hook: str) -> dict[str, Any]:
    """What a dictionary trained on this store remembers about its data. The flat keys are the
    ones SAELens and the Hub card use too; ``harvest`` keeps the store's full provenance."""
    manifest = store.manifest
    return {
        "hook_name": hook,
        "model_name": manifest.model["id"],
        "model_revision": manifest.model.get("revision"),
        "dataset": manifest.dataset["id"],
        "context_length": manifest.context_length,
        "prepend_bos": True,  # every packed row starts with BOS
        "harvest": {
            "model": manifest.model,
            "tokenizer": manifest.tokenizer,
            "dataset": manifest.dataset,
            "store": str(store.root.resolve()),
            "tokens": manifest.tokens,
            "valid_tokens": manifest.valid_tokens,
            "dtype": manifest.dtype,
        },
    }


def train_from_store(
    store_path: str | Path,
    configs: dict[str, D.DictionaryConfig],
    out: str | Path,
    train_config: D.TrainConfig,
    *,
    hook: str | None = None,
    batch_size: int = 2048,
    val_fraction: float = 0.1,
    split_seed: int = 0,
) -> D.TrainResult:
    store = ActivationStore(store_path)
    hook = choose_hook(store, hook)
    d = store.d(hook)
    for name, config in configs.items():
        if config.d != d:
            raise TrainSetupError(
                f"dictionary {name!r} takes d={config.d} inputs but {hook} in {store.root} has d={d}; "
                f"build it with d={d}"
            )
    device = local_device(D.resolve_device(train_config.device))  # under torchrun: this rank's GPU
    split = dict(val_fraction=val_fraction, split_seed=split_seed, device=device)
    train_source = ShuffledBatches(store, hook, batch_size, split="train", seed=train_config.seed, **split)
    eval_source = ShuffledBatches(store, hook, batch_size, split="validation", seed=train_config.seed, **split)
    if len(eval_source) == 0:
        raise TrainSetupError(
            f"the held-out split of {store.root} is empty ({len(train_source)} training vectors): "
            "harvest more documents or raise --val-fraction"
        )
    metadata = {
        **store_provenance(store, hook),
        "split": {"val_fraction": val_fraction, "split_seed": split_seed, "by": "document"},
    }
    return D.train(configs, train_source, out, train_config, eval_source, metadata=metadata)
