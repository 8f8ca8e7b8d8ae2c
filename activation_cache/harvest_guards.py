"""What may harvest into a folder: one process per stream (a lock), the same settings as the
store already holds, and the same number of processes as the harvest that started it."""

from __future__ import annotations

import hashlib
import json
from contextlib import AbstractContextManager
from dataclasses import asdict
from pathlib import Path
from typing import TYPE_CHECKING

from interp_sae.errors import InterpSAEError
from interp_sae.folder_lock import exclusive_folder
from interp_sae.runtime import Cluster

from .models import LanguageModel
from .store_format import Manifest

if TYPE_CHECKING:
    from .harvest import HarvestConfig

LOCK_NAME = ".harvest.lock"


class HarvestError(InterpSAEError, RuntimeError):
    """The harvest cannot go on as asked; the message says why and what to do."""


def tokenizer_fingerprint(tokenizer) -> str:
    backend = getattr(tokenizer, "backend_tokenizer", None)
    text = backend.to_str() if backend is not None else json.dumps(tokenizer.get_vocab(), sort_keys=True)
    return hashlib.sha256(text.encode()).hexdigest()


def settings_identity(config: HarvestConfig, model: LanguageModel | None) -> dict:
    """What determines the bytes on disk. Budget, batch size and device may change on resume.
    Without the model (before loading it) the tokenizer cannot be fingerprinted yet."""
    identity = {
        "model": model.info["id"] if model is not None else config.model,
        "revision": config.revision,
        "model_dtype": config.model_dtype,
        "hooks": list(config.hooks),
        "store_dtype": config.store_dtype,
        "context_length": config.context_length,
        "shard_rows": config.shard_rows,
        "corpus": asdict(config.corpus),
    }
    if model is not None:
        identity["tokenizer_sha256"] = tokenizer_fingerprint(model.tokenizer)
    return identity


def store_lock(out: Path, name: str = LOCK_NAME) -> AbstractContextManager[None]:
    """One harvest per folder (per stream under torchrun)."""
    return exclusive_folder(
        out,
        name,
        lambda holder: HarvestError(
            f"another harvest (pid {holder}) is writing to {out}; wait for it, or choose another --out"
        ),
    )


def check_same_settings(existing: Manifest, identity: dict, out: Path) -> None:
    """Refuse to mix harvests. Keys missing from ``identity`` are not compared (they need the model)."""
    changed = [
        f"  {key}: store has {existing.identity.get(key)!r}, this run asks {identity[key]!r}"
        for key in sorted(identity)
        if existing.identity.get(key) != identity[key]
    ]
    if not changed:
        return
    raise HarvestError(
        f"{out} already holds a harvest made with other settings:\n"
        + "\n".join(changed)
        + "\nRerun with the store's settings to resume it, or choose a new --out."
    )


def check_process_count(out: Path, merged: Manifest | None, cluster: Cluster) -> None:
    """An unfinished harvest resumes only with the number of processes that started it:
    documents are dealt to streams by that number."""
    started = {int(p.name.split("-of-")[1].split(".")[0]) for p in out.glob("manifest.stream-*-of-*.json")}
    if merged is not None and not merged.complete:
        started.add(merged.streams)
    if started - {cluster.world_size}:
        count = max(started - {cluster.world_size})
        raise HarvestError(
            f"{out} holds an unfinished harvest started by {count} process(es) and this run has {cluster.world_size}; "
            f"resume it with the same number (torchrun --nproc_per_node {count}, or no torchrun for 1), "
            "or harvest into a new --out"
        )
