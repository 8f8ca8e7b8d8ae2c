"""The feature inspector: store + dictionary (+ model) → one JSON document per inspection.

    from interp_sae.inspector import InspectConfig, inspect, write_inspection
    results = inspect(ActivationStore("store"), load_dictionary("dict"), lm=lm)  # lm optional
    write_inspection(results, "out")                                              # out/inspection.json

Steps: the streaming statistics + top-k pass (`inspect_stats`), the top examples' contexts
(`inspect_contexts`), and, when a model is given, each feature's logit effects (`logit_effects`),
loss recovered on held-out rows (`splice`) and, for the features asked for, ablation on their own
top contexts (`ablation`). The JSON schema is documented in docs/INSPECT_SCHEMA.md.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activation_cache import ActivationStore, LanguageModel
from dictionaries import Dictionary
from interp_sae.ablation import ablate, context_sequence
from interp_sae.atomic import write_json_atomic
from interp_sae.errors import ConfigError
from interp_sae.inspect_contexts import top_contexts
from interp_sae.inspect_stats import HISTOGRAM_EDGES, FeatureStatistics, feature_statistics, resolve_rank_by
from interp_sae.logit_effects import logit_effects
from interp_sae.provenance import resolve
from interp_sae.splice import loss_recovered

SCHEMA_VERSION = 1
INSPECTION_FILE = "inspection.json"


@dataclass
class InspectConfig:
    split: str = "validation"
    """Side of the dictionary's held-out split to inspect: validation (held-out documents, the
    default: the pass is 10× shorter than "all"), train or all. The split itself (fraction and
    seed) is the one the dictionary records."""
    top_k: int = 20
    window: int = 16
    """Tokens either side of each top example (within its packed row)."""
    rank_by: str | None = None
    """value | abs | one_minus_sigma; None = abs (see inspect_stats)."""
    batch_size: int = 4096
    logit_top_n: int = 10
    loss_rows: int = 64
    """Held-out rows for loss recovered."""
    ablate: list[int] = field(default_factory=list)
    """Features to ablate on their own top contexts (needs the model)."""
    ablation_mode: str = "zero"


def inspect(
    store: ActivationStore,
    dictionary: Dictionary,
    hook: str | None = None,
    config: InspectConfig | None = None,
    lm: LanguageModel | None = None,
    dictionary_path: str | None = None,
    *,
    allow_other_store: bool = False,
    allow_other_hook: bool = False,
) -> dict[str, Any]:
    """Inspect every feature of `dictionary` on `store`, at the hook and with the held-out split
    the dictionary recorded (see interp_sae.provenance); JSON-ready results."""
    hook, split = resolve(
        dictionary, store, hook, allow_other_store=allow_other_store, allow_other_hook=allow_other_hook
    )
    config = config or InspectConfig()
    config = dataclasses.replace(config, rank_by=resolve_rank_by(dictionary, config.rank_by))
    if lm is not None:
        dictionary = dictionary.to(lm.device)
    stats = feature_statistics(
        store,
        dictionary,
        hook,
        side=config.split,
        split=split,
        top_k=config.top_k,
        rank_by=config.rank_by,
        batch_size=config.batch_size,
    )
    contexts = top_contexts(store, dictionary, hook, stats.top_indices, config.window, store.tokenizer())
    features = [_feature_record(stats, j, contexts[j]) for j in range(dictionary.config.n_latents)]
    downstream = None
    if lm is not None:
        for record, effects in zip(features, logit_effects(lm, dictionary.feature_directions, config.logit_top_n)):
            record["logits"] = effects
        downstream = loss_recovered(
            lm,
            dictionary,
            store,
            hook=hook,
            side=config.split,
            max_rows=config.loss_rows,
            allow_other_store=allow_other_store,
            allow_other_hook=allow_other_hook,
        )
        for j in config.ablate:
            indices = [example["index"] for example in features[j]["top_examples"]]
            features[j]["ablation"] = ablate_top_contexts(lm, dictionary, hook, store, j, indices, config, stats)
    return {
        "schema_version": SCHEMA_VERSION,
        "store": str(store.root),
        "dictionary": dictionary_path,
        "architecture": dictionary.architecture,
        "model": store.manifest.model.get("id"),
        "hook": hook,
        "held_out_split": split.to_json(),
        "d": dictionary.config.d,
        "n_features": dictionary.config.n_latents,
        "tokens": stats.tokens,
        "config": dataclasses.asdict(config),
        "histogram_edges": HISTOGRAM_EDGES,
        "downstream": downstream,
        "features": features,
    }


def ablate_top_contexts(
    lm: LanguageModel,
    dictionary: Dictionary,
    hook: str,
    store: ActivationStore,
    feature: int,
    indices: list[int],
    config: InspectConfig,
    stats: FeatureStatistics,
) -> dict[str, Any] | None:
    """Ablate `feature` on the rows of its top examples `indices` (each run up to `window` tokens past
    the example); None when the feature has no example."""
    if not indices:
        return None
    sequences = [context_sequence(store, index, config.window) for index in indices]
    return ablate(lm, dictionary, hook, sequences, [feature], mode=config.ablation_mode, means=stats.mean)


def _feature_record(stats: FeatureStatistics, j: int, contexts: list[dict]) -> dict[str, Any]:
    for record, score in zip(contexts, stats.top_scores[j]):
        record["score"] = score
    return {
        "feature": j,
        "frequency": float(stats.frequency[j]),
        "fire_count": int(stats.fire_count[j]),
        "mean": float(stats.mean[j]),
        "mean_when_firing": float(stats.mean_when_firing[j]),
        "max": float(stats.max[j]),
        "min": float(stats.min[j]),
        "histogram": stats.histogram[j].tolist(),
        "top_examples": contexts,
        "logits": None,
        "ablation": None,
    }


def write_inspection(results: dict[str, Any], out_dir: str | Path) -> Path:
    """Write `out_dir/inspection.json` atomically; returns its path."""
    return write_json_atomic(Path(out_dir) / INSPECTION_FILE, results, indent=None)


def read_inspection(path: str | Path) -> dict[str, Any]:
    """An inspection JSON (the file or the folder holding it)."""
    path = Path(path)
    if path.is_dir():
        path = path / INSPECTION_FILE
    results = json.loads(path.read_text())
    if results.get("schema_version") != SCHEMA_VERSION:
        raise ConfigError(
            f"{path}: schema_version {results.get('schema_version')!r}, this interp-sae reads {SCHEMA_VERSION}"
        )
    return results
