"""Inspector throughput: the statistics + top-k pass against the dictionary's bare encode, same data, same run.

    python benchmarks/inspect_throughput.py [--architecture sae_topk|sae_l1|vaease|...] [--latents N] [--tokens N] [--device auto]

A store is harvested first (random Pythia-70m-shaped model, blocks.3.hook_resid_post, d = 512),
then the split's vectors are put on the device in batches and timed twice:
(a) bare encode: `dictionary.encode` on every batch;
(b) inspect pass: encode + firing + rank scores + the running statistics, histogram, top-k merge
    and the activation-quantile sample (`interp_sae.inspect_stats`), on the same batches.
Target b/a >= 0.8. For variational dictionaries (b) also computes log σ² (a second encoder pass,
through the public interface) and its 2-means split to decide which features fire.
Then, for information, the end-to-end pass `feature_statistics` including reading shards from disk.
Last line: RESULT key=value ...
"""

from __future__ import annotations

import argparse
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from harvest_throughput import pythia70m_random

import dictionaries as D
from activation_cache import ActivationStore, HarvestConfig, Split, harvest
from activation_cache.corpus import BUILTIN_PYTHON_DOCS
from interp_sae.inspect_stats import (
    FeatureAccumulator,
    feature_statistics,
    resolve_rank_by,
    split_batches,
)
from interp_sae.inspector import InspectConfig
from interp_sae.runtime import resolve_device

HOOK = "blocks.3.hook_resid_post"


def timed(device: torch.device, work) -> float:
    """Seconds `work()` takes, with the device's queue drained on both sides."""
    if device.type == "cuda":
        torch.cuda.synchronize()
    start = time.perf_counter()
    work()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return time.perf_counter() - start


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument(
        "--architecture", default="sae_topk", help="default: TopK SAE, k=30 (L0 = 30: a trained SAE's sparsity)"
    )
    parser.add_argument("--latents", type=int, default=4096)
    parser.add_argument("--tokens", type=int, default=32768)
    parser.add_argument("--batch-size", type=int, default=4096)
    parser.add_argument("--top-k", type=int, default=20)
    parser.add_argument(
        "--sample-k", type=int, default=3 * InspectConfig().quantile_examples, help="quantile sample per feature"
    )
    parser.add_argument("--rank-by", default=None)
    parser.add_argument("--repeats", type=int, default=3, help="timed repetitions; the best of each is kept")
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    device = resolve_device(args.device)

    with tempfile.TemporaryDirectory() as tmp, torch.inference_mode():
        lm = pythia70m_random(str(device), "float32")
        harvest(
            HarvestConfig(
                out=tmp,
                model=lm.info["id"],
                hooks=[HOOK],
                dataset=BUILTIN_PYTHON_DOCS,
                tokens=args.tokens,
                context_length=128,
                batch_size=32,
                device=str(device),
            ),
            model=lm,
            progress=False,
        )
        store = ActivationStore(tmp)
        dictionary = D.create(D.make_config(args.architecture, d=store.d(HOOK), n_latents=args.latents), seed=0)
        dictionary = dictionary.to(device).eval()
        rank_by = resolve_rank_by(dictionary, args.rank_by)
        batches = list(split_batches(store, HOOK, "all", Split(), args.batch_size, device))
        tokens = sum(len(x) for x, _ in batches)
        print(
            f"{args.architecture} d={dictionary.config.d} κ={args.latents} on {device}, {tokens:,} vectors, "
            f"batch {args.batch_size}, rank_by {rank_by}, top-k {args.top_k}, torch threads {torch.get_num_threads()}"
        )

        def bare() -> None:
            for x, _ in batches:
                dictionary.encode(x)

        def inspect_pass() -> None:
            acc = FeatureAccumulator(
                args.latents, args.top_k, rank_by, device, dictionary.rank_scores, sample_k=args.sample_k
            )
            for x, indices in batches:
                features, fires, auxiliary = dictionary.inspection_batch(x)
                acc.update(features, fires, indices, auxiliary)

        bare(), inspect_pass()  # warm-up
        bare_s = min(timed(device, bare) for _ in range(args.repeats))
        pass_s = min(timed(device, inspect_pass) for _ in range(args.repeats))
        end_to_end_s = timed(
            device,
            lambda: feature_statistics(
                store,
                dictionary,
                HOOK,
                side="all",
                top_k=args.top_k,
                rank_by=rank_by,
                batch_size=args.batch_size,
                sample_k=args.sample_k,
            ),
        )
    bare_rate, pass_rate, end_to_end = tokens / bare_s, tokens / pass_s, tokens / end_to_end_s
    print(f"(a) bare encode: {bare_rate:,.0f} tok/s")
    print(f"(b) statistics + top-k pass: {pass_rate:,.0f} tok/s   b/a = {pass_rate / bare_rate:.3f} (target >= 0.8)")
    print(f"end to end, reading shards from disk: {end_to_end:,.0f} tok/s")
    print(
        f"RESULT architecture={args.architecture} latents={args.latents} device={device.type} tokens={tokens} "
        f"bare_encode_tok_s={bare_rate:.0f} inspect_pass_tok_s={pass_rate:.0f} ratio={pass_rate / bare_rate:.3f} "
        f"end_to_end_tok_s={end_to_end:.0f}"
    )


if __name__ == "__main__":
    main()
