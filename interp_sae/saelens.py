"""Convert dictionaries to and from SAELens 6.x's on-disk layout (what `SAE.load_from_disk` reads).

A SAELens folder holds `cfg.json`, `sae_weights.safetensors` with exactly the tensors of its
architecture (`LAYOUTS`: `W_enc [d_in, d_sae]`, `b_enc [d_sae]`, `W_dec [d_sae, d_in]`, `b_dec [d_in]`,
plus `threshold [d_sae]` for jumprelu; gated has `b_gate`, `b_mag`, `r_mag [d_sae]` instead of `b_enc`),
and optionally `sparsity.safetensors` (`sparsity` = log10(firing frequency + 1e-10)). Its forward pass:

    x'  = x - b_dec * apply_b_dec_to_input
    pre = x' @ W_enc + b_enc
    f   = relu(pre)                                        # "standard"
    f   = relu of the k largest pre, 0 elsewhere           # "topk"
    f   = relu(pre) * (pre > threshold)                    # "jumprelu" (also BatchTopK, Matryoshka)
    f   = (x' @ W_enc + b_gate > 0) * relu(x' @ (W_enc * exp(r_mag)) + b_mag)   # "gated"
    x̂   = f @ W_dec + b_dec

Only architectures whose outputs these formulas reproduce are exported (each says how in its
`saelens_export`); the input scale is folded into the weights (SAELens reads a norm scaling
factor only from its own release list).
Only JSON and safetensors are read: nothing here unpickles or runs code from a folder.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file

import dictionaries
from dictionaries.base import Dictionary
from dictionaries.io import CONFIG_FILE as DICTIONARY_CONFIG_FILE
from interp_sae.atomic import write_atomic, write_json_atomic
from interp_sae.errors import ConfigError
from interp_sae.hub import SAELENS_CONFIG_FILE as CFG_FILE
from interp_sae.hub import pickle_hint
from interp_sae.runtime import dtype_name

SAELENS_WEIGHTS_FILE = "sae_weights.safetensors"
SPARSITY_FILE = "sparsity.safetensors"
WEIGHT_NAMES = ("W_enc", "b_enc", "W_dec", "b_dec")
# SAELens architecture -> the tensors of its inference file, in SAELens's order.
LAYOUTS = {
    "standard": WEIGHT_NAMES,
    "topk": WEIGHT_NAMES,
    "jumprelu": (*WEIGHT_NAMES, "threshold"),
    "gated": ("W_enc", "b_gate", "b_mag", "r_mag", "W_dec", "b_dec"),
}
SPARSITY_EPS = 1e-10  # as SAELens's trainer writes it
# The SAELens release whose layout this follows. Loaders convert configs without a version, or
# older than 6.0, from the pre-6 layout; this must stay >= 6.0.0 so they read ours as written.
SAELENS_LAYOUT_VERSION = "6.0.0"
# Provenance keys of our config.json that travel through SAELens's metadata and come back on import.
CARRIED_PROVENANCE = ("store", "split", "input_normalization")
# SAELens metadata key -> key of the provenance in our config.json's "metadata" object.
METADATA_KEYS = {
    "hook_name": "hook_name",
    "model_name": "model_name",
    "dataset_path": "dataset",
    "context_size": "context_length",
    "prepend_bos": "prepend_bos",
}


class SAELensError(ConfigError):
    """A dictionary cannot be exported, or a folder imported; the message says why."""


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
    try:
        form = model.saelens_export()
    except dictionaries.CannotExport as reason:
        raise SAELensError(f"Cannot export a {model.architecture} dictionary to SAELens: {reason}.") from None
    config = json.loads((dictionary / DICTIONARY_CONFIG_FILE).read_text())
    cfg = {
        "d_in": model.config.d,
        "d_sae": model.config.n_latents,
        "dtype": dtype_name(model.decoder.weight.dtype),
        "device": "cpu",
        "apply_b_dec_to_input": form.apply_b_dec_to_input,
        "normalize_activations": "none",  # the input scale is folded into the weights
        "reshape_activations": "none",
        "architecture": form.architecture,
    }
    cfg |= form.cfg
    cfg["metadata"] = _export_metadata(config, model.architecture, metadata or {})
    sparsity = None if firing_frequency is None else _log_sparsity(firing_frequency, model.config.n_latents)

    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    write_atomic(out / SAELENS_WEIGHTS_FILE, lambda tmp: save_file(form.tensors, tmp))
    write_json_atomic(out / CFG_FILE, cfg, indent=2)
    if sparsity is None:
        (out / SPARSITY_FILE).unlink(missing_ok=True)  # a stale one would describe another dictionary
    else:
        write_atomic(out / SPARSITY_FILE, lambda tmp: save_file({"sparsity": sparsity}, tmp))
    return out


def import_saelens(folder: str | Path, out: str | Path) -> Path:
    """Convert a SAELens folder (standard, topk, jumprelu or gated) into a dictionary folder at
    `out`; returns `out`.

    standard becomes `sae_l1` (a plain ReLU SAE; apply_b_dec_to_input is folded into b_enc),
    topk becomes `topk_aux` when it subtracts b_dec from the input and `sae_topk` otherwise,
    jumprelu (which is also how SAELens saves BatchTopK and Matryoshka) becomes `jumprelu` with
    exactly those thresholds (b_dec is always subtracted there: when the file does not, b_dec @ W_enc
    is folded into b_enc; thresholds ≤ 0 compute as 0 and are stored as 0), and gated becomes `gated` (likewise folded
    into b_gate and b_mag). SAELens metadata (hook, model, dataset, context) goes into
    config.json's "metadata".
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
        # What only interp-sae reads back (import_saelens): the store, split and normalisation it was trained with.
        "interp_sae_provenance": {key: provenance[key] for key in CARRIED_PROVENANCE if key in provenance} or None,
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
    """cfg.json in SAELens 6.x terms, checked to describe an SAE of a `LAYOUTS` architecture that imports exactly."""
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
    if cfg.get("architecture") not in LAYOUTS:
        *others, last = LAYOUTS
        raise SAELensError(f"{path}: SAELens architecture {cfg.get('architecture')!r} has no interp-sae equivalent "
                           f"({', '.join(others)} and {last} import).")  # fmt: skip
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
    """The tensors of cfg's architecture (`LAYOUTS`), as float32, after checking names and shapes against cfg."""
    path = folder / SAELENS_WEIGHTS_FILE
    if not path.is_file():
        raise SAELensError(f"{folder} is not a SAELens folder: {SAELENS_WEIGHTS_FILE} is missing{pickle_hint(folder)}.")
    try:
        tensors = load_file(path)
    except SafetensorError as error:
        raise SAELensError(f"{path} is not a valid safetensors file ({error}): it is corrupt or truncated.") from error
    scaling = tensors.pop("scaling_factor", None)  # SAELens once saved an all-ones one, and drops it on load
    if scaling is not None and not bool((scaling == 1).all()):
        raise SAELensError(f"{path}: a fine-tuning scaling_factor other than 1 is not supported.")
    names = LAYOUTS[cfg["architecture"]]
    if sorted(tensors) != sorted(names):
        sharing = " or ".join(architecture for architecture, layout in LAYOUTS.items() if layout == names)
        raise SAELensError(f"{path} must hold exactly {list(names)} (SAELens {sharing}), got {sorted(tensors)}.")
    d_in, d_sae = cfg["d_in"], cfg["d_sae"]
    for name in names:
        shape = {"W_enc": (d_in, d_sae), "W_dec": (d_sae, d_in), "b_dec": (d_in,)}.get(name, (d_sae,))
        if tuple(tensors[name].shape) != shape:
            raise SAELensError(
                f"{path}: {name} has shape {tuple(tensors[name].shape)}, but cfg.json (d_in={d_in}, d_sae={d_sae}) needs {shape}."
            )
    return {name: tensor.float() for name, tensor in tensors.items()}


