"""The harvest loop: text → packed rows → bridged forward pass → shards on disk.

Resumable by construction: shards are fixed-size blocks of rows, the manifest lists only
shards that are completely written, and each records the packer state after it. Rerunning
the same command continues from the last listed shard and produces the same bytes an
uninterrupted run would have (forward batches never straddle a shard, so the numerics of
every shard are the same whether or not the run was interrupted).
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import math
from collections.abc import Callable
from dataclasses import dataclass, field
from functools import partial
from importlib.metadata import PackageNotFoundError, version
from pathlib import Path

import torch
from tqdm.auto import tqdm

from interp_sae.runtime import Cluster, join_cluster, resolve_device, torch_dtype

from .corpus import DEFAULT_DATASET, CorpusSpec, iter_documents
from .harvest_guards import (
    LOCK_NAME,
    HarvestError,
    check_process_count,
    check_same_settings,
    settings_identity,
    store_lock,
)
from .hooks import stop_layer, validate_hooks
from .models import DEFAULT_MODEL, LanguageModel, load_model
from .packing import PackedRows, blocks_until, pack_blocks, pack_rows, prefetched
from .reader import ActivationStore
from .store_format import (
    DOC_IDS,
    DOC_POSITIONS,
    FORMAT_VERSION,
    MANIFEST_NAME,
    SHARD_DIR,
    STORE_DTYPES,
    TOKEN_IDS,
    TOKENIZER_DIR,
    HookRecord,
    Manifest,
    PackerState,
    partial_manifest_name,
    read_manifest,
    shard_file_name,
    write_manifest,
)
from .vector_codec import STORED_AS, encode, scale_name
from .writer import ShardWriter, write_shard_file


@dataclass
class HarvestConfig:
    """Settings of one harvest. Defaults are the real workflow: Pythia-70m-deduped on Pile-10k.

    ``store_dtype`` defaults to bfloat16: half the disk of float32, and float32's exponent
    range, so large residual-stream norms (which overflow float16 past 65504) stay finite.
    Its ~3 significant digits add an error (relative ~0.4% per element, an FVU floor near
    1e-5) far below any dictionary's reconstruction error. ``float8_e4m3`` halves the disk again
    (one byte an element plus a float32 scale per vector, `vector_codec`) for a relative error near
    1e-3; every store records its error per hook in the manifest (``totals.reconstruction_error``).
    """

    out: str
    model: str = DEFAULT_MODEL
    revision: str | None = None
    hooks: list[str] = field(default_factory=lambda: ["blocks.3.hook_resid_post"])
    dataset: str = DEFAULT_DATASET
    dataset_config: str | None = None
    split: str = "train"
    text_column: str = "text"
    tokens: int = 1_000_000
    context_length: int = 128
    batch_size: int = 32  # rows per forward pass
    shard_tokens: int = 65_536
    store_dtype: str = "bfloat16"
    model_dtype: str = "float32"
    device: str = "auto"
    on_nonfinite: str = "stop"  # or "skip": leave NaN/Inf positions out of training and count them

    def __post_init__(self) -> None:
        if self.on_nonfinite not in ("stop", "skip"):
            raise HarvestError(f"on-nonfinite must be 'stop' or 'skip', got {self.on_nonfinite!r}")
        for name in ("tokens", "context_length", "batch_size", "shard_tokens"):
            if getattr(self, name) <= 0:
                raise HarvestError(f"{name.replace('_', '-')} must be positive, got {getattr(self, name)}")
        if self.context_length < 2:
            raise HarvestError("context-length must be at least 2 (a BOS and one token)")
        if self.store_dtype not in STORE_DTYPES:
            raise HarvestError(f"store dtype {self.store_dtype!r} unknown; use one of {STORE_DTYPES}")
        torch_dtype(self.model_dtype)

    @property
    def shard_rows(self) -> int:
        return max(1, self.shard_tokens // self.context_length)

    @property
    def corpus(self) -> CorpusSpec:
        return CorpusSpec(self.dataset, self.dataset_config, self.split, self.text_column)


def _package_version() -> str:
    try:
        return version("interp-sae")
    except PackageNotFoundError:
        return "unknown"


def _remove_unlisted_shards(out: Path, manifest: Manifest, cluster: Cluster) -> None:
    """Files a killed run of this stream left behind: temporaries and shards written but never listed."""
    listed = {out / s.file for s in manifest.shards}
    own = shard_file_name(0, cluster.rank, cluster.world_size).rsplit("-", 1)[0]  # this stream's name prefix
    strays = [*(out / SHARD_DIR).glob(f"{Path(own).name}-*"), *(out / SHARD_DIR).glob(f".{Path(own).name}-*.tmp")]
    for path in strays:
        if path not in listed:
            path.unlink()


def _new_manifest(
    config: HarvestConfig, model: LanguageModel, identity: dict, d: dict[str, int], streams: int
) -> Manifest:
    tok = model.tokenizer
    return Manifest(
        identity=identity,
        model=model.info,
        tokenizer={
            "name_or_path": str(tok.name_or_path),
            "vocab_size": len(tok),
            "bos_token_id": model.bos_token_id,
            "pad_token_id": model.pad_token_id,
            "sha256": identity["tokenizer_sha256"],
            "folder": TOKENIZER_DIR,
        },
        dataset=config.corpus.describe(),
        hooks=[HookRecord(name=h, d=d[h]) for h in config.hooks],
        dtype=config.store_dtype,
        context_length=config.context_length,
        shard_rows=config.shard_rows,
        target_tokens=config.tokens,
        package_version=_package_version(),
        streams=streams,
    )


def _hook_widths(model: LanguageModel, hooks: list[str], stop: int | None) -> dict[str, int]:
    """Run one tiny row to learn each hook's width (MLP and attention hooks differ from d_model)."""
    ids = torch.full((1, 2), model.bos_token_id, device=model.device)
    acts = _forward(model, ids, hooks, stop)
    return {h: a.shape[-1] for h, a in acts.items()}


