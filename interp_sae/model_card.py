"""The index (`index.json`) and model card (`README.md`) of a Hub repository of dictionaries.

Each dictionary is summarised once, from its `config.json`, into an index entry; the card is
rendered from the index alone, so a later push of one more dictionary can merge into the
existing index and re-render the card for all of them.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping
from typing import Any

from huggingface_hub import ModelCardData

from interp_sae.errors import ConfigError

LIBRARY_NAME = "interp-sae"
INDEX_FILE = "index.json"
CARD_FILE = "README.md"
METRICS_FILE = "metrics.json"  # the final metrics, next to config.json in a trained dictionary's folder
INDEX_VERSION = 1
MISSING = "—"
BASE_TAGS = ("interp-sae", "sparse-autoencoder", "interpretability")

# Where each summary field is read from in a dictionary's config.json: the first key present wins,
# and a dotted key reads a nested value ("model.id"). The one place to align with the config format;
# "metadata" holds a dictionary's provenance (what `interp_sae.saelens` reads and writes).
CONFIG_FIELDS: dict[str, tuple[str, ...]] = {
    "architecture": ("architecture",),
    "hook_name": ("hook_name", "hook", "metadata.hook_name"),
    "d": ("d", "d_in", "config.d"),
    "n_features": ("n_features", "latents", "kappa", "config.n_latents"),
    "model_id": ("model_id", "model_name", "metadata.model_name"),
    "dataset": ("dataset", "metadata.dataset"),
    "metrics": ("metrics", "final_metrics"),
}


def summarize(
    config: Mapping[str, Any], subfolder: str | None, metrics: Mapping[str, Any] | None = None
) -> dict[str, Any]:
    """The index entry of one dictionary: its subfolder (None at the repo root) and its card fields.

    `metrics` (the dictionary's metrics.json) is used when config.json has no metrics of its own.
    """
    entry = {"subfolder": subfolder, **{name: _lookup(config, keys) for name, keys in CONFIG_FIELDS.items()}}
    if entry["metrics"] is None and metrics:
        entry["metrics"] = dict(metrics)
    return entry


def build_index(entries: Iterable[Mapping[str, Any]]) -> dict[str, Any]:
    return {
        "library_name": LIBRARY_NAME,
        "index_version": INDEX_VERSION,
        "dictionaries": sorted(entries, key=lambda entry: _natural_key(entry["subfolder"] or "")),
    }


def index_entries(index: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The entries of a parsed index.json; ValueError if it is not one this version can read."""
    if index.get("library_name") != LIBRARY_NAME or not isinstance(index.get("dictionaries"), list):
        raise ConfigError(f"not an {LIBRARY_NAME} index")
    if index.get("index_version") != INDEX_VERSION:
        raise ConfigError(f"index version {index.get('index_version')!r} (this version reads {INDEX_VERSION})")
    return list(index["dictionaries"])


def merge_entries(existing: Iterable[Mapping[str, Any]], new: Iterable[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """Existing entries updated with new ones; a new entry replaces the one at the same subfolder."""
    merged = {entry["subfolder"]: dict(entry) for entry in existing}
    merged.update({entry["subfolder"]: dict(entry) for entry in new})
    return list(merged.values())


def render_card(repo_id: str, entries: Iterable[Mapping[str, Any]]) -> str:
    entries = build_index(entries)["dictionaries"]
    architectures = _unique(str(e["architecture"]) for e in entries if e["architecture"] is not None)
    models = _unique(e["model_id"] for e in entries if isinstance(e["model_id"], str))
    datasets = _unique(e["dataset"] for e in entries if isinstance(e["dataset"], str))
    metadata = ModelCardData(
        library_name=LIBRARY_NAME,
        tags=_unique([*BASE_TAGS, *architectures]),
        base_model=(models[0] if len(models) == 1 else models) or None,
        datasets=datasets or None,
    )
    rows = "\n".join(
        "| "
        + " | ".join(
            [
                f"`{e['subfolder']}`" if e["subfolder"] else "(root)",
                _cell(e["hook_name"], code=True),
                _cell(e["architecture"]),
                _cell(e["d"]),
                _cell(e["n_features"]),
                _metrics_cell(e["metrics"]),
            ]
        )
        + " |"
        for e in entries
    )
    example = next((e["subfolder"] for e in entries if e["subfolder"]), None)
    call = f'download("{repo_id}", subfolder="{example}")' if example else f'download("{repo_id}")'
    return f"""---
{metadata.to_yaml()}
---

# {repo_id}

Sparse dictionaries of language-model activations, trained and shared with interp-sae.
Each dictionary is a folder holding `config.json` and `model.safetensors` (no pickle);
`{INDEX_FILE}` lists them.

| Subfolder | Hook | Architecture | d | κ (latents) | Final metrics |
| --- | --- | --- | --- | --- | --- |
{rows}

## Usage

```python
from interp_sae.hub import download

folder = {call}
```
"""


def _lookup(config: Mapping[str, Any], keys: tuple[str, ...]) -> Any:
    for key in keys:
        value: Any = config
        for part in key.split("."):
            value = value.get(part) if isinstance(value, Mapping) else None
        if value is not None:
            return value
    return None


def _natural_key(text: str) -> list[str | int]:
    """Sort key putting layer_2 before layer_10: the digit runs compare as numbers."""
    return [int(part) if i % 2 else part for i, part in enumerate(re.split(r"(\d+)", text))]  # odd: the digits


def _unique(values: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(values))


def _cell(value: Any, code: bool = False) -> str:
    if value is None or value == "":
        return MISSING
    text = str(value).replace("|", "\\|")  # a pipe would split the table cell
    return f"`{text}`" if code else text


def _metrics_cell(metrics: Any) -> str:
    if not isinstance(metrics, Mapping) or not metrics:
        return _cell(metrics or None)
    return _cell(", ".join(f"{name}={_number(value)}" for name, value in metrics.items()))


def _number(value: Any) -> str:
    return f"{value:.4g}" if isinstance(value, float) else str(value)
