"""VAEase against the baselines on real LLM activations (offline SmolLM2-135M, a middle layer).

    python benchmarks/real_activations.py [--tokens 262144] [--latents 300 1200] [--epochs 10] [--out runs/real]
                                          [--normalize-input] [--init-log-gamma -10]

Harvests (or resumes) a store of blocks.15.hook_resid_post on the built-in Python-docs corpus,
trains VAEase, VAE, SAE-l1 and SAE-TopK at each size on the same batches (paper defaults but
for the epoch count; with a CPU budget, `--normalize-input --init-log-gamma -2` as the demo uses,
see interp_sae/pipeline.py), and prints the held-out metrics per SPEC §4. The AD–RE curves of every
dictionary are in OUT/train/ad_re_curves.png. Last line: RESULT key=value ...
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

import dictionaries as D
from activation_cache import BUILTIN_SMOLLM2, HarvestConfig, harvest
from activation_cache.corpus import BUILTIN_PYTHON_DOCS
from interp_sae.train_from_store import DataConfig, dictionary_configs, train_from_store

ARCHITECTURES = ["vaease", "vae", "sae_l1", "sae_topk"]


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--out", default="runs/real_activations")
    parser.add_argument("--tokens", type=int, default=262_144)
    parser.add_argument("--hook", default="blocks.15.hook_resid_post")
    parser.add_argument("--latents", type=int, nargs="+", default=[300, 1200])
    parser.add_argument("--epochs", type=int, default=10)
    parser.add_argument("--batch-size", type=int, default=2048)
    parser.add_argument("--device", default="auto")
    parser.add_argument("--normalize-input", action="store_true", help="scale inputs to mean norm √d")
    parser.add_argument("--init-log-gamma", type=float, default=-10.0, help="VAE/VAEase initial log γ (paper: -10)")
    args = parser.parse_args()
    out = Path(args.out)

    harvest(
        HarvestConfig(
            out=str(out / "store"),
            model=BUILTIN_SMOLLM2,
            hooks=[args.hook],
            dataset=BUILTIN_PYTHON_DOCS,
            tokens=args.tokens,
            device=args.device,
        )
    )
    gamma = {"init_log_gamma": args.init_log_gamma}
    configs = dictionary_configs(ARCHITECTURES, args.latents, d=576, overrides={"vaease": gamma, "vae": gamma})
    result = train_from_store(
        out / "store",
        configs,
        out / "train",
        D.TrainConfig(
            epochs=args.epochs, device=args.device, checkpoint_every=200, normalize_input=args.normalize_input
        ),
        DataConfig(hook=args.hook, batch_size=args.batch_size),
    )

    print(
        f"\nheld-out metrics, {args.hook}, {args.epochs} epochs (RE/FVU from the deterministic decode; "
        "AD: 2-means on log σ² for VAE/VAEase, L0 for SAEs)"
    )
    print(f"{'dictionary':<16}{'RE':>10}{'FVU':>8}{'AD mean':>9}{'AD std':>8}{'dead':>7}{'RE(sample)':>12}")
    fields = []
    for name, m in result.metrics.items():
        print(
            f"{name:<16}{m['re_deterministic']:>10.4g}{m['fvu_deterministic']:>8.4f}{m['ad_mean']:>9.2f}"
            f"{m['ad_std']:>8.2f}{m['dead_fraction']:>7.3f}{m.get('re_sample', float('nan')):>12.4g}"
        )
        key = name.replace("-", "_k")
        fields += [
            f"{key}_fvu={m['fvu_deterministic']:.4f}",
            f"{key}_ad={m['ad_mean']:.2f}",
            f"{key}_dead={m['dead_fraction']:.3f}",
        ]
    (out / "summary.json").write_text(json.dumps(result.metrics, indent=1))
    print(f"AD–RE curves: {out / 'train' / 'ad_re_curves.png'}")
    print("RESULT " + " ".join(fields))


if __name__ == "__main__":
    main()
