"""Training on the fly against its parts, and its memory as the token budget grows.

    python benchmarks/on_the_fly.py [--small]

ratio = on-the-fly training rate ÷ the rate of a bare loop doing the same work with nothing in
between: forward passes over the same packed rows (same hooks, rows per pass and stop layer), the
document tokens' vectors cut into batches in corpus order, one training step per batch. Both are
measured in this run, in alternation, best of `--rounds`; the on-the-fly rate is the trainer's own
(log.jsonl: tokens over the loop's wall time, buffer fills included); the set-up (counting the
corpus, the held-out set, the preparation sample) and the final evaluation are reported apart.
Target ≥ 0.9.

rss_growth = peak RSS of a run on 4× the tokens ÷ peak RSS at 1×, each in a fresh process
(`resource.getrusage` in the child). Flat memory: ≈ 1.

The model is a randomly initialised GPTNeoX of Pythia's shape (--small: d=128, 3 layers; else
Pythia-70m's d=512, 6 layers) with the real GPT-NeoX tokenizer from ../shared/data when it is
there (else the tests' tiny tokenizer), on builtin:python-docs. The last line is
`RESULT ratio=... rss_growth=...`.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

import dictionaries as D
from activation_cache import CorpusSpec, LanguageModel, load_model
from activation_cache.hooks import stop_layer
from activation_cache.stream import StreamPlan, forward_blocks
from interp_sae.train_on_the_fly import OnTheFlyConfig, train_on_the_fly

ROOT = Path(__file__).resolve().parents[1]
TOKENIZER_JSON = ROOT.parent / "shared" / "data" / "gpt-neox-20b-tokenizer.json"
CORPUS = "builtin:python-docs"


def shape(small: bool) -> dict:
    if small:
        return dict(d_model=128, n_layers=3, hook="blocks.1.hook_resid_post", tokens=65536, latents=1024)
    return dict(d_model=512, n_layers=6, hook="blocks.3.hook_resid_post", tokens=90000, latents=4096)


def build_model_folder(folder: Path, d_model: int, n_layers: int) -> str:
    """A random Pythia-shaped model saved with its tokenizer; returns which tokenizer it uses."""
    from transformers import GPTNeoXConfig, GPTNeoXForCausalLM, PreTrainedTokenizerFast

    if TOKENIZER_JSON.exists():
        tokenizer = PreTrainedTokenizerFast(
            tokenizer_file=str(TOKENIZER_JSON), bos_token="<|endoftext|>", eos_token="<|endoftext|>"
        )
        which = "gpt-neox-20b"
    else:
        sys.path.append(str(ROOT / "tests"))
        from tiny_models import build_tokenizer

        tokenizer, which = build_tokenizer(), "tiny test tokenizer"
    config = GPTNeoXConfig(
        vocab_size=len(tokenizer),
        hidden_size=d_model,
        num_hidden_layers=n_layers,
        num_attention_heads=8,
        intermediate_size=4 * d_model,
        rotary_pct=0.25,
        use_parallel_residual=True,
        max_position_embeddings=2048,
        bos_token_id=0,
        eos_token_id=0,
    )
    torch.manual_seed(0)
    GPTNeoXForCausalLM(config).save_pretrained(folder)
    tokenizer.save_pretrained(folder)
    return which


def settings(model: str, hook: str, tokens: int, buffer: str) -> OnTheFlyConfig:
    return OnTheFlyConfig(
        model=model, hooks=[hook], dataset=CORPUS, tokens=tokens, context_length=128, forward_rows=32, buffer=buffer,
        batch_size=2048, loss_rows=8,
    )  # fmt: skip


def train_config(seed: int = 0, device: str = "cpu") -> D.TrainConfig:
    return D.TrainConfig(
        epochs=1, checkpoint_every=0, log_every=10**9, progress=False, device=device, prepare_vectors=4096,
        eval_max_vectors=4096, curve_vectors=1024, seed=seed,
    )  # fmt: skip


def configs(latents: int):
    return lambda d: {"sae_topk": D.make_config("sae_topk", d=d, n_latents=latents, k=32)}


def on_the_fly_rate(lm: LanguageModel, run: OnTheFlyConfig, latents: int, out: Path) -> tuple[float, float, int]:
    """(the trainer's tokens/s over its loop, the whole call's seconds, tokens trained)."""
    start = time.perf_counter()
    result = train_on_the_fly(
        run, configs(latents), out, train_config(device=str(lm.device)), lm=lm, say=lambda _: None
    )
    total = time.perf_counter() - start
    log = [json.loads(line) for line in (out / "log.jsonl").read_text().splitlines()]
    rates = [r["tokens_per_s"] for r in log if r["event"] == "train"]
    return rates[-1], total, result.tokens


def bare_rate(lm: LanguageModel, run: OnTheFlyConfig, latents: int, tokens: int) -> float:
    """Tokens/s of forward passes plus one training step per batch, nothing in between."""
    d = lm.bridge.cfg.d_model
    model = D.create(configs(latents)(d)["sae_topk"], seed=0).to(lm.device)
    optimizer = torch.optim.Adam(model.parameters(), lr=5e-3)
    plan = StreamPlan(CorpusSpec(CORPUS), run.hooks, run.context_length, run.split)
    stop = stop_layer(run.hooks)
    pending: list[torch.Tensor] = []
    have = done = 0
    start = time.perf_counter()
    for block in forward_blocks(lm, plan, run.forward_rows, stop):
        pending.append(block.vectors[run.hooks[0]])
        have += len(pending[-1])
        while have >= run.batch_size and done < tokens:
            vectors = torch.cat(pending)
            D.training_step(model, optimizer, vectors[: run.batch_size].to(lm.device).float())
            pending, have, done = [vectors[run.batch_size :]], have - run.batch_size, done + run.batch_size
        if done >= tokens:
            break
    return done / (time.perf_counter() - start)


def peak_rss_child(model: str, hook: str, tokens: int, buffer: str, latents: int, out: Path, device: str) -> int:
    """Peak RSS (bytes, host memory) of a fresh process that trains on `tokens`."""
    call = (
        f"b.settings({model!r}, {hook!r}, {tokens}, {buffer!r}), b.configs({latents}), {str(out)!r}, "
        f"b.train_config(device={device!r})"
    )
    code = "\n".join(
        [
            f"import resource, sys; sys.path.insert(0, {str(ROOT)!r})",
            "import benchmarks.on_the_fly as b",
            f"b.train_on_the_fly({call}, say=lambda _: None)",
            "print(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss * 1024)",
        ]
    )
    done = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=ROOT)
    if done.returncode:
        raise RuntimeError(done.stderr[-3000:])
    return int(done.stdout.strip().splitlines()[-1])


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--small", action="store_true", help="CPU-sized: d=128, 3 layers, 64k tokens")
    parser.add_argument("--rounds", type=int, default=2, help="alternating timing rounds (best of)")
    parser.add_argument("--device", default="cpu", help="cpu, cuda, ... (model and training)")
    args = parser.parse_args()
    torch.set_num_threads(max(1, torch.get_num_threads()))
    size = shape(args.small)
    buffer = "16384"  # vectors: well below the budgets, so that memory flat in N is what is measured
    with tempfile.TemporaryDirectory(prefix="on-the-fly-bench-") as tmp:
        folder = Path(tmp) / "model"
        which = build_model_folder(folder, size["d_model"], size["n_layers"])
        lm = load_model(str(folder), device=args.device)
        run = settings(str(folder), size["hook"], size["tokens"], buffer)
        print(
            f"model: random GPTNeoX d={size['d_model']} layers={size['n_layers']} ({which} tokenizer), hook "
            f"{size['hook']}, {CORPUS}, {size['tokens']:,} tokens, batch 2048, sae_topk κ={size['latents']}"
        )
        fly, bare, whole = [], [], []
        for round_ in range(args.rounds):
            rate, total, tokens = on_the_fly_rate(lm, run, size["latents"], Path(tmp) / f"fly-{round_}")
            fly.append(rate)
            whole.append(tokens / total)
            bare.append(bare_rate(lm, run, size["latents"], tokens))
            print(
                f"round {round_}: on the fly {rate:,.0f} tok/s (whole call incl. set-up and evaluation "
                f"{tokens / total:,.0f} tok/s); bare forward + step {bare[-1]:,.0f} tok/s"
            )
        ratio = max(fly) / max(bare)
        rss = {}
        for factor in (1, 4):
            tokens = size["tokens"] * factor
            rss[factor] = peak_rss_child(
                str(folder), size["hook"], tokens, buffer, size["latents"], Path(tmp) / f"rss-{factor}", str(lm.device)
            )
            print(f"peak RSS at {tokens:,} tokens: {rss[factor] / 2**20:,.0f} MiB", flush=True)
    print(f"RESULT ratio={ratio:.3f} rss_growth={rss[4] / rss[1]:.3f}", flush=True)


if __name__ == "__main__":
    main()
