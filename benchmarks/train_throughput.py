"""Training-step throughput of SAE-ℓ1, TopK (topk_aux) and VAEase against the machine's matmul peak.

    python benchmarks/train_throughput.py [--small] [--race-size]

It sizes itself to the device: on CUDA batch 4096 and κ ∈ {16384, 65536} (the GPU target: the
dense SAE step at ≥ 40% of the bf16 peak at κ = 65536); on a CPU (or with --small) batch 256 and
κ ∈ {1024, 4096}, a few minutes on 2 cores.

Peak = the best of a few square matmuls (fp32 and bf16) timed in this run. A step's FLOPs count
its matmuls only (forward + backward ≈ 3 × forward):
    SAE-ℓ1 forward 2B(dκ + κd);   VAEase forward 2B(2κ·d + κ² + κd)   (encoder, variance head, decoder)
topk_aux trains through the sparse TopK path, which skips most of those FLOPs: its figure counts the
dense SAE's, so it is an effective rate (it can pass the peak). The modern architectures are timed
against topk_aux (k = 32) on the same sparse path: BatchTopK and Matryoshka with k = 32 (a ragged
batch-wide code), JumpReLU with its thresholds set so that each latent fires on a 32/κ share of the
batch (L0 ≈ 32, as after training to target_l0 = 32; it trains densely only while more than an
eighth of its latents are active, as at initialisation).
--race-size also times that ratio at the quality race's size (batch 4096, κ 2048, d 576; `race_size_*`).
--profile then prints where the dense SAE-ℓ1 bf16 step at the largest κ spends its time (torch's
profiler, the ops with the most self time on the device), to find what keeps it from the peak.
fraction of peak = step FLOPs / step time / peak of the same precision. fp32 on a GPU means
full fp32 (TF32 off), so the peak and the step are measured the same way. Steps run as
`dictionaries.train` runs them, with freed memory kept for the next step (`interp_sae.heap`); the
modern-SAE lines also print the minor page faults per step. `auxk_active_over_none_dead`: topk_aux's
step with 1% of its latents dead (AuxK active) ÷ with none.
"""

from __future__ import annotations

import argparse
import functools
import resource
import statistics
import time

import torch

import dictionaries as D
from dictionaries.jumprelu import JumpReLU
from interp_sae.heap import reused_heap
from interp_sae.runtime import resolve_device


