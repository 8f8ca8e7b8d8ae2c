"""Convert dictionaries to and from SAELens 6.x's on-disk layout (what `SAE.load_from_disk` reads).

A SAELens folder holds `cfg.json`, `sae_weights.safetensors` with exactly `W_enc [d_in, d_sae]`,
`b_enc [d_sae]`, `W_dec [d_sae, d_in]`, `b_dec [d_in]`, and optionally `sparsity.safetensors`
(`sparsity` = log10(firing frequency + 1e-10)). Its forward pass:

    pre = (x - b_dec * apply_b_dec_to_input) @ W_enc + b_enc
    f   = relu(pre)                       # "standard"
    f   = relu of the k largest pre, 0 elsewhere   # "topk"
    x̂   = f @ W_dec + b_dec

Only architectures whose outputs that formula reproduces are exported; the input scale is
folded into the weights (SAELens reads a norm scaling factor only from its own release list).
Only JSON and safetensors are read: nothing here unpickles or runs code from a folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import dictionaries
from dictionaries.base import Dictionary
from dictionaries.io import CONFIG_FILE as DICTIONARY_CONFIG_FILE
from interp_sae.hub import SAELENS_CONFIG_FILE as CFG_FILE
from interp_sae.hub import pickle_hint

WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
WEIGHT_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
SPARSITY_EPS = 1e-10  # as SAELens's trainer writes it
# The SAELens release whose layout this follows. Loaders convert configs without a version, or
# older than 6.0, from the pre-6 layout; this must stay >= 6.0.0 so they read ours as written.
SAELENS_LAYOUT_VERSION = "6.0.0"
# SAELens metadata key -> key of the provenance in our config.json's "metadata" object.
METADATA_KEYS = {
    "hook_name": "hook_name",
    "model_name": "model_name",
    "dataset_path": "dataset",
    "context_size": "context_length",
    "prepend_bos": "prepend_bos",
}
DTYPE_NAMES = {torch.float32: "float32", torch.float64: "float64", torch.float16: "float16", torch.bfloat16: "bfloat16"}
NOT_REPRESENTABLE = {
    "vaease": "VAEase's code is the gated mean (1 − σ) ⊙ μ, and the gate σ comes from the encoder's "
    "variance head, which SAELens has no slot for",
    "vae": "the VAE's code is the posterior mean μ of a swish (SiLU) or multi-layer encoder, "
    "and SAELens's SAEs encode with one linear layer and ReLU, TopK or JumpReLU",
}


class SAELensError(ValueError):
    """A dictionary cannot be exported, or a folder imported; the message says why."""


@dataclass(frozen=True)
class SAELensForm:
    """How one of our dictionaries is written in SAELens's terms."""

    architecture: str  # "standard" or "topk"
    apply_b_dec_to_input: bool
    k: int | None = None


def saelens_form(model: Dictionary) -> SAELensForm:
    """The SAELens architecture that computes exactly what `model` does, or SAELensError.

    Every case below has the same linear encoder and decoder as SAELens; our TopK keeps the k
    largest of ReLU(pre), which is SAELens's ReLU of the k largest pre.
    """
    arch, config = model.architecture, model.config
    if arch in ("sae_l1", "sae_log") or (arch == "wsae" and config.encoder == "relu"):
        return SAELensForm("standard", apply_b_dec_to_input=False)  # wsae's Γ only weights the training loss
    if arch == "sae_topk" or (arch == "wsae" and config.encoder == "topk"):
        return SAELensForm("topk", apply_b_dec_to_input=False, k=config.k)
    if arch == "topk_aux":
        return SAELensForm("topk", apply_b_dec_to_input=True, k=config.k)  # it encodes x - b_dec
    reason = NOT_REPRESENTABLE.get(arch, "its forward pass has no SAELens equivalent")
    raise SAELensError(f"Cannot export a {arch} dictionary to SAELens: {reason}.")


def export_saelens(
    dictionary: str | Path,
    out: str | Path,
    *,
    firing_frequency: torch.Tensor | Sequence[float] | None = None,
    metadata: dict[str, Any] | None = None,
) -> Path:
    """Write the dictionary folder `dictionary` to `out` in SAELens's layout; returns `out`.

    `firing_frequency` [κ] (the fraction of tokens on which each feature is non-zero) adds
    `sparsity.safetensors`. `metadata` (SAELens keys: hook_name, model_name, context_size,
    dataset_path, ...; None values are ignored) overrides the provenance in the dictionary's config.json.
    """
    dictionary = Path(dictionary)
    model = dictionaries.load_dictionary(dictionary)
    form = saelens_form(model)
    config = json.loads((dictionary / DICTIONARY_CONFIG_FILE).read_text())
    cfg = {
        "d_in": model.config.d,
        "d_sae": model.config.n_latents,
        "dtype": DTYPE_NAMES[model.decoder.weight.dtype],
        "device": "cpu",
        "apply_b_dec_to_input": form.apply_b_dec_to_input,
        "normalize_activations": "none",  # the input scale is folded into the weights
        "reshape_activations": "none",
        "architecture": form.architecture,
    }
    if form.architecture == "topk":
        cfg |= {"k": form.k, "rescale_acts_by_decoder_norm": False}
    cfg["metadata"] = _export_metadata(config, model.architecture, metadata or {})
    sparsity = None if firing_frequency is None else _log_sparsity(firing_frequency, model.config.n_latents)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    save_file(folded_weights(model), out / WEIGHTS_FILE)
    (out / CFG_FILE).write_text(json.dumps(cfg, indent=2) + "\n")
    if sparsity is None:
        (out / SPARSITY_FILE).unlink(missing_ok=True)  # a stale one would describe another dictionary
    else:
        save_file({"sparsity": sparsity}, out / SPARSITY_FILE)
    return out


