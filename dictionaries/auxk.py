"""Gao et al.'s auxiliary loss for dead latents (AuxK), and the linear SAE body the modern
recipes (BatchTopK, Matryoshka BatchTopK, JumpReLU) share.

AuxK ("Scaling and evaluating sparse autoencoders", Gao et al. 2024, §A.2 and OpenAI's
`sparse_autoencoder/train.py`): a latent is *dead* when it has not fired for
`dead_after_tokens` training tokens (by default 10M, or a 32nd of a shorter run). Let
e = x − x̂ be the main reconstruction's residual (detached), and ê = W_dec z_aux the decoder
applied (without its bias) to the `aux_k` largest ReLU pre-activations among the dead latents, all
others zero. Then, over the B vectors of a batch,

    aux = Σ_b ‖e_b − ê_b‖² / Σ_b ‖e_b − ē‖²,     ē = (1/B) Σ_b e_b,

i.e. the auxiliary MSE normalised by the MSE of predicting the residual by its batch mean, exactly
what OpenAI's `normalized_mse(ê + b_dec, e + b_dec)` computes (the shared bias cancels). The
training loss adds `aux_coefficient` · aux · V with Gao et al.'s α = 1/32, where V = (1/B) Σ_b
‖x_b − x̄‖² (detached) puts the term in the units of our `recon` (the raw MSE): Gao et al.
normalise their *main* MSE by the data's variance too (OpenAI's `train.py`: mse_scale · mse), so
their aux/recon ratio is α · aux / (recon / V), which is ours. Without V the pull of the aux term
would depend on the scale of the data. Deliberate choices:
- no dead latent, or a residual with no spread over the batch (B = 1, or a perfect fit): the term
  is exactly 0 (it has no gradient there anyway; OpenAI's nan_to_num(0) does the same for 0/0);
- "fired" means a non-zero activation in the batch's code (OpenAI counts values > 1e-3);
- no sparsify-style down-weighting when fewer than `aux_k` latents are dead.
The dense path (`_aux_loss`) stays on the device with no host synchronisation; the sparse path
(`_sparse_training_code`, `_sparse_aux_loss`) reads one count per step: it skips AuxK while no
latent can be dead, and takes at most that many candidates per vector (the same loss: the other
top-k slots would be zeros).
"""

from __future__ import annotations

import dataclasses
from dataclasses import dataclass

import torch
from torch import nn

from dictionaries.base import Dictionary, DictionaryConfig, SAELensExport, fold_linear_sae
from dictionaries.sae import topk_activations
from dictionaries.sparse_topk import Selection, SparseCode, fired_latents, sparse_decode, sparse_encode_with_aux
from interp_sae.errors import ConfigError


def auxk_loss(
    pre: torch.Tensor, residual: torch.Tensor, decoder_weight: torch.Tensor, dead: torch.Tensor, aux_k: int
) -> torch.Tensor:
    """Gao et al.'s normalised AuxK loss (module docstring), without its coefficient.

    pre [B, κ]: pre-activations; residual [B, d]: x − x̂ (detached here); decoder_weight [d, κ]
    (an `nn.Linear(κ, d).weight`); dead [κ] bool; aux_k: how many dead latents each vector uses
    (clipped to κ). Returns a float32 scalar.
    """
    dead_pre = pre.masked_fill(~dead, float("-inf"))  # ReLU(-inf) = 0: live latents never take part
    aux_f = topk_activations(dead_pre, min(aux_k, pre.shape[-1]))
    return normalised_aux_mse(residual, aux_f @ decoder_weight.T, dead)


def normalised_aux_mse(residual: torch.Tensor, e_hat: torch.Tensor, dead: torch.Tensor) -> torch.Tensor:
    """Σ_b ‖e_b − ê_b‖² / Σ_b ‖e_b − ē‖² for the residual e [B, d] (detached here) and the dead
    latents' reconstruction of it ê [B, d]; exactly 0 when no latent is `dead` [κ] or e has no spread."""
    e = residual.detach().float()
    e_hat = e_hat.float()
    numerator = (e - e_hat).pow(2).sum()
    denominator = (e - e.mean(dim=0, keepdim=True)).pow(2).sum()
    loss = numerator / denominator.clamp(min=torch.finfo(torch.float32).tiny)
    return torch.where(dead.any() & (denominator > 0), loss, torch.zeros_like(loss))


@torch.no_grad()
def data_variance(xn: torch.Tensor) -> torch.Tensor:
    """V = (1/B) Σ_b ‖x_b − x̄‖² of a batch [B, d]: the scale that puts AuxK in the raw MSE's units."""
    x = xn.float()
    return (x - x.mean(dim=0, keepdim=True)).pow(2).sum(-1).mean()


@torch.no_grad()
def record_firing(tokens_since_fired: torch.Tensor, fired: torch.Tensor, tokens: int) -> None:
    """Advance each latent's count of tokens since it last fired by the batch's `tokens`, and reset
    the latents that `fired` [κ] (bool: non-zero on some vector of the batch)."""
    tokens_since_fired.add_(tokens).masked_fill_(fired, 0)


