"""The modern TopK SAE recipe (Gao et al. 2024, "Scaling and evaluating sparse autoencoders"),
kept apart from the paper-faithful `sae_topk`:

- the decoder bias is subtracted before encoding and initialised to the data mean;
- decoder columns have unit norm (re-imposed after every optimiser step), encoder initialised
  to the decoder's transpose;
- an auxiliary loss (AuxK) lets dead latents (no activation for `dead_after_tokens` tokens)
  reconstruct the residual e = x − x̂ (detached) with their top `aux_k` activations, so they get
  gradient again.

Training runs through the sparse TopK path (`dictionaries.sparse_topk`): the decoder and both
backward passes touch only the k active latents of each vector (and the AuxK ones, when some
latent is dead). Inference (`encode`) is the dense computation, with the same codes.

Loss terms, over a batch of B vectors (normalised units):

    recon = (1/B) Σ_b ‖x_b − x̂_b‖²
    aux   = aux_coefficient · [Σ_b ‖e_b − ê_b‖² / Σ_b ‖e_b − ē‖²] · V,   V = (1/B) Σ_b ‖x_b − x̄‖²

ê is the decoder (without its bias) applied to the dead latents' top `aux_k` ReLU
pre-activations; the bracket is Gao et al.'s normalised AuxK MSE, and V puts it in `recon`'s
units (`dictionaries.auxk`, shared with BatchTopK, Matryoshka and JumpReLU). The unnormalised
α‖e − ê‖² that this recipe used before was FVU times (5–10×) weaker than theirs. The term is
exactly 0 when no latent is dead (or the batch's residual has no spread, e.g. B = 1).

Remaining differences from OpenAI's reference code (`sparse_autoencoder/train.py`):
- V is the batch's data variance; theirs is a constant measured once on a sample of the data;
- a latent is dead after `dead_after_tokens` tokens without firing (≥); theirs counts steps,
  dead when steps > dead_tokens // batch_size. As theirs, the counters are updated with the
  current batch before the dead set is chosen;
- "fired" means a non-zero activation; theirs counts activations > 1e-3;
- the aux reconstruction has no decoder bias; theirs adds b_dec to both ê and the target, which
  leaves the value unchanged but also sends the aux gradient to b_dec directly (here b_dec gets aux
  gradient only through the dead latents' pre-activations W_e(x − b_dec));
- b_dec starts at the data mean (theirs: the geometric median); the encoder starts as exactly the
  decoder's transpose (theirs rescales it so the initial reconstructions have unit norm); the
  decoder gradient's component parallel to each column is not projected out (theirs is), although
  columns are renormalised after each step as theirs are; no EMA of the weights, Adam ε is the
  trainer's.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from dictionaries.auxk import AuxKConfig, AuxKSAE
from dictionaries.base import LossTerms, SAELensExport, fold_linear_sae
from dictionaries.registry import register
from dictionaries.sae import topk_activations
from dictionaries.sparse_topk import Selection
from interp_sae.errors import ConfigError


@dataclass(kw_only=True)
class TopKAuxConfig(AuxKConfig):
    architecture = "topk_aux"
    k: int = 32

    def __post_init__(self) -> None:
        super().__post_init__()
        if not 1 <= self.k <= self.n_latents:
            raise ConfigError(f"k must be in [1, n_latents={self.n_latents}], got {self.k}")


@register
class TopKAux(AuxKSAE):
    """The k largest of ReLU(W_e (x − b_d) + b_e) per vector, on the shared AuxK body."""

    config_class = TopKAuxConfig
    config: TopKAuxConfig

    def _encode(self, xn: torch.Tensor) -> torch.Tensor:
        return topk_activations(self._pre_activations(xn), self.config.k)

    def _loss(self, xn: torch.Tensor, generator: torch.Generator | None) -> LossTerms:
        code, dead = self._sparse_training_code(xn, Selection("topk", self.config.k))
        recon, aux = self._sparse_recon_and_aux(xn, code, dead)
        return {"recon": recon, "aux": aux}

    def saelens_export(self) -> SAELensExport:
        """SAELens "topk" with apply_b_dec_to_input: it encodes x − b_dec, as this recipe does."""
        tensors = fold_linear_sae(self.encoder, self.decoder, self.input_scale)
        return SAELensExport("topk", True, tensors, {"k": self.config.k, "rescale_acts_by_decoder_norm": False})