def folded_weights(model: Dictionary) -> dict[str, torch.Tensor]:
    """SAELens's four tensors for `model`, with the input scale s folded in.

    Ours: f = act(W_e (s·x − b_d·a) + b_e), x̂ = (W_d f + b_d) / s, a = apply_b_dec_to_input.
    So W_enc = s·W_eᵀ, b_enc = b_e, W_dec = W_dᵀ / s, b_dec = b_d / s (and s·x − b_d = s·(x − b_dec)).
    """
    s = model.input_scale
    tensors = {
        "W_enc": (model.encoder.weight * s).T,
        "b_enc": model.encoder.bias,
        "W_dec": (model.decoder.weight / s).T,
        "b_dec": model.decoder.bias / s,
    }
    return {name: tensor.detach().cpu().contiguous() for name, tensor in tensors.items()}


def import_saelens(folder: str | Path, out: str | Path) -> Path:
    """Convert a SAELens folder (standard or topk) into a dictionary folder at `out`; returns `out`.

    standard becomes `sae_l1` (a plain ReLU SAE; apply_b_dec_to_input is folded into b_enc),
    topk becomes `topk_aux` when it subtracts b_dec from the input and `sae_topk` otherwise.
    SAELens metadata (hook, model, dataset, context) goes into config.json's "metadata".
    """
    folder = Path(folder)
    cfg = _read_cfg(folder)
    tensors = _read_weights(folder, cfg)
    model = _dictionary_from_saelens(cfg, tensors)
    return dictionaries.save_dictionary(model, out, metadata=_import_metadata(cfg))


def _export_metadata(config: dict[str, Any], architecture: str, overrides: dict[str, Any]) -> dict[str, Any]:
    provenance = config.get("metadata") or {}
    known = {key: provenance.get(ours) for key, ours in METADATA_KEYS.items()}
    metadata = {
        "sae_lens_version": SAELENS_LAYOUT_VERSION,
        **known,
        **{key: value for key, value in overrides.items() if value is not None},  # None: not given
        "interp_sae_architecture": architecture,  # what it was before export: provenance for readers
    }
    return {key: value for key, value in metadata.items() if value is not None}


def _log_sparsity(firing_frequency: torch.Tensor | Sequence[float], n_latents: int) -> torch.Tensor:
    frequency = torch.as_tensor(firing_frequency, dtype=torch.float64)
    if frequency.shape != (n_latents,):
        raise SAELensError(
            f"firing_frequency must have shape ({n_latents},), one per feature, got {tuple(frequency.shape)}."
        )
    if not bool(((frequency >= 0) & (frequency <= 1)).all()):
        raise SAELensError("firing_frequency must hold fractions of tokens, each in [0, 1] (and no NaN).")
    return torch.log10(frequency + SPARSITY_EPS).float()


def _read_cfg(folder: Path) -> dict[str, Any]:
    """cfg.json in SAELens 6.x terms, checked to describe a standard or topk SAE that imports exactly."""
    path = folder / CFG_FILE
    if not path.is_file():
        raise SAELensError(f"{folder} is not a SAELens folder: {CFG_FILE} is missing.")
    try:
        cfg = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise SAELensError(f"{path} is not valid JSON ({error}).") from error
    if not isinstance(cfg, dict):
        raise SAELensError(f"{path} must hold a JSON object, not {type(cfg).__name__}.")
    if _major_version(cfg) < 6:
        cfg = _normalise_pre_6(cfg, path)
    for key in ("d_in", "d_sae"):
        if not isinstance(cfg.get(key), int) or cfg[key] < 1:
            raise SAELensError(f"{path}: {key} must be a positive integer, got {cfg.get(key)!r}.")
    if cfg.get("architecture") not in ("standard", "topk"):
        raise SAELensError(f"{path}: SAELens architecture {cfg.get('architecture')!r} has no interp-sae equivalent "
                           "(standard and topk import).")  # fmt: skip
    if cfg.get("normalize_activations", "none") != "none":
        raise SAELensError(
            f"{path}: normalize_activations is {cfg['normalize_activations']!r}; only 'none' imports, because "
            "SAELens keeps the normalisation factor outside the folder. Fold it into the weights first."
        )
    if cfg.get("reshape_activations", "none") != "none":
        raise SAELensError(f"{path}: reshape_activations {cfg['reshape_activations']!r} is not supported: "
                           "interp-sae dictionaries read flat activation vectors.")  # fmt: skip
    k = cfg.get("k")
    if cfg["architecture"] == "topk" and (not isinstance(k, int) or not 1 <= k <= cfg["d_sae"]):
        raise SAELensError(f"{path}: a topk SAE needs an integer k in [1, d_sae={cfg['d_sae']}], got {k!r}.")
    return cfg