DEAD_AFTER_TOKENS_MAX = 10_000_000
"""Gao et al.'s dead window, the default for runs of at least 32 times as many tokens."""
DEAD_WINDOW_RUN_FRACTION = 32
"""In a shorter run a latent is dead after a 32nd of the run's tokens without firing."""

INIT_SCALE_VECTORS = 4096
"""Vectors of the preparation sample that `scale_encoder_to_data` encodes (bounds its memory)."""


@torch.no_grad()
def scale_encoder_to_data(model: Dictionary, encoder: nn.Linear, xn: torch.Tensor) -> None:
    """Divide the encoder's weight by r = mean ‖W_dec f‖ / mean ‖x − b_dec‖ over (up to
    INIT_SCALE_VECTORS of) the normalised sample `xn`, so that the initial reconstruction has about
    the centred data's size (Gao et al.'s `init_from_data` does this for TopK). For dictionaries
    whose code is dense at initialisation (JumpReLU, Gated): with encoder = decoderᵀ about half of
    the κ latents fire, and W_dec f starts about κ/(2d) times too large."""
    xn = xn[:INIT_SCALE_VECTORS]
    centred = (xn - model.decoder.bias).norm(dim=-1).mean()
    reconstructed = (model._encode(xn) @ model.decoder.weight.T).norm(dim=-1).mean()
    ratio = reconstructed / centred
    if bool(torch.isfinite(ratio)) and float(ratio) > 0:
        encoder.weight /= ratio


@dataclass(kw_only=True)
class AuxKConfig(DictionaryConfig):
    """The dead-latent fields every AuxK dictionary has (not an architecture of its own)."""

    aux_k: int = 512
    """Dead latents each vector's auxiliary reconstruction uses (clipped to n_latents); Gao et al.'s 512."""
    aux_coefficient: float = 1 / 32
    """α, Gao et al.'s 1/32; 0 switches AuxK off."""
    dead_after_tokens: int | None = None
    """A latent is dead after this many training tokens without firing. None (the default): Gao et
    al.'s 10M, or a 32nd of the run's training tokens when that is fewer; the trainer fixes it before
    the first step and saves it, when its batch source says its `batch_size` (else 10M). A 10M window never lets AuxK act in a run shorter than 10M tokens.
    Measured (Matryoshka, k 64, κ 2048, 202 steps of 4,096 SmolLM2 layer-15 vectors, 827k tokens):
    latents never active on 30k held-out vectors 19.9% with 10M, 10.5% with 100k, 3.1% with 25k
    (≈ the run's 32nd), held-out FVU 0.178 in all three."""

    def __post_init__(self) -> None:
        super().__post_init__()
        if self.aux_k < 1:
            raise ConfigError(f"{self.architecture}: aux_k must be at least 1, got {self.aux_k}")
        if not self.aux_coefficient >= 0:
            raise ConfigError(f"{self.architecture}: aux_coefficient must be ≥ 0, got {self.aux_coefficient}")
        if self.dead_after_tokens is not None and self.dead_after_tokens < 1:
            raise ConfigError(
                f"{self.architecture}: dead_after_tokens must be at least 1, got {self.dead_after_tokens}"
            )


