"""The store's data path against its limits, each ratio measured in the same run.

    python benchmarks/data_path.py [--vectors N] [--d 512] [--device auto] [--latents 4096]

1. writer_over_raw: shards committed by the harvest writer (`write_shard_file`: serialise, sha256
   and per-tensor xxh3, temporary file, fsync, rename, folder fsync) against a raw sequential
   write + fsync of the same bytes. Target >= 0.9.
2. reader_over_limit: the shuffled training reader (`ShuffledBatches`, one epoch of the train side,
   checksums verified) against the in-memory limit: random gathers of the same number of bf16
   vectors from one in-memory tensor, widened to float32 on the device. Target >= 0.5 on CPU.
3. store_over_memory: training steps fed by the store against the same steps fed by the same
   vectors held in memory (float32, `TensorBatchSource`), same model (topk_aux) and batch size.
   Target >= 0.95. reader_over_consumer: what the reader delivers over what that step consumes
   (target on CUDA at κ = 16384, k = 32: >= 10).

The store is written here with the real writer and manifest (random bf16 vectors standing in for
a model's: the bytes, not their values, are what the data path moves). Sizes default to what a
2-core CPU does in a few minutes; the last line is `RESULT ...`.
"""

from __future__ import annotations

import argparse
import os
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

import dictionaries as D
from activation_cache import ActivationStore, ShuffledBatches, Split
from activation_cache.store_format import (
    DOC_IDS,
    DOC_POSITIONS,
    TOKEN_IDS,
    HookRecord,
    Manifest,
    PackerState,
    ShardRecord,
    shard_file_name,
    write_manifest,
)
from activation_cache.writer import write_shard_file
from interp_sae.runtime import resolve_device

HOOK = "blocks.3.hook_resid_post"
CTX = 128
DOC_LENGTH = 96  # tokens per synthetic document: rows hold pieces of several, as packing makes them


def shard_tensors(rows: int, first_row: int, d: int, generator: torch.Generator) -> dict[str, torch.Tensor]:
    positions = np.arange(first_row * CTX, (first_row + rows) * CTX).reshape(rows, CTX)
    doc_ids = positions // DOC_LENGTH
    doc_ids[:, 0] = -1  # BOS
    return {
        HOOK: torch.randn(rows * CTX, d, generator=generator).to(torch.bfloat16),
        TOKEN_IDS: torch.randint(0, 50000, (rows, CTX), dtype=torch.int32, generator=generator),
        DOC_IDS: torch.from_numpy(doc_ids),
        DOC_POSITIONS: torch.from_numpy((positions % DOC_LENGTH).astype(np.int32)),
    }


def write_store(root: Path, shards: list[dict[str, torch.Tensor]], d: int, shard_rows: int) -> tuple[float, float]:
    """Commit `shards` with the harvest writer into a valid store at `root`, and the same bytes with
    a raw write + fsync elsewhere. Returns (writer seconds, raw seconds)."""
    from safetensors.torch import save as serialise

    manifest = Manifest(
        identity={"benchmark": "data_path", "d": d},
        model={"id": "random"},
        tokenizer={},
        dataset={"id": "random"},
        hooks=[HookRecord(HOOK, d)],
        dtype="bfloat16",
        context_length=CTX,
        shard_rows=shard_rows,
        target_tokens=sum(len(s[TOKEN_IDS]) for s in shards) * CTX,
        package_version="benchmark",
        complete=True,
    )
    (root / "shards").mkdir(parents=True)
    raw_dir = Path(tempfile.mkdtemp(dir=root.parent))
    writer_s = raw_s = 0.0
    for index, tensors in enumerate(shards):  # interleaved, so a busy moment slows both alike
        start = time.perf_counter()
        size, sha256, checksums = write_shard_file(root / shard_file_name(index), tensors, index)
        writer_s += time.perf_counter() - start
        rows = len(tensors[TOKEN_IDS])
        valid = int((tensors[DOC_IDS] >= 0).sum())
        manifest.shards.append(
            ShardRecord(
                shard_file_name(index), rows, manifest.rows, valid, size, sha256, PackerState(), checksums=checksums
            )
        )
        payload = serialise(tensors)
        start = time.perf_counter()
        with open(raw_dir / f"{index}.bin", "wb") as handle:
            handle.write(payload)
            handle.flush()
            os.fsync(handle.fileno())
        raw_s += time.perf_counter() - start
    write_manifest(root, manifest)
    return writer_s, raw_s