def synchronize(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def timed(fn, device: torch.device, repeats: int) -> float:
    """Seconds per call, after one warm-up call."""
    fn()
    synchronize(device)
    start = time.perf_counter()
    for _ in range(repeats):
        fn()
    synchronize(device)
    return (time.perf_counter() - start) / repeats


def matmul_peak(n: int, dtype: torch.dtype, device: torch.device, repeats: int) -> float:
    a, b = torch.randn(n, n, device=device, dtype=dtype), torch.randn(n, n, device=device, dtype=dtype)
    return 2 * n**3 / timed(lambda: a @ b, device, repeats)


def step_flops(arch: str, batch: int, d: int, kappa: int) -> float:
    linear = arch in ("sae_l1", "topk_aux")  # one encoder and one decoder matmul (TopK: the dense equivalent)
    forward = 2 * batch * (2 * d * kappa) if linear else 2 * batch * (2 * kappa * d + kappa**2 + kappa * d)
    return 3 * forward


MODERN = ("batchtopk", "jumprelu", "matryoshka")
L0 = 32  # topk_aux's, BatchTopK's and Matryoshka's default k
ROUNDS = 12  # on 2 shared cores, the best of 3 rounds' times moved a ratio by ±0.2 from run to run


@torch.no_grad()
def fire_on_share(model: JumpReLU, x: torch.Tensor, l0: int) -> None:
    """Set a JumpReLU's θ so that each latent fires on a share l0/κ of x [B, d], so the batch's L0 is
    about l0, as after training to target_l0 = l0 (lr 1e-4 keeps it there)."""
    model.set_threshold(model.thresholds_for_firing_rate(x * model.input_scale, l0 / model.config.n_latents))


def modern_over_topk_aux(d: int, kappa: int, batch: int, device: torch.device, repeats: int) -> dict[str, float]:
    """Steps/s of each modern architecture ÷ topk_aux's at the same width (target ≥ 0.9), fp32,
    timed in alternation: the median over ROUNDS rounds of each round's ratio."""
    x = torch.randn(batch, d, device=device)
    steps = {}
    for arch in ("topk_aux", *MODERN):
        model = D.create(D.make_config(arch, d=d, n_latents=kappa), seed=0).to(device)
        if isinstance(model, JumpReLU):
            fire_on_share(model, x, L0)
            print(
                f"jumprelu κ={kappa}: thresholds set for L0 {float((model.encode(x) != 0).sum(-1).float().mean()):.1f}"
            )
        optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
        steps[arch] = functools.partial(D.training_step, model, optimizer, x, torch.Generator(device).manual_seed(0))
    faults = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    rounds = [{arch: timed(step, device, repeats) for arch, step in steps.items()} for _ in range(ROUNDS)]
    faults_per_step = (resource.getrusage(resource.RUSAGE_SELF).ru_minflt - faults) / (
        ROUNDS * len(steps) * (repeats + 1)
    )
    # Each round's own ratio, then the median over rounds: load from other processes shifts a whole
    # round, which a ratio within the round cancels and the median then ignores.
    ratios = {arch: statistics.median(times["topk_aux"] / times[arch] for times in rounds) for arch in MODERN}
    print(
        f"κ={kappa} fp32 training steps/s ÷ topk_aux's: " + ", ".join(f"{a} {r:.2f}" for a, r in ratios.items()),
        f"({faults_per_step:,.0f} minor page faults per step)",
    )
    return {f"{arch}_over_topk_aux": round(ratio, 3) for arch, ratio in ratios.items()} | {
        "faults_per_step": round(faults_per_step)
    }


DEAD_SHARE = 0.01  # of the latents kept dead for `auxk_cost`


def auxk_cost(d: int, kappa: int, batch: int, device: torch.device, repeats: int) -> dict[str, float]:
    """topk_aux's step with 1% of its latents dead (AuxK active: one more sparse decode, of at most
    that many candidates per vector) ÷ its step with none dead, timed in alternation (median of
    ROUNDS rounds). The other ratios here time steps with no dead latent."""
    x = torch.randn(batch, d, device=device)
    window = 10 * batch  # the others, reset before each step, cannot die in it
    model = D.create(D.make_config("topk_aux", d=d, n_latents=kappa, dead_after_tokens=window), seed=0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    step = functools.partial(D.training_step, model, optimizer, x, torch.Generator(device).manual_seed(0))
    dead = torch.arange(0, kappa, round(1 / DEAD_SHARE), device=device)

    def with_dead() -> None:
        model.tokens_since_fired.zero_()
        model.tokens_since_fired[dead] = window  # dead before this step, whether or not they fired in the last
        step()

    def none_dead() -> None:
        model.tokens_since_fired.zero_()
        step()

    rounds = [timed(none_dead, device, repeats) / timed(with_dead, device, repeats) for _ in range(ROUNDS)]
    ratio = statistics.median(rounds)
    print(f"κ={kappa} topk_aux steps/s with {len(dead)} dead latents (AuxK active) ÷ with none: {ratio:.2f}")
    return {"auxk_active_over_none_dead": round(ratio, 3)}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="CPU sizes on any device: batch 256, κ ∈ {1024, 4096}")
    parser.add_argument("--device", default="auto")
    parser.add_argument("--d", type=int, default=512)
    parser.add_argument(
        "--race-size",
        action="store_true",
        help="also time the modern SAEs ÷ topk_aux at the quality race's size (batch 4096, κ 2048, d 576)",
    )
    parser.add_argument(
        "--profile", action="store_true", help="then the dense SAE-ℓ1 bf16 step's costliest ops (torch profiler)"
    )
    args = parser.parse_args()
    with reused_heap():  # as dictionaries.train runs its steps
        measure(args)
        if args.profile:
            profile_dense_step(args)


def measure(args: argparse.Namespace) -> None:
    device = resolve_device(args.device)
    torch.backends.cuda.matmul.allow_tf32 = False
    small = args.small or device.type != "cuda"
    batch, kappas, repeats, n = (256, [1024, 4096], 3, 1024) if small else (4096, [16384, 65536], 10, 8192)
    peaks = {p: matmul_peak(n, dt, device, repeats) for p, dt in (("fp32", torch.float32), ("bf16", torch.bfloat16))}
    print(
        f"device {device} ({torch.cuda.get_device_name() if device.type == 'cuda' else 'cpu'}), "
        f"matmul peak fp32 {peaks['fp32'] / 1e12:.2f} TFLOP/s, bf16 {peaks['bf16'] / 1e12:.2f} TFLOP/s (n={n})"
    )
    print(f"{'arch':8} {'κ':>6} {'prec':5} {'tokens/s':>12} {'TFLOP/s':>8} {'of peak':>8}")
    results = {}
    for arch in ("sae_l1", "topk_aux", "vaease"):
        # VAEase's κ×κ variance head is 17 GB at κ = 65536: measure it at the smaller widths only.
        for kappa in kappas if arch != "vaease" else kappas[:1]:
            for precision in ("fp32", "bf16"):
                model = D.create(D.make_config(arch, d=args.d, n_latents=kappa), seed=0).to(device)
                optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
                x = torch.randn(batch, args.d, device=device)
                generator = torch.Generator(device).manual_seed(0)
                step = functools.partial(D.training_step, model, optimizer, x, generator, precision)
                seconds = timed(step, device, repeats)
                flops = step_flops(arch, batch, args.d, kappa) / seconds
                fraction = flops / peaks[precision]
                print(
                    f"{arch:8} {kappa:>6} {precision:5} {batch / seconds:>12,.0f} {flops / 1e12:>8.3f} {fraction:>8.2f}"
                )
                results[f"{arch}_k{kappa}_{precision}_tokens_per_s"] = round(batch / seconds)
                results[f"{arch}_k{kappa}_{precision}_frac_peak"] = round(fraction, 3)
                del model, optimizer
    results |= modern_over_topk_aux(args.d, kappas[-1], batch, device, repeats)
    results |= auxk_cost(args.d, kappas[-1], batch, device, repeats)
    if args.race_size:
        race = modern_over_topk_aux(576, 2048, 4096, device, 1)
        results |= {f"race_size_{name}": ratio for name, ratio in race.items()}
    results["peak_fp32_tflops"] = round(peaks["fp32"] / 1e12, 3)
    results["peak_bf16_tflops"] = round(peaks["bf16"] / 1e12, 3)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in results.items()))


