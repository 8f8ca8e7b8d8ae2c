"""How each weighted-SAE estimator spreads Γ over the dimensions of real activations.

    python benchmarks/weight_spread.py STORE [--hook NAME] [--vectors 65536]

Reads up to --vectors training-side vectors of a store (e.g. the demo's `runs/demo/store`, or the
SmolLM2 store `quality_vs_saelens.py` harvests), computes Γ with every estimator at α ∈ {0.5, 1},
and prints its spread (`dictionaries.weights.weight_spread`): min, max, max/min and the effective
number of dimensions (Σγ)²/Σγ² against d. Residual streams have a few massive-activation
dimensions; an estimator that hands them most of Γ shows here as few effective dimensions.
Last line: RESULT, the effective dimensions per estimator and α, and d.
"""

from __future__ import annotations

import argparse
import warnings

import torch

from activation_cache import ActivationStore, Split
from dictionaries.weights import ESTIMATORS, estimate_weights, weight_spread


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("store")
    parser.add_argument("--hook", default=None, help="default: the store's only (or first) hook")
    parser.add_argument("--vectors", type=int, default=65536)
    args = parser.parse_args()
    store = ActivationStore(args.store)
    hook = args.hook or store.hooks[0]
    parts, count = [], 0
    for chunk in store.iter_split(hook, "train", Split()):
        parts.append(chunk.vectors[: args.vectors - count].float())
        count += len(parts[-1])
        if count >= args.vectors:
            break
    sample = torch.cat(parts)
    d = sample.shape[1]
    print(f"{store.root} {hook}: {len(sample):,} training vectors, d = {d}")
    print(f"{'estimator':24} {'α':>4} {'min':>9} {'max':>9} {'max/min':>9} {'eff. dims':>10}")
    results = {}
    for estimator in ESTIMATORS:
        for alpha in (0.5, 1.0):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # the table shows what the warning would say
                spread = weight_spread(estimate_weights(sample, estimator, alpha))
            ratio = spread["max"] / spread["min"]
            flag = "!" if spread["effective_dims"] < d / 4 else " "
            print(
                f"{estimator:24} {alpha:>4} {spread['min']:>9.3g} {spread['max']:>9.3g} {ratio:>9.3g} "
                f"{spread['effective_dims']:>9.1f}{flag}"
            )
            results[f"{estimator}_a{alpha:g}"] = round(spread["effective_dims"], 1)
    print(f"(! = fewer than d/4 = {d / 4:g} effective dimensions: interp-sae warns when training with it)")
    print("RESULT " + " ".join(f"{k}={v}" for k, v in results.items()) + f" d={d} vectors={len(sample)}")


if __name__ == "__main__":
    main()
