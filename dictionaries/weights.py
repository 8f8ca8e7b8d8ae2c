"""Per-input-dimension reconstruction weights Γ = diag(γ₁ … γ_d) for the weighted SAE (SPEC §3).

γ_i = s_i^α with s_i a monosemanticity score of input dimension i (high = few true features
load on it), normalised to mean 1 so the sparsity coefficient keeps its meaning next to the
unweighted SAE (paper B's normalisation is UNKNOWN; this is our choice). The paper's formula for
s_i is UNKNOWN; the estimators below are candidates, compared in
benchmarks/synthetic_superposition.py. Each reads a sample [N, d] of raw activations.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import torch
from safetensors.torch import load_file

_EPS = 1e-12


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
    as polysemanticity rises. Scale-free."""
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


ESTIMATORS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    "uniform": _uniform,
    "inverse_variance": _inverse_variance,
    "kurtosis": _kurtosis,
    "hoyer": _hoyer,
}


def estimate_weights(sample: torch.Tensor, estimator: str, alpha: float = 1.0) -> torch.Tensor:
    """Weights [d] (float32, mean 1) from a raw sample [N, d] with a named estimator."""
    if estimator not in ESTIMATORS:
        raise ValueError(f"unknown weight estimator {estimator!r}; known: {sorted(ESTIMATORS)} (or a weights file)")
    if sample.ndim != 2 or sample.shape[0] < 2:
        raise ValueError(f"need a sample of shape [N ≥ 2, d], got {tuple(sample.shape)}")
    scores = ESTIMATORS[estimator](sample.detach().double().cpu())
    return normalise_weights(scores.pow(alpha))


def normalise_weights(weights: torch.Tensor) -> torch.Tensor:
    """Validate and rescale to mean 1."""
    weights = weights.double()
    if weights.ndim != 1 or not torch.isfinite(weights).all() or (weights < 0).any() or weights.sum() <= 0:
        raise ValueError("weights must be a finite, non-negative vector [d] with a positive sum")
    return (weights / weights.mean()).float()


def load_weights_file(path: str | Path, d: int) -> torch.Tensor:
    """User-supplied weights [d]: a .safetensors file with a tensor named "weights", or a .json
    file holding a list of d numbers or {"weights": [...]}. Normalised to mean 1."""
    path = Path(path)
    if path.suffix == ".safetensors":
        tensors = load_file(path)
        if "weights" not in tensors:
            raise ValueError(f"{path}: expected a tensor named 'weights', found {sorted(tensors)}")
        weights = tensors["weights"]
    elif path.suffix == ".json":
        data = json.loads(path.read_text())
        weights = torch.tensor(data["weights"] if isinstance(data, dict) else data, dtype=torch.float64)
    else:
        raise ValueError(f"{path}: weights file must be .safetensors or .json")
    if weights.shape != (d,):
        raise ValueError(f"{path}: weights have shape {tuple(weights.shape)}, the dictionary needs ({d},)")
    return normalise_weights(weights)