Converted = tuple[str, dict[str, Any], dict[str, torch.Tensor]]
"""(our architecture, its config fields beyond d and n_latents, state-dict entries to load)."""


def _from_standard(cfg: dict[str, Any], t: dict[str, torch.Tensor], subtract_b_dec: bool) -> Converted:
    b_enc = t["b_enc"]
    if subtract_b_dec:  # (x - b_dec) @ W_enc + b_enc = x @ W_enc + (b_enc - b_dec @ W_enc)
        b_enc = b_enc - t["b_dec"] @ t["W_enc"]
    return "sae_l1", {}, _linear_state(t["W_enc"], b_enc, t["W_dec"], t["b_dec"])


def _from_topk(cfg: dict[str, Any], t: dict[str, torch.Tensor], subtract_b_dec: bool) -> Converted:
    W_enc, b_enc, W_dec = t["W_enc"], t["b_enc"], t["W_dec"]
    if cfg.get("rescale_acts_by_decoder_norm"):
        # SAELens selects on pre·‖W_dec_i‖ and decodes f/‖W_dec_i‖: fold the norms in (its fold_W_dec_norm).
        norms = W_dec.norm(dim=-1)
        W_enc, b_enc, W_dec = W_enc * norms, b_enc * norms, W_dec / norms[:, None]
    name = "topk_aux" if subtract_b_dec else "sae_topk"
    return name, {"k": cfg["k"]}, _linear_state(W_enc, b_enc, W_dec, t["b_dec"])


