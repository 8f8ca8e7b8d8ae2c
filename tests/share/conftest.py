"""Dictionaries to share, the SAELens forward pass written out by hand, and the local Hub fixtures."""

from __future__ import annotations

import pickle

import torch
from hub.conftest import hf_home, hub, online  # noqa: F401  (the local Hub server, reused from tests/hub)

import dictionaries

D, N_LATENTS, K = 6, 12, 3
# name -> (architecture, config fields, SAELens architecture, apply_b_dec_to_input, architecture it imports back as)
EXPORTABLE = {
    "sae_l1": ("sae_l1", {}, "standard", False, "sae_l1"),
    "sae_log": ("sae_log", {}, "standard", False, "sae_l1"),
    "sae_topk": ("sae_topk", {"k": K}, "topk", False, "sae_topk"),
    "topk_aux": ("topk_aux", {"k": K}, "topk", True, "topk_aux"),
    "wsae_relu": ("wsae", {"encoder": "relu"}, "standard", False, "sae_l1"),
    "wsae_topk": ("wsae", {"encoder": "topk", "k": K}, "topk", False, "sae_topk"),
}


def make_model(name: str, input_scale: float, seed: int = 0) -> dictionaries.Dictionary:
    """A random dictionary with non-zero biases and a non-1 input scale, so that folding shows."""
    architecture, fields = EXPORTABLE[name][:2] if name in EXPORTABLE else (name, {})
    model = dictionaries.create(dictionaries.make_config(architecture, d=D, n_latents=N_LATENTS, **fields), seed=seed)
    generator = torch.Generator().manual_seed(seed + 100)
    with torch.no_grad():
        model.decoder.bias.copy_(torch.randn(D, generator=generator))
        model.input_scale.fill_(input_scale)
        if architecture == "wsae":
            model.reconstruction_weights.copy_(torch.rand(D, generator=generator) + 0.5)
    return model


def inputs(input_scale: float, n: int = 64) -> torch.Tensor:
    """Raw activations, of a size that the input scale maps to about 1."""
    return torch.randn(n, D, generator=torch.Generator().manual_seed(7)) / input_scale


def saelens_encode(cfg: dict, t: dict[str, torch.Tensor], x: torch.Tensor) -> torch.Tensor:
    """SAELens 6.x's encode (StandardSAE / TopKSAE), from its formula, not from our code."""
    pre = (x - t["b_dec"] * cfg["apply_b_dec_to_input"]) @ t["W_enc"] + t["b_enc"]
    if cfg["architecture"] == "standard":
        return torch.relu(pre)
    if cfg.get("rescale_acts_by_decoder_norm"):
        pre = pre * t["W_dec"].norm(dim=-1)
    values, indices = pre.topk(cfg["k"], dim=-1)  # the k largest pre-activations, then ReLU
    return torch.zeros_like(pre).scatter(-1, indices, values.relu())


def saelens_decode(cfg: dict, t: dict[str, torch.Tensor], f: torch.Tensor) -> torch.Tensor:
    if cfg.get("rescale_acts_by_decoder_norm"):
        f = f / t["W_dec"].norm(dim=-1)
    return f @ t["W_dec"] + t["b_dec"]


class _RunsCodeWhenUnpickled:
    def __init__(self, marker) -> None:
        self.marker = str(marker)

    def __reduce__(self):
        return open, (self.marker, "w")


def pickle_that_runs_code(marker) -> bytes:
    """A pickle whose loading creates the file `marker`: proof that something unpickled it."""
    return pickle.dumps(_RunsCodeWhenUnpickled(marker))


def saelens_modern(cfg: dict, t: dict[str, torch.Tensor], x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """SAELens 6.x's JumpReLUSAE / GatedSAE encode and decode, from their formulas, not from our code."""
    xc = x - t["b_dec"] * cfg["apply_b_dec_to_input"]
    if cfg["architecture"] == "jumprelu":
        pre = xc @ t["W_enc"] + t["b_enc"]
        f = torch.relu(pre) * (pre > t["threshold"])
    else:
        f = (xc @ t["W_enc"] + t["b_gate"] > 0) * torch.relu(xc @ (t["W_enc"] * t["r_mag"].exp()) + t["b_mag"])
    return f, f @ t["W_dec"] + t["b_dec"]
