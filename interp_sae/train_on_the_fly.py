"""Train dictionaries on a model's activations as it computes them: no store.

The model → shuffle buffer → batches path is `activation_cache.stream`; this module sets it up
(model, hooks, token budget, held-out set), checks what can be checked before the long work
(hooks, buffer size, device memory, the corpus's length), hands the stream to the same trainer
the store path uses, and measures the loss recovered on held-out rows at the end.

Held-out data: the documents on the "validation" side of `Split` (the rule a store uses, so the
same documents are held out either way) never enter the training stream; the first
``eval_max_vectors`` of their vectors and ``loss_rows`` of their rows are kept in memory.

Several hooks train in one pass: one dictionary set per hook, named ``HOOK/NAME`` (the plain
names when there is one hook). Resuming: rerun the same call; the checkpoint holds the stream's
state, so the resumed run is bit-identical to an uninterrupted one on the same device (the
stream's docstring says what that costs). Before training, the corpus is tokenised once up to
the budget (no forward pass) to know the number of steps and to say early when it is short.

Under ``torchrun`` each rank runs the model over its own documents (document index modulo the
world size, as the distributed harvest does) and trains on them as its share of each step
(batch size / world size vectors); DDP averages the gradients. Every rank takes the same number
of steps (the smallest any rank's documents allow); rank 0 evaluates, measures the loss
recovered and saves.
"""

from __future__ import annotations

import json
import re
from collections.abc import Callable, Mapping
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, cast

import torch

import dictionaries as D
from activation_cache.corpus import CorpusSpec
from activation_cache.harvest import HarvestConfig, _hook_widths
from activation_cache.hooks import stop_layer, validate_hooks
from activation_cache.models import LanguageModel, ModelLoadError, load_model
from activation_cache.reader import Split
from activation_cache.stream import ActivationStream, StreamPlan, count_document_tokens, held_out_set
from interp_sae.atomic import write_json_atomic
from interp_sae.errors import ConfigError
from interp_sae.provenance import on_the_fly_provenance
from interp_sae.runtime import join_cluster, resolve_device, torch_dtype
from interp_sae.splice import loss_recovered_on_rows

_HARVEST = HarvestConfig(out="")  # one place for the model, corpus and packing defaults
SETTINGS_FILE = "on_the_fly.json"
DEFAULT_BUFFER = "auto"
_AUTO_BUFFER_VECTORS = 1 << 17
_BYTES = {"kib": 1 << 10, "mib": 1 << 20, "gib": 1 << 30}


@dataclass(kw_only=True)
class OnTheFlyConfig:
    """Where the activations come from and how they are buffered (the model and corpus settings
    mean what they mean for `harvest`)."""

    model: str = _HARVEST.model
    revision: str | None = None
    hooks: list[str] = field(default_factory=lambda: list(_HARVEST.hooks))
    dataset: str = _HARVEST.dataset
    dataset_config: str | None = None
    dataset_split: str = _HARVEST.split
    text_column: str = _HARVEST.text_column
    tokens: int = _HARVEST.tokens
    """Document tokens to train on per epoch (BOS and separators are not counted); rounded down
    to whole batches. A corpus with fewer trains on what it has, and says so."""
    context_length: int = _HARVEST.context_length
    forward_rows: int = _HARVEST.batch_size
    """Rows per forward pass."""
    model_dtype: str = _HARVEST.model_dtype
    batch_size: int = 2048
    """Vectors per training step."""
    buffer: str = DEFAULT_BUFFER
    """Shuffle buffer per hook: a number of vectors ("262144"), or bytes per hook ("512MiB", "1GiB");
    "auto" = max(131072 vectors, 4 batches). Fixed whatever `tokens` is, so memory stays flat."""
    buffer_dtype: str = "bfloat16"
    """Dtype of the buffered vectors: bfloat16 as in a store (half of float32's memory)."""
    split: Split = field(default_factory=Split)
    """The held-out split by document (the same rule as a store's)."""
    loss_rows: int = 64
    """Held-out rows the loss recovered is measured on."""

    def __post_init__(self) -> None:
        for name in ("tokens", "context_length", "forward_rows", "batch_size", "loss_rows"):
            if getattr(self, name) <= 0:
                raise ConfigError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.context_length < 2:
            raise ConfigError("context-length must be at least 2 (a BOS and one token)")
        torch_dtype(self.model_dtype)
        torch_dtype(self.buffer_dtype)
        buffer_vectors(self.buffer, {"probe": 1}, self.batch_size, 2)  # the spelling, checked before any loading

    @property
    def corpus(self) -> CorpusSpec:
        return CorpusSpec(self.dataset, self.dataset_config, self.dataset_split, self.text_column)