def _major_version(cfg: dict[str, Any]) -> int:
    version = cfg.get("sae_lens_version") or (cfg.get("metadata") or {}).get("sae_lens_version") or "0"
    digits = str(version).split(".")[0]
    return int(digits) if digits.isdigit() else 0


def _normalise_pre_6(cfg: dict[str, Any], path: Path) -> dict[str, Any]:
    """A config written before SAELens 6, in 6.x terms, the way SAELens's own loader converts it."""
    cfg = {"hook_name": cfg.get("hook_point"), **cfg}
    activation = cfg.get("activation_fn", cfg.get("activation_fn_str", "relu"))
    k = (cfg.get("activation_fn_kwargs") or {}).get("k")
    if activation == "topk" and k is not None:
        cfg |= {"architecture": "topk", "k": k}
    elif activation != "relu":
        raise SAELensError(f"{path}: activation function {activation!r} has no interp-sae equivalent (relu or topk).")
    normalize = cfg.get("normalize_activations")
    cfg["normalize_activations"] = {None: "none", False: "none", True: "expected_average_only_in"}.get(
        normalize, normalize
    )
    return {"architecture": "standard", "apply_b_dec_to_input": True, **cfg}


def _read_weights(folder: Path, cfg: dict[str, Any]) -> dict[str, torch.Tensor]:
    """The four tensors, as float32, after checking names and shapes against cfg."""
    path = folder / WEIGHTS_FILE
    if not path.is_file():
        raise SAELensError(f"{folder} is not a SAELens folder: {WEIGHTS_FILE} is missing{pickle_hint(folder)}.")
    try:
        tensors = load_file(path)
    except SafetensorError as error:
        raise SAELensError(f"{path} is not a valid safetensors file ({error}): it is corrupt or truncated.") from error
    scaling = tensors.pop("scaling_factor", None)  # SAELens once saved an all-ones one, and drops it on load
    if scaling is not None and not bool((scaling == 1).all()):
        raise SAELensError(f"{path}: a fine-tuning scaling_factor other than 1 is not supported.")
    if sorted(tensors) != sorted(WEIGHT_NAMES):
        raise SAELensError(
            f"{path} must hold exactly {list(WEIGHT_NAMES)} (SAELens standard or topk), got {sorted(tensors)}."
        )
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    expected = {"W_enc": (d_in, d_sae), "b_enc": (d_sae,), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}
    for name, shape in expected.items():
        if tuple(tensors[name].shape) != shape:
            raise SAELensError(
                f"{path}: {name} has shape {tuple(tensors[name].shape)}, but cfg.json (d_in={d_in}, d_sae={d_sae}) needs {shape}."
            )
    return {name: tensor.float() for name, tensor in tensors.items()}


def _dictionary_from_saelens(cfg: dict[str, Any], t: dict[str, torch.Tensor]) -> Dictionary:
    W_enc, b_enc, W_dec = t["W_enc"], t["b_enc"], t["W_dec"]
    subtract_b_dec = bool(cfg.get("apply_b_dec_to_input", True))  # SAELens's default
    if cfg["architecture"] == "topk":
        if cfg.get("rescale_acts_by_decoder_norm"):
            # SAELens selects on pre·‖W_dec_i‖ and decodes f/‖W_dec_i‖: fold the norms in (its fold_W_dec_norm).
            norms = W_dec.norm(dim=-1)
            W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
        name, fields = ("topk_aux" if subtract_b_dec else "sae_topk"), {"k": cfg["k"]}
    else:
        if subtract_b_dec:  # (x - b_dec) @ W_enc + b_enc = x @ W_enc + (b_enc - b_dec @ W_enc)
            b_enc = b_enc - t["b_dec"] @ W_enc
        name, fields = "sae_l1", {}
    model = dictionaries.create(dictionaries.make_config(name, d=cfg["d_in"], n_latents=cfg["d_sae"], **fields))
    state = model.state_dict()
    state |= {
        "encoder.weight": W_enc.T, "encoder.bias": b_enc, "decoder.weight": W_dec.T, "decoder.bias": t["b_dec"],
        "input_scale": torch.ones(()),
    }  # fmt: skip
    model.load_state_dict(state)
    return model


def _import_metadata(cfg: dict[str, Any]) -> dict[str, Any]:
    source = {**cfg, **(cfg.get("metadata") or {})}  # pre-6 configs keep these at the top level
    metadata = {ours: source.get(key) for key, ours in METADATA_KEYS.items()}
    return {"source": "saelens", **{key: value for key, value in metadata.items() if value is not None}}
