"""What a dictionary remembers about its data, and the check every later stage makes with it.

Training records, in the dictionary's config.json ``metadata``: the store's fingerprint and
path, the hook, the held-out split (fraction and seed) and the input normalisation. Inspection,
ablation, splicing, loss recovered and the SAELens export read them back through `resolve`, so a
user never gives a hook or a split twice, and a dictionary is never silently used on a store or
hook it was not trained on.

A dictionary trained on the fly (no store) records ``store: null`` and an ``on_the_fly`` block
(model, tokenizer, corpus, tokens); `resolve` then accepts any store harvested from the same model
at that hook (e.g. one harvested later to inspect it), and refuses another model's store.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from activation_cache import ActivationStore, Split
from dictionaries import Dictionary
from interp_sae.errors import ConfigError


class ProvenanceError(ConfigError):
    """A dictionary is asked to work on data it was not trained on."""


def data_provenance(store: ActivationStore, hook: str, split: Split) -> dict[str, Any]:
    """What a dictionary trained on `hook` of `store` records. The flat keys are the ones SAELens
    and the Hub card use too; ``harvest`` keeps the store's full provenance."""
    manifest = store.manifest
    return {
        "hook_name": hook,
        "model_name": manifest.model["id"],
        "model_revision": manifest.model.get("revision"),
        "dataset": manifest.dataset["id"],
        "context_length": manifest.context_length,
        "prepend_bos": True,  # every packed row starts with BOS
        "store": {"fingerprint": store.fingerprint, "path": str(store.root.resolve())},
        "split": split.to_json(),
        "harvest": {
            "model": manifest.model,
            "tokenizer": manifest.tokenizer,
            "dataset": manifest.dataset,
            "tokens": manifest.tokens,
            "valid_tokens": manifest.valid_tokens,
            "dtype": manifest.dtype,
        },
    }


def on_the_fly_provenance(
    model: dict[str, Any],
    tokenizer: dict[str, Any],
    dataset: dict[str, Any],
    hook: str,
    split: Split,
    context_length: int,
    tokens: int,
    buffer_vectors: int,
) -> dict[str, Any]:
    """What a dictionary trained on `hook` of activations computed on the fly records: the keys of
    `data_provenance`, with no store, and ``on_the_fly`` in place of ``harvest``."""
    return {
        "hook_name": hook,
        "model_name": model["id"],
        "model_revision": model.get("revision"),
        "dataset": dataset["id"],
        "context_length": context_length,
        "prepend_bos": True,
        "store": None,
        "split": split.to_json(),
        "on_the_fly": {
            "model": model,
            "tokenizer": tokenizer,
            "dataset": dataset,
            "tokens": tokens,
            "buffer_vectors": buffer_vectors,
        },
    }


@dataclass(frozen=True)
class TrainedOn:
    """The data a dictionary records it was trained on (fields are None when it does not say,
    e.g. for a dictionary imported from SAELens)."""

    hook: str | None
    split: Split | None
    store_fingerprint: str | None
    store_path: str | None
    model: str | None
    on_the_fly: bool = False

    @classmethod
    def of(cls, dictionary: Dictionary) -> TrainedOn:
        meta = dictionary.metadata or {}
        store = meta.get("store") or {}
        split = meta.get("split")
        return cls(
            hook=meta.get("hook_name"),
            split=Split.from_json(split) if split else None,
            store_fingerprint=store.get("fingerprint"),
            store_path=store.get("path"),
            model=meta.get("model_name"),
            on_the_fly=meta.get("on_the_fly") is not None,
        )


def resolve(
    dictionary: Dictionary,
    store: ActivationStore | None = None,
    hook: str | None = None,
    *,
    allow_other_store: bool = False,
    allow_other_hook: bool = False,
) -> tuple[str, Split]:
    """The hook and split to use `dictionary` with: what it recorded, unless told otherwise.

    Refuses (ProvenanceError, saying what differs and which flag overrides it) a store whose
    fingerprint is not the recorded one, and a hook other than the recorded one."""
    trained = TrainedOn.of(dictionary)
    if store is not None and trained.on_the_fly and not allow_other_store:
        store_model = store.manifest.model.get("id")
        if store_model != trained.model:
            raise ProvenanceError(
                f"the dictionary was trained on the fly on model {trained.model!r}, but {store.root} was harvested "
                f"from {store_model!r}. Harvest a store from {trained.model!r} at its hook, or pass "
                "--allow-other-store to use it on this one deliberately."
            )
    if store is not None and trained.store_fingerprint not in (None, store.fingerprint) and not allow_other_store:
        raise ProvenanceError(
            f"the dictionary was trained on another store (fingerprint {trained.store_fingerprint}, at "
            f"{trained.store_path}) than {store.root} (fingerprint {store.fingerprint}: model "
            f"{store.manifest.model.get('id')!r}, hooks {store.hooks}). Use the store it was trained on, or pass "
            "--allow-other-store to use it on this one deliberately (its held-out split then means nothing)."
        )
    if hook is not None and trained.hook is not None and hook != trained.hook and not allow_other_hook:
        raise ProvenanceError(
            f"the dictionary was trained on hook {trained.hook!r}, not {hook!r}. Leave out --hook to use "
            f"{trained.hook!r}, or pass --allow-other-hook to use it at {hook!r} deliberately."
        )
    hook = hook or trained.hook or (_only_fitting_hook(store, dictionary) if store is not None else None)
    if hook is None:
        raise ProvenanceError("the dictionary records no hook: pass --hook NAME")
    if store is not None and hook not in store.hooks:
        raise ProvenanceError(
            f"hook {hook!r} is not in the store {store.root}; it holds {store.hooks}. Pass a store harvested at "
            f"{hook!r}, or --hook with one of those (and --allow-other-hook)."
        )
    if store is not None and store.d(hook) != dictionary.config.d:
        raise ProvenanceError(
            f"width mismatch: the dictionary takes d={dictionary.config.d} but the store's hook {hook!r} has "
            f"d={store.d(hook)}. Pass the hook the dictionary was trained on (--hook), or a dictionary trained on this hook."
        )
    return hook, trained.split or Split()


def _only_fitting_hook(store: ActivationStore, dictionary: Dictionary) -> str:
    """The store's only hook, or its only hook as wide as the dictionary."""
    if len(store.hooks) == 1:
        return store.hooks[0]
    fitting = [h for h in store.hooks if store.d(h) == dictionary.config.d]
    if len(fitting) != 1:
        raise ProvenanceError(f"the store holds hooks {store.hooks}; say which one the dictionary reads with --hook")
    return fitting[0]
