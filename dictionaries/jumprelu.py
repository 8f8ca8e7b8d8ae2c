"""JumpReLU SAE (Rajamanoharan et al. 2024, "Jumping Ahead: Improving Reconstruction Fidelity with
JumpReLU Sparse Autoencoders").

Every latent j has a learned threshold θ_j ≥ 0:

    pre = W_e (x − b_d) + b_e,     f = relu(pre) · H(pre − θ)

(the paper writes pre·H(pre − θ); with θ > 0 that is the same, and relu(pre)·H(pre − θ) is
SAELens's inference formula, which also covers θ = 0.) The loss is the reconstruction error plus
an L0 penalty:

    recon    = ‖x − x̂‖²                                   (batch mean)
    sparsity = λ · mean_b L0_b                              if target_l0 is None
             = λ · mean_b (2 / L0*) (L0_b − L0*)²           if target_l0 = L0* is set
    aux      = aux_coefficient × Gao et al.'s normalised AuxK loss (0 switches it off)

with L0_b = Σ_j H(pre_bj − θ_j) the L0 of vector b and λ = `l0_coefficient`. The target form is
a quadratic penalty, not an adaptive λ: Gemma Scope 2's, as SAELens's "quadratic" L0 loss has
it, per vector (so it also pulls each vector's L0, not only the mean, towards L0*). Neither H nor
the L0 have a useful gradient, so the paper's straight-through estimators with a rectangle
kernel K(u) = 1[|u| ≤ ½] of bandwidth ε (`bandwidth`) give the thresholds one:

    ∂f/∂θ  := −(θ/ε) K((pre − θ)/ε),    ∂H/∂θ := −(1/ε) K((pre − θ)/ε),

while pre gets the ordinary gradient of f (1 where active) and none from the L0 term. The
paper's defaults (bandwidth 0.001, initial θ 0.001) assume inputs scaled to E‖x‖² = d; use
TrainConfig(normalize_input=True) (mean norm √d), or scale them with the data. With a target L0
the initial θ comes from the data instead (`initial_threshold`), so the run starts at its target.
Not implemented: the paper's linear warm-up of λ.

Training takes the sparse path (`dictionaries.sparse_topk`, selection "threshold") once at most
SPARSE_MAX_ACTIVE_FRACTION of the pre-activations (of the batch's first rows) are above θ: then
only the encoder's forward is dense, and the decoder and both backward passes touch the active
entries and the few in the estimators' window, with the same loss and gradients as the dense
formulas above. A JumpReLU starts dense (about half its latents fire), and there the dense matrix
products are faster.
Inference (`encode`) is dense.

How θ is trained (`threshold_parameterization`):
- "direct" (default, as SAELens ≥ 6.48): θ itself is the parameter (`threshold`), projected back
  to θ ≥ 0 after every optimiser step. Adam moves it by up to about lr per step.
- "log" (the paper's): the parameter is log θ (`log_threshold`), so θ > 0 always, but Adam moves
  θ by a factor of only about e^lr per step, and with the paper's small ε the gradient is sparse.
  Measured here (d = 64, κ = 256, inputs at mean norm √d, batch 512, lr 5e-3, λ = 1): after 1,500
  steps "log" still had L0 ≈ 169 of 256 latents active (median θ 0.005), "direct" had L0 ≈ 4.6.
The rest is the modern recipe (`dictionaries.auxk.AuxKSAE`): b_dec from the data mean, unit-norm
decoder columns, encoder = decoderᵀ, here scaled by one number from the data so that the first
reconstructions have the data's size (`dictionaries.auxk.scale_encoder_to_data`: with κ ≫ d about
half the latents fire at first, and an unscaled start reconstructs κ/(2d) times too large).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

import torch
from torch import nn

from dictionaries.auxk import AuxKConfig, AuxKSAE, jumprelu, scale_encoder_to_data
from dictionaries.base import LossTerms, SAELensExport, squared_error
from dictionaries.registry import register
from dictionaries.sparse_topk import Selection
from interp_sae.errors import ConfigError

SPARSE_MAX_ACTIVE_FRACTION = 0.125
"""Train through the sparse path when at most this fraction of a batch's pre-activations is active.
Measured (CPU, B 4096, d 576, κ 2048, one step, s): active 1% sparse 0.28 / dense 0.87, 3% 0.32 /
0.82, 6% 0.46 / 1.03, 12% 0.71 / 0.81, 25% 1.16 / 0.81."""
PAPER_INITIAL_THRESHOLD = 0.001
THRESHOLD_INIT_VECTORS = 16_384
"""Vectors of the preparation sample that set the initial thresholds from a target L0 (at L0* 16 of
κ 2048, each latent's θ is then its 128th largest pre-activation)."""
PRE_ACTIVATION_CHUNK = 1 << 24
"""Pre-activations [vectors, latents] computed at once while setting them (64 MiB in float32)."""
ACTIVE_FRACTION_SAMPLE = 65_536
"""That fraction is counted on the batch's first rows, about this many pre-activations: counting
all of them was a pass over [B, κ], ~4% of a sparse step at B 4096, κ 2048."""


@dataclass(kw_only=True)
class JumpReLUConfig(AuxKConfig):
    architecture = "jumprelu"
    l0_coefficient: float = 1.0
    """λ, the price of one active latent in units of squared reconstruction error."""
    target_l0: float | None = None
    """L0* of the quadratic penalty λ·(2/L0*)(L0 − L0*)²; None: the paper's linear penalty λ·L0."""
    bandwidth: float = 0.001
    """ε of the rectangle kernel of the straight-through estimators (the paper's 0.001)."""
    initial_threshold: float | None = None
    """θ of every latent at initialisation. None (the default): with a target_l0, each latent's own θ
    from the preparation sample (after the encoder is scaled to the data), so that it fires on a
    fraction L0*/κ of it and the run starts at its target L0; without a target, the paper's 0.001.
    Why: Adam moves θ by about lr per step, while an encoder row moves the pre-activations far
    faster, so from 0.001 θ never catches up. Measured on the quality race's batches (SmolLM2 layer
    15, κ 2048, 202 steps of 4096, lr 1e-2): from 0.001, held-out L0 141 / 145 / 151 for targets 16
    / 32 / 64; from a fixed 0.5, 27 / 29 / 44; from the data (bandwidth 0.01), 16.2 at target 16
    (FVU 0.207, 0.3% dead) and 72 at target 64 (FVU 0.146, 0.7% dead). Scaling the encoder after
    setting θ (so that the sparse start reconstructs at the data's size) inflated it: 73% dead."""
    threshold_parameterization: Literal["direct", "log"] = "direct"
    """Train θ itself ("direct", SAELens's choice) or log θ ("log", the paper's); see the module docstring."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if not self.l0_coefficient >= 0:
            raise ConfigError(f"{self.architecture}: l0_coefficient must be ≥ 0, got {self.l0_coefficient}")
        if self.target_l0 is not None and not self.target_l0 > 0:
            raise ConfigError(f"{self.architecture}: target_l0 must be positive (or None), got {self.target_l0}")
        if not self.bandwidth > 0:
            raise ConfigError(f"{self.architecture}: bandwidth must be positive, got {self.bandwidth}")
        if self.initial_threshold is not None and not self.initial_threshold > 0:
            raise ConfigError(f"{self.architecture}: initial_threshold must be positive, got {self.initial_threshold}")
        if self.threshold_parameterization not in ("direct", "log"):
            raise ConfigError(
                f"{self.architecture}: threshold_parameterization must be 'direct' or 'log', "
                f"got {self.threshold_parameterization!r}"
            )


def _rectangle(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """K((pre − θ)/ε) = 1[|pre − θ| ≤ ε/2], as the sparse path's `threshold_code` computes it."""
    return ((pre.float() - threshold).abs() <= bandwidth / 2).float()


class _JumpReLUFunction(torch.autograd.Function):
    """relu(pre)·H(pre − θ) with the paper's pseudo-derivative for θ."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return jumprelu(pre, threshold)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, threshold = ctx.saved_tensors
        grad_pre = grad * ((pre > threshold) & (pre > 0))
        kernel = _rectangle(pre, threshold, ctx.bandwidth)
        grad_threshold = (-(threshold / ctx.bandwidth) * kernel * grad.float()).sum(dim=0)
        return grad_pre, grad_threshold.to(threshold.dtype), None


class _StepFunction(torch.autograd.Function):
    """H(pre − θ) with the paper's pseudo-derivative for θ and none for pre."""

    @staticmethod
    def forward(ctx: Any, pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
        ctx.save_for_backward(pre, threshold)
        ctx.bandwidth = bandwidth
        return (pre > threshold).float()

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor, None]:
        pre, threshold = ctx.saved_tensors
        grad_threshold = (-(1 / ctx.bandwidth) * _rectangle(pre, threshold, ctx.bandwidth) * grad.float()).sum(dim=0)
        return torch.zeros_like(pre), grad_threshold.to(threshold.dtype), None


def jumprelu_ste(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """relu(pre)·H(pre − θ) for pre [B, κ] and θ [κ], with the straight-through gradient for θ."""
    out: torch.Tensor = _JumpReLUFunction.apply(pre, threshold, bandwidth)
    return out


def step_ste(pre: torch.Tensor, threshold: torch.Tensor, bandwidth: float) -> torch.Tensor:
    """H(pre − θ) as float, with the straight-through gradient for θ (none for pre)."""
    out: torch.Tensor = _StepFunction.apply(pre, threshold, bandwidth)
    return out


@register
class JumpReLU(AuxKSAE):
    config_class = JumpReLUConfig
    config: JumpReLUConfig

    def __init__(self, config: JumpReLUConfig) -> None:
        super().__init__(config)
        initial = config.initial_threshold or PAPER_INITIAL_THRESHOLD
        self._threshold_name = "log_threshold" if config.threshold_parameterization == "log" else "threshold"
        self.register_parameter(self._threshold_name, nn.Parameter(torch.empty(config.n_latents)))
        self.set_threshold(torch.full((config.n_latents,), initial))

    @property
    def threshold_parameter(self) -> nn.Parameter:
        """The trained parameter [κ]: θ ("direct") or log θ ("log")."""
        parameter = self._parameters.get(self._threshold_name)
        if parameter is None:  # only while __init__ registers it (hasattr, called there, expects this)
            raise AttributeError(self._threshold_name)
        return parameter

    @property
    def threshold(self) -> torch.Tensor:
        """θ [κ] in normalised units."""
        if self.config.threshold_parameterization == "log":
            return self.threshold_parameter.exp()
        return self.threshold_parameter

    @torch.no_grad()
    def set_threshold(self, threshold: torch.Tensor) -> None:
        """θ := `threshold` [κ] (normalised units), clamped to θ ≥ 0 ("direct") or θ > 0 ("log")."""
        if self.config.threshold_parameterization == "log":
            self.threshold_parameter.copy_(threshold.clamp(min=torch.finfo(threshold.dtype).tiny).log())
        else:
            self.threshold_parameter.copy_(threshold.clamp(min=0))

    @torch.no_grad()
    def prepare(self, sample: torch.Tensor) -> None:
        """b_dec := the sample mean; with a target L0 and no initial_threshold, each θ_j such that
        latent j fires on a fraction L0*/κ of the sample; then the encoder (and θ with it) scaled so
        that the first reconstructions have about the data's size
        (`dictionaries.auxk.scale_encoder_to_data`)."""
        super().prepare(sample)
        cfg = self.config
        xn = sample.to(self.decoder.bias.device, torch.float32) * self.input_scale
        scale_encoder_to_data(self, self.encoder, xn)
        if cfg.initial_threshold is None and cfg.target_l0 is not None:
            rate = cfg.target_l0 / cfg.n_latents
            self.set_threshold(self.thresholds_for_firing_rate(xn[:THRESHOLD_INIT_VECTORS], rate))

    @torch.no_grad()
    def thresholds_for_firing_rate(self, xn: torch.Tensor, rate: float) -> torch.Tensor:
        """θ [κ]: per latent, the value its pre-activation exceeds on a fraction `rate` of `xn`
        (at least one vector, never all), computed a block of latents at a time."""
        n = xn.shape[0]
        above = min(n - 1, max(1, round(rate * n)))
        centred = xn - self.decoder.bias
        weight, bias = self.encoder.weight, self.encoder.bias
        thresholds = torch.empty(weight.shape[0], device=xn.device)
        block = max(1, PRE_ACTIVATION_CHUNK // n)
        for lo in range(0, weight.shape[0], block):
            pre = torch.nn.functional.linear(centred, weight[lo : lo + block], bias[lo : lo + block])
            thresholds[lo : lo + block] = pre.kthvalue(n - above, dim=0).values
        return thresholds

    def after_optimizer_step(self) -> None:
        super().after_optimizer_step()
        if self.config.threshold_parameterization == "direct":
            with torch.no_grad():
                self.threshold_parameter.clamp_(min=0)

    def _encode(self, xn: torch.Tensor) -> torch.Tensor:
        return jumprelu(self._pre_activations(xn), self.threshold)

    def sparsity_penalty(self, l0: torch.Tensor) -> torch.Tensor:
        """The batch mean of λ·L0, or of λ·(2/L0*)(L0 − L0*)² with a target (module docstring),
        from the per-vector L0s [B]."""
        cfg = self.config
        if cfg.target_l0 is None:
            return cfg.l0_coefficient * l0.mean()
        return cfg.l0_coefficient * (2 / cfg.target_l0 * (l0 - cfg.target_l0).pow(2)).mean()

    def _loss(self, xn: torch.Tensor, generator: torch.Generator | None) -> LossTerms:
        cfg = self.config
        pre = self._pre_activations(xn)
        threshold = self.threshold
        # Which path is faster, judged on the first rows (shuffled batches: a fair sample; both
        # paths give the same loss and gradients, so only the speed depends on it).
        sample = pre[: max(1, ACTIVE_FRACTION_SAMPLE // pre.shape[1])]
        if int(torch.count_nonzero(sample > threshold)) <= SPARSE_MAX_ACTIVE_FRACTION * sample.numel():
            selection = Selection("threshold", bandwidth=cfg.bandwidth)
            code, dead = self._sparse_training_code(xn, selection, threshold, pre=pre)
            assert code.l0 is not None  # a threshold code counts its L0
            recon, aux = self._sparse_recon_and_aux(xn, code, dead)
            return {"recon": recon, "sparsity": self.sparsity_penalty(code.l0), "aux": aux}
        f = jumprelu_ste(pre, threshold, cfg.bandwidth)
        x_hat = self.decoder(f)
        l0 = step_ste(pre, threshold, cfg.bandwidth).sum(dim=-1)
        return {
            "recon": squared_error(xn, x_hat).mean(),
            "sparsity": self.sparsity_penalty(l0),
            "aux": self._aux_loss(pre, xn, x_hat, f),
        }

    def saelens_export(self) -> SAELensExport:
        """SAELens "jumprelu": its threshold is our θ (pre-activations are identical after folding)."""
        return self._jumprelu_export(self.threshold)