def buffer_vectors(spec: str, widths: Mapping[str, int], batch_size: int, itemsize: int) -> int:
    """Vectors per hook the buffer holds: a count, bytes per hook (KiB/MiB/GiB) over the widest
    hook, or "auto". Refuses a buffer smaller than one batch."""
    spec = spec.strip().lower()
    match = re.fullmatch(r"(\d+(?:\.\d+)?)\s*(kib|mib|gib)", spec)
    if spec == DEFAULT_BUFFER:
        vectors = max(_AUTO_BUFFER_VECTORS, 4 * batch_size)
    elif match:
        vectors = int(float(match.group(1)) * _BYTES[match.group(2)]) // (max(widths.values()) * itemsize)
    elif spec.isdigit():
        vectors = int(spec)
    else:
        raise ConfigError(f"--buffer {spec!r}: give a number of vectors (262144), bytes (512MiB, 1GiB) or auto")
    if vectors < batch_size:
        raise ConfigError(
            f"the shuffle buffer ({spec}) holds {vectors:,} vectors per hook, fewer than one batch of "
            f"{batch_size:,}: raise --buffer (at least {batch_size:,} vectors) or lower --batch-size"
        )
    return vectors


@dataclass
class OnTheFlyResult:
    result: D.TrainResult
    loss_recovered: dict[str, dict[str, Any]]
    tokens: int
    """Document tokens trained on per epoch."""
    corpus_exhausted: bool


ConfigsFor = Callable[[int], dict[str, D.DictionaryConfig]]


