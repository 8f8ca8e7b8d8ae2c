"""Paper A's synthetic experiment (SPEC §1): does each model's per-input active dimension (AD)
track the dimension of the subspace the input came from?

    python benchmarks/synthetic_subspaces.py [--small] [--dims 4 4 4] [--noise 0.0]

Data (the authors' `ComposedLinearDataset`, code): x = B_s z + noise·ε, s uniform over the
subspaces, z ~ N(0, I), and B_s a d × dim_s matrix of i.i.d. N(0, 1) entries (the authors take
dim_s columns of one d × d Gaussian matrix, which is the same distribution when no column is
shared). The directions are therefore *not* unit vectors: ‖B_s z‖² ≈ d·dim_s (160 for d = 40,
dim 4). The scale matters: the VAE loss is not scale-invariant (prior N(0, I), initial
γ = e^−0.5 ≈ 0.61 per coordinate). With unit-norm directions (per-coordinate variance ≈ 0.1,
below the initial γ) the data look like decoder noise at the start, the KL term drives every
latent's log σ² up to its clamp at 0, where the hard clamp passes no gradient, and VAEase
collapses to AD 0 / FVU 1 and stays there (reproduce with `--scale 0.158`).
`--basis orthonormal` uses exactly orthonormal columns times √d (same scale, orthogonal within
each subspace).

Defaults are the authors' (d = 40, three 4-dim subspaces, 500k samples, κ = 20, VAEase/VAE with
a 4-layer swish MLP encoder and log σ² ≤ 0, initial log γ = −0.5, Adam lr 1e-2, batch 1024,
150 epochs, cosine warm restarts stepped per batch with T₀ = 10 batches, T_mult = 2). The claim:
VAEase's AD ≈ the subspace dimension; the VAE's active set is the same for every input (≈ the
sum of the dims); SAEs need more. SAE AD is L0 (see dictionaries.metrics); the SAE-TopK AD is
k by construction.

Besides the per-vector AD (each held-out vector's own 2-means split of its κ values of log σ²,
averaged per subspace), the output names two variants of the authors' notebook (code), for the
variational models:
- "AD, authors' variant": for each subspace, average log σ² over that subspace's held-out
  vectors, split that one mean vector of κ values by 2-means and count its low group;
- "AD–RE, one-sample": RE = mean ‖x − x̂‖² when x̂ decodes a single posterior sample
  z = μ + σ ⊙ ε (the decoder sees (1 − σ) ⊙ z for VAEase, z for the VAE) keeping only each
  vector's k most active latents (smallest σ²), for k = 1 … κ; printed beside the same curve for
  the deterministic decode (gated mean for VAEase, μ for the VAE).

`--small` (100k samples, 25 epochs, batch 512; about two minutes on 2 CPU cores) shows the
claim, with one caveat: at that budget VAEase sometimes covers a subspace with more latents
than its dimension, each active on part of it (AD ≈ dim + 1 on that subspace, still with a
clean per-vector split); longer training removes most of these.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import dictionaries as D
from dictionaries.vae import VAEase


def make_data(
    d: int, dims: list[int], n: int, noise: float, seed: int, basis: str = "gaussian", scale: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """(x [n, d], subspace label [n]). `basis`: "gaussian" (the authors': i.i.d. N(0, 1) entries,
    so E‖x‖² = d·dim) or "orthonormal" (orthonormal columns times √d: the same scale).
    `scale` multiplies the noiseless signal."""
    g = torch.Generator().manual_seed(seed)
    if basis == "gaussian":
        bases = [scale * torch.randn(d, k, generator=g) for k in dims]
    elif basis == "orthonormal":
        bases = [scale * d**0.5 * torch.linalg.qr(torch.randn(d, k, generator=g))[0] for k in dims]
    else:
        raise ValueError(f"basis must be 'gaussian' or 'orthonormal', got {basis!r}")
    labels = torch.randint(0, len(dims), (n,), generator=g)
    x = torch.zeros(n, d)
    for s, b in enumerate(bases):
        rows = labels == s
        x[rows] = torch.randn(int(rows.sum()), dims[s], generator=g) @ b.T
    return x + noise * torch.randn(n, d, generator=g), labels


def authors_ad(log_var: torch.Tensor, labels: torch.Tensor, n_subspaces: int) -> list[int]:
    """The authors' AD per subspace: 2-means split of the mean of log σ² [N, κ] over the vectors
    of each subspace (labels [N]), counting the low group (see dictionaries.metrics)."""
    means = torch.stack([log_var[labels == s].float().mean(0) for s in range(n_subspaces)])
    return D.two_means_low_mask(means).sum(-1).tolist()


def one_sample_ad_re_curve(
    model: VAEase, x: torch.Tensor, generator: torch.Generator, max_k: int | None = None
) -> list[tuple[int, float]]:
    """[(k, RE)] decoding one posterior sample per vector (gated for VAEase) and keeping its k
    most active latents (smallest σ²), k = 1 … max_k (default κ): the authors' one-sample AD–RE."""
    with torch.no_grad():
        code = model.sampled_code(x, generator)
    return D.ad_re_curve(model, x, max_k, features=code)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument(
        "--small", action="store_true", help="about two minutes on 2 CPU cores: 100k samples, 25 epochs, batch 512"
    )
    parser.add_argument("--d", type=int, default=40)
    parser.add_argument("--dims", type=int, nargs="+", default=[4, 4, 4])
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument(
        "--basis",
        choices=["gaussian", "orthonormal"],
        default="gaussian",
        help="subspace bases: the authors' Gaussian matrices, or orthonormal × √d",
    )
    parser.add_argument("--scale", type=float, default=1.0, help="multiplies the noiseless signal")
    parser.add_argument("--samples", type=int, default=500_000)
    parser.add_argument("--latents", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--lr", type=float, default=1e-2)
    parser.add_argument("--t0", type=int, default=10, help="T₀ (batches) of the cosine warm restarts (code: 10)")
    parser.add_argument("--init-log-gamma", type=float, default=-0.5)
    parser.add_argument("--topk", type=int, default=4, help="k of SAE-TopK (UNKNOWN in the paper)")
    parser.add_argument("--l1", type=float, default=0.32, help="λ₁ of SAE-ℓ1 (UNKNOWN for this experiment)")
    parser.add_argument(
        "--encoder",
        choices=["mlp", "swish_split"],
        default="mlp",
        help="VAE/VAEase encoder: the authors' synthetic MLP or their LLM encoder",
    )
    parser.add_argument("--seed", type=int, default=114514)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    args = parser.parse_args()
    if args.small:
        args.samples, args.epochs, args.batch = 100_000, 25, 512
        torch.set_num_threads(1)  # tiny matmuls: thread hand-offs cost more than they save on a shared CPU

    x, labels = make_data(args.d, args.dims, args.samples, args.noise, args.seed, args.basis, args.scale)
    order = torch.randperm(args.samples, generator=torch.Generator().manual_seed(args.seed))
    n_test = args.samples // 10
    test, test_labels, train = x[order[:n_test]], labels[order[:n_test]], x[order[n_test:]]
    vae = dict(
        d=args.d, n_latents=args.latents, encoder=args.encoder, encoder_layers=4, init_log_gamma=args.init_log_gamma
    )
    configs = {
        "vaease": D.make_config("vaease", **vae),
        "vae": D.make_config("vae", **vae),
        "sae_l1": D.make_config("sae_l1", d=args.d, n_latents=args.latents, l1_coefficient=args.l1),
        "sae_topk": D.make_config("sae_topk", d=args.d, n_latents=args.latents, k=args.topk),
    }
    config = D.TrainConfig(
        epochs=args.epochs,
        lr=args.lr,
        seed=args.seed,
        device=args.device,
        schedule=D.ScheduleConfig(kind="cosine_warm_restarts", t0=args.t0, t_mult=2, min_lr=1e-6),
        log_every=max(1, args.epochs * (len(train) // args.batch) // 10),
        checkpoint_every=0,
    )
    with tempfile.TemporaryDirectory() as tmp:
        result = D.train(
            configs,
            D.TensorBatchSource(train, args.batch, seed=args.seed),
            args.out or tmp,
            config,
            D.TensorBatchSource(test, args.batch, shuffle=False, drop_last=False),
        )

    print(f"\nper-subspace mean AD on {n_test} held-out vectors (true dims {args.dims}; AD std in brackets)")
    print(
        f"{'model':9} "
        + " ".join(f"{f's{s} (dim {k})':>16}" for s, k in enumerate(args.dims))
        + f" {'FVU(det)':>9} {'ad_method':>24}"
    )
    results = {}
    for name, model in result.dictionaries.items():
        with torch.no_grad():
            ad = model.active_mask(test.to(next(model.parameters()).device)).sum(-1).float().cpu()
        cells = []
        for s in range(len(args.dims)):
            group = ad[test_labels == s]
            cells.append(f"{group.mean():>9.2f} ({group.std():.2f})")
            results[f"{name}_ad_s{s}"] = round(float(group.mean()), 2)
        metrics = result.metrics[name]
        results[f"{name}_fvu"] = round(metrics["fvu_deterministic"], 4)
        print(
            f"{name:9} "
            + " ".join(f"{c:>16}" for c in cells)
            + f" {metrics['fvu_deterministic']:>9.4f} {metrics['ad_method']:>24}"
        )
    for name in ("vaease", "vae"):
        error = sum(abs(results[f"{name}_ad_s{s}"] - k) for s, k in enumerate(args.dims)) / len(args.dims)
        results[f"{name}_mean_abs_ad_error"] = round(error, 2)

    variational = {n: m for n, m in result.dictionaries.items() if isinstance(m, VAEase)}
    print("\nAD, authors' variant: 2-means split of each subspace's mean log σ² over its held-out vectors")
    for name, model in variational.items():
        device = next(model.parameters()).device
        with torch.no_grad():
            log_var = model.latent_log_variance(test.to(device)).cpu()
        ad_authors = authors_ad(log_var, test_labels, len(args.dims))
        print(f"{name:9} " + " ".join(f"{f's{s}={a}':>16}" for s, a in enumerate(ad_authors)))
        results |= {f"{name}_ad_authors_s{s}": a for s, a in enumerate(ad_authors)}

    k_report = max(args.dims)
    print(
        "\nAD–RE: RE = mean ‖x − x̂‖² keeping each vector's k most active latents (smallest σ²), k = 1 … κ;"
        "\n  deterministic = decode of the gated mean (VAEase) or μ (VAE); one_sample = decode of one"
        "\n  posterior sample z = μ + σε (gated for VAEase), as the authors' notebook"
    )
    for name, model in variational.items():
        device = next(model.parameters()).device
        x_dev = test.to(device)
        generator = torch.Generator(device).manual_seed(args.seed)
        curves = {
            "deterministic": D.ad_re_curve(model, x_dev),
            "one_sample": one_sample_ad_re_curve(model, x_dev, generator),
        }
        for variant, curve in curves.items():
            print(f"{name:9} {variant:13} " + " ".join(f"{re:.3g}" for _, re in curve))
            results[f"{name}_re_{variant}_k{k_report}"] = round(curve[k_report - 1][1], 3)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in results.items()))


if __name__ == "__main__":
    main()
