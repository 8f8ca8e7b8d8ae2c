"""Per-input-dimension reconstruction weights Γ = diag(γ₁ … γ_d) for the weighted SAE (SPEC §3).

γ_i = s_i^α with s_i a monosemanticity score of input dimension i (high = few true features
load on it), normalised to mean 1 so the sparsity coefficient keeps its meaning next to the
unweighted SAE (paper B's normalisation is UNKNOWN; this is our choice). The paper's formula for
s_i is UNKNOWN; the estimators below are candidates, compared in
benchmarks/synthetic_superposition.py. Each reads a sample [N, d] of raw activations.

Degenerate dimensions. A constant or near-constant dimension has no polysemanticity to measure,
yet the raw scores make it the most "monosemantic" one (1/Var → 1e12, Hoyer → its maximum,
kurtosis → 0/0). Dimension i is *degenerate* when Var(x_i) ≤ DEGENERATE_RELATIVE_VARIANCE ×
the median variance of the dimensions whose variance is positive (i.e. its standard deviation
is below 1e-3 of a typical one); the estimators score only the other dimensions, and each
degenerate dimension gets the median weight γ of the scored ones. If every dimension is
degenerate, all weights are 1.

Concentration. Residual streams have a few massive-activation dimensions, and a heavy-tailed
score can then hand most of Γ to a handful of dimensions. `weight_spread` reports the figures
(min, max, effective number of dimensions (Σγ)²/Σγ²); `estimate_weights` and `load_weights_file`
warn when the effective number falls below d/4. The `*_rank` estimators are the robust variant:
they keep only the *order* of a base score, so max/min ≤ RANK_RANGE^α whatever the data.
"""

from __future__ import annotations

import json
import warnings
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

from interp_sae.errors import ConfigError

_EPS = 1e-12
DEGENERATE_RELATIVE_VARIANCE = 1e-6
"""Var(x_i) at or below this fraction of the median positive variance: a degenerate dimension."""
RANK_RANGE = 4.0
"""`*_rank` estimators: scores run linearly from 1 (lowest base score) to RANK_RANGE (highest)."""
CONCENTRATION_WARNING_FRACTION = 0.25
"""Warn when the effective number of dimensions (Σγ)²/Σγ² is below this fraction of d."""


def _uniform(sample: torch.Tensor) -> torch.Tensor:
    """Γ = I: the plain SAE."""
    return torch.ones(sample.shape[1], dtype=torch.float64)


def _inverse_variance(sample: torch.Tensor) -> torch.Tensor:
    """s_i = 1 / Var(x_i). With independent features, Var(x_i) = Σ_j W_ij² Var(x_m,j): every
    feature superposed on dimension i adds variance, so a low-variance dimension carries few
    features. Confounded by feature scale: a single loud feature looks polysemantic."""
    return 1.0 / (sample.var(dim=0) + _EPS)


def _kurtosis(sample: torch.Tensor) -> torch.Tensor:
    """s_i = Pearson kurtosis E[(x_i − x̄_i)⁴] / Var(x_i)². A dimension driven by one sparse feature
    (active with probability p) is heavy-tailed, kurtosis ≈ 1/p; a sum of many independent
    features tends to a Gaussian (kurtosis 3) by the central limit theorem, so kurtosis falls
    as polysemanticity rises. Scale-free, but unbounded: a massive-activation dimension (rare huge
    values) can take most of Γ, which is what `kurtosis_rank` guards against."""
    centred = sample - sample.mean(dim=0)
    var = centred.pow(2).mean(dim=0)
    return centred.pow(4).mean(dim=0) / (var.pow(2) + _EPS)


def _hoyer(sample: torch.Tensor) -> torch.Tensor:
    """s_i = Hoyer sparsity of dimension i's centred values over the sample,
    (√N − ‖v‖₁/‖v‖₂) / (√N − 1) ∈ [0, 1]: 1 when one sample carries all the mass (one rare
    feature), near 0 when every sample does (many overlapping features). Like kurtosis it
    measures how sparse a dimension's activity is, but is bounded and less outlier-driven."""
    centred = sample - sample.mean(dim=0)
    n = sample.shape[0] ** 0.5
    ratio = centred.abs().sum(dim=0) / (centred.norm(dim=0) + _EPS)
    return ((n - ratio) / (n - 1)).clamp(min=_EPS)


def rank_scores(scores: torch.Tensor) -> torch.Tensor:
    """Map scores to 1 … RANK_RANGE linearly in their rank (ties share their mean rank), so only
    the order of the base score survives: max/min of the result ≤ RANK_RANGE, and (Σs)²/Σs² stays
    near 0.9·d (a linear ramp) however heavy-tailed the base score is."""
    d = scores.shape[0]
    if d == 1:
        return torch.ones_like(scores)
    order = scores.argsort()
    ranks = torch.empty_like(scores)
    ranks[order] = torch.arange(d, dtype=scores.dtype)
    values, inverse = scores.unique(return_inverse=True)
    if values.shape[0] < d:  # average the ranks of tied scores
        sums = torch.zeros_like(values).index_add_(0, inverse, ranks)
        counts = torch.zeros_like(values).index_add_(0, inverse, torch.ones_like(ranks))
        ranks = (sums / counts)[inverse]
    return 1.0 + (RANK_RANGE - 1.0) * ranks / (d - 1)