def train_on_the_fly(
    settings: OnTheFlyConfig,
    configs: ConfigsFor | Mapping[str, D.DictionaryConfig],
    out: str | Path,
    train_config: D.TrainConfig,
    lm: LanguageModel | None = None,
    say: Callable[[str], None] = print,
    stream_factory: type[ActivationStream] = ActivationStream,
) -> OnTheFlyResult:
    """Train the dictionaries `configs` (or `configs(d)`, called per hook with its width) on the
    activations of `settings.hooks`, computed as training goes; write everything to `out` as
    `train_from_store` does, plus each dictionary's loss recovered in its metrics.json.
    `stream_factory` lets a caller watch the batches (tests record their documents)."""
    out = Path(out)
    device = resolve_device(train_config.device)
    cluster = join_cluster(device)
    if settings.batch_size % cluster.world_size:
        raise ConfigError(
            f"batch size {settings.batch_size} does not split evenly over {cluster.world_size} processes: "
            f"use a multiple of {cluster.world_size}"
        )
    say = say if cluster.is_main else _silent
    if lm is None:
        lm = _load(settings, device)
    hooks = validate_hooks(settings.hooks, lm.bridge.hook_dict.keys(), lm.n_layers)
    if settings.context_length > lm.n_ctx:
        raise ConfigError(
            f"context-length {settings.context_length} exceeds the model's {lm.n_ctx} positions; "
            f"use --context-length {lm.n_ctx} or less"
        )
    stop = stop_layer(hooks)
    widths = _hook_widths(lm, hooks, stop)
    buffer_dtype = torch_dtype(settings.buffer_dtype)
    capacity = buffer_vectors(settings.buffer, widths, settings.batch_size, buffer_dtype.itemsize)
    _check_device_memory(device, capacity, settings, widths, buffer_dtype.itemsize)
    dictionaries, inputs = _named_configs(configs, widths)
    if cluster.is_main:
        _check_same_settings(out, settings, train_config)

    world, local_batch = cluster.world_size, settings.batch_size // cluster.world_size
    plan = StreamPlan(settings.corpus, hooks, settings.context_length, settings.split, "train", cluster.rank, world)
    share = settings.tokens // world + (cluster.rank < settings.tokens % world)  # this rank's part of the budget
    available, exhausted = count_document_tokens(lm, plan, share)
    counts = torch.stack(cluster.gather(torch.tensor([available // local_batch, available, int(exhausted)]), device))
    steps, available, exhausted = int(counts[:, 0].min()), int(counts[:, 1].sum()), bool(counts[:, 2].any())
    tokens = steps * settings.batch_size
    if tokens == 0:
        raise ConfigError(
            f"the corpus {settings.dataset!r} holds {available:,} training tokens, fewer than one batch of "
            f"{settings.batch_size:,}{' on every process' if world > 1 else ''}: use a larger corpus or a "
            "smaller --batch-size"
        )
    if exhausted:
        say(
            f"the corpus {settings.dataset!r} holds {available:,} training tokens, fewer than the "
            f"{settings.tokens:,} asked: training on {tokens:,} ({steps:,} steps per epoch)"
        )
    held_out = held_out_set(
        lm,
        StreamPlan(settings.corpus, hooks, settings.context_length, settings.split, side="validation"),
        settings.forward_rows,
        stop,
        train_config.eval_max_vectors,
        settings.loss_rows,
        buffer_dtype,
    )
    stream = stream_factory(
        lm,
        plan,
        widths=widths,
        stop=stop,
        batch_size=local_batch,
        vectors_per_epoch=steps * local_batch,
        capacity=capacity,
        rows_per_pass=settings.forward_rows,
        seed=train_config.seed,
        device=device,
        buffer_dtype=buffer_dtype,
    )
    eval_sources = {
        hook: D.TensorBatchSource(held_out.vectors[hook], settings.batch_size, shuffle=False, drop_last=False)
        for hook in hooks
    }
    tokenizer = {
        "name_or_path": str(lm.tokenizer.name_or_path),
        "vocab_size": len(lm.tokenizer),
        "bos_token_id": lm.bos_token_id,
        "pad_token_id": lm.pad_token_id,
    }
    own_metadata = {
        name: on_the_fly_provenance(
            lm.info,
            tokenizer,
            settings.corpus.describe(),
            inputs[name],
            settings.split,
            settings.context_length,
            tokens * train_config.epochs,
            capacity,
        )
        for name in dictionaries
    }
    result = D.train(
        dictionaries,
        cast(D.BatchSource, stream),  # its batches are dicts; `inputs` routes them
        out,
        train_config,
        eval_source=cast(Mapping[str, D.BatchSource], eval_sources),
        inputs=inputs,
        own_metadata=own_metadata,
    )
    recovered: dict[str, dict[str, Any]] = {}
    for name, dictionary in result.dictionaries.items() if cluster.is_main else ():
        measured = loss_recovered_on_rows(
            lm, dictionary, inputs[name], held_out.token_ids, held_out.doc_mask, held_out.doc_mask
        )
        if measured is None:
            raise ConfigError("the held-out rows hold no next-token prediction to score (documents of one token?)")
        recovered[name] = {**measured, "split": "validation", "held_out_split": settings.split.to_json()}
        result.metrics.setdefault(name, {})["loss_recovered"] = recovered[name]
        metrics_file = out / name / "metrics.json"
        write_json_atomic(
            metrics_file, {**json.loads(metrics_file.read_text()), "loss_recovered": recovered[name]}, indent=2
        )
        say(f"{name}: fraction of LM loss recovered {recovered[name]['fraction_recovered']}")
    return OnTheFlyResult(result, recovered, tokens, exhausted)


def _silent(_: str) -> None:
    """What the ranks other than 0 say: nothing (rank 0 speaks for all)."""


def _load(settings: OnTheFlyConfig, device: torch.device) -> LanguageModel:
    try:
        return load_model(settings.model, revision=settings.revision, device=str(device), dtype=settings.model_dtype)
    except torch.cuda.OutOfMemoryError as error:
        raise ModelLoadError(
            f"model {settings.model!r} does not fit on {device} in {settings.model_dtype}: run it in "
            "bfloat16 (--model-dtype), on a larger device, or on the CPU (--device cpu)"
        ) from error


def _check_device_memory(
    device: torch.device, capacity: int, settings: OnTheFlyConfig, widths: dict[str, int], itemsize: int
) -> None:
    """On CUDA, refuse a buffer that cannot fit beside the model (best effort: free memory now)."""
    if device.type != "cuda":
        return
    free, _ = torch.cuda.mem_get_info(device)
    room = capacity + settings.forward_rows * settings.context_length
    needed = 2 * room * sum(widths.values()) * itemsize  # the buffer, and the permutation's copy
    if needed > free:
        raise ConfigError(
            f"the shuffle buffers need {needed / 2**30:.2f} GiB on {device} but {free / 2**30:.2f} GiB is free "
            "beside the model: lower --buffer (or --forward-rows), or use a larger device"
        )


def _named_configs(
    configs: ConfigsFor | Mapping[str, D.DictionaryConfig], widths: dict[str, int]
) -> tuple[dict[str, D.DictionaryConfig], dict[str, str]]:
    """Every dictionary by name, and the hook each trains on: ``HOOK/NAME`` when several hooks."""
    if isinstance(configs, Mapping) and len(widths) > 1:
        raise ConfigError("with several hooks, pass a function d → configs (one set is made per hook)")
    named: dict[str, D.DictionaryConfig] = {}
    inputs: dict[str, str] = {}
    for hook, d in widths.items():
        per_hook = dict(configs) if isinstance(configs, Mapping) else configs(d)
        for name, config in per_hook.items():
            if config.d != d:
                raise ConfigError(f"dictionary {name!r} takes d={config.d} but hook {hook!r} gives d={d}")
            full = name if len(widths) == 1 else f"{hook}/{name}"
            named[full], inputs[full] = config, hook
    return named, inputs


def _check_same_settings(out: Path, settings: OnTheFlyConfig, train_config: D.TrainConfig) -> None:
    """A rerun into `out` resumes; with other data settings it would mix two streams, so refuse."""
    recorded = {**asdict(settings), "split": settings.split.to_json(), "seed": train_config.seed}
    path = out / SETTINGS_FILE
    if path.exists():
        before = json.loads(path.read_text())
        differ = sorted(k for k in recorded if json.loads(json.dumps(recorded[k])) != before.get(k))
        if differ:
            raise ConfigError(
                f"{out} holds a run trained on the fly with other {', '.join(differ)}; use a new --out, "
                "or the same settings to resume"
            )
        return
    out.mkdir(parents=True, exist_ok=True)
    write_json_atomic(path, recorded, indent=2)