class _AllCaptured(Exception):
    """Raised by the last requested hook to fire: nothing after it is needed."""


def _forward(model: LanguageModel, ids: torch.Tensor, hooks: list[str], stop: int | None) -> dict[str, torch.Tensor]:
    """Each hook's activation of one forward pass of `ids`. The pass ends where the last hook has
    fired: `stop_at_layer` alone cannot end it inside the last block, and the final norm and the
    unembedding that would follow cost ~10× a block's forward for a 50k vocabulary at small d."""
    captured: dict[str, torch.Tensor] = {}

    def capture(name: str, activation: torch.Tensor, hook: object) -> None:
        captured[name] = activation
        if len(captured) == len(hooks):
            raise _AllCaptured

    with torch.inference_mode(), contextlib.suppress(_AllCaptured):
        model.bridge.run_with_hooks(
            ids, fwd_hooks=[(h, partial(capture, h)) for h in hooks], stop_at_layer=stop, return_type=None
        )
    for h in hooks:
        a = captured[h]
        if a.dim() != 3:
            raise HarvestError(
                f"hook {h!r} gives activations of shape {tuple(a.shape)}; only [batch, position, d] "
                "hooks can be stored (per-head hooks such as hook_z or hook_pattern cannot)"
            )
    return captured


def harvest(
    config: HarvestConfig, model: LanguageModel | None = None, progress: bool = True, repair: bool = False
) -> Manifest:
    """Harvest into ``config.out``, creating it or resuming what is there. Returns the manifest.

    ``repair`` first re-harvests every listed shard that fails its checksum (only those).
    Under ``torchrun`` each process harvests its own stream of documents (see store_format)."""
    out = Path(config.out)
    out.mkdir(parents=True, exist_ok=True)
    cluster = join_cluster(resolve_device(config.device))
    progress = progress and cluster.is_main
    merged = read_manifest(out) if (out / MANIFEST_NAME).exists() else None
    if merged is not None:
        check_same_settings(merged, settings_identity(config, model), out)
        if _finished(merged, config) and not repair:
            _report(progress, f"{out}: complete, {merged.tokens:,} tokens already harvested; nothing to do")
            return merged
    check_process_count(out, merged, cluster)
    lock_name = LOCK_NAME if cluster.world_size == 1 else f"{LOCK_NAME}.stream-{cluster.rank}-of-{cluster.world_size}"
    with store_lock(out, lock_name):
        manifest = _harvest_stream(config, model, out, cluster, progress, repair)
    if cluster.world_size == 1:
        return manifest
    cluster.barrier()  # every stream is complete before rank 0 merges them
    if cluster.is_main:
        write_manifest(out, _merge_streams(out, cluster.world_size, config.tokens))
    cluster.barrier()
    return read_manifest(out)