def limit_rate(vectors: torch.Tensor, batch: int, device: torch.device, generator: torch.Generator) -> float:
    """Vectors/s of random bf16 gathers from memory widened to float32 on the device: what any
    reader of this many vectors must at least do."""
    order = torch.randperm(len(vectors), generator=generator)
    start = time.perf_counter()
    for lo in range(0, len(order), batch):
        vectors.index_select(0, order[lo : lo + batch]).to(device).float()
    synchronise(device)
    return len(order) / (time.perf_counter() - start)


def reader_rate(source: ShuffledBatches, device: torch.device) -> float:
    start = time.perf_counter()
    count = sum(len(b) for b in source.batches(0))
    synchronise(device)
    return count / (time.perf_counter() - start)


def training_rate(source: D.BatchSource, d: int, latents: int, device: torch.device, steps: int) -> float:
    """Vectors/s of `steps` topk_aux training steps fed by `source` (after one warm-up step)."""
    model = D.create(D.make_config("topk_aux", d=d, n_latents=latents, k=32), seed=0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    batches = source.batches(0)
    D.training_step(model, optimizer, next(batches).to(device))
    synchronise(device)
    start, count = time.perf_counter(), 0
    for _, batch in zip(range(steps), batches):
        D.training_step(model, optimizer, batch.to(device, non_blocking=True))
        count += len(batch)
    synchronise(device)
    return count / (time.perf_counter() - start)


def synchronise(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vectors", type=int, default=1 << 19, help="vectors in the store (default 524288)")
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--shard-rows", type=int, default=256)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--latents", type=int, default=4096, help="width of the dictionary trained in (3)")
    parser.add_argument("--steps", type=int, default=30, help="training steps timed in (3), each way")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--rounds", type=int, default=3, help="alternating rounds of each timing; the best counts")
    args = parser.parse_args()
    device = resolve_device(args.device)
    generator = torch.Generator().manual_seed(0)
    rows = args.vectors // CTX
    shards = [
        shard_tensors(min(args.shard_rows, rows - first), first, args.d, generator)
        for first in range(0, rows, args.shard_rows)
    ]
    print(f"{rows * CTX:,} vectors of d={args.d} (bf16, {rows * CTX * args.d * 2 / 2**20:,.0f} MiB) in {len(shards)} shards; "
          f"device {device}, torch threads {torch.get_num_threads()}")  # fmt: skip
    with tempfile.TemporaryDirectory() as tmp:
        writer_s, raw_s = write_store(Path(tmp) / "store", shards, args.d, args.shard_rows)
        writer_over_raw = raw_s / writer_s
        print(f"(1) writer {writer_s:.2f} s vs raw write+fsync {raw_s:.2f} s: writer_over_raw = {writer_over_raw:.3f}")

        store = ActivationStore(Path(tmp) / "store")
        source = ShuffledBatches(store, HOOK, args.batch_size, side="train", split=Split(), device=device)
        selected = len(source)  # counted outside the timings
        reader_rate(source, device)  # warm the page cache and this process's checksum record, as in training
        in_memory = torch.cat([store.vectors(i, HOOK)[torch.from_numpy(store.selection(i, "train", Split()))]
                               for i in range(store.num_shards)])  # fmt: skip
        # Alternate the two and keep each one's best: a busy machine slows whichever runs when it is busy.
        rounds = [(reader_rate(source, device), limit_rate(in_memory, args.batch_size, device, generator))
                  for _ in range(args.rounds)]  # fmt: skip
        reader, limit = max(r for r, _ in rounds), max(m for _, m in rounds)
        print(f"(2) reader {reader:,.0f} vectors/s vs in-memory gather+widen {limit:,.0f}/s "
              f"over {selected:,} vectors: reader_over_limit = {reader / limit:.3f}")  # fmt: skip

        memory_source = D.TensorBatchSource(in_memory.float(), args.batch_size, seed=0)
        steps = max(1, args.steps // args.rounds)
        rounds = [(training_rate(source, args.d, args.latents, device, steps),
                   training_rate(memory_source, args.d, args.latents, device, steps)) for _ in range(args.rounds)]  # fmt: skip
        from_store, from_memory = max(r for r, _ in rounds), max(m for _, m in rounds)
        print(f"(3) topk_aux κ={args.latents} training: {from_store:,.0f} vectors/s from the store vs "
              f"{from_memory:,.0f}/s from memory: store_over_memory = {from_store / from_memory:.3f}")  # fmt: skip
    print(
        f"RESULT device={device.type} vectors={selected} writer_over_raw={writer_over_raw:.3f} "
        f"reader_over_limit={reader / limit:.3f} store_over_memory={from_store / from_memory:.3f} "
        f"reader_vec_s={reader:.0f} limit_vec_s={limit:.0f} reader_over_consumer={reader / from_memory:.2f}"
    )


if __name__ == "__main__":
    main()