def _from_jumprelu(cfg: dict[str, Any], t: dict[str, torch.Tensor], subtract_b_dec: bool) -> Converted:
    """Ours always subtracts b_dec, and trains θ itself (the default "direct" parameterisation);
    relu(pre)·(pre > θ) is the same for every θ ≤ 0, stored as θ = 0."""
    b_enc = t["b_enc"]
    if not subtract_b_dec:  # x @ W_enc + b_enc = (x - b_dec) @ W_enc + (b_enc + b_dec @ W_enc)
        b_enc = b_enc + t["b_dec"] @ t["W_enc"]
    state = _linear_state(t["W_enc"], b_enc, t["W_dec"], t["b_dec"])
    return "jumprelu", {"threshold_parameterization": "direct"}, state | {"threshold": t["threshold"].clamp(min=0)}


def _from_gated(cfg: dict[str, Any], t: dict[str, torch.Tensor], subtract_b_dec: bool) -> Converted:
    b_gate, b_mag = t["b_gate"], t["b_mag"]
    if not subtract_b_dec:  # as for jumprelu, once for each path
        b_gate = b_gate + t["b_dec"] @ t["W_enc"]
        b_mag = b_mag + t["b_dec"] @ (t["W_enc"] * t["r_mag"].exp())
    return "gated", {}, {
        "encoder.weight": t["W_enc"].T, "b_gate": b_gate, "b_mag": b_mag, "r_mag": t["r_mag"],
        "decoder.weight": t["W_dec"].T, "decoder.bias": t["b_dec"],
    }  # fmt: skip


def _linear_state(
    W_enc: torch.Tensor, b_enc: torch.Tensor, W_dec: torch.Tensor, b_dec: torch.Tensor
) -> dict[str, torch.Tensor]:
    return {"encoder.weight": W_enc.T, "encoder.bias": b_enc, "decoder.weight": W_dec.T, "decoder.bias": b_dec}


# SAELens architecture -> its conversion (every key of LAYOUTS has one).
_CONVERTERS = {"standard": _from_standard, "topk": _from_topk, "jumprelu": _from_jumprelu, "gated": _from_gated}


def _dictionary_from_saelens(cfg: dict[str, Any], t: dict[str, torch.Tensor]) -> Dictionary:
    subtract_b_dec = bool(cfg.get("apply_b_dec_to_input", True))  # SAELens's default
    name, fields, converted = _CONVERTERS[cfg["architecture"]](cfg, t, subtract_b_dec)
    model = dictionaries.create(dictionaries.make_config(name, d=cfg["d_in"], n_latents=cfg["d_sae"], **fields))
    state = model.state_dict()
    state |= converted | {"input_scale": torch.ones(())}
    model.load_state_dict(state)
    return model


def _import_metadata(cfg: dict[str, Any]) -> dict[str, Any]:
    source = {**cfg, **(cfg.get("metadata") or {})}  # pre-6 configs keep these at the top level
    metadata = {ours: source.get(key) for key, ours in METADATA_KEYS.items()}
    carried = source.get("interp_sae_provenance") or {}
    if not isinstance(carried, dict):
        raise SAELensError("cfg.json: metadata.interp_sae_provenance must be a JSON object.")
    known = {key: carried[key] for key in CARRIED_PROVENANCE if key in carried}
    return {"source": "saelens", **{key: value for key, value in metadata.items() if value is not None}, **known}