def _harvest_stream(
    config: HarvestConfig, model: LanguageModel | None, out: Path, cluster: Cluster, progress: bool, repair: bool
) -> Manifest:
    """This process's part: create or resume its (partial) manifest and harvest its stream."""
    name = partial_manifest_name(cluster.rank, cluster.world_size)
    existing = read_manifest(out, name) if (out / name).exists() else None
    if model is None:
        model = load_model(config.model, revision=config.revision, device=config.device, dtype=config.model_dtype)
    hooks = validate_hooks(config.hooks, model.bridge.hook_dict.keys(), model.n_layers)
    if config.context_length > model.n_ctx:
        raise HarvestError(
            f"context-length {config.context_length} exceeds the model's {model.n_ctx} positions; "
            f"use --context-length {model.n_ctx} or less"
        )
    identity = settings_identity(config, model)
    stop = stop_layer(hooks)
    (out / SHARD_DIR).mkdir(exist_ok=True)
    if existing is None:
        manifest = _new_manifest(config, model, identity, _hook_widths(model, hooks, stop), cluster.world_size)
        if cluster.is_main:
            model.tokenizer.save_pretrained(out / TOKENIZER_DIR)
        write_manifest(out, manifest, name)
    else:
        check_same_settings(existing, identity, out)
        manifest = existing
        if repair:
            _repair(config, model, manifest, out, hooks, stop, progress)
        if _finished(manifest, config):
            return manifest
        if manifest.shards and manifest.shards[-1].rows < manifest.shard_rows:
            # A short last shard ended the previous budget; redo it so the store's shard
            # boundaries match an uninterrupted run with the new budget.
            manifest.shards.pop()
        manifest.target_tokens = config.tokens
        manifest.complete, manifest.stop_reason = False, None
        manifest.format_version = FORMAT_VERSION  # the shards it adds carry this version's fields
        write_manifest(out, manifest, name)
    _remove_unlisted_shards(out, manifest, cluster)
    _run(config, model, manifest, out, hooks, stop, progress, cluster)
    return manifest


def _merge_streams(out: Path, streams: int, target_tokens: int) -> Manifest:
    """One manifest listing every stream's shards in stream order, rows numbered across them."""
    parts = [read_manifest(out, partial_manifest_name(s, streams)) for s in range(streams)]
    merged = copy.deepcopy(parts[0])
    merged.shards, merged.target_tokens = [], target_tokens
    for part in parts:
        for shard in part.shards:
            merged.shards.append(dataclasses.replace(shard, first_row=merged.rows))
    merged.complete = all(p.complete for p in parts)
    merged.stop_reason = "corpus_exhausted" if any(p.stop_reason == "corpus_exhausted" for p in parts) else "budget"
    return merged


def _finished(manifest: Manifest, config: HarvestConfig) -> bool:
    return manifest.complete and (manifest.tokens >= config.tokens or manifest.stop_reason == "corpus_exhausted")


def _report(progress: bool, message: str) -> None:
    if progress:
        tqdm.write(message)


def model_rows(
    model: LanguageModel,
    corpus: CorpusSpec,
    context_length: int,
    start: PackerState,
    keep: Callable[[int], bool] | None = None,
):
    """Packed rows of the corpus's documents that `keep` accepts (all when None), from `start`:
    what the harvest stores and what training on the fly streams."""
    documents = iter_documents(corpus, start=start.doc)
    if keep is not None:
        documents = ((i, text) for i, text in documents if keep(i))
    return pack_rows(
        documents,
        model.tokenize,
        context_length=context_length,
        bos_id=model.bos_token_id,
        pad_id=model.pad_token_id,
        start=start,
    )


def _packed_rows(config: HarvestConfig, model: LanguageModel, start: PackerState, stream: int, streams: int):
    """Rows of one stream: the documents whose index is ``stream`` modulo ``streams``."""
    keep = (lambda i: i % streams == stream) if streams > 1 else None
    return model_rows(model, config.corpus, config.context_length, start, keep)


