"""Training step of a TopK SAE: the dense path (nn.Linear encoder and decoder on [B, κ] codes)
against the sparse path SAETopK trains with (dictionaries/sparse_topk.py), same initial weights,
same batch, measured in the same run.

    python benchmarks/sparse_topk.py [--small] [--budget SECONDS] [--batch B] [--precision bf16]

A step is `training_step`: forward, loss = per-vector squared error (batch mean), backward, Adam
step. Defaults d = 512, κ = 16384, k = 32. The CPU batch is sized to the machine: one warm-up step
of each path at a small batch predicts the cost per vector, and the batch (≤ 4096) and repeats are
chosen so the whole run stays within --budget seconds (default 150, well under 5 minutes on 2
cores). Dense and sparse steps alternate, and each path's median is taken, so load from other
processes hits both alike. On CUDA (when available) the same comparison runs at batch 16384.

Before timing, one step of each path from the same weights on the same batch checks agreement:
max_abs_diff is the largest absolute difference of the reconstructions or of the gradients of
that step. The parameters after it are reported too (param_max_abs_diff), but Adam's first step
moves every weight by about ±lr whatever its gradient's size, so a gradient entry that is pure
rounding noise (a sum that cancels) can flip sign between the paths: that difference is bounded
by 2·lr = 2e-4, not by the float tolerance.

Last line: RESULT sparse_over_dense=<dense time / sparse time on the main device (CUDA if there,
else CPU)> max_abs_diff=... cpu_sparse_over_dense=... [cuda_sparse_over_dense=...] ...
"""

from __future__ import annotations

import argparse
import functools
import os
import statistics
import time
from collections.abc import Callable
from typing import cast

import torch

import dictionaries as D
from dictionaries.base import LossTerms
from dictionaries.sae import SAETopK, topk_activations
from dictionaries.sparse_topk import sparse_decode, topk_encode


class DenseSAETopK(SAETopK):
    """SAETopK with the dense training path it had before the sparse one: the baseline."""

    def _loss(self, xn: torch.Tensor, generator: torch.Generator | None) -> LossTerms:
        return {"recon": self._reconstruction_error(xn, self.decoder(self._encode(xn)))}


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def seconds(fn: Callable[[], object], device: torch.device) -> float:
    synchronize(device)
    start = time.perf_counter()
    fn()
    synchronize(device)
    return time.perf_counter() - start


class Pair:
    """A dense and a sparse TopK SAE from the same weights, each with its own Adam."""

    def __init__(self, d: int, kappa: int, k: int, device: torch.device, precision: str) -> None:
        self.device, self.precision = device, precision
        self.sparse = cast(SAETopK, D.create(D.make_config("sae_topk", d=d, n_latents=kappa, k=k), seed=0).to(device))
        self.dense = DenseSAETopK(self.sparse.config).to(device)
        self.dense.load_state_dict(self.sparse.state_dict())
        fused = device.type == "cuda"  # as the trainer does
        self.optimizers = {
            "dense": torch.optim.Adam(self.dense.parameters(), lr=1e-4, fused=fused),
            "sparse": torch.optim.Adam(self.sparse.parameters(), lr=1e-4, fused=fused),
        }

    def step(self, which: str, batch: torch.Tensor) -> LossTerms:
        model = self.dense if which == "dense" else self.sparse
        return D.training_step(model, self.optimizers[which], batch, precision=self.precision)

    def max_abs_diff(self, batch: torch.Tensor) -> dict[str, float]:
        """Largest |dense − sparse| of the reconstructions, of the gradients of one training step and
        of the parameters after it, the sparse model first reset to the dense one's state."""
        self.sparse.load_state_dict(self.dense.state_dict())
        self.optimizers["sparse"].load_state_dict(self.optimizers["dense"].state_dict())
        enc, dec, k = self.sparse.encoder, self.sparse.decoder, self.sparse.config.k
        with torch.no_grad(), torch.autocast(batch.device.type, torch.bfloat16, enabled=self.precision == "bf16"):
            x_hat_dense = self.dense.decoder(topk_activations(self.dense.encoder(batch), k))
            x_hat_sparse = sparse_decode(*topk_encode(batch, enc.weight, enc.bias, k), dec.weight, dec.bias)
        self.step("dense", batch)
        self.step("sparse", batch)
        pairs = list(zip(self.dense.parameters(), self.sparse.parameters(), strict=True))
        return {
            "recon_diff": float((x_hat_dense.float() - x_hat_sparse.float()).abs().max()),
            "grad_diff": max(
                float((p.grad - q.grad).abs().max()) for p, q in pairs if p.grad is not None and q.grad is not None
            ),
            "param_diff": max(float((p.detach() - q.detach()).abs().max()) for p, q in pairs),
        }

    def time_steps(self, batch: torch.Tensor, repeats: int, deadline: float) -> dict[str, float]:
        """Median seconds per step of each path, the two alternating; fewer repeats (at least 3)
        if the clock passes `deadline` (time.perf_counter()), so a busy machine keeps the budget."""
        times: dict[str, list[float]] = {"dense": [], "sparse": []}
        for repeat in range(repeats):
            if repeat >= 3 and time.perf_counter() > deadline:
                break
            for which in times:
                times[which].append(seconds(functools.partial(self.step, which, batch), self.device))
        return {"repeats": len(times["dense"])} | {which: statistics.median(t) for which, t in times.items()}