def _ranked(base: Callable[[torch.Tensor], torch.Tensor]) -> Callable[[torch.Tensor], torch.Tensor]:
    def estimator(sample: torch.Tensor) -> torch.Tensor:
        return rank_scores(base(sample))

    estimator.__doc__ = f"`rank_scores` of {base.__name__.lstrip('_')}: its order, none of its outliers."
    return estimator


ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "uniform": _uniform,
    "inverse_variance": _inverse_variance,
    "kurtosis": _kurtosis,
    "hoyer": _hoyer,
    "inverse_variance_rank": _ranked(_inverse_variance),
    "kurtosis_rank": _ranked(_kurtosis),
    "hoyer_rank": _ranked(_hoyer),
}


def degenerate_dimensions(sample: torch.Tensor) -> torch.Tensor:
    """Boolean mask [d] of the constant or near-constant dimensions (module docstring)."""
    var = sample.double().var(dim=0)
    positive = var[var > 0]
    if positive.numel() == 0:
        return torch.ones_like(var, dtype=torch.bool)
    return var <= DEGENERATE_RELATIVE_VARIANCE * positive.median()


def estimate_weights(sample: torch.Tensor, estimator: str, alpha: float = 1.0) -> torch.Tensor:
    """Weights [d] (float32, mean 1) from a raw sample [N, d] with a named estimator.
    Degenerate dimensions get the median weight (module docstring); warns when the weights
    concentrate on fewer than d/4 effective dimensions."""
    if estimator not in ESTIMATORS:
        raise ConfigError(f"unknown weight estimator {estimator!r}; known: {sorted(ESTIMATORS)} (or a weights file)")
    if sample.ndim != 2 or sample.shape[0] < 2:
        raise ConfigError(f"need a sample of shape [N ≥ 2, d], got {tuple(sample.shape)}")
    sample = sample.detach().double().cpu()
    gamma = torch.ones(sample.shape[1], dtype=torch.float64)
    degenerate = degenerate_dimensions(sample)
    if estimator != "uniform" and not degenerate.all():
        scored = ESTIMATORS[estimator](sample[:, ~degenerate]).pow(alpha)
        gamma[~degenerate] = scored
        gamma[degenerate] = scored.quantile(0.5)
    weights = normalise_weights(gamma)
    warn_if_concentrated(weights, f"weight estimator {estimator!r} (alpha={alpha})")
    return weights


def normalise_weights(weights: torch.Tensor) -> torch.Tensor:
    """Validate and rescale to mean 1."""
    weights = weights.double()
    if weights.ndim != 1 or not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ConfigError("weights must be a finite, non-negative vector [d] with a positive sum")
    return (weights / weights.mean()).float()


def weight_spread(weights: torch.Tensor) -> dict[str, float]:
    """How evenly Γ spreads over the d dimensions: min, max, d, and the effective number of
    dimensions (Σγ)²/Σγ² (d for uniform weights, 1 when a single dimension holds all the weight).
    Independent of the weights' scale."""
    w = weights.detach().double().flatten().cpu()
    return {
        "min": float(w.min()),
        "max": float(w.max()),
        "effective_dims": float(w.sum() ** 2 / w.pow(2).sum()),
        "d": float(w.numel()),
    }


def warn_if_concentrated(weights: torch.Tensor, source: str) -> None:
    """`warnings.warn` when (Σγ)²/Σγ² < d/4: a few dimensions dominate the weighted loss."""
    spread = weight_spread(weights)
    d = int(spread["d"])
    if spread["effective_dims"] < CONCENTRATION_WARNING_FRACTION * d:
        warnings.warn(
            f"{source}: the weights concentrate on {spread['effective_dims']:.1f} effective dimensions "
            f"((Σγ)²/Σγ²) of d={d}, below d/4 = {d / 4:g} (max/min weight {spread['max']:.3g}/{spread['min']:.3g}); "
            "a few dimensions dominate the reconstruction loss. Consider a *_rank estimator "
            "(e.g. 'kurtosis_rank') or a smaller alpha.",
            stacklevel=3,
        )


def load_weights_file(path: str | Path, d: int) -> torch.Tensor:
    """User-supplied weights [d]: a .safetensors file with a tensor named "weights", or a .json
    file holding a list of d numbers or {"weights": [...]}. Normalised to mean 1, used as given
    (no degenerate-dimension floor); warns like `estimate_weights` when they concentrate."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors = load_file(path)
        if "weights" not in tensors:
            raise ConfigError(f"{path}: expected a tensor named 'weights', found {sorted(tensors)}")
        weights = tensors["weights"]
    elif path.suffix == ".json":
        data = json.loads(path.read_text())
        weights = torch.tensor(data["weights"] if isinstance(data, dict) else data, dtype=torch.float64)
    else:
        raise ConfigError(f"{path}: weights file must be .safetensors or .json")
    if weights.shape != (d,):
        raise ConfigError(f"{path}: weights have shape {tuple(weights.shape)}, the dictionary needs ({d},)")
    weights = normalise_weights(weights)
    warn_if_concentrated(weights, f"weights file {path}")
    return weights