class AuxKSAE(Dictionary):
    """Linear encoder and decoder with the modern initialisation and constraints:

    - pre = W_e (x − b_d) + b_e: the decoder bias b_d is subtracted before encoding, and set to the
      mean of the (normalised) training sample by `prepare`;
    - decoder columns have unit norm, re-imposed after every optimiser step;
    - the encoder starts as the decoder's transpose, with b_e = 0;
    - `tokens_since_fired` counts, per latent, training tokens since it last fired (a buffer, so
      saving, loading and resuming keep it), for AuxK.
    Subclasses choose the activation (`_encode`, `_loss`) and how it is exported.
    """

    config: AuxKConfig
    tokens_since_fired: torch.Tensor

    def __init__(self, config: AuxKConfig) -> None:
        super().__init__(config)
        self.encoder = nn.Linear(config.d, config.n_latents)
        with torch.no_grad():
            self.decoder.bias.zero_()
            self._normalise_decoder()
            self.encoder.weight.copy_(self.decoder.weight.T)
            self.encoder.bias.zero_()
        self.register_buffer("tokens_since_fired", torch.zeros(config.n_latents, dtype=torch.long))

    @torch.no_grad()
    def _normalise_decoder(self) -> None:
        self.decoder.weight /= self.decoder.weight.norm(dim=0, keepdim=True).clamp(min=1e-12)

    def prepare(self, sample: torch.Tensor) -> None:
        """b_dec := mean of the (normalised) training sample."""
        with torch.no_grad():
            xn = sample.to(self.decoder.bias.device, torch.float32) * self.input_scale
            self.decoder.bias.copy_(xn.mean(dim=0))

    def after_optimizer_step(self) -> None:
        self._normalise_decoder()

    def plan_training(self, run_tokens: int) -> None:
        """An unset `dead_after_tokens` becomes min(10M, run_tokens / 32) (at least 1)."""
        if self.config.dead_after_tokens is None:
            window = max(1, min(DEAD_AFTER_TOKENS_MAX, run_tokens // DEAD_WINDOW_RUN_FRACTION))
            self.config = dataclasses.replace(self.config, dead_after_tokens=window)

    @property
    def dead_window(self) -> int:
        """Training tokens without firing after which a latent is dead (10M while unplanned)."""
        return self.config.dead_after_tokens or DEAD_AFTER_TOKENS_MAX

    def _pre_activations(self, xn: torch.Tensor) -> torch.Tensor:
        return self.encoder(xn - self.decoder.bias)

    def _aux_loss(self, pre: torch.Tensor, xn: torch.Tensor, x_hat: torch.Tensor, f: torch.Tensor) -> torch.Tensor:
        """Update the firing counters from the batch's dense code `f` (training only), then the
        weighted AuxK term on the latents that are still dead."""
        cfg = self.config
        if self.training:
            record_firing(self.tokens_since_fired, (f != 0).any(dim=0), f.shape[0])
        dead = self.tokens_since_fired >= self.dead_window
        normalised = auxk_loss(pre, xn.float() - x_hat.float(), self.decoder.weight, dead, cfg.aux_k)
        return cfg.aux_coefficient * data_variance(xn) * normalised

    def _sparse_training_code(
        self,
        xn: torch.Tensor,
        selection: Selection,
        threshold: torch.Tensor | None = None,
        pre: torch.Tensor | None = None,
    ) -> tuple[SparseCode, torch.Tensor]:
        """The code of x − b_dec through the sparse path (`sparse_encode_with_aux`), with the AuxK
        candidates, and the latents dead after this batch ([κ] bool); the firing counters advanced
        (training only). The same code, dead set and counters as the dense definitions; one
        host synchronisation to skip AuxK when no latent can be dead. `pre`: the pre-activations,
        when the caller has them already (no gradient flows through them)."""
        cfg = self.config
        tokens = xn.shape[0] if self.training else 0
        maybe_dead = self.tokens_since_fired + tokens >= self.dead_window  # unless they fire now
        n_maybe_dead = int(maybe_dead.sum()) if cfg.aux_coefficient > 0 else 0  # the one host sync
        # At most as many AuxK candidates per vector as latents may be dead: beyond those, top-k
        # slots hold only zeros, which cost as much to decode as real entries (aux_k 512 with one
        # dead latent made a step 7x slower).
        code = sparse_encode_with_aux(
            xn - self.decoder.bias,
            self.encoder.weight,
            self.encoder.bias,
            selection,
            threshold,
            maybe_dead if n_maybe_dead else None,
            min(cfg.aux_k, max(n_maybe_dead, 1)),
            pre=pre,
        )
        fired = fired_latents(code.values, code.indices, cfg.n_latents)
        if self.training:
            record_firing(self.tokens_since_fired, fired, tokens)
        return code, maybe_dead & ~fired

    def _sparse_decode(self, code: SparseCode) -> torch.Tensor:
        """x̂ (normalised units) from a sparse training code."""
        return sparse_decode(code.values, code.indices, self.decoder.weight, self.decoder.bias, code.layout)

    def _sparse_recon_and_aux(
        self, xn: torch.Tensor, code: SparseCode, dead: torch.Tensor
    ) -> tuple[torch.Tensor, torch.Tensor]:
        """The loss terms `recon` (batch mean of ‖x − x̂‖², float32) and `aux` of a sparse training code."""
        residual = xn.float() - self._sparse_decode(code).float()
        return residual.pow(2).sum(-1).mean(), self._sparse_aux_loss(xn, residual, code, dead)

    def _sparse_aux_loss(
        self, xn: torch.Tensor, residual: torch.Tensor, code: SparseCode, dead: torch.Tensor
    ) -> torch.Tensor:
        """The weighted AuxK term from a sparse training code, the residual x − x̂ and the dead set:
        aux_coefficient · V · `auxk_loss` (module docstring), without the dense [B, κ] products."""
        e_hat = sparse_decode(code.aux_values, code.aux_indices, self.decoder.weight)
        normalised = normalised_aux_mse(residual, e_hat, dead)
        return self.config.aux_coefficient * data_variance(xn) * normalised

    def _jumprelu_export(self, threshold: torch.Tensor) -> SAELensExport:
        """SAELens "jumprelu" with apply_b_dec_to_input: f = relu(pre)·(pre > threshold), pre in our
        normalised units, which the folded W_enc = s·W_eᵀ reproduces exactly, so the threshold is unchanged."""
        tensors = fold_linear_sae(self.encoder, self.decoder, self.input_scale)
        tensors["threshold"] = threshold.detach().float().expand(self.config.n_latents).cpu().contiguous()
        return SAELensExport("jumprelu", True, tensors)


def jumprelu(pre: torch.Tensor, threshold: torch.Tensor) -> torch.Tensor:
    """SAELens's JumpReLU inference: relu(pre) where pre > threshold, else 0."""
    return torch.relu(pre) * (pre > threshold)