def run_device(
    device: torch.device, args: argparse.Namespace, budget: float, batch: int | None, max_batch: int
) -> dict[str, float]:
    pair = Pair(args.d, args.n_latents, args.k, device, args.precision)
    generator = torch.Generator(device).manual_seed(1)
    if batch is None:
        # Warm up both paths at a small batch and size the real batch to the time budget.
        probe = min(1024, max_batch)
        x = torch.randn(probe, args.d, device=device, generator=generator)
        for which in ("dense", "sparse"):
            pair.step(which, x)
        per_vector = (
            sum(seconds(functools.partial(pair.step, which, x), device) for which in ("dense", "sparse")) / probe
        )
        batch = probe
        # Room for the agreement check plus at least 4 timed pairs at the chosen batch.
        while batch * 2 <= max_batch and batch * 2 * per_vector * 5 <= budget:
            batch *= 2
    else:
        per_vector = 0.0
    x = torch.randn(batch, args.d, device=device, generator=generator)
    start = time.perf_counter()
    diffs = pair.max_abs_diff(x)  # also the warm-up at this batch
    remaining = budget - (time.perf_counter() - start)
    repeats = args.max_repeats if not per_vector else int(remaining / (per_vector * batch))
    repeats = max(3, min(args.max_repeats, repeats))
    times = pair.time_steps(x, repeats, deadline=start + budget)
    return {
        "batch": batch,
        "repeats": times["repeats"],
        "dense_s": times["dense"],
        "sparse_s": times["sparse"],
        "ratio": times["dense"] / times["sparse"],
        **diffs,
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="κ = 4096, budget 30 s: a quick smoke run")
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument("--n-latents", type=int, default=16384)
    parser.add_argument("--k", type=int, default=32)
    parser.add_argument("--batch", type=int, default=None, help="CPU batch (default: sized to --budget)")
    parser.add_argument("--cuda-batch", type=int, default=16384)
    parser.add_argument("--budget", type=float, default=150.0, help="seconds for the CPU measurement")
    parser.add_argument("--max-repeats", type=int, default=15)
    parser.add_argument("--precision", choices=["fp32", "bf16"], default="fp32")
    parser.add_argument("--no-cuda", action="store_true", help="CPU only even if CUDA is available")
    args = parser.parse_args()
    if args.small:
        args.n_latents, args.budget = min(args.n_latents, 4096), min(args.budget, 30.0)
    threads = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1
    torch.set_num_threads(threads)

    print(
        f"TopK SAE training step, d={args.d} κ={args.n_latents} k={args.k} {args.precision}; "
        f"torch {torch.__version__}, {threads} CPU threads"
    )
    results = {"cpu": run_device(torch.device("cpu"), args, args.budget, args.batch, max_batch=4096)}
    if torch.cuda.is_available() and not args.no_cuda:
        torch.backends.cuda.matmul.allow_tf32 = False
        results["cuda"] = run_device(torch.device("cuda"), args, 60.0, args.cuda_batch, max_batch=args.cuda_batch)

    print(f"{'device':6} {'batch':>6} {'reps':>4} {'dense ms':>10} {'sparse ms':>10} {'ratio':>6} {'tok/s sparse':>13}")
    for name, r in results.items():
        print(
            f"{name:6} {r['batch']:>6} {r['repeats']:>4} {r['dense_s'] * 1e3:>10.1f} {r['sparse_s'] * 1e3:>10.1f} "
            f"{r['ratio']:>6.2f} {r['batch'] / r['sparse_s']:>13,.0f}"
        )
    primary = results.get("cuda", results["cpu"])
    recon, grads, params = (max(r[key] for r in results.values()) for key in ("recon_diff", "grad_diff", "param_diff"))
    fields = {
        "sparse_over_dense": f"{primary['ratio']:.2f}",
        "max_abs_diff": f"{max(recon, grads):.3g}",
        "cpu_sparse_over_dense": f"{results['cpu']['ratio']:.2f}",
    }
    if "cuda" in results:
        fields["cuda_sparse_over_dense"] = f"{results['cuda']['ratio']:.2f}"
    fields |= {
        "recon_max_abs_diff": f"{recon:.3g}",
        "grad_max_abs_diff": f"{grads:.3g}",
        "param_max_abs_diff": f"{params:.3g}",
        "cpu_batch": str(results["cpu"]["batch"]),
        "d": str(args.d),
        "n_latents": str(args.n_latents),
        "k": str(args.k),
    }
    print("RESULT " + " ".join(f"{k}={v}" for k, v in fields.items()))


if __name__ == "__main__":
    main()
