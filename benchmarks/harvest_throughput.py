"""Harvest throughput: the full harvest to disk against the bare forward pass, same batches, same run.

    python benchmarks/harvest_throughput.py [--model pythia70m-random|smollm2] [--tokens N] [--device auto]

(a) bare forward: the bridge's forward to the hooked layer (``stop_at_layer``), no caching;
(b) harvest: reading the corpus (the built-in Python docs, saved first as a local .jsonl) +
    tokenising and packing + forward + caching the hook + cast + background shard writes + checksums.
Target b/a >= 0.95. Then the reader: shuffled float32 vectors/s from the store on disk,
against the vectors/s one SAE training step (d_model -> 4096 latents, Adam) consumes.
Last line: RESULT key=value ...
"""

from __future__ import annotations

import argparse
import json
import math
import sys
import tempfile
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

from activation_cache import ActivationStore, HarvestConfig, LanguageModel, ShuffledBatches, harvest, load_model
from activation_cache.corpus import BUILTIN_PYTHON_DOCS, CorpusSpec, iter_documents
from activation_cache.models import BUILTIN_SMOLLM2
from activation_cache.packing import pack_rows
from interp_sae.runtime import resolve_device

SHARED_TOKENIZER = Path(__file__).resolve().parents[2] / "shared/data/gpt-neox-20b-tokenizer.json"