def _repair(
    config: HarvestConfig,
    model: LanguageModel,
    manifest: Manifest,
    out: Path,
    hooks: list[str],
    stop: int | None,
    progress: bool,
) -> None:
    """Re-harvest damaged shards in place: each shard's first row follows from the packer state
    recorded at the end of the shard before it, so no other shard is touched."""
    store = ActivationStore(out)
    damaged = [i for i in range(len(manifest.shards)) if store.shard_problem(i) is not None]
    _report(progress, f"{out}: {len(damaged)} damaged shard(s) to re-harvest: {damaged}")
    store_dtype = STORED_AS[manifest.dtype]
    for index in damaged:
        record = manifest.shards[index]
        block = next(
            pack_blocks(
                _packed_rows(config, model, manifest.start_state(index), record.stream, manifest.streams), record.rows
            ),
            None,
        )
        if block is None or len(block.token_ids) != record.rows or block.end_state != record.end_state:
            raise HarvestError(
                f"cannot repair shard {index}: the corpus no longer yields the same tokens there "
                "(was it changed?). Harvest into a new --out instead."
            )
        bar = tqdm(
            total=record.rows * config.context_length,
            unit="tok",
            unit_scale=True,
            desc=f"repair shard {index}",
            disable=not progress,
        )
        record.reconstruction = {}
        tensors, record.nonfinite_positions = _compute_shard(
            model,
            block,
            hooks,
            stop,
            config.batch_size,
            store_dtype,
            record.first_row,
            bar,
            config.on_nonfinite,
            reconstruction=record.reconstruction,
        )
        bar.close()
        # Same device and dtype give the same bytes; another device may differ in low bits.
        record.bytes, record.sha256, record.checksums = write_shard_file(out / record.file, tensors, index)
        write_manifest(out, manifest)  # repair runs in one process, on the merged manifest


def _run(
    config: HarvestConfig,
    model: LanguageModel,
    manifest: Manifest,
    out: Path,
    hooks: list[str],
    stop: int | None,
    progress: bool,
    cluster: Cluster,
) -> None:
    ctx = config.context_length
    all_rows = math.ceil(config.tokens / ctx)
    target_rows = all_rows // cluster.world_size + (cluster.rank < all_rows % cluster.world_size)  # this stream's share
    rows = _packed_rows(config, model, manifest.resume_state(), cluster.rank, cluster.world_size)
    bar = tqdm(
        total=target_rows * ctx,
        initial=manifest.tokens,
        unit="tok",
        unit_scale=True,
        desc="harvest",
        disable=not progress,
        dynamic_ncols=True,
    )

    def show_written(_record) -> None:  # called by the writer thread after each commit
        bar.set_postfix_str(f"{len(manifest.shards)} shards, {manifest.bytes / 2**20:,.0f} MiB on disk", refresh=False)

    show_written(None)
    writer = ShardWriter(out, manifest, stream=cluster.rank, on_written=show_written)
    store_dtype = STORED_AS[manifest.dtype]
    produced = manifest.rows
    # Tokenising and packing the next blocks overlap this block's forward pass.
    blocks = prefetched(blocks_until(rows, produced, target_rows, manifest.shard_rows))
    try:
        for block in blocks:
            reconstruction: dict[str, list[float]] = {}
            tensors, skipped = _compute_shard(
                model,
                block,
                hooks,
                stop,
                config.batch_size,
                store_dtype,
                first_row=produced,
                bar=bar,
                on_nonfinite=config.on_nonfinite,
                reconstruction=reconstruction,
            )
            writer.submit(
                tensors,
                rows=len(block.token_ids),
                valid_tokens=int((block.doc_ids >= 0).sum()),
                end_state=block.end_state,
                nonfinite_positions=skipped,
                reconstruction=reconstruction,
            )
            produced += len(block.token_ids)
    finally:
        blocks.close()
        bar.close()
        writer.close()
    exhausted = produced < target_rows
    if manifest.valid_tokens == 0 and cluster.world_size == 1:  # (a stream of a small corpus may be empty)
        raise HarvestError(f"the corpus {config.dataset!r} gave no tokens: it is empty, or every document is blank")
    manifest.complete = True
    manifest.stop_reason = "corpus_exhausted" if exhausted else "budget"
    write_manifest(out, manifest, partial_manifest_name(cluster.rank, cluster.world_size))
    errors = ", ".join(
        f"{hook} {error:.2e}" for hook, error in manifest.reconstruction_error.items() if error is not None
    )
    _report(
        progress,
        f"{out}: {manifest.tokens:,} tokens in {len(manifest.shards)} shards "
        f"({manifest.bytes / 2**20:,.1f} MiB, {manifest.dtype}), {manifest.stop_reason}"
        + (f"; relative error of the stored vectors: {errors}" if errors else ""),
    )