def profile_dense_step(args: argparse.Namespace, steps: int = 3) -> None:
    """The ops of a few SAE-ℓ1 bf16 steps at the benchmark's largest κ, by self time on the device."""
    from torch.profiler import ProfilerActivity, profile

    device = resolve_device(args.device)
    batch, kappa = (256, 4096) if args.small or device.type != "cuda" else (4096, 65536)
    model = D.create(D.make_config("sae_l1", d=args.d, n_latents=kappa), seed=0).to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4, fused=device.type == "cuda")
    x = torch.randn(batch, args.d, device=device)
    step = functools.partial(D.training_step, model, optimizer, x, None, "bf16")
    timed(step, device, 1)  # warm-up outside the trace
    activities = [ProfilerActivity.CPU] + ([ProfilerActivity.CUDA] if device.type == "cuda" else [])
    with profile(activities=activities, record_shapes=True) as trace:
        for _ in range(steps):
            step()
        synchronize(device)
    where = "device" if device.type == "cuda" else "cpu"
    ops = sorted(trace.key_averages(group_by_input_shape=True), key=lambda op: -getattr(op, f"self_{where}_time_total"))
    total = sum(getattr(op, f"self_{where}_time_total") for op in ops)
    print(
        f"sae_l1 κ={kappa} batch {batch} bf16: self {where} time per step {total / steps / 1e3:.2f} ms; costliest ops:"
    )
    for op in ops[:20]:
        self_us = getattr(op, f"self_{where}_time_total")
        print(
            f"  {self_us / steps / 1e3:8.3f} ms/step {self_us / total:6.1%} {op.count // steps:4}× {op.key} {op.input_shapes}"
        )


if __name__ == "__main__":
    main()