def pythia70m_random(device: str, dtype: str) -> LanguageModel:
    """Pythia-70m's exact shape with random weights, and the real Pythia tokenizer when present."""
    from transformers import AutoTokenizer, GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    if SHARED_TOKENIZER.exists():
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(SHARED_TOKENIZER), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
        )
        folder = tempfile.mkdtemp()
        tokenizer.save_pretrained(folder)
        tokenizer = AutoTokenizer.from_pretrained(folder)
    else:
        from tiny_models import build_tokenizer

        tokenizer = build_tokenizer(2000)
    config = GPTNeoXConfig(
        vocab_size=50304,
        hidden_size=512,
        num_hidden_layers=6,
        num_attention_heads=8,
        intermediate_size=2048,
        rotary_pct=0.25,
        use_parallel_residual=True,
        max_position_embeddings=2048,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    return LanguageModel.from_hf(
        GPTNeoXForCausalLM(config), tokenizer, name="pythia-70m-shape-random", device=device, dtype=dtype
    )


def bare_forward_rate(lm: LanguageModel, rows: torch.Tensor, batch_size: int, stop: int) -> float:
    def sync():
        if lm.device.type == "cuda":
            torch.cuda.synchronize()

    with torch.inference_mode():
        lm.bridge.run_with_hooks(rows[:batch_size].to(lm.device), stop_at_layer=stop)  # warm-up
        sync()
        start = time.perf_counter()
        for lo in range(0, len(rows), batch_size):
            lm.bridge.run_with_hooks(rows[lo : lo + batch_size].to(lm.device), stop_at_layer=stop)
        sync()
    return rows.numel() / (time.perf_counter() - start)


def sae_step_rate(d: int, device: torch.device, batch: int = 4096, latents: int = 4096, steps: int = 5) -> float:
    """Vectors/s a plain ReLU SAE training step consumes: the pace the reader must beat."""
    enc, dec = torch.nn.Linear(d, latents).to(device), torch.nn.Linear(latents, d).to(device)
    opt = torch.optim.Adam([*enc.parameters(), *dec.parameters()], lr=1e-4)
    x = torch.randn(batch, d, device=device)
    for i in range(steps + 1):
        if i == 1:
            start = time.perf_counter()
        z = torch.relu(enc(x))
        loss = ((dec(z) - x) ** 2).sum(-1).mean() + 1e-3 * z.abs().sum(-1).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    if device.type == "cuda":
        torch.cuda.synchronize()
    return batch * steps / (time.perf_counter() - start)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--model", default="pythia70m-random", choices=["pythia70m-random", "smollm2"])
    parser.add_argument("--hook", default=None, help="default: blocks.3.hook_resid_post (Pythia), blocks.15 (SmolLM2)")
    parser.add_argument("--tokens", type=int, default=65536)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--model-dtype", default="float32")
    parser.add_argument("--store-dtype", default="bfloat16")
    args = parser.parse_args()

    if args.model == "smollm2":
        lm = load_model(BUILTIN_SMOLLM2, device=args.device, dtype=args.model_dtype)
        hook = args.hook or "blocks.15.hook_resid_post"
    else:
        lm = pythia70m_random(args.device, args.model_dtype)
        hook = args.hook or "blocks.3.hook_resid_post"
    stop = int(hook.split(".")[1]) + 1
    ctx = 128
    n_rows = math.ceil(args.tokens / ctx)
    packed = pack_rows(
        iter_documents(CorpusSpec(BUILTIN_PYTHON_DOCS)),
        lm.tokenize,
        context_length=ctx,
        bos_id=lm.bos_token_id,
        pad_id=lm.pad_token_id,
    )
    rows = torch.stack([torch.from_numpy(r[0]) for _, r in zip(range(n_rows), packed)]).long()
    print(
        f"model {lm.info['id']} on {lm.device} ({args.model_dtype}), hook {hook}, {rows.numel():,} tokens, "
        f"batch {args.batch_size}x{ctx}, torch threads {torch.get_num_threads()}"
    )

    bare = bare_forward_rate(lm, rows, args.batch_size, stop)
    print(f"(a) bare forward to layer {stop - 1}: {bare:,.0f} tok/s")

    with tempfile.TemporaryDirectory() as tmp:
        # The documents as a local .jsonl, written before the clock starts: reading a real corpus is
        # file I/O, while the built-in one parses the standard library's source on the fly (seconds
        # of CPU that would dominate a GPU's harvest and measure nothing a user's corpus costs).
        corpus = Path(tmp) / "corpus.jsonl"
        corpus.write_text(
            "".join(json.dumps({"text": text}) + "\n" for _, text in iter_documents(CorpusSpec(BUILTIN_PYTHON_DOCS)))
        )
        config = HarvestConfig(
            out=str(Path(tmp) / "store"),
            model=lm.info["id"],
            hooks=[hook],
            dataset=str(corpus),
            tokens=rows.numel(),
            context_length=ctx,
            batch_size=args.batch_size,
            store_dtype=args.store_dtype,
            model_dtype=args.model_dtype,
        )
        start = time.perf_counter()
        manifest = harvest(config, model=lm, progress=False)
        full = manifest.tokens / (time.perf_counter() - start)
        print(f"(b) harvest to disk ({args.store_dtype}, {manifest.bytes / 2**20:,.1f} MiB): {full:,.0f} tok/s")
        print(f"    b/a = {full / bare:.3f} (target >= 0.95)")

        device = resolve_device(args.device)
        source = ShuffledBatches(ActivationStore(Path(tmp) / "store"), hook, batch_size=4096, device=device)
        source.num_batches(0)  # count vectors outside the timing
        start = time.perf_counter()
        vectors = sum(len(b) for b in source.batches(0))
        reader = vectors / (time.perf_counter() - start)
        consume = sae_step_rate(manifest.hooks[0].d, device)
        print(
            f"reader: {reader:,.0f} shuffled vectors/s; an SAE step (4096 latents) consumes {consume:,.0f}/s "
            f"-> reader/consumer = {reader / consume:.1f}x"
        )
    print(
        f"RESULT model={args.model} device={lm.device.type} bare_tok_s={bare:.0f} harvest_tok_s={full:.0f} "
        f"ratio={full / bare:.3f} reader_vec_s={reader:.0f} sae_step_vec_s={consume:.0f} "
        f"reader_over_consumer={reader / consume:.2f}"
    )


if __name__ == "__main__":
    main()
