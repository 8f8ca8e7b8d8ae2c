"""Paper B's setting (SPEC §3): can reweighting the reconstruction loss per input dimension help
an SAE recover ground-truth features from superposed ones? Uniform vs each weight estimator,
with ReLU+ℓ1 and TopK encoders, all trained on the same stream.

    python benchmarks/synthetic_superposition.py [--small]

Data: x = W_p x_m. x_m ∈ R^m sparse and non-negative (each feature active with probability p,
magnitude U(0.5, 1.5)); W_p ∈ R^{d×m} with m > d, unit-norm columns, and a controlled number of
features per input dimension: a fraction `--mono-fraction` of the dimensions host exactly one
feature, the others `--poly` features each (Gaussian loadings on a random support).
Recovery: for each true feature, the best cosine similarity with any decoder column;
reported as the mean and the fraction above 0.9.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import dictionaries as D

ESTIMATORS = ["uniform", "inverse_variance", "kurtosis", "hoyer"]


def make_features(d: int, m: int, mono_fraction: float, poly: int, g: torch.Generator) -> torch.Tensor:
    """W_p [d, m]: dimension i loads on 1 feature (mono) or `poly` features, every feature somewhere."""
    n_mono = round(mono_fraction * d)
    support = torch.zeros(d, m, dtype=torch.bool)
    for i in range(d):
        count = 1 if i < n_mono else poly
        support[i, torch.randperm(m, generator=g)[:count]] = True
    for j in (~support.any(0)).nonzero()[:, 0].tolist():  # orphan features get a polysemantic dim
        support[n_mono + j % (d - n_mono), j] = True
    w = torch.randn(d, m, generator=g).abs() * support
    return w / w.norm(dim=0, keepdim=True)


def recovery(true: torch.Tensor, directions: torch.Tensor) -> tuple[float, float]:
    """(mean best cosine, fraction > 0.9) of the true feature columns against decoder rows."""
    t = true / true.norm(dim=0, keepdim=True)
    dirs = directions / directions.norm(dim=1, keepdim=True).clamp(min=1e-12)
    best = (dirs @ t).max(dim=0).values
    return float(best.mean()), float((best > 0.9).float().mean())


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="a few minutes on 2 CPU cores")
    parser.add_argument("--d", type=int, default=64)
    parser.add_argument("--features", type=int, default=128)
    parser.add_argument("--mono-fraction", type=float, default=0.5)
    parser.add_argument("--poly", type=int, default=8)
    parser.add_argument("--p", type=float, default=0.03, help="probability a feature is active")
    parser.add_argument("--samples", type=int, default=200_000)
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--l1", type=float, default=0.05)
    parser.add_argument("--alpha", type=float, default=1.0)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="auto")
    args = parser.parse_args()
    if args.small:
        args.d, args.features, args.samples, args.epochs, args.batch = 32, 64, 30_000, 10, 256
        torch.set_num_threads(1)  # tiny matmuls: thread hand-offs cost more than they save on a shared CPU

    g = torch.Generator().manual_seed(args.seed)
    w_p = make_features(args.d, args.features, args.mono_fraction, args.poly, g)
    x_m = (torch.rand(args.samples, args.features, generator=g) < args.p) * (
        0.5 + torch.rand(args.samples, args.features, generator=g)
    )
    x = x_m @ w_p.T
    k = max(1, round(args.p * args.features))
    configs = {}
    for encoder in ("relu", "topk"):
        for estimator in ESTIMATORS:
            configs[f"{encoder}/{estimator}"] = D.make_config(
                "wsae",
                d=args.d,
                n_latents=args.features,
                encoder=encoder,
                k=k,
                l1_coefficient=args.l1,
                estimator=estimator,
                alpha=args.alpha,
            )
    config = D.TrainConfig(
        epochs=args.epochs,
        lr=1e-3,
        seed=args.seed,
        device=args.device,
        checkpoint_every=0,
        schedule=D.ScheduleConfig(kind="warmup_cosine", warmup_steps=100, min_lr=1e-5),
        log_every=max(1, args.epochs * (args.samples // args.batch) // 5),
    )
    train, test = D.train_test_split(x, 0.1, seed=args.seed)
    with tempfile.TemporaryDirectory() as tmp:
        configs = {name.replace("/", "__"): c for name, c in configs.items()}
        result = D.train(
            configs,
            D.TensorBatchSource(train, args.batch, seed=args.seed),
            tmp,
            config,
            D.TensorBatchSource(test, args.batch, shuffle=False, drop_last=False),
        )

    print(
        f"\nground truth: d={args.d}, {args.features} features, {args.mono_fraction:.0%} of dims monosemantic, "
        f"others {args.poly} features; p={args.p}; TopK k={k}; α={args.alpha}"
    )
    print(f"{'encoder':8} {'estimator':17} {'mean best cos':>14} {'frac > 0.9':>11} {'FVU(det)':>9} {'L0':>6}")
    results = {}
    for name, model in result.dictionaries.items():
        encoder, estimator = name.split("__")
        mean_cos, frac = recovery(w_p.to(model.feature_directions.device), model.feature_directions.detach())
        metrics = result.metrics[name]
        print(
            f"{encoder:8} {estimator:17} {mean_cos:>14.3f} {frac:>11.3f} "
            f"{metrics['fvu_deterministic']:>9.4f} {metrics['l0_mean']:>6.2f}"
        )
        results[f"{encoder}_{estimator}_mean_cos"] = round(mean_cos, 3)
        results[f"{encoder}_{estimator}_frac90"] = round(frac, 3)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in results.items()))


if __name__ == "__main__":
    main()
