"""Every dictionary metric, defined once (SPEC §4). Reports name the variant they measure.

Which latents are *active* for a vector:
- variational dictionaries (VAE, VAEase): split the vector's κ values of log σ² into two groups
  by 1-D 2-means (the threshold minimising the summed within-group squared deviation, i.e.
  Otsu), and call the low-variance group active (`ad_method = "two_means_log_variance"`).
  A vector whose κ values are all equal has no split and is decided by the common value: all κ
  latents active when σ² < 0.5 (log σ² < log 0.5), none otherwise (`degenerate_threshold`).
  The authors' code reports AD = κ for such a vector (its split leaves every value in one group,
  counted as active); we follow it below σ² = 0.5 and report 0 above, where a common σ² near the
  prior's 1 means no latent carries information;
- SAEs: the non-zero latents, so AD = L0 (`ad_method = "l0"`). The authors' code splits log|z|,
  which exact zeros make degenerate.
AD is the count of active latents; dead and dense fractions use the same active set.
"""

from __future__ import annotations

import csv
import io
import math
from pathlib import Path

import torch

from dictionaries.base import Dictionary, squared_error
from dictionaries.data import BatchSource, within_norm
from interp_sae.atomic import write_atomic, write_text_atomic
from interp_sae.errors import ConfigError

LOG_HALF = math.log(0.5)
"""log 0.5: a row of log σ² values that are all equal is active iff σ² < 0.5 (see `two_means_low_mask`)."""


def two_means_low_mask(values: torch.Tensor, degenerate_threshold: float = LOG_HALF) -> torch.Tensor:
    """Per row of `values` [B, κ], the members of the lower group of the optimal 1-D 2-means split.

    Ties between equally good splits go to the smaller low group. A row with a single distinct
    value (all κ equal, or κ = 1) has no split; it is decided by that common value: the whole row
    is low (active) when the value is below `degenerate_threshold`, none of it otherwise.
    `degenerate_threshold` is in the units of `values`; the default, log 0.5, is for log σ²
    (active iff σ² < 0.5: nearer the posterior's σ² → 0 than the prior's σ² = 1).
    """
    v = values.double()
    kappa = v.shape[-1]
    degenerate = v.amax(dim=-1, keepdim=True) == v.amin(dim=-1, keepdim=True)
    degenerate_low = degenerate & (v[:, :1] < degenerate_threshold)
    if kappa < 2:
        return degenerate_low.expand_as(v).clone()
    v = v - v.mean(dim=-1, keepdim=True)  # centring keeps the cumulative sums well conditioned
    s, _ = v.sort(dim=-1)
    n_low = torch.arange(1, kappa, device=s.device, dtype=s.dtype)
    c1, c2 = s.cumsum(-1)[:, :-1], s.pow(2).cumsum(-1)[:, :-1]
    t1, t2 = c1[:, -1:] + s[:, -1:], c2[:, -1:] + s[:, -1:].pow(2)
    within = (c2 - c1.pow(2) / n_low) + ((t2 - c2) - (t1 - c1).pow(2) / (kappa - n_low))
    best = within.argmin(dim=-1, keepdim=True)  # first minimum = smallest low group
    threshold = s.gather(-1, best)
    return torch.where(degenerate, degenerate_low, v <= threshold)