def _compute_shard(
    model: LanguageModel,
    block: PackedRows,
    hooks: list[str],
    stop: int | None,
    batch_size: int,
    store_dtype: torch.dtype,
    first_row: int,
    bar,
    on_nonfinite: str = "stop",
    reconstruction: dict[str, list[float]] | None = None,
) -> tuple[dict[str, torch.Tensor], int]:
    """Run the block's rows through the model. Returns the shard's tensors and the number of
    positions skipped for non-finite activations (``on_nonfinite="skip"``: their vectors are
    zeroed and their doc id set to -1, so no reader trains on them).

    Vectors are encoded for the store on the model's device, so only the stored bytes (and
    scales) cross to the CPU. When given, `reconstruction` is filled with each hook's
    [Σ‖x − x̂‖², Σ‖x‖²] over the shard's document tokens (x in float32, x̂ the stored vector decoded)."""
    n_rows, ctx = block.token_ids.shape
    token_ids = torch.from_numpy(block.token_ids)
    doc_ids = torch.from_numpy(block.doc_ids)
    nonfinite = torch.zeros(n_rows * ctx, dtype=torch.bool)
    stored: dict[str, torch.Tensor] = {}
    per_position: dict[str, torch.Tensor] = {}  # hook → [n, 2]: ‖x − x̂‖², ‖x‖² of each position
    for start in range(0, n_rows, batch_size):
        ids = token_ids[start : start + batch_size].to(model.device)
        span = slice(start * ctx, (start + len(ids)) * ctx)
        for h, a in _forward(model, ids, hooks, stop).items():
            a = a.reshape(-1, a.shape[-1])
            encoded = encode(a, store_dtype)
            decoded = encoded.decode()
            # Checked on what the store holds: a float16 store overflows where the model did not.
            # (Unscaled values widen exactly, so their own isfinite is the decoded one's, at half the bytes.)
            bad = ~torch.isfinite(decoded if encoded.scale is not None else encoded.values).all(-1)
            if bad.any():
                row, pos = divmod(span.start + int(bad.nonzero()[0]), ctx)
                if on_nonfinite == "stop":
                    raise HarvestError(
                        f"non-finite activation at hook {h!r}, row {first_row + row}, position {pos} "
                        f"(document {int(doc_ids[row, pos])}). Run the model in float32 (--model-dtype) and "
                        "store bfloat16 or float32 (--store-dtype), or pass --on-nonfinite skip to leave "
                        "such positions out and count them."
                    )
                a = a.masked_fill(bad[:, None], 0)
                encoded = encode(a, store_dtype)
                decoded = encoded.decode()
                nonfinite[span] |= bad.cpu()
            if reconstruction is not None:
                x = a.float()
                errors = torch.linalg.vector_norm(x - decoded, dim=-1).square_()  # one fused reduction each
                sums = torch.stack((errors, torch.linalg.vector_norm(x, dim=-1).square_()), -1)
                per_position.setdefault(h, torch.zeros((n_rows * ctx, 2)))[span] = sums.cpu()
            for name, tensor in ((h, encoded.values), (scale_name(h), encoded.scale)):
                if tensor is None:
                    continue
                if name not in stored:
                    stored[name] = torch.empty((n_rows * ctx, *tensor.shape[1:]), dtype=tensor.dtype)
                stored[name][span] = tensor.cpu()
        bar.update(len(ids) * ctx)
    doc_ids.view(-1)[nonfinite] = -1
    if reconstruction is not None:
        documents = doc_ids.view(-1) >= 0
        for h, sums in per_position.items():
            reconstruction[h] = sums[documents].double().sum(0).tolist()
    stored[TOKEN_IDS] = token_ids
    stored[DOC_IDS] = doc_ids
    stored[DOC_POSITIONS] = torch.from_numpy(block.doc_positions)
    return stored, int(nonfinite.sum())
