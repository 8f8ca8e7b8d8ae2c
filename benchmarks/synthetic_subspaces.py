"""Paper A's synthetic experiment (SPEC §1): does each model's per-input active dimension (AD)
track the dimension of the subspace the input came from?

    python benchmarks/synthetic_subspaces.py [--small] [--dims 4 4 4] [--noise 0.0]

Data: x = U_s z + noise·ε, s uniform over the subspaces, U_s a random orthonormal d × dim_s
basis, z ~ N(0, I). Defaults are the authors' (d = 40, three 4-dim subspaces, 500k samples,
κ = 20, VAEase/VAE with a 4-layer swish MLP encoder and log σ² ≤ 0, initial log γ = −0.5,
Adam lr 1e-2, batch 1024, 150 epochs). The claim: VAEase's AD ≈ the subspace dimension; the
VAE's active set is the same for every input (≈ the sum of the dims); SAEs need more.
SAE AD is L0 (see dictionaries.metrics); the SAE-TopK AD is k by construction.
"""

from __future__ import annotations

import argparse
import tempfile

import torch

import dictionaries as D


def make_data(d: int, dims: list[int], n: int, noise: float, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(seed)
    bases = [torch.linalg.qr(torch.randn(d, k, generator=g))[0] for k in dims]
    labels = torch.randint(0, len(dims), (n,), generator=g)
    x = torch.zeros(n, d)
    for s, basis in enumerate(bases):
        rows = labels == s
        x[rows] = torch.randn(int(rows.sum()), dims[s], generator=g) @ basis.T
    return x + noise * torch.randn(n, d, generator=g), labels


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--small", action="store_true", help="a few minutes on 2 CPU cores: 40k samples, 12 epochs, batch 256")
    parser.add_argument("--d", type=int, default=40)
    parser.add_argument("--dims", type=int, nargs="+", default=[4, 4, 4])
    parser.add_argument("--noise", type=float, default=0.0)
    parser.add_argument("--samples", type=int, default=500_000)
    parser.add_argument("--latents", type=int, default=20)
    parser.add_argument("--epochs", type=int, default=150)
    parser.add_argument("--batch", type=int, default=1024)
    parser.add_argument("--topk", type=int, default=4, help="k of SAE-TopK (UNKNOWN in the paper)")
    parser.add_argument("--l1", type=float, default=0.32, help="λ₁ of SAE-ℓ1 (UNKNOWN for this experiment)")
    parser.add_argument("--encoder", choices=["mlp", "swish_split"], default="mlp",
                        help="VAE/VAEase encoder: the authors' synthetic MLP or their LLM encoder")
    parser.add_argument("--seed", type=int, default=114514)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--out", default=None, help="run folder (default: a temporary one)")
    args = parser.parse_args()
    if args.small:
        args.samples, args.epochs, args.batch = 40_000, 12, 256
        torch.set_num_threads(1)  # tiny matmuls: thread hand-offs cost more than they save on a shared CPU

    x, labels = make_data(args.d, args.dims, args.samples, args.noise, args.seed)
    order = torch.randperm(args.samples, generator=torch.Generator().manual_seed(args.seed))
    n_test = args.samples // 10
    test, test_labels, train = x[order[:n_test]], labels[order[:n_test]], x[order[n_test:]]
    vae = dict(d=args.d, n_latents=args.latents, encoder=args.encoder, encoder_layers=4, init_log_gamma=-0.5)
    configs = {
        "vaease": D.make_config("vaease", **vae),
        "vae": D.make_config("vae", **vae),
        "sae_l1": D.make_config("sae_l1", d=args.d, n_latents=args.latents, l1_coefficient=args.l1),
        "sae_topk": D.make_config("sae_topk", d=args.d, n_latents=args.latents, k=args.topk),
    }
    config = D.TrainConfig(epochs=args.epochs, lr=1e-2, seed=args.seed, device=args.device,
                           log_every=max(1, args.epochs * (len(train) // args.batch) // 10), checkpoint_every=0)
    with tempfile.TemporaryDirectory() as tmp:
        result = D.train(configs, D.TensorBatchSource(train, args.batch, seed=args.seed), args.out or tmp, config,
                         D.TensorBatchSource(test, args.batch, shuffle=False, drop_last=False))

    print(f"\nper-subspace mean AD on {n_test} held-out vectors (true dims {args.dims}; AD std in brackets)")
    print(f"{'model':9} " + " ".join(f"{'s%d (dim %d)' % (s, k):>16}" for s, k in enumerate(args.dims))
          + f" {'FVU(det)':>9} {'ad_method':>24}")
    results = {}
    for name, model in result.dictionaries.items():
        with torch.no_grad():
            ad = D.active_mask(model, test.to(next(model.parameters()).device)).sum(-1).float().cpu()
        cells = []
        for s in range(len(args.dims)):
            group = ad[test_labels == s]
            cells.append(f"{group.mean():>9.2f} ({group.std():.2f})")
            results[f"{name}_ad_s{s}"] = round(float(group.mean()), 2)
        metrics = result.metrics[name]
        results[f"{name}_fvu"] = round(metrics["fvu_deterministic"], 4)
        print(f"{name:9} " + " ".join(f"{c:>16}" for c in cells)
              + f" {metrics['fvu_deterministic']:>9.4f} {metrics['ad_method']:>24}")
    for name in ("vaease", "vae"):
        error = sum(abs(results[f"{name}_ad_s{s}"] - k) for s, k in enumerate(args.dims)) / len(args.dims)
        results[f"{name}_mean_abs_ad_error"] = round(error, 2)
    print("RESULT " + " ".join(f"{k}={v}" for k, v in results.items()))


if __name__ == "__main__":
    main()