@torch.no_grad()
def evaluate(
    model: Dictionary,
    source: BatchSource,
    max_vectors: int = 65536,
    dense_threshold: float = 0.1,
    generator: torch.Generator | None = None,
    max_norm: float | None = None,
) -> dict[str, float | str]:
    """Held-out metrics over the first `max_vectors` vectors of epoch 0 of `source`.

    Vectors longer than `max_norm` are left out (`n_left_out` counts them, over the batches read):
    by default the cap the dictionary recorded in training (`max_input_norm`, from
    `TrainConfig.max_norm_ratio`), if any, so that it is scored on what it was trained on, as its
    trainer scored it; `math.inf` keeps every vector.

    - re_deterministic: mean over vectors of ‖x − x̂‖² (not normalised), x̂ the deterministic
      decode (VAEase: from the gated mean (1 − σ) ⊙ μ; VAE: from μ; SAEs: their code).
    - re_sample (variational only): the same from one random posterior sample, as the authors report.
    - fvu_deterministic = Σ‖x − x̂‖² / Σ‖x − x̄‖², explained_variance_deterministic = 1 − FVU.
    - ad_mean, ad_std (population std over vectors), ad_method; l0_mean (SAEs only).
    - dead_fraction: latents never active on these vectors; dense_fraction: latents active on
      more than `dense_threshold` of them.
    - gamma (variational only): decoder noise variance, in normalised input units.
    """
    device = next(model.parameters()).device
    cap = max_norm if max_norm is not None else model.metadata.get("max_input_norm")
    was_training = model.training
    model.eval()
    n, left_out, sampled_any = 0, 0, False
    sse = sse_sample = sum_sq = ad_sum = ad_sq = 0.0
    sum_x = torch.zeros(model.config.d, dtype=torch.float64, device=device)
    fire_count = torch.zeros(model.config.n_latents, dtype=torch.float64, device=device)
    for batch in source.batches(0):
        x = batch.to(device, torch.float32)
        kept = within_norm(x, cap)
        left_out += x.shape[0] - kept.shape[0]
        x = kept[: max_vectors - n]
        sse += float(squared_error(x, model(x)).double().sum())
        sampled = model.sampled_reconstruction(x, generator)
        if sampled is not None:
            sampled_any = True
            sse_sample += float(squared_error(x, sampled).double().sum())
        sum_x += x.double().sum(0)
        sum_sq += float(x.double().pow(2).sum())
        mask = model.active_mask(x)
        ad = mask.sum(-1).double()
        ad_sum, ad_sq = ad_sum + float(ad.sum()), ad_sq + float(ad.pow(2).sum())
        fire_count += mask.sum(0).double()
        n += x.shape[0]
        if n >= max_vectors:
            break
    model.train(was_training)
    if n == 0:
        if left_out:
            raise ConfigError(
                f"every vector evaluated ({left_out}) is longer than the cap {cap:.4g} the dictionary was trained "
                "under (max_input_norm); pass max_norm=math.inf to score them anyway"
            )
        raise ConfigError("evaluation source yielded no vectors")
    total_variance = sum_sq - float(sum_x.pow(2).sum()) / n
    fvu = sse / total_variance if total_variance > 0 else float("nan")
    ad_mean = ad_sum / n
    report: dict[str, float | str] = {
        "n_vectors": n,
        "n_left_out": left_out,
        "re_deterministic": sse / n,
        "fvu_deterministic": fvu,
        "explained_variance_deterministic": 1 - fvu,
        "ad_mean": ad_mean,
        "ad_std": max(ad_sq / n - ad_mean**2, 0.0) ** 0.5,
        "ad_method": model.ad_method,
        "dead_fraction": float((fire_count == 0).double().mean()),
        "dense_fraction": float((fire_count / n > dense_threshold).double().mean()),
    }
    if sampled_any:
        report["re_sample"] = sse_sample / n
    if model.ad_method == "l0":
        report["l0_mean"] = ad_mean
    report.update(model.report_extras())
    return report


@torch.no_grad()
def ad_re_curve(
    model: Dictionary, x: torch.Tensor, max_k: int | None = None, features: torch.Tensor | None = None
) -> list[tuple[int, float]]:
    """RE keeping only each vector's k most active latents (by `activity_score`), for
    k = 1 … max_k (default κ). Returns [(k, re)].

    By default the code kept is the deterministic one (`encode`): RE of the deterministic decode.
    `features` [B, κ] replaces it, e.g. the code of one posterior sample (`VAEase.sampled_code`),
    which gives the authors' one-sample variant; the order of the latents is the same either way.
    """
    was_training = model.training
    model.eval()
    features = (model.encode(x) if features is None else features).float()
    order = model.activity_score(x).argsort(dim=-1, descending=True)
    directions = model.feature_directions.float()
    x_hat = model.decode(torch.zeros_like(features)).float()
    curve: list[tuple[int, float]] = []
    last_k = min(max_k or features.shape[-1], features.shape[-1])
    for k in range(last_k):
        latent = order[:, k]
        values = features.gather(-1, latent[:, None])
        if not values.any():  # no vector has a k-th active latent (sparse SAEs): the curve is flat from here
            curve += [
                (j + 1, curve[-1][1] if curve else float(squared_error(x, x_hat).mean())) for j in range(k, last_k)
            ]
            break
        x_hat = x_hat + values * directions[latent]
        curve.append((k + 1, float(squared_error(x, x_hat).mean())))
    model.train(was_training)
    return curve


def write_curve_csv(curve: list[tuple[int, float]], path: str | Path) -> None:
    lines = io.StringIO()
    writer = csv.writer(lines)
    writer.writerow(["k", "re_deterministic"])
    writer.writerows(curve)
    write_text_atomic(path, lines.getvalue())


def plot_ad_re_curves(curves: dict[str, list[tuple[int, float]]], path: str | Path) -> None:
    """One PNG with every dictionary's AD–RE curve (RE of the deterministic decode vs k)."""
    from matplotlib.figure import Figure  # no pyplot: leaves the caller's backend alone

    fig = Figure(figsize=(6, 4))
    ax = fig.subplots()
    for name, curve in curves.items():
        ks, res = zip(*curve)
        ax.plot(ks, res, label=name)
    ax.set_xlabel("k (most active latents kept per vector)")
    ax.set_ylabel("RE, deterministic decode")
    ax.set_yscale("log")
    ax.legend()
    fig.tight_layout()
    write_atomic(path, lambda tmp: fig.savefig(tmp, dpi=120, format="png"))
