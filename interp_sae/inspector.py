"""The feature inspector: store + dictionary (+ model) → one JSON document per inspection.

    from interp_sae.inspector import InspectConfig, inspect, write_inspection
    results = inspect(ActivationStore("store"), load_dictionary("dict"), lm=lm)  # lm optional
    write_inspection(results, "out")                                              # out/inspection.json

Steps: the streaming statistics + top-k pass (`inspect_stats`, which also samples each
feature's firing tokens uniformly for the activation-quantile sections), the examples' contexts
(`inspect_contexts`), each feature's neighbours (`neighbours`), and, when a model is given, each
feature's logit effects (`logit_effects`), its estimated loss effect (`loss_effects`), loss
recovered on held-out rows (`splice`) and, for the features asked for, ablation on their own top
contexts (`ablation`). The JSON schema is documented in docs/INSPECT_SCHEMA.md.
"""

from __future__ import annotations

import dataclasses
import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from activation_cache import ActivationStore, LanguageModel, Split
from dictionaries import Dictionary
from interp_sae.ablation import ablate, context_sequence
from interp_sae.atomic import write_json_atomic
from interp_sae.errors import ConfigError
from interp_sae.inspect_contexts import top_contexts
from interp_sae.inspect_stats import HISTOGRAM_EDGES, FeatureStatistics, feature_statistics, resolve_rank_by
from interp_sae.logit_effects import logit_effects
from interp_sae.loss_effects import attributed_loss_effects
from interp_sae.neighbours import co_firing, decoder_neighbours
from interp_sae.provenance import resolve
from interp_sae.splice import loss_recovered

SCHEMA_VERSION = 2  # 2 added activation_quantiles, neighbours and loss_effect to each feature
READABLE_SCHEMAS = (1, 2)
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
    quantile_examples: int = 5
    """Examples in each of the middle and low activation-quantile sections (0 = none)."""
    neighbours: int = 8
    """Neighbours listed per feature, by decoder cosine and by co-firing (0 = none)."""
    cofiring_tokens: int = 65536
    """Vectors of the split over which co-firing is counted."""
    include_long_vectors: bool = False
    """A dictionary trained with a norm cap (`max_input_norm`, from TrainConfig.max_norm_ratio)
    never saw the vectors longer than it (massive activations, such as some documents' first
    token): on them its features take off-distribution values that would fill the top examples.
    They are left out of the statistics, examples and co-firing, and counted (`tokens_left_out`);
    True keeps them. No effect on a dictionary without a cap."""


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
    max_norm = None if config.include_long_vectors else dictionary.metadata.get("max_input_norm")
    stats = feature_statistics(
        store,
        dictionary,
        hook,
        side=config.split,
        split=split,
        top_k=config.top_k,
        rank_by=config.rank_by,
        batch_size=config.batch_size,
        sample_k=3 * config.quantile_examples,
        max_norm=max_norm,
    )
    tokenizer = store.tokenizer()
    # Top and sampled examples in one pass, so each shard is read once.
    wanted = [top + sample for top, sample in zip(stats.top_indices, stats.sample_indices)]
    both = top_contexts(store, dictionary, hook, wanted, config.window, tokenizer)
    contexts = [found[: len(top)] for found, top in zip(both, stats.top_indices)]
    sampled = [found[len(top) :] for found, top in zip(both, stats.top_indices)]
    features = [_feature_record(stats, j, contexts[j]) for j in range(dictionary.config.n_latents)]
    for record, examples in zip(features, sampled):
        record["activation_quantiles"] = quantile_sections(examples, stats.rank_by, config.quantile_examples)
    if config.neighbours:
        add_neighbours(features, store, dictionary, hook, config, split, max_norm)
    downstream = None
    if lm is not None:
        for record, effects in zip(features, logit_effects(lm, dictionary.feature_directions, config.logit_top_n)):
            record["logits"] = effects
        loss_effects = attributed_loss_effects(
            lm, dictionary, store, hook, split, side=config.split, max_rows=config.loss_rows
        )
        for record, effect in zip(features, loss_effects.tolist()):
            record["loss_effect"] = float(f"{effect:.5g}")
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
        "max_norm": max_norm,
        "tokens_left_out": stats.left_out,
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


def quantile_sections(examples: list[dict], rank_by: str, per_section: int) -> list[dict[str, Any]]:
    """The middle and low thirds of a uniform sample of a feature's firing examples, by rank
    score (the top third is left out: the top examples already show the high end)."""
    ranked = sorted(examples, key=lambda e: e["activation"] if rank_by == "value" else abs(e["activation"]))[::-1]
    third = len(ranked) / 3
    sections = []
    for name, chosen in (("middle", ranked[round(third) : round(2 * third)]), ("low", ranked[round(2 * third) :])):
        chosen = chosen[:per_section]
        if chosen:
            values = [e["activation"] for e in chosen]
            sections.append({"name": name, "range": [min(values), max(values)], "examples": chosen})
    return sections


def add_neighbours(
    features: list[dict],
    store: ActivationStore,
    dictionary: Dictionary,
    hook: str,
    config: InspectConfig,
    split: Split,
    max_norm: float | None = None,
) -> None:
    """Each feature record gains `neighbours`: by decoder cosine and by co-firing on the inspected
    side (without the vectors longer than `max_norm`)."""
    by_direction = decoder_neighbours(dictionary, config.neighbours)
    counted = co_firing(
        store, dictionary, hook, side=config.split, split=split, max_tokens=config.cofiring_tokens, max_norm=max_norm
    )
    by_firing = counted.neighbours(dictionary.config.n_latents, config.neighbours)
    for record, direction, firing in zip(features, by_direction, by_firing):
        record["neighbours"] = {"decoder": direction, "cofiring": firing, "cofiring_tokens": counted.tokens}


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
        "loss_effect": None,
        "ablation": None,
        "activation_quantiles": [],
        "neighbours": None,
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
    if results.get("schema_version") not in READABLE_SCHEMAS:
        raise ConfigError(
            f"{path}: schema_version {results.get('schema_version')!r}, this interp-sae reads {READABLE_SCHEMAS}: "
            "upgrade interp-sae, or inspect the dictionary again"
        )
    return results
